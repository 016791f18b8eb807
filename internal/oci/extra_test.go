package oci

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/oci/ocitest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// hostTree writes files (path -> content, "" content with a trailing
// slash is a directory, "->target" a symlink) under a new temp dir.
func hostTree(t *testing.T, files map[string]string, modes map[string]os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	for p, body := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(p, "/"):
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(body, "->"):
			if err := os.Symlink(strings.TrimPrefix(body, "->"), full); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for p, m := range modes {
		if err := os.Chmod(filepath.Join(dir, p), m); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPullExtraTrees(t *testing.T) {
	needRoot(t)
	testPullExtraTrees(t, func(ref string, trees []ExtraTree) (Result, string) {
		res, dest, err := pullTo(t, ref, Options{ExtraTrees: trees})
		if err != nil {
			t.Fatal(err)
		}
		return res, dest
	})
}

// TestPullExtraTreesRootless: an unprivileged daemon's pull adds the
// kernel's modules the same way, owned by root in the image.
func TestPullExtraTreesRootless(t *testing.T) {
	if rootlessChild() {
		return
	}
	needRoot(t)
	testPullExtraTrees(t, func(ref string, trees []ExtraTree) (Result, string) {
		return pullRootless(t, ref, trees)
	})
}

func testPullExtraTrees(t *testing.T, pull func(ref string, trees []ExtraTree) (Result, string)) {
	host := ocitest.Registry(t, nil)
	img := ocitest.Image(t, "amd64", v1.Config{}, gzLayer(t,
		dir("usr/", 0o755), dir("usr/lib/", 0o755),
		symlink("lib", "usr/lib"),
		dir("usr/lib/modules/", 0o755), dir("usr/lib/modules/6.1.0-test/", 0o755),
		file("usr/lib/modules/6.1.0-test/stale.ko", "old", 0o644),
		// An absolute symlink that would leave the root on the host.
		symlink("opt", "/../../../../../tmp"),
	))
	ref := host + "/extra/tree:1"
	ocitest.Push(t, ref, img)

	modules := hostTree(t, map[string]string{
		"modules.dep":               "kernel/a.ko:\n",
		"kernel/a.ko":               "module a",
		"kernel/sub/":               "",
		"build":                     "->/usr/src/linux-headers",
		"kernel/drivers/net/b.ko":   "module b",
		"kernel/drivers/net/README": "readme",
	}, map[string]os.FileMode{"kernel/drivers/net/README": 0o600, "kernel/sub/": 0o705})
	escape := hostTree(t, map[string]string{"marker": "inside"}, nil)
	hostMarker := "/tmp/banger-extra-escape-" + filepath.Base(escape)
	t.Cleanup(func() { os.RemoveAll(hostMarker) })
	// Readable by a rootless pull's uid, as a kernel's modules are.
	for _, d := range []string{modules, escape} {
		for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Chmod(filepath.Join(modules, "kernel/drivers/net/README"), 0o604); err != nil {
		t.Fatal(err)
	}

	res, dest := pull(ref, []ExtraTree{
		{Src: modules, Dest: "/lib/modules/6.1.0-test"},
		{Src: escape, Dest: "/opt/" + filepath.Base(hostMarker)},
	})
	if res.HasSystemd || res.HasSSHD || res.PackageManager != "" {
		t.Errorf("detection saw the extra trees: %+v", res)
	}
	checkTree(t, dest, []want{
		{path: "/lib", typ: "symlink", link: "usr/lib"},
		{path: "/usr/lib/modules/6.1.0-test", typ: "directory", mode: 0o755},
		{path: "/usr/lib/modules/6.1.0-test/stale.ko", absent: true},
		{path: "/usr/lib/modules/6.1.0-test/modules.dep", typ: "regular", mode: 0o644, body: str("kernel/a.ko:\n")},
		{path: "/usr/lib/modules/6.1.0-test/kernel/a.ko", typ: "regular", mode: 0o644, body: str("module a")},
		{path: "/usr/lib/modules/6.1.0-test/kernel/sub", typ: "directory", mode: 0o705},
		{path: "/usr/lib/modules/6.1.0-test/kernel/drivers/net/b.ko", typ: "regular", mode: 0o644, body: str("module b")},
		{path: "/usr/lib/modules/6.1.0-test/kernel/drivers/net/README", typ: "regular", mode: 0o604},
		{path: "/usr/lib/modules/6.1.0-test/build", typ: "symlink", link: "/usr/src/linux-headers"},
		// The escaping symlink was followed inside the image root.
		{path: "/tmp/" + filepath.Base(hostMarker) + "/marker", typ: "regular", mode: 0o644, body: str("inside")},
	})
	if _, err := os.Lstat(hostMarker); !os.IsNotExist(err) {
		t.Errorf("an extra tree was written on the host at %s (stat: %v)", hostMarker, err)
	}
}

func TestPullExtraTreesRefused(t *testing.T) {
	src := t.TempDir()
	file := filepath.Join(src, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tree ExtraTree
		want string
	}{
		{"relative dest", ExtraTree{Src: src, Dest: "lib/modules"}, "clean absolute"},
		{"unclean dest", ExtraTree{Src: src, Dest: "/lib/../modules"}, "clean absolute"},
		{"root dest", ExtraTree{Src: src, Dest: "/"}, "other than /"},
		{"missing src", ExtraTree{Src: filepath.Join(src, "nope"), Dest: "/x"}, "no such file"},
		{"file src", ExtraTree{Src: file, Dest: "/x"}, "not a directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "rootfs.ext4")
			_, err := Pull(t.Context(), nil, "127.0.0.1:1/never/contacted:1", Options{DestFile: dest, ExtraTrees: []ExtraTree{c.tree}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if _, err := os.Lstat(dest); !os.IsNotExist(err) {
				t.Errorf("refused pull left %s (stat: %v)", dest, err)
			}
		})
	}
}
