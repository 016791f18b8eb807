package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/system"
)

const mib = 1 << 20

type region struct {
	off int64
	n   int
	// zero: write explicit zeros (allocated in the source, not worth
	// copying).
	zero bool
}

// makeSparse writes a file of size bytes with data only in regions and
// returns its full expected content.
func makeSparse(t *testing.T, path string, size int64, regions []region) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, size)
	for _, r := range regions {
		b := make([]byte, r.n)
		if !r.zero {
			if _, err := rand.Read(b); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.WriteAt(b, r.off); err != nil {
			t.Fatal(err)
		}
		copy(want[r.off:], b)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// fsMagic returns the statfs type of the file system holding dir.
func fsMagic(t *testing.T, dir string) int64 {
	t.Helper()
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	return int64(sfs.Type)
}

func noReflink(magic int64) bool {
	return magic == unix.EXT4_SUPER_MAGIC || magic == unix.TMPFS_MAGIC
}

func TestCloneRootSparseCopy(t *testing.T) {
	dir := t.TempDir()
	if !noReflink(fsMagic(t, dir)) {
		t.Skipf("temp dir %s is on a file system that may reflink; the sparse path needs ext4 or tmpfs", dir)
	}
	src := filepath.Join(dir, "base.img")
	size := int64(64*mib + 123) // not a multiple of the chunk or block size
	regions := []region{
		{off: 0, n: 4096},
		{off: 10 * mib, n: mib},
		{off: 20 * mib, n: 2 * mib, zero: true},
		{off: 40*mib - 4096, n: 8192}, // straddles a chunk boundary
		{off: size - 100, n: 100},     // data in the last, partial block
	}
	want := makeSparse(t, src, size, regions)

	dst := filepath.Join(dir, "vm-root.img")
	method, err := CloneRoot(context.Background(), src, dst)
	if err != nil {
		t.Fatalf("CloneRoot: %v", err)
	}
	if method != MethodSparseCopy {
		t.Fatalf("method = %q on a file system without reflink, want %q", method, MethodSparseCopy)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("clone content differs from the base image")
	}
	st, _ := os.Stat(dst)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("clone mode %v, want 0600", st.Mode().Perm())
	}

	// Holes stay holes: only the non-zero data is allocated (plus block
	// rounding), and the zero-filled region is not copied.
	data := int64(4096 + mib + 8192 + 100)
	if a := allocated(t, dst); a > data+64*1024 {
		t.Errorf("clone allocates %d bytes for %d bytes of data: holes were filled", a, data)
	}
	if a, s := allocated(t, dst), allocated(t, src); a >= s {
		t.Errorf("clone allocates %d bytes, base %d: zero regions were copied", a, s)
	}
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	next, err := unix.Seek(int(f.Fd()), 12*mib, unix.SEEK_DATA)
	if err != nil || next < 40*mib-2*4096 {
		t.Errorf("SEEK_DATA from 12 MiB = %d, %v; want the region near 40 MiB (hole lost)", next, err)
	}
}

func TestCloneRootFailures(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "base.img")
	makeSparse(t, src, 8*mib, []region{{off: 0, n: 4 * mib}})

	t.Run("existing destination is left alone", func(t *testing.T) {
		dst := filepath.Join(dir, "taken.img")
		if err := os.WriteFile(dst, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := CloneRoot(context.Background(), src, dst); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("CloneRoot over an existing file = %v, want fs.ErrExist", err)
		}
		if b, _ := os.ReadFile(dst); string(b) != "precious" {
			t.Errorf("existing destination was changed to %q", b)
		}
	})
	t.Run("missing source", func(t *testing.T) {
		dst := filepath.Join(dir, "nosrc.img")
		if _, err := CloneRoot(context.Background(), filepath.Join(dir, "nope"), dst); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want fs.ErrNotExist", err)
		}
		if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("destination created for a missing source: %v", err)
		}
	})
	t.Run("source is a directory", func(t *testing.T) {
		dst := filepath.Join(dir, "dirsrc.img")
		if _, err := CloneRoot(context.Background(), dir, dst); err == nil {
			t.Fatal("cloned a directory")
		}
		if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("destination left behind: %v", err)
		}
	})
	t.Run("cancelled context removes the destination", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		dst := filepath.Join(dir, "cancelled.img")
		if _, err := CloneRoot(ctx, src, dst); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("destination left behind after cancellation: %v", err)
		}
	})
}

// mountXFS makes a reflink-capable xfs file system on a loop device,
// mounted under a temp dir, and registers its teardown (unmount, then
// detach the exact loop device) so nothing outlives the test.
func mountXFS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device and mount xfs for the reflink path")
	}
	for _, tool := range []string{"mkfs.xfs", "losetup"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s for the reflink path (apt-get install xfsprogs): %v", tool, err)
		}
	}
	ctx := context.Background()
	r := &system.Exec{}
	img := filepath.Join(t.TempDir(), "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320*mib); err != nil { // xfs minimum is 300 MB
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", img); err != nil {
		t.Fatalf("mkfs.xfs: %v", err)
	}
	out, err := r.Run(ctx, "losetup", "--find", "--show", img)
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup printed %q, want a /dev/loopN path", dev)
	}
	t.Cleanup(func() {
		if _, err := r.Run(context.Background(), "losetup", "-d", dev); err != nil {
			t.Errorf("detach %s: %v", dev, err)
		}
	})
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "xfs", 0, ""); err != nil {
		t.Skipf("cannot mount xfs from %s (kernel without xfs?): %v", dev, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt
}

func TestCloneRootReflink(t *testing.T) {
	mnt := mountXFS(t)
	src := filepath.Join(mnt, "base.img")
	want := makeSparse(t, src, 32*mib, []region{{off: 0, n: 2 * mib}, {off: 16 * mib, n: mib}})

	dst := filepath.Join(mnt, "vm-root.img")
	method, err := CloneRoot(context.Background(), src, dst)
	if err != nil {
		t.Fatalf("CloneRoot: %v", err)
	}
	if method != MethodReflink {
		t.Fatalf("method = %q on xfs with reflink, want %q", method, MethodReflink)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reflinked clone differs from the base (%v)", err)
	}
	// Copy-on-write: writing the clone leaves the base alone.
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("guest wrote here"), 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if base, _ := os.ReadFile(src); !bytes.Equal(base, want) {
		t.Error("writing the clone changed the base image")
	}

	// Across file systems a reflink is impossible (EXDEV): sparse copy.
	other := filepath.Join(t.TempDir(), "cross.img")
	method, err = CloneRoot(context.Background(), src, other)
	if err != nil {
		t.Fatalf("CloneRoot across file systems: %v", err)
	}
	if method != MethodSparseCopy {
		t.Errorf("method across file systems = %q, want %q", method, MethodSparseCopy)
	}
	if got, _ := os.ReadFile(other); !bytes.Equal(got, want) {
		t.Error("cross-file-system clone differs from the base")
	}
}
