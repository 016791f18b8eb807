package guestfs

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"banger/internal/api"
	"banger/internal/system"
)

// newImage makes a fresh 16 MiB ext4 image in the test's temp dir.
func newImage(t *testing.T) *Image {
	t.Helper()
	for _, tool := range []string{"debugfs", "mkfs.ext4", "e2fsck"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs): %v", tool, err)
		}
	}
	img := filepath.Join(t.TempDir(), "root.ext4")
	if _, err := (&system.Exec{}).Run(context.Background(), "mkfs.ext4", "-q", "-F", img, "16M"); err != nil {
		t.Fatalf("mkfs.ext4: %v", err)
	}
	return Open(&system.Exec{}, img)
}

// fsck fails the test unless e2fsck finds the image consistent.
func fsck(t *testing.T, im *Image) {
	t.Helper()
	if out, err := (&system.Exec{}).Run(context.Background(), "e2fsck", "-f", "-n", im.Path()); err != nil {
		t.Fatalf("e2fsck -fn after edit: %v\n%s", err, out)
	}
}

// rdump copies guest directory dir out of the image with debugfs's own
// rdump (independent of this package's read path) and returns the host
// path it landed at.
func rdump(t *testing.T, im *Image, dir string) string {
	t.Helper()
	dest := t.TempDir()
	req := `rdump "` + strings.ReplaceAll(dir, `"`, `""`) + `" ` + dest
	if _, err := (&system.Exec{}).Run(context.Background(), "debugfs", "-R", req, im.Path()); err != nil {
		t.Fatalf("debugfs rdump %s: %v", dir, err)
	}
	return filepath.Join(dest, filepath.Base(dir))
}

type wantFile struct {
	content string
	perm    fs.FileMode
	uid     uint32
	gid     uint32
}

func checkHostFile(t *testing.T, p string, w wantFile) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read back %s: %v", p, err)
		return
	}
	if string(data) != w.content {
		t.Errorf("%s content %q, want %q", p, data, w.content)
	}
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != w.perm {
		t.Errorf("%s perm %v, want %v", p, st.Mode().Perm(), w.perm)
	}
	if os.Geteuid() == 0 { // rdump can only chown as root
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != w.uid || sys.Gid != w.gid {
			t.Errorf("%s owner %d:%d, want %d:%d", p, sys.Uid, sys.Gid, w.uid, w.gid)
		}
	}
}

func TestApplyWritesNestedFilesWithOddNames(t *testing.T) {
	im := newImage(t)
	ctx := context.Background()
	odd := []string{
		"with space",
		`quote"in"name`,
		`""`,
		"tab\there",
		`back\slash`,
		"<12>",
		"-dash",
		"#hash",
		"!bang",
		"semi;colon $dollar 'single' `tick`",
		"ünïcödé",
	}
	var e Edit
	must(t, e.MkdirAll("/root/.ssh", 0o700, 0, 0))
	must(t, e.WriteFile("/root/.ssh/authorized_keys", []byte("ssh-ed25519 AAAA test\n"), 0o600, 0, 0))
	must(t, e.WriteFile("/etc/hostname", []byte("devbox\n"), 0o644, 0, 0))
	must(t, e.WriteFile("/home/dev/a/b c/d/deep.txt", []byte("deep"), 0o640, 1000, 1001))
	for i, n := range odd {
		must(t, e.WriteFile("/odd/"+n, []byte("content "+strings.Repeat("x", i)), 0o644, 100000+i, 7))
	}
	must(t, e.WriteFile("/empty", nil, 0o600, 0, 0))
	must(t, e.WriteFile("/usr/bin/suid", []byte("#!/bin/sh\n"), 0o755|fs.ModeSetuid, 0, 0))
	must(t, e.Symlink("../run/systemd/resolve/stub-resolv.conf", "/etc/resolv.conf"))
	if err := im.Apply(ctx, &e); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	fsck(t, im)

	root := rdump(t, im, "/root")
	checkHostFile(t, filepath.Join(root, ".ssh/authorized_keys"), wantFile{"ssh-ed25519 AAAA test\n", 0o600, 0, 0})
	if st, err := os.Stat(filepath.Join(root, ".ssh")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("/root/.ssh: %v perm %v, want 0700", err, st.Mode())
	}
	checkHostFile(t, filepath.Join(rdump(t, im, "/home"), "dev/a/b c/d/deep.txt"), wantFile{"deep", 0o640, 1000, 1001})
	oddDir := rdump(t, im, "/odd")
	for i, n := range odd {
		checkHostFile(t, filepath.Join(oddDir, n), wantFile{"content " + strings.Repeat("x", i), 0o644, uint32(100000 + i), 7})
	}
	if ents, _ := os.ReadDir(oddDir); len(ents) != len(odd) {
		t.Errorf("/odd has %d entries, want %d", len(ents), len(odd))
	}
	etc := rdump(t, im, "/etc")
	checkHostFile(t, filepath.Join(etc, "hostname"), wantFile{"devbox\n", 0o644, 0, 0})
	if tgt, err := os.Readlink(filepath.Join(etc, "resolv.conf")); err != nil || tgt != "../run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("resolv.conf link = %q, %v", tgt, err)
	}

	// Implicit parents are 0755 root:root.
	fi, err := im.Lstat(ctx, "/home/dev/a")
	if err != nil || !fi.IsDir() || fi.Mode.Perm() != 0o755 || fi.UID != 0 {
		t.Errorf("implicit parent /home/dev/a: %+v, %v", fi, err)
	}
	// setuid survives (rdump's chown would clear it on the host copy).
	fi, err = im.Lstat(ctx, "/usr/bin/suid")
	if err != nil || fi.Mode != 0o755|fs.ModeSetuid {
		t.Errorf("/usr/bin/suid mode %v, %v; want setuid 0755", fi.Mode, err)
	}
	got, err := im.ReadFile(ctx, "/odd/"+odd[1])
	if err != nil || string(got) != "content x" {
		t.Errorf("ReadFile(%q) = %q, %v", odd[1], got, err)
	}
	if got, err := im.ReadFile(ctx, "/empty"); err != nil || len(got) != 0 {
		t.Errorf("ReadFile(/empty) = %q, %v", got, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestOverwriteReplaceAndRemove(t *testing.T) {
	im := newImage(t)
	ctx := context.Background()
	// A merged-/usr style tree: /lib is a symlink to usr/lib.
	var setup Edit
	must(t, setup.MkdirAll("/usr/lib/systemd", 0o755, 0, 0))
	must(t, setup.Symlink("usr/lib", "/lib"))
	must(t, setup.WriteFile("/etc/hostname", []byte("a-much-longer-old-hostname\n"), 0o644, 0, 0))
	must(t, setup.Symlink("../run/resolv.conf", "/etc/resolv.conf"))
	must(t, setup.WriteFile("/usr/lib/old", []byte("old"), 0o644, 0, 0))
	must(t, setup.MkdirAll("/tmpdir/full", 0o755, 0, 0))
	must(t, setup.WriteFile("/tmpdir/full/f", []byte("f"), 0o644, 0, 0))
	must(t, setup.MkdirAll("/emptydir", 0o755, 0, 0))
	must(t, im.Apply(ctx, &setup))

	var e Edit
	must(t, e.WriteFile("/etc/hostname", []byte("new\n"), 0o600, 5, 6))                      // overwrite, shorter
	must(t, e.WriteFile("/etc/resolv.conf", []byte("nameserver 172.30.0.1\n"), 0o644, 0, 0)) // replace a symlink
	must(t, e.WriteFile("/lib/systemd/unit.service", []byte("[Unit]\n"), 0o644, 0, 0))       // through a symlinked parent
	must(t, e.Remove("/lib/old"))                                                            // remove through a symlinked parent
	must(t, e.Remove("/emptydir"))
	must(t, e.Remove("/never/existed"))
	must(t, e.MkdirAll("/usr/lib/systemd", 0o750, 3, 4)) // existing dir: attributes change
	must(t, e.WriteFile("/twice", []byte("first"), 0o644, 0, 0))
	must(t, e.WriteFile("/twice", []byte("second"), 0o644, 0, 0))
	if err := im.Apply(ctx, &e); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	fsck(t, im)

	etc := rdump(t, im, "/etc")
	checkHostFile(t, filepath.Join(etc, "hostname"), wantFile{"new\n", 0o600, 5, 6})
	checkHostFile(t, filepath.Join(etc, "resolv.conf"), wantFile{"nameserver 172.30.0.1\n", 0o644, 0, 0})
	usrlib := rdump(t, im, "/usr/lib")
	checkHostFile(t, filepath.Join(usrlib, "systemd/unit.service"), wantFile{"[Unit]\n", 0o644, 0, 0})
	if _, err := os.Lstat(filepath.Join(usrlib, "old")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/usr/lib/old still there: %v", err)
	}
	if fi, err := im.Lstat(ctx, "/lib"); err != nil || fi.Mode&fs.ModeSymlink == 0 || fi.LinkTarget != "usr/lib" {
		t.Errorf("/lib changed: %+v, %v", fi, err)
	}
	if fi, err := im.Lstat(ctx, "/usr/lib/systemd"); err != nil || fi.Mode != fs.ModeDir|0o750 || fi.UID != 3 || fi.GID != 4 {
		t.Errorf("/usr/lib/systemd = %+v, %v; want 0750 3:4", fi, err)
	}
	if _, err := im.Lstat(ctx, "/emptydir"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/emptydir not removed: %v", err)
	}
	if got, err := im.ReadFile(ctx, "/twice"); err != nil || string(got) != "second" {
		t.Errorf("/twice = %q, %v", got, err)
	}

	// Removing a directory that is not empty is reported, not ignored.
	err := im.Remove(ctx, "/tmpdir/full")
	if err == nil || !strings.Contains(err.Error(), "/tmpdir/full") {
		t.Errorf("Remove of a non-empty dir: %v, want an error naming it", err)
	}
	fsck(t, im)
}

func TestApplyConflicts(t *testing.T) {
	im := newImage(t)
	ctx := context.Background()
	must(t, im.WriteFile(ctx, "/etc/file", []byte("x"), 0o644, 0, 0))
	must(t, im.MkdirAll(ctx, "/etc/dir", 0o755, 0, 0))
	must(t, im.Symlink(ctx, "/nowhere", "/dangling"))
	tests := []struct {
		name string
		do   func(e *Edit) error
	}{
		{"write over a directory", func(e *Edit) error { return e.WriteFile("/etc/dir", []byte("x"), 0o644, 0, 0) }},
		{"file as a parent", func(e *Edit) error { return e.WriteFile("/etc/file/child", []byte("x"), 0o644, 0, 0) }},
		{"mkdir over a file", func(e *Edit) error { return e.MkdirAll("/etc/file", 0o755, 0, 0) }},
		{"dangling link as a parent", func(e *Edit) error { return e.MkdirAll("/dangling/x", 0o755, 0, 0) }},
		{"symlink over a directory", func(e *Edit) error { return e.Symlink("x", "/etc/dir") }},
		{"symlink made in the same edit as a parent", func(e *Edit) error {
			if err := e.Symlink("etc", "/newlink"); err != nil {
				return err
			}
			return e.WriteFile("/newlink/f", []byte("x"), 0o644, 0, 0)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e Edit
			must(t, tc.do(&e))
			err := im.Apply(ctx, &e)
			if err == nil {
				t.Fatal("Apply succeeded, want an error")
			}
			t.Log(err)
		})
	}
	fsck(t, im)
}

// TestVerifyCatchesSilentFailure writes more than the image can hold:
// debugfs complains only on stderr and exits 0, so only the verify pass
// can notice.
func TestVerifyCatchesSilentFailure(t *testing.T) {
	im := newImage(t)
	big := bytes.Repeat([]byte{0xa5}, 24<<20)
	err := im.WriteFile(context.Background(), "/big", big, 0o644, 0, 0)
	if err == nil {
		t.Fatal("writing 24 MiB into a 16 MiB image succeeded")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "/big") || !strings.Contains(err.Error(), "did not take effect") {
		t.Errorf("error does not say what failed: %v", err)
	}
}

func TestReadFileErrors(t *testing.T) {
	im := newImage(t)
	ctx := context.Background()
	must(t, im.MkdirAll(ctx, "/d", 0o755, 0, 0))
	must(t, im.Symlink(ctx, "d", "/l"))
	if _, err := im.ReadFile(ctx, "/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile(/missing) = %v, want fs.ErrNotExist", err)
	}
	if _, err := im.Lstat(ctx, "/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat(/missing) = %v, want fs.ErrNotExist", err)
	}
	for _, p := range []string{"/d", "/l"} {
		if _, err := im.ReadFile(ctx, p); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ReadFile(%s) = %v, want a not-a-regular-file error", p, err)
		}
	}
	if fi, err := im.Lstat(ctx, "/"); err != nil || !fi.IsDir() || fi.Inode != 2 {
		t.Errorf("Lstat(/) = %+v, %v", fi, err)
	}
}

func TestNotAnImage(t *testing.T) {
	for _, tool := range []string{"debugfs"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	junk := filepath.Join(t.TempDir(), "junk.img")
	must(t, os.WriteFile(junk, bytes.Repeat([]byte("junk"), 4096), 0o600))
	im := Open(&system.Exec{}, junk)
	err := im.WriteFile(context.Background(), "/x", []byte("x"), 0o644, 0, 0)
	if err == nil || !strings.Contains(err.Error(), "could not open") {
		t.Errorf("WriteFile on junk = %v, want a could-not-open error", err)
	}
	if _, err := Open(&system.Exec{}, filepath.Join(t.TempDir(), "nope")).ReadFile(context.Background(), "/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile on a missing image = %v, want fs.ErrNotExist", err)
	}
}

// refuseRunner fails the test if anything tries to run debugfs.
type refuseRunner struct{ t *testing.T }

func (r refuseRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	r.t.Errorf("unexpected command %v", argv)
	return nil, errors.New("refused")
}

func TestBadNamesRefused(t *testing.T) {
	long := "/" + strings.Repeat("a", 256)
	deep := strings.Repeat("/abcdefgh", 512)
	tests := []struct {
		name string
		do   func(e *Edit) error
	}{
		{"relative", func(e *Edit) error { return e.WriteFile("etc/x", nil, 0o644, 0, 0) }},
		{"empty", func(e *Edit) error { return e.WriteFile("", nil, 0o644, 0, 0) }},
		{"root", func(e *Edit) error { return e.Remove("/") }},
		{"dotdot", func(e *Edit) error { return e.WriteFile("/etc/../x", nil, 0o644, 0, 0) }},
		{"dot", func(e *Edit) error { return e.MkdirAll("/etc/./x", 0o755, 0, 0) }},
		{"trailing slash", func(e *Edit) error { return e.MkdirAll("/etc/", 0o755, 0, 0) }},
		{"double slash", func(e *Edit) error { return e.Remove("/etc//x") }},
		{"newline", func(e *Edit) error { return e.WriteFile("/etc/a\nwrite /x /y", nil, 0o644, 0, 0) }},
		{"carriage return", func(e *Edit) error { return e.WriteFile("/etc/a\rb", nil, 0o644, 0, 0) }},
		{"NUL", func(e *Edit) error { return e.Remove("/etc/a\x00b") }},
		{"component too long", func(e *Edit) error { return e.WriteFile(long, nil, 0o644, 0, 0) }},
		{"path too long", func(e *Edit) error { return e.WriteFile(deep, nil, 0o644, 0, 0) }},
		{"symlink target newline", func(e *Edit) error { return e.Symlink("a\nb", "/l") }},
		{"symlink empty target", func(e *Edit) error { return e.Symlink("", "/l") }},
		{"type bits in mode", func(e *Edit) error { return e.WriteFile("/x", nil, fs.ModeDir|0o755, 0, 0) }},
		{"negative uid", func(e *Edit) error { return e.WriteFile("/x", nil, 0o644, -1, 0) }},
		{"huge gid", func(e *Edit) error { return e.MkdirAll("/x", 0o755, 0, 1<<32) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e Edit
			must(t, e.WriteFile("/fine", []byte("ok"), 0o644, 0, 0))
			err := tc.do(&e)
			if !api.IsCode(err, api.CodeBadRequest) {
				t.Fatalf("got %v, want a bad_request error", err)
			}
			if e.Len() != 1 {
				t.Errorf("refused operation was added (Len=%d)", e.Len())
			}
			// The refusal sticks: Apply must not run a partial edit.
			im := Open(refuseRunner{t}, "/nonexistent.img")
			if aerr := im.Apply(context.Background(), &e); aerr != err {
				t.Errorf("Apply = %v, want the refusal %v", aerr, err)
			}
		})
	}
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/plain", `"/plain"`},
		{"/with space", `"/with space"`},
		{`/q"uote`, `"/q""uote"`},
		{`""`, `""""""`},
		{"/tab\t", "\"/tab\t\""},
		{`/back\slash`, `"/back\slash"`},
	}
	for _, tc := range tests {
		got, err := quote(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("quote(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"a\nb", "a\rb", "a\x00b"} {
		if _, err := quote(bad); err == nil {
			t.Errorf("quote(%q) succeeded", bad)
		}
	}
	if _, err := command("write", "/host", "/"+strings.Repeat(`"`, 4094)); err == nil {
		t.Error("command accepted a request longer than debugfs's line buffer")
	}
}

func TestSplitByEcho(t *testing.T) {
	cmds := []string{rootSentinel, `stat "/a"`, `stat "/b"`}
	out := "debugfs: stat \"/\"\nInode: 2   Type: directory    Mode:  0755   Flags: 0x0\n" +
		"debugfs: stat \"/a\"\n" +
		"debugfs: stat \"/b\"\nInode: 12   Type: regular    Mode:  04750   Flags: 0x80000\n" +
		"User:  1000   Group:    50   Project:     0   Size: 42\n"
	sec, err := splitByEcho([]byte(out), cmds)
	if err != nil {
		t.Fatal(err)
	}
	if parseStat(sec[1]) != nil {
		t.Error("missing /a parsed as present")
	}
	fi := parseStat(sec[2])
	if fi == nil || fi.Inode != 12 || fi.Mode != 0o750|fs.ModeSetuid || fi.UID != 1000 || fi.GID != 50 || fi.Size != 42 {
		t.Errorf("parse /b = %+v", fi)
	}
	if _, err := splitByEcho([]byte(out), append(cmds, `stat "/c"`)); err == nil {
		t.Error("missing echo for the last request not reported")
	}
}

// TestReadFileRefusesBigFiles: a file over MaxReadFile is refused from its
// size, before anything is dumped or read.
func TestReadFileRefusesBigFiles(t *testing.T) {
	im := newImage(t)
	ctx := context.Background()
	var e Edit
	must(t, e.WriteFile("/big", make([]byte, 2<<20), 0o644, 0, 0))
	must(t, e.WriteFile("/small", []byte("ok"), 0o644, 0, 0))
	must(t, im.Apply(ctx, &e))
	old := MaxReadFile
	MaxReadFile = 1 << 20
	t.Cleanup(func() { MaxReadFile = old })
	if _, err := im.ReadFile(ctx, "/big"); err == nil || !strings.Contains(err.Error(), "the file is 2097152 bytes; banger reads at most 1048576") {
		t.Fatalf("ReadFile of a 2 MiB file with a 1 MiB cap = %v", err)
	}
	if data, err := im.ReadFile(ctx, "/small"); err != nil || string(data) != "ok" {
		t.Fatalf("ReadFile(/small) = %q, %v", data, err)
	}
}

// Scratch files live beside the image, never under $TMPDIR.
func TestScratchBesideTheImage(t *testing.T) {
	im := newImage(t)
	t.Setenv("TMPDIR", filepath.Join(t.TempDir(), "does-not-exist"))
	must(t, im.WriteFile(context.Background(), "/etc/x", []byte("x\n"), 0o644, 0, 0))
	if got, err := im.ReadFile(context.Background(), "/etc/x"); err != nil || string(got) != "x\n" {
		t.Fatalf("ReadFile = %q, %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(im.Path()))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".guestfs-") {
			t.Errorf("scratch directory %s left beside the image", e.Name())
		}
	}
}
