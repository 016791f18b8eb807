package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"banger/internal/config"
	"banger/internal/rpc"
	"banger/internal/sysinstall"
	"banger/internal/system"
)

// client returns an RPC client for the daemon, starting bangerd first when
// nothing answers (user mode; --no-autostart turns that off).
func (a *App) client(ctx context.Context) (*rpc.Client, error) {
	if a.clientFn != nil {
		return a.clientFn(ctx)
	}
	layout, err := config.LayoutFromEnv(a.Getenv)
	if err != nil {
		return nil, err
	}
	if usesSystemInstall(a) {
		// Installed as a system service: that daemon, never one started
		// here.
		o, err := sysinstall.InstalledOwner("")
		if err != nil {
			return nil, err
		}
		c := sysinstall.Client(sysinstall.SystemSocket, o.UID)
		if err := c.Call(ctx, "ping", nil, nil); err != nil {
			if errors.Is(err, syscall.EACCES) && os.Getuid() != o.UID {
				return nil, fmt.Errorf("banger runs here as a system service for %s (uid %d): only %s and root may use it (you are uid %d)", o.Name, o.UID, o.Name, os.Getuid())
			}
			return nil, fmt.Errorf("banger is installed as a system service, but bangerd does not answer on %s: %w; see banger system status", sysinstall.SystemSocket, err)
		}
		return c, nil
	}
	sock := layout.SocketPath
	if a.socket != "" {
		sock = a.socket
	}
	if err := checkSocketDir(sock); err != nil {
		return nil, err
	}
	c := &rpc.Client{SocketPath: sock}
	err = c.Call(ctx, "ping", nil, nil)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, rpc.ErrDaemonUnreachable) || a.noStart {
		if errors.Is(err, rpc.ErrDaemonUnreachable) {
			return nil, fmt.Errorf("bangerd is not running on %s; start it with `bangerd` (or drop --no-autostart)", sock)
		}
		return nil, err
	}
	if err := startDaemon(layout, sock); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if err = c.Call(ctx, "ping", nil, nil); err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("started bangerd but it did not answer on %s within 15s (see %s): %w",
		sock, filepath.Join(layout.StateDir, "bangerd.log"), err)
}

// startDaemon launches bangerd detached, preferring the binary installed
// beside this one.
func startDaemon(layout config.Layout, sock string) error {
	bin := ""
	if self, err := os.Executable(); err == nil {
		cand := filepath.Join(filepath.Dir(self), "bangerd")
		if st, err := os.Stat(cand); err == nil && !st.IsDir() {
			bin = cand
		}
	}
	if bin == "" {
		p, err := system.LookPath("bangerd")
		if err != nil {
			return fmt.Errorf("bangerd is not running and no bangerd binary was found beside banger or on PATH; install it (make install)")
		}
		bin = p
	}
	if err := os.MkdirAll(layout.StateDir, 0o700); err != nil {
		return err
	}
	// Errors bangerd hits before its logger exists (a bad config, a held
	// lock) go to its stderr: send that to the log the CLI points users at.
	logf, err := os.OpenFile(filepath.Join(layout.StateDir, "bangerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	proc, err := system.StartDetached(system.DetachedSpec{Argv: []string{bin, "--socket", sock}, Stdout: logf, Stderr: logf})
	if err != nil {
		return fmt.Errorf("start bangerd: %w", err)
	}
	return proc.Release()
}
