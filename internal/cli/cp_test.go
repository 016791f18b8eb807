package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/vmcp"
)

func TestParseCpArgs(t *testing.T) {
	for _, c := range []struct {
		src, dst string
		want     cpArgs
	}{
		{"notes.txt", "web:", cpArgs{vm: "web", dir: vmcp.ToGuest, src: "notes.txt", dst: "/root/"}},
		{"notes.txt", "web:docs/n.txt", cpArgs{vm: "web", dir: vmcp.ToGuest, src: "notes.txt", dst: "/root/docs/n.txt"}},
		{"./a:b", "web:/tmp", cpArgs{vm: "web", dir: vmcp.ToGuest, src: "./a:b", dst: "/tmp"}},
		{"/x/y:z", "db-1:/srv/", cpArgs{vm: "db-1", dir: vmcp.ToGuest, src: "/x/y:z", dst: "/srv/"}},
		{"web:/var/log/syslog", ".", cpArgs{vm: "web", dir: vmcp.ToHost, src: "/var/log/syslog", dst: "."}},
		{"web:relative", "out", cpArgs{vm: "web", dir: vmcp.ToHost, src: "/root/relative", dst: "out"}},
		{"web:../../etc/passwd", "out", cpArgs{vm: "web", dir: vmcp.ToHost, src: "/etc/passwd", dst: "out"}},
		{"web:proj/.", "out", cpArgs{vm: "web", dir: vmcp.ToHost, src: "/root/proj/.", dst: "out"}},
		{"web:~/x", "out", cpArgs{vm: "web", dir: vmcp.ToHost, src: "/root/x", dst: "out"}},
	} {
		got, err := parseCpArgs(c.src, c.dst)
		if err != nil || got != c.want {
			t.Errorf("parseCpArgs(%q, %q) = %+v, %v; want %+v", c.src, c.dst, got, err, c.want)
		}
	}
	for _, c := range []struct{ src, dst, msg string }{
		{"web:/a", "db:/b", "both"},
		{"a", "b", "neither"},
		{"./web:/a", "/tmp/db:b", "neither"},
		{":a", "b", "neither"},
		{"web:/a", "", "empty"},
		{"", "web:/a", "empty"},
	} {
		if _, err := parseCpArgs(c.src, c.dst); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("parseCpArgs(%q, %q): %v, want an error saying %q", c.src, c.dst, err, c.msg)
		}
	}
}

func TestCpSummary(t *testing.T) {
	got := cpSummary(vmcp.Stats{Files: 2, Links: 1, Dirs: 3, Bytes: 3 << 19}, 1234*time.Millisecond)
	if want := "copied 3 files (1.5 MiB) in 1.2s"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	if got := cpSummary(vmcp.Stats{Files: 1, Bytes: 10}, 5*time.Millisecond); got != "copied 1 file (0.0 MiB) in 5ms" {
		t.Errorf("summary %q", got)
	}
}

func newTestSigner(t *testing.T) (ssh.Signer, []byte) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return s, pem.EncodeToMemory(block)
}

// sftpGuest is an SSH server on loopback that serves the sftp subsystem
// (over this machine's filesystem) to one client key, like a guest's sshd.
func sftpGuest(t *testing.T, hostKey ssh.Signer, clientKey ssh.PublicKey) (port string) {
	t.Helper()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), clientKey.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveSFTPConn(conn, cfg)
			}()
		}
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port
}

func serveSFTPConn(conn net.Conn, cfg *ssh.ServerConfig) {
	defer conn.Close()
	sc, chans, reqs, err := ssh.NewServerConn(conn, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ch.Close()
			for req := range creqs {
				ok := req.Type == "subsystem" && len(req.Payload) > 4 && string(req.Payload[4:]) == "sftp"
				_ = req.Reply(ok, nil)
				if ok {
					srv, err := sftp.NewServer(ch)
					if err == nil {
						_ = srv.Serve()
					}
					return
				}
			}
		}()
	}
}

// fakeDaemon answers vm.ssh_info: "web" is running at 127.0.0.1, "stopped"
// is not running.
func fakeDaemon(t *testing.T, info api.VMSSHInfo) func(context.Context) (*rpc.Client, error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bangerd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &rpc.Server{Methods: rpc.Methods{
		"vm.ssh_info": rpc.Typed(func(_ context.Context, p api.VMRef) (api.VMSSHInfo, error) {
			switch p.Name {
			case info.Name:
				return info, nil
			case "stopped":
				return api.VMSSHInfo{}, api.Errorf(api.CodeNotRunning, "vm %q is not running (state stopped); start it with banger vm start %s", p.Name, p.Name)
			}
			return api.VMSSHInfo{}, api.Errorf(api.CodeNotFound, "no vm %q", p.Name)
		}),
	}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		ln.Close()
		<-done
	})
	return func(context.Context) (*rpc.Client, error) { return &rpc.Client{SocketPath: sock}, nil }
}

type cpEnv struct {
	app      *App
	out, err *bytes.Buffer
	known    string
	hostKey  ssh.Signer
}

// newCpEnv wires `vm cp` to a fake daemon and a loopback SFTP "guest"
// whose host key is pinned as the daemon pins a VM's.
func newCpEnv(t *testing.T) *cpEnv {
	t.Helper()
	dir := t.TempDir()
	clientKey, clientPEM := newTestSigner(t)
	hostKey, _ := newTestSigner(t)
	keyPath := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyPath, clientPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	known := filepath.Join(dir, "known_hosts")
	if err := sshx.PinHostKey(known, hostKey.PublicKey(), "127.0.0.1", "web.vm"); err != nil {
		t.Fatal(err)
	}
	port := sftpGuest(t, hostKey, clientKey.PublicKey())
	old := guestSSHPort
	guestSSHPort = port
	t.Cleanup(func() { guestSSHPort = old })
	info := api.VMSSHInfo{Name: "web", IP: "127.0.0.1", User: "root", KeyPath: keyPath, KnownHostsPath: known, HostAlias: "127.0.0.1"}
	e := &cpEnv{out: new(bytes.Buffer), err: new(bytes.Buffer), known: known, hostKey: hostKey}
	e.app = &App{Stdout: e.out, Stderr: e.err, Stdin: strings.NewReader(""), clientFn: fakeDaemon(t, info)}
	return e
}

func (e *cpEnv) run(t *testing.T, args ...string) error {
	t.Helper()
	e.out.Reset()
	e.err.Reset()
	cmd := newVMCpCommand(e.app)
	cmd.SetArgs(args)
	cmd.SetOut(e.out)
	cmd.SetErr(e.err)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return cmd.ExecuteContext(ctx)
}

// TestVMCpThroughSSH runs the command end to end: daemon lookup, SSH with
// a strictly checked host key, SFTP, both directions.
func TestVMCpThroughSSH(t *testing.T) {
	e := newCpEnv(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "proj")
	for name, data := range map[string]string{"a.txt": "alpha", "sub/b.txt": "beta"} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(tmp, "guest")
	if err := os.Mkdir(guest, 0o755); err != nil {
		t.Fatal(err)
	}

	err := e.run(t, src, "web:"+guest)
	if err == nil || !strings.Contains(err.Error(), "use -r") {
		t.Errorf("a directory without -r: %v", err)
	}
	if err := e.run(t, "-r", src, "web:"+guest); err != nil {
		t.Fatalf("upload: %v (stderr %q)", err, e.err)
	}
	summary := regexp.MustCompile(`^copied 3 files \(0\.0 MiB\) in [0-9.]+m?s\n$`)
	if !summary.MatchString(e.out.String()) {
		t.Errorf("summary %q", e.out)
	}
	if e.err.Len() != 0 {
		t.Errorf("not a terminal, yet stderr has %q", e.err)
	}
	if b, err := os.ReadFile(filepath.Join(guest, "proj", "sub", "b.txt")); err != nil || string(b) != "beta" {
		t.Errorf("guest copy: %q, %v", b, err)
	}
	back := filepath.Join(tmp, "back.txt")
	if err := e.run(t, "web:"+filepath.Join(guest, "proj", "a.txt"), back); err != nil {
		t.Fatalf("download: %v", err)
	}
	if b, err := os.ReadFile(back); err != nil || string(b) != "alpha" {
		t.Errorf("downloaded %q, %v", b, err)
	}
	if fi, err := os.Stat(back); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("downloaded mode: %v, %v", fi, err)
	}

	err = e.run(t, "web:"+filepath.Join(guest, "missing"), tmp)
	if err == nil || !strings.Contains(err.Error(), "web:"+filepath.Join(guest, "missing")+" does not exist") {
		t.Errorf("missing guest source: %v", err)
	}
}

func TestVMCpNotRunning(t *testing.T) {
	e := newCpEnv(t)
	err := e.run(t, "stopped:/etc/hosts", t.TempDir())
	if !api.IsCode(err, api.CodeNotRunning) || !strings.Contains(userMessage(err), "banger vm start stopped") {
		t.Errorf("copy from a stopped VM: %v", err)
	}
}

// TestVMCpHostKeyStrict: a key other than the pinned one, or none pinned,
// ends the copy before anything is sent; nothing is trusted on first use.
func TestVMCpHostKeyStrict(t *testing.T) {
	e := newCpEnv(t)
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	other, _ := newTestSigner(t)
	if err := sshx.PinHostKey(e.known, other.PublicKey(), "127.0.0.1", "web.vm"); err != nil {
		t.Fatal(err)
	}
	err := e.run(t, src, "web:"+filepath.Join(t.TempDir(), "f"))
	var changed *sshx.HostKeyChangedError
	if !errors.As(err, &changed) {
		t.Errorf("changed host key: %v", err)
	}

	if err := sshx.RemoveHost(e.known, "127.0.0.1", "web.vm"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(e.known)
	err = e.run(t, src, "web:"+filepath.Join(t.TempDir(), "f"))
	var notPinned *hostKeyNotPinnedError
	if !errors.As(err, &notPinned) {
		t.Errorf("unpinned host key: %v", err)
	}
	if after, _ := os.ReadFile(e.known); !bytes.Equal(before, after) {
		t.Errorf("known_hosts changed: %q", after)
	}
}

// openPTY returns a pseudo-terminal's master and slave ends.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pty slave: %v", err)
	}
	t.Cleanup(func() {
		s.Close()
		m.Close()
	})
	return m, s
}

// TestVMCpProgressOnTerminal: with stderr a terminal, a transfer over 8
// MiB draws a bar by bytes; a small one draws none. The summary line is
// printed either way.
func TestVMCpProgressOnTerminal(t *testing.T) {
	e := newCpEnv(t)
	master, slave := openPTY(t)
	var mu sync.Mutex
	var screen bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	seen := func() string {
		time.Sleep(200 * time.Millisecond) // let the reader drain the pty
		mu.Lock()
		defer mu.Unlock()
		s := screen.String()
		screen.Reset()
		return s
	}
	e.app.Stderr = slave
	tmp := t.TempDir()
	big := filepath.Join(tmp, "big")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(tmp, "small")
	if err := os.WriteFile(small, []byte("tiny"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := e.run(t, big, "web:"+filepath.Join(tmp, "big.copy")); err != nil {
		t.Fatal(err)
	}
	if s := seen(); !strings.Contains(s, "copying") || !strings.Contains(s, "16 MiB") || !strings.Contains(s, "100%") {
		t.Errorf("no progress bar for 16 MiB on a terminal; it shows %q", s)
	}
	if !strings.HasPrefix(e.out.String(), "copied 1 file (16.0 MiB) in ") {
		t.Errorf("summary %q", e.out)
	}
	if err := e.run(t, small, "web:"+filepath.Join(tmp, "small.copy")); err != nil {
		t.Fatal(err)
	}
	if s := seen(); s != "" {
		t.Errorf("a 4-byte copy drew %q", s)
	}
}

// What a fake daemon answers is checked before anything reaches ssh: a
// user that is an option never becomes one.
func TestSSHInfoFromAStrangerIsRefused(t *testing.T) {
	bad := api.VMSSHInfo{Name: "web", IP: "127.0.0.1", User: "-oProxyCommand=touch /tmp/banger-pwned", KeyPath: "/k", KnownHostsPath: "/kh", HostAlias: "web.vm"}
	app := &App{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}, Stdin: strings.NewReader(""), clientFn: fakeDaemon(t, bad)}
	_, err := sshArgv(context.Background(), app, "web", false, []string{"true"})
	if err == nil || !strings.Contains(err.Error(), `refusing what bangerd answered: ssh info of "web": user "-oProxyCommand=touch /tmp/banger-pwned" is not a plain user name`) {
		t.Fatalf("sshArgv = %v", err)
	}
	err = runCp(context.Background(), app, cpArgs{vm: "web", dir: 0, src: "/etc/hostname", dst: "/tmp/x"}, false)
	if err == nil || !strings.Contains(err.Error(), "refusing what bangerd answered") {
		t.Fatalf("runCp = %v", err)
	}
}
