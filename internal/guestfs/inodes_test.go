package guestfs

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/system"
)

// imageFromTree builds an image the way a rootless OCI pull does: mkfs.ext4
// -d from a tree whose every file is the builder's, with a placeholder
// regular file where a device goes.
func imageFromTree(t *testing.T) *Image {
	t.Helper()
	newImage(t) // skips without e2fsprogs
	tree := filepath.Join(t.TempDir(), "tree")
	for _, d := range []string{"usr/bin", "dev", "odd dir"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"usr/bin/su", "usr/bin/ping", "dev/null", "dev/loop0", `odd dir/a "quoted" name`} {
		if err := os.WriteFile(filepath.Join(tree, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(tree, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(tree, "dev/initctl"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "root.ext4")
	if _, err := (&system.Exec{}).Run(context.Background(), "mkfs.ext4", "-q", "-F", "-d", tree, img, "16M"); err != nil {
		t.Fatalf("mkfs.ext4: %v", err)
	}
	return Open(&system.Exec{}, img)
}

// TestSetInodes: owners (high uids too), setuid, a symlink's own owner,
// character and block devices made over their placeholders, a fifo, a file
// capability, names with spaces and quotes, the root directory: all read
// back as asked, and e2fsck is content.
func TestSetInodes(t *testing.T) {
	im := imageFromTree(t)
	ctx := context.Background()
	capability := []byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	want := []Inode{
		{Path: "/", Mode: fs.ModeDir | 0o755, UID: 0, GID: 0},
		{Path: "/usr", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/bin", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/bin/su", Mode: fs.ModeSetuid | 0o755},
		{Path: "/usr/bin/ping", Mode: 0o755, Xattrs: map[string][]byte{"security.capability": capability}},
		{Path: "/bin", Mode: fs.ModeSymlink | 0o777, UID: 70000, GID: 70001},
		{Path: "/dev", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/dev/null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, Major: 1, Minor: 3, Mtime: time.Unix(1700000000, 0), Atime: time.Unix(1700000001, 0)},
		{Path: "/dev/loop0", Mode: fs.ModeDevice | 0o660, GID: 6, Major: 7, Minor: 0},
		{Path: "/dev/initctl", Mode: fs.ModeNamedPipe | 0o600},
		{Path: "/odd dir", Mode: fs.ModeDir | 0o750, UID: 1000, GID: 1000},
		{Path: `/odd dir/a "quoted" name`, Mode: fs.ModeSetgid | 0o640, UID: 1000, GID: 42},
	}
	if err := im.SetInodes(ctx, want); err != nil {
		t.Fatal(err)
	}
	for _, in := range want {
		fi, err := im.Lstat(ctx, in.Path)
		if err != nil {
			t.Errorf("%s: %v", in.Path, err)
			continue
		}
		if fi.Mode != in.Mode || fi.UID != in.UID || fi.GID != in.GID {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", in.Path, fi.Mode, fi.UID, fi.GID, in.Mode, in.UID, in.GID)
		}
	}
	if out := debugfsOut(t, im, `stat /dev/null`); !strings.Contains(out, "atime: 0x6553f101:") || !strings.Contains(out, "mtime: 0x6553f100:") {
		t.Errorf("/dev/null's times:\n%s", out)
	}
	if out := debugfsOut(t, im, `stat /dev/loop0`); !strings.Contains(out, "Device major/minor number: 07:00") {
		t.Errorf("/dev/loop0 is not block 7:0:\n%s", out)
	}
	if out := debugfsOut(t, im, `ea_get -x /usr/bin/ping security.capability`); !strings.Contains(out, "00 00 00 02 00 20") {
		t.Errorf("ping's capability:\n%s", out)
	}
	fsck(t, im)
}

// TestSetInodesNoticesFailure: debugfs exits 0 when a request fails; the
// read-back names what did not take.
func TestSetInodesNoticesFailure(t *testing.T) {
	im := imageFromTree(t)
	err := im.SetInodes(context.Background(), []Inode{
		{Path: "/usr/bin/su", Mode: 0o755},
		{Path: "/usr/bin/gone", Mode: 0o755},
	})
	if err == nil || !strings.Contains(err.Error(), "/usr/bin/gone") {
		t.Errorf("setting a path the image does not have: %v", err)
	}
	if err := im.SetInodes(context.Background(), []Inode{{Path: "/usr/bin/su\nrm /usr", Mode: 0o755}}); err == nil {
		t.Error("a path with a newline reached debugfs")
	}
	if err := im.SetInodes(context.Background(), []Inode{{Path: "/usr/bin/su", Mode: 0o755, Xattrs: map[string][]byte{"system.data": nil}}}); err == nil {
		t.Error("system.data (inline file data) was set as an attribute")
	}
	// An attribute name that ea_set would read as its -f option.
	if err := im.SetInodes(context.Background(), []Inode{{Path: "/usr/bin/su", Mode: 0o755, Xattrs: map[string][]byte{"-f/etc/shadow": nil}}}); err == nil || !strings.Contains(err.Error(), "not a user, security or trusted one") {
		t.Errorf("an attribute named like an option: %v", err)
	}
}

// TestParseListing: a name printed twice (what a name with a newline in
// it can fake) maps to no inode.
func TestParseListing(t *testing.T) {
	got := parseListing([]string{
		"/2/040755/0/0/.//",
		"/12/100644/1000/1000/a file/3/",
		"/13/100644/0/0/victim/3/",
		"/14/100644/0/0/evil",
		"/5/104755/0/0/victim/3/",
		"garbage",
	})
	if l, ok := got["a file"]; !ok || l.ino != 12 || l.mode != 0o100644 || l.uid != 1000 || l.gid != 1000 {
		t.Errorf("a file: %+v", l)
	}
	if l, ok := got["victim"]; ok {
		t.Errorf("victim, listed twice, maps to %+v", l)
	}
	if _, ok := got["evil"]; ok {
		t.Error("a cut line was taken for an entry")
	}
}

func debugfsOut(t *testing.T, im *Image, req string) string {
	t.Helper()
	out, err := (&system.Exec{}).Run(context.Background(), "debugfs", "-R", req, im.Path())
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
