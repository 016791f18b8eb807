package sshx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeyAlgorithms asks for the guest's ed25519 key first, so the key
// pinned does not depend on x/crypto's default preference order.
var hostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

// ClientConfig is the client configuration banger uses for guests: public
// key auth with signer, host keys checked by hostKeyCB (usually
// HostKeyCallback).
func ClientConfig(user string, signer ssh.Signer, hostKeyCB ssh.HostKeyCallback) *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   hostKeyCB,
		HostKeyAlgorithms: hostKeyAlgorithms,
	}
}

// Dial connects to addr (host:port) and completes the SSH handshake and
// authentication. The whole exchange is abandoned when ctx is done.
func Dial(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	return dial(ctx, addr, cfg, 0)
}

// dial is Dial with a bound on the TCP connect alone (0: none).
func dial(ctx context.Context, addr string, cfg *ssh.ClientConfig, connectTimeout time.Duration) (*ssh.Client, error) {
	d := net.Dialer{Timeout: connectTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	// x/crypto's handshake takes no context; closing the connection is
	// what interrupts it.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if !stop() {
		if err == nil {
			c.Close()
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// Run runs cmd on the host at addr and returns its exit status. A command
// that ran and exited non-zero is not an error: its status is returned
// with a nil error. err is set (and the status is -1) when the command
// could not be run or finish: connection, handshake, authentication, a
// signal, a missing exit status, or ctx ending first. stdin may be nil.
func Run(ctx context.Context, cfg *ssh.ClientConfig, addr, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error) {
	client, err := Dial(ctx, addr, cfg)
	if err != nil {
		return -1, err
	}
	defer client.Close()
	return RunOn(ctx, client, cmd, stdin, stdout, stderr)
}

// RunOn is Run over a client the caller keeps (and closes): many commands
// share one connection. When ctx ends first the client is closed, which
// ends the command, and the error wraps ctx's cause.
func RunOn(ctx context.Context, client *ssh.Client, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error) {
	addr := client.RemoteAddr().String()
	sess, err := client.NewSession()
	if err != nil {
		return -1, fmt.Errorf("open ssh session on %s: %w", addr, err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, stderr

	stop := context.AfterFunc(ctx, func() { client.Close() })
	err = sess.Run(cmd)
	if !stop() {
		return -1, fmt.Errorf("run %q on %s: %w", cmd, addr, context.Cause(ctx))
	}
	var exitErr *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr) && exitErr.Signal() != "":
		return -1, fmt.Errorf("run %q on %s: killed by signal %s", cmd, addr, exitErr.Signal())
	case errors.As(err, &exitErr):
		return exitErr.ExitStatus(), nil
	case errors.As(err, &missing):
		return -1, fmt.Errorf("run %q on %s: the session ended without an exit status (did sshd or the guest go away?)", cmd, addr)
	default:
		return -1, fmt.Errorf("run %q on %s: %w", cmd, addr, err)
	}
}

// DefaultWaitLimit bounds WaitForSSH when ctx has no deadline.
const DefaultWaitLimit = 5 * time.Minute

// attemptTimeout bounds one connection attempt, so a guest that accepts
// TCP but never answers (sshd still starting) does not use up the wait.
const attemptTimeout = 15 * time.Second

// connectTimeout bounds the TCP connect of one attempt. Before a booting
// guest brings its interface up nothing answers ARP for its address, and
// a connect then hangs for seconds before failing; a short bound turns
// that into prompt retries, so SSH is seen within one interval of opening.
const connectTimeout = time.Second

// WaitForSSH retries connecting to addr (dial, handshake, authentication)
// every interval until one succeeds or ctx is done (DefaultWaitLimit when
// ctx has no deadline). On timeout the error wraps both ctx's error and
// the last attempt's. A changed or revoked host key ends the wait at once:
// retrying cannot fix it.
func WaitForSSH(ctx context.Context, addr string, user string, signer ssh.Signer, hostKeyCB ssh.HostKeyCallback, every time.Duration) error {
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultWaitLimit)
		defer cancel()
	}
	cfg := ClientConfig(user, signer, hostKeyCB)
	start := time.Now()
	var lastErr error
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for attempt := 1; ; attempt++ {
		attemptCtx, cancel := context.WithTimeout(ctx, attemptTimeout)
		client, err := dial(attemptCtx, addr, cfg, connectTimeout)
		cancel()
		if err == nil {
			client.Close()
			return nil
		}
		if isPermanent(err) {
			return err
		}
		// An attempt cut short by the overall deadline says less about
		// why the guest is unreachable than the one before it.
		deadline, _ := ctx.Deadline()
		if cutShort := ctx.Err() != nil || !time.Now().Before(deadline); lastErr == nil || !cutShort {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ssh on %s not ready after %s and %d attempts: %w; last attempt: %w",
				addr, time.Since(start).Round(time.Millisecond), attempt, context.Cause(ctx), lastErr)
		case <-ticker.C:
		}
	}
}

func isPermanent(err error) bool {
	var changed *HostKeyChangedError
	var revoked *knownhosts.RevokedError
	return errors.As(err, &changed) || errors.As(err, &revoked)
}
