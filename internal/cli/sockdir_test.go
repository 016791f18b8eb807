package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckSocketDir(t *testing.T) {
	base := t.TempDir()
	own := filepath.Join(base, "banger")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(own, "bangerd.sock")
	if err := checkSocketDir(sock); err != nil {
		t.Fatalf("a private directory refused: %v", err)
	}
	if err := checkSocketDir(filepath.Join(base, "missing", "bangerd.sock")); err != nil {
		t.Errorf("a directory yet to be made refused: %v", err)
	}
	// Writable by others: refused, even with the sticky bit (it is the
	// socket's own directory).
	for _, mode := range []os.FileMode{0o777, 0o770, 0o777 | os.ModeSticky} {
		if err := os.Chmod(own, mode); err != nil {
			t.Fatal(err)
		}
		err := checkSocketDir(sock)
		if err == nil || !strings.Contains(err.Error(), own+" is writable by others") {
			t.Errorf("mode %o: %v", mode, err)
		}
	}
	if err := os.Chmod(own, 0o700); err != nil {
		t.Fatal(err)
	}
	// A writable ancestor without the sticky bit: refused; with it (/tmp): fine.
	if err := os.Chmod(base, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := checkSocketDir(sock); err == nil || !strings.Contains(err.Error(), base+" is writable by others") {
		t.Errorf("writable ancestor: %v", err)
	}
	if err := os.Chmod(base, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := checkSocketDir(sock); err != nil {
		t.Errorf("a sticky ancestor refused: %v", err)
	}
	if err := os.Chmod(base, 0o700); err != nil {
		t.Fatal(err)
	}
	// A symbolic link to a stranger's directory.
	if os.Getuid() == 0 {
		stranger := filepath.Join(base, "stranger")
		if err := os.Mkdir(stranger, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(stranger, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		err := checkSocketDir(filepath.Join(stranger, "bangerd.sock"))
		if err == nil || !strings.Contains(err.Error(), stranger+" belongs to uid 65534, neither root nor you") {
			t.Errorf("a stranger's directory: %v", err)
		}
		link := filepath.Join(base, "link")
		if err := os.Symlink(stranger, link); err != nil {
			t.Fatal(err)
		}
		err = checkSocketDir(filepath.Join(link, "bangerd.sock"))
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("a link to a stranger's directory: %v", err)
		}
	}
}
