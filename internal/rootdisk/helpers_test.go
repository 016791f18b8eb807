package rootdisk

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/system"
)

const mib = 1 << 20

var _ Runner = (*system.Exec)(nil)

func host() *system.Exec { return &system.Exec{} }

func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH (qemu-utils, xfsprogs, util-linux): %v", tool, err)
		}
	}
}

func needRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to " + why)
	}
}

// region is a range of a test image holding random data.
type region struct {
	off int64
	n   int
}

// makeBase writes a sparse file of size bytes with random data in
// regions, and returns the data written per region.
func makeBase(t testing.TB, path string, size int64, regions ...region) [][]byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	for _, r := range regions {
		b := make([]byte, r.n)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, r.off); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sha(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func fsUsed(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func mustNotExist(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists after a failure (%v); nothing may be left behind", p, err)
		}
	}
}

// qemuWrite writes pattern to n bytes at off of a qcow2 image, through
// QEMU's block layer (the way a guest would).
func qemuWrite(t testing.TB, path string, pattern byte, off, n int64) {
	t.Helper()
	cmd := "write -P 0x" + hex.EncodeToString([]byte{pattern}) + " " + itoa(off) + " " + itoa(n)
	out, err := host().Run(context.Background(), "qemu-io", "-f", "qcow2", "-c", cmd, path)
	if err != nil || !strings.Contains(string(out), "wrote") {
		t.Fatalf("qemu-io %q %s: %v\n%s", cmd, path, err, out)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// guestView returns the whole disk as the guest sees it, read back with
// qemu-img convert (independently of the code under test).
func guestView(t testing.TB, d Disk) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "view.raw")
	if _, err := host().Run(context.Background(), "qemu-img", "convert", "-U", "-f", d.Format, "-O", "raw", d.Path, out); err != nil {
		t.Fatalf("qemu-img convert %s: %v", d.Path, err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fill(b byte, n int64) []byte { return bytes.Repeat([]byte{b}, int(n)) }

// mountLoop makes a filesystem of fstype (mkfs.xfs -m reflink=1, or
// mkfs.ext4) on a sparse file of size bytes, attaches it to a loop device
// and mounts it under a temp dir. Teardown (unmount, then detach that
// exact loop device) is registered first, so it runs even if the test
// fails half-way.
func mountLoop(t testing.TB, fstype string, size int64) (mnt, dev string) {
	t.Helper()
	needRoot(t, "attach a loop device and mount "+fstype)
	mkfs := map[string][]string{
		"xfs":  {"mkfs.xfs", "-q", "-m", "reflink=1"},
		"ext4": {"mkfs.ext4", "-q", "-F"},
	}[fstype]
	needTools(t, mkfs[0], "losetup")
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), fstype+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if _, err := host().Run(ctx, append(mkfs, img)...); err != nil {
		t.Fatalf("%s: %v", mkfs[0], err)
	}
	out, err := host().Run(ctx, "losetup", "--find", "--show", img)
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev = strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup printed %q, want a /dev/loopN path", dev)
	}
	t.Cleanup(func() {
		if _, err := host().Run(context.Background(), "losetup", "-d", dev); err != nil {
			t.Errorf("detach %s: %v", dev, err)
		}
	})
	mnt = filepath.Join(t.TempDir(), "rootdisk-"+fstype)
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, fstype, 0, ""); err != nil {
		t.Skipf("cannot mount %s from %s (kernel without %s?): %v", fstype, dev, fstype, err)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	return mnt, dev
}

// mountTmpfs mounts a tmpfs of size bytes under a temp dir.
func mountTmpfs(t testing.TB, size int64) string {
	t.Helper()
	needRoot(t, "mount a tmpfs")
	mnt := filepath.Join(t.TempDir(), "rootdisk-tmpfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size="+itoa(size)); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	return mnt
}

func unmount(t testing.TB, mnt string) {
	if err := unix.Unmount(mnt, 0); err != nil {
		// A test that failed may still hold a file open; detach lazily
		// rather than leave the mount behind.
		t.Errorf("unmount %s: %v", mnt, err)
		unix.Unmount(mnt, unix.MNT_DETACH)
	}
}

// fillUp writes a file into dir until at most leave bytes are free.
func fillUp(t testing.TB, dir string, leave int64) {
	t.Helper()
	free, err := freeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	if free <= leave {
		return
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, free-leave)); err != nil {
		t.Fatal(err)
	}
}

// extDir returns a temp dir on ext4 (or skips).
func extDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	m, err := mountOf(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.fstype != "ext4" {
		t.Skipf("temp dir %s is on %s; this test needs ext4", dir, m.fstype)
	}
	return dir
}
