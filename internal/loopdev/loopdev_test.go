package loopdev

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func needLoops(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices)")
	}
	if _, err := os.Stat(controlPath); err != nil {
		t.Skipf("no loop devices here: %v", err)
	}
}

// backing makes a 1 MiB file of a known pattern.
func backing(t *testing.T) (string, []byte) {
	t.Helper()
	data := bytes.Repeat([]byte("banger-loop\n"), (1<<20)/12+1)[:1<<20]
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

// waitCleared waits (bounded) for the kernel to clear an autoclear device
// nothing holds any more.
func waitCleared(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, attached := BackingFile(path); !attached {
			return
		}
		if time.Now().After(deadline) {
			// Not left behind, whatever the code under test did.
			if f, err := os.Open(path); err == nil {
				_ = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
				f.Close()
			}
			t.Fatalf("%s still attached 5 s after the last close: autoclear did not take", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadOnly: the device reads the file, refuses writes, names its file
// in sysfs, and clears itself once closed.
func TestReadOnly(t *testing.T) {
	needLoops(t)
	p, data := backing(t)
	// Open for writing: the device is read-only because it was asked to
	// be, not because the descriptor is.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := Attach(f, true)
	if err != nil {
		t.Fatal(err)
	}
	cleared := false
	defer func() {
		if !cleared {
			dev.Close()
		}
	}()
	if got, ok := BackingFile(dev.Path); !ok || got != p {
		t.Errorf("%s backs onto %q (%v), want %s", dev.Path, got, ok, p)
	}
	got := make([]byte, len(data))
	if _, err := dev.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Errorf("reading %s: %v; the data differs from the file's: %v", dev.Path, err, !bytes.Equal(got, data))
	}
	// Even opened for writing, a read-only device refuses.
	w, err := os.OpenFile(dev.Path, os.O_WRONLY, 0)
	if err == nil {
		_, err = w.WriteAt([]byte("x"), 0)
		if err == nil {
			err = w.Sync()
		}
		w.Close()
	}
	if err == nil || !(errors.Is(err, unix.EROFS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)) {
		t.Errorf("writing the read-only %s: %v, want EROFS/EPERM", dev.Path, err)
	}
	path := dev.Path
	dev.Close()
	cleared = true
	waitCleared(t, path)
}

// TestWritable: writes through the device land in the file.
func TestWritable(t *testing.T) {
	needLoops(t)
	p, _ := backing(t)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := Attach(f, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt([]byte("WRITTEN"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	path := dev.Path
	dev.Close()
	waitCleared(t, path)
	got := make([]byte, 7)
	if _, err := f.ReadAt(got, 4096); err != nil || string(got) != "WRITTEN" {
		t.Errorf("the file holds %q at 4096 (%v), want what went through %s", got, err, path)
	}
}

// TestRefuses: a writable device from a descriptor not open for writing
// (the kernel would make it read-only behind the caller's back), and a
// backing that is not a regular file.
func TestRefuses(t *testing.T) {
	needLoops(t)
	p, _ := backing(t)
	ro, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if dev, err := Attach(ro, false); err == nil || !strings.Contains(err.Error(), "open read-write") {
		if dev != nil {
			dev.Close()
		}
		t.Errorf("a writable device over a read-only descriptor: %v", err)
	}
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if dev, err := Attach(dir, true); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		if dev != nil {
			dev.Close()
		}
		t.Errorf("a directory: %v", err)
	}
}
