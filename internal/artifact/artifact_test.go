package artifact

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestPublishReplacesAtomicallyAndDiscardCleans(t *testing.T) {
	root := t.TempDir()
	dest := filepath.Join(root, "kernels", "k")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dest, "old"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := NewStaging(dest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "new"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(); err != nil {
		t.Fatal(err)
	}
	s.Discard() // no-op after publish
	if _, err := os.Stat(filepath.Join(dest, "new")); err != nil {
		t.Fatalf("published file missing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dest, "old")); !os.IsNotExist(err) {
		t.Fatalf("previous copy still there: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 1 {
		t.Fatalf("leftovers beside dest: %v", entries)
	}

	s2, err := NewStaging(dest)
	if err != nil {
		t.Fatal(err)
	}
	s2.Discard()
	if _, err := os.Stat(s2.Dir); !os.IsNotExist(err) {
		t.Fatalf("discarded staging still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dest, "new")); err != nil {
		t.Fatalf("discard touched the published copy: %v", err)
	}
}

func TestHashFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, size, err := HashFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if sum != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" || size != 3 {
		t.Fatalf("HashFile = %s %d", sum, size)
	}
	if _, _, err := HashFile(p + ".missing"); err == nil {
		t.Fatal("missing file hashed")
	}
}

func TestCopyTree(t *testing.T) {
	for _, hardlink := range []bool{false, true} {
		src := t.TempDir()
		if err := os.MkdirAll(filepath.Join(src, "a", "b"), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "a", "b", "f"), []byte("data"), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("b/f", filepath.Join(src, "a", "l")); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "copy")
		if err := CopyTree(src, dst, hardlink); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dst, "a", "l"))
		if err != nil || string(data) != "data" {
			t.Fatalf("hardlink=%v: through the copied symlink: %q, %v", hardlink, data, err)
		}
		st, _ := os.Stat(filepath.Join(dst, "a", "b", "f"))
		if st.Mode().Perm() != 0o640 {
			t.Errorf("hardlink=%v: mode %v", hardlink, st.Mode())
		}
		dst2 := filepath.Join(t.TempDir(), "copy")
		if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o600); err == nil {
			if err := CopyTree(src, dst2, hardlink); err == nil {
				t.Errorf("hardlink=%v: a fifo was copied silently", hardlink)
			}
		}
	}
}
