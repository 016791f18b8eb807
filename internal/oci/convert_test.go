package oci

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/system"
)

// testCustomize edits a converted tree as an image build does: it
// replaces a file of another owner and group, adds a setuid program and
// a symlink, and links and renames files that were there.
func testCustomize(tree string) error {
	if err := os.Remove(filepath.Join(tree, "etc/shadow")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tree, "etc/shadow"), []byte("root::1:0:99999:7:::\n"), 0o640); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tree, "usr/bin/new"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(tree, "usr/bin/new"), 0o711|os.ModeSetuid); err != nil {
		return err
	}
	// What was there before keeps its owner and mode wherever it goes.
	if err := os.Link(filepath.Join(tree, "usr/bin/su"), filepath.Join(tree, "usr/bin/su2")); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tree, "etc/keep"), filepath.Join(tree, "etc/kept")); err != nil {
		return err
	}
	return os.Symlink("kept", filepath.Join(tree, "etc/alias"))
}

// convertTarEntries are a root filesystem's tar: other owners, a group,
// setuid, a device node.
var convertTarEntries = []ent{
	dir("etc", 0o755), dir("usr", 0o755), dir("usr/bin", 0o755), dir("dev", 0o755),
	{name: "etc/shadow", body: "root:*:1:0:99999:7:::\n", mode: 0o640, gid: 42},
	{name: "etc/keep", body: "k\n", mode: 0o600, uid: 7, gid: 8},
	{name: "usr/bin/su", body: "su\n", mode: 0o4755},
	{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
}

// TestConvertTarRootless: a root filesystem's tar converted by a user
// who is not root, with a Customize step, holds what the tar says and
// what the step made — owners, group, setuid bits, the device — exactly
// as the same conversion as root does; what the step replaced or made is
// root's.
func TestConvertTarRootless(t *testing.T) {
	if rootlessChild() {
		return
	}
	needRoot(t)
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} { // the child reads the tar
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tarFile := filepath.Join(dir, "rootfs.tar")
	if err := os.WriteFile(tarFile, tarBytes(t, convertTarEntries...), 0o644); err != nil {
		t.Fatal(err)
	}
	res, rootless := rootlessChildDoes(t, rootlessPull{Tar: tarFile})
	if res.SizeBytes == 0 {
		t.Errorf("result %+v", res)
	}
	asRoot := filepath.Join(dir, "root.ext4")
	if _, err := ConvertTar(context.Background(), &system.Exec{}, tarFile, Options{DestFile: asRoot, Customize: testCustomize}); err != nil {
		t.Fatal(err)
	}
	wants := []struct {
		path     string
		typ      string
		mode     uint32
		uid, gid int
	}{
		{"/etc/kept", "regular", 0o600, 7, 8},
		{"/usr/bin/su2", "regular", 0o4755, 0, 0},
		{"/etc/shadow", "regular", 0o640, 0, 0},
		{"/usr/bin/su", "regular", 0o4755, 0, 0},
		{"/usr/bin/new", "regular", 0o4711, 0, 0},
		{"/etc/alias", "symlink", 0o777, 0, 0},
		{"/dev/null", "character special", 0o666, 0, 0},
	}
	for _, img := range []string{rootless, asRoot} {
		for _, w := range wants {
			e := stat(t, img, w.path)
			if e == nil || e.Type != w.typ || e.Mode != w.mode || e.UID != w.uid || e.GID != w.gid {
				t.Errorf("%s %s: %+v, want %s %o %d:%d", filepath.Base(img), w.path, e, w.typ, w.mode, w.uid, w.gid)
			}
		}
		if got := cat(t, img, "/etc/shadow"); got != "root::1:0:99999:7:::\n" {
			t.Errorf("%s /etc/shadow = %q", filepath.Base(img), got)
		}
		if e := stat(t, img, "/dev/null"); e == nil || e.Major != 1 || e.Minor != 3 {
			t.Errorf("%s /dev/null: %+v, want 1:3", filepath.Base(img), e)
		}
		if out, err := (&system.Exec{}).Run(context.Background(), "e2fsck", "-f", "-n", img); err != nil {
			t.Errorf("e2fsck %s: %v\n%s", img, err, out)
		}
	}
}
