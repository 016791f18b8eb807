package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/rpc"
)

// Listen binds the daemon's Unix socket (mode 0600 in a 0700 directory).
//
// A lock file beside the socket makes "one daemon per socket" exact: a
// second daemon finds the lock held and refuses, naming the pid that holds
// it. A socket file left by a daemon that died is replaced, since nobody
// holds the lock. release closes the listener, removes the socket and drops
// the lock.
func Listen(ctx context.Context, sockPath string) (net.Listener, func(), error) {
	dir := filepath.Dir(sockPath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	lock, err := lockFile(sockPath+".lock", "serves "+sockPath)
	if err != nil {
		return nil, nil, err
	}

	// We hold the lock, so any socket file is stale — unless a daemon from
	// an older release (without the lock) still answers on it.
	if fi, err := os.Lstat(sockPath); err == nil {
		// Only a stale socket is ours to remove: a --socket path that names
		// any other file (a symlink, a user's file) is refused, not deleted.
		if fi.Mode().Type() != fs.ModeSocket {
			lock.Close()
			return nil, nil, fmt.Errorf("%s exists and is not a socket (%s); choose another --socket path or remove it yourself", sockPath, fi.Mode().Type())
		}
		if answering(ctx, sockPath) {
			lock.Close()
			return nil, nil, fmt.Errorf("a daemon already answers on %s; stop it first", sockPath)
		}
		if err := os.Remove(sockPath); err != nil {
			lock.Close()
			return nil, nil, fmt.Errorf("remove stale socket %s: %w", sockPath, err)
		}
	}

	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", sockPath)
	syscall.Umask(old)
	if err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("listen on %s: %w", sockPath, err)
	}
	if err := os.Chmod(sockPath, 0o600); err != nil {
		ln.Close()
		lock.Close()
		return nil, nil, fmt.Errorf("chmod %s: %w", sockPath, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	release := func() {
		ln.Close()
		// The lock file stays: removing it would let a daemon that opened
		// the old inode and one that creates a new file both hold "the" lock.
		lock.Close()
	}
	return ln, release, nil
}

// lockFile takes an exclusive flock on path and writes our pid into it, or
// fails naming the pid that holds it ("bangerd pid N already <what>").
// The lock lasts as long as the returned file is open.
func lockFile(path, what string) (*os.File, error) {
	// O_NOFOLLOW: a symlink planted at the lock's path is refused rather
	// than followed (a root daemon would otherwise truncate its target).
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid := readPID(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := "another bangerd"
			if pid > 0 {
				who = fmt.Sprintf("bangerd pid %d", pid)
			}
			return nil, fmt.Errorf("%s already %s; stop it first", who, what)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

func readPID(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}

func answering(ctx context.Context, sockPath string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := (&rpc.Client{SocketPath: sockPath}).Call(ctx, "ping", nil, nil)
	return err == nil
}
