package daemon

import (
	"context"
	"fmt"
	"io/fs"
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

// TestListenRefusesNonSockets: a socket path that names a regular file or
// a symlink is refused and left alone; a symlinked lock file is not
// followed.
func TestListenRefusesNonSockets(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("not a socket"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link} {
		if _, _, err := Listen(context.Background(), p); err == nil || !strings.Contains(err.Error(), "is not a socket") {
			t.Errorf("Listen(%s) = %v, want a refusal", p, err)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "not a socket" {
		t.Errorf("the regular file was changed: %q", b)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != fs.ModeSymlink {
		t.Errorf("the symlink was removed: %v", err)
	}
	// A lock path planted as a symlink to the victim.
	sock := filepath.Join(dir, "d.sock")
	if err := os.Symlink(victim, sock+".lock"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Listen(context.Background(), sock); err == nil {
		t.Error("Listen followed a symlinked lock file")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me\n" {
		t.Errorf("the lock's symlink target was written: %q", b)
	}
}
