package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenRefusesSecondDaemonNamingPID(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "bangerd.sock")
	ln, release, err := Listen(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	_ = ln
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(sock))
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v, want 0700", dst.Mode().Perm())
	}

	_, _, err = Listen(context.Background(), sock)
	if err == nil {
		t.Fatal("second Listen on the same socket succeeded")
	}
	if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name the holder (%s)", err, want)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "bangerd.sock")
	// A socket file nobody answers on, as a crashed daemon leaves behind.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	ln, release, err := Listen(context.Background(), sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer release()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("new socket does not accept: %v", err)
	}
	c.Close()
}
