package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/oci/ocitest"
	"banger/internal/system"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// want is the expected state of one path in the built filesystem.
type want struct {
	path   string
	absent bool
	typ    string // debugfs type name
	mode   uint32
	uid    int
	gid    int
	body   *string
	link   string
	major  int
	minor  int
}

func str(s string) *string { return &s }

func checkTree(t *testing.T, img string, wants []want) {
	t.Helper()
	for _, w := range wants {
		e := stat(t, img, w.path)
		if w.absent {
			if e != nil {
				t.Errorf("%s: present (%s), want it gone", w.path, e.Type)
			}
			continue
		}
		if e == nil {
			t.Errorf("%s: missing", w.path)
			continue
		}
		if e.Type != w.typ {
			t.Errorf("%s: type %q, want %q", w.path, e.Type, w.typ)
		}
		if w.typ != "symlink" && e.Mode != w.mode {
			t.Errorf("%s: mode %04o, want %04o", w.path, e.Mode, w.mode)
		}
		if e.UID != w.uid || e.GID != w.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", w.path, e.UID, e.GID, w.uid, w.gid)
		}
		if w.body != nil {
			if got := cat(t, img, w.path); got != *w.body {
				t.Errorf("%s: content %q, want %q", w.path, got, *w.body)
			}
		}
		if w.typ == "symlink" && e.Link != w.link {
			t.Errorf("%s: link to %q, want %q", w.path, e.Link, w.link)
		}
		if strings.HasSuffix(w.typ, "special") && (e.Major != w.major || e.Minor != w.minor) {
			t.Errorf("%s: device %d:%d, want %d:%d", w.path, e.Major, e.Minor, w.major, w.minor)
		}
	}
}

func TestPullLayeredImage(t *testing.T) {
	needRoot(t)
	ref, img, run := pushLayered(t)

	var stages []string
	var lastLayers [2]int64
	res, fsPath, err := pullTo(t, ref, Options{Progress: func(stage string, done, total int64) {
		if len(stages) == 0 || stages[len(stages)-1] != stage {
			stages = append(stages, stage)
		}
		if stage == "layers" {
			lastLayers = [2]int64{done, total}
		}
	}})
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if !reflect.DeepEqual(stages, []string{"layers", "mkfs"}) {
		t.Errorf("progress stages %v", stages)
	}
	if lastLayers[0] != lastLayers[1] || lastLayers[1] <= 0 {
		t.Errorf("last layer progress %d/%d, want all", lastLayers[0], lastLayers[1])
	}
	checkLayered(t, img, run, res, fsPath)
}

// TestPullRootless: the same image, pulled by an unprivileged uid with
// Rootless (an unprivileged daemon's pull), comes out the same: owners,
// setuid bits, device nodes, fifos, hard links, attributes, times. The
// pull runs in a child process as another uid (pullRootless), so a chown
// or mknod left on the rootless path fails it.
func TestPullRootless(t *testing.T) {
	if rootlessChild() {
		return
	}
	needRoot(t)
	ref, img, run := pushLayered(t)
	res, fsPath := pullRootless(t, ref, nil)
	checkLayered(t, img, run, res, fsPath)
	if out, err := (&system.Exec{}).Run(context.Background(), "e2fsck", "-f", "-n", fsPath); err != nil {
		t.Errorf("e2fsck: %v\n%s", err, out)
	}
}

// rootlessUID is who pullRootless pulls as.
const rootlessUID = 4242

// rootlessPull is what the parent asks of the child.
type rootlessPull struct {
	Ref   string
	Dir   string
	Trees []ExtraTree
	// Tar, when set, is converted (ConvertTar) instead of Ref pulled, with
	// testCustomize.
	Tar string
}

// rootlessChild does the pull pullRootless asked for, when this process
// is that child, and says whether it was.
func rootlessChild() bool {
	spec := os.Getenv("BANGER_OCI_ROOTLESS_PULL")
	if spec == "" {
		return false
	}
	var p rootlessPull
	if err := json.Unmarshal([]byte(spec), &p); err != nil {
		fmt.Printf("RESULT error %v\n", err)
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts := Options{DestFile: p.Dir + "/rootfs.ext4", WorkDir: p.Dir + "/work", ExtraTrees: p.Trees, Rootless: true, retry: fastRetry}
	var res Result
	var err error
	if p.Tar != "" {
		opts.Customize = testCustomize
		res, err = ConvertTar(ctx, &system.Exec{}, p.Tar, opts)
	} else {
		res, err = Pull(ctx, &system.Exec{}, p.Ref, opts)
	}
	if err != nil {
		fmt.Printf("RESULT error %v\n", err)
		return true
	}
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return true
}

// pullRootless pulls ref with Rootless in a child process running as
// rootlessUID (the test binary, copied where it may run it) and returns
// the result and the image file, which must be that uid's. trees must be
// readable by it.
func pullRootless(t *testing.T, ref string, trees []ExtraTree) (Result, string) {
	t.Helper()
	return rootlessChildDoes(t, rootlessPull{Ref: ref, Trees: trees})
}

// rootlessChildDoes runs p (its Dir filled in) in the child.
func rootlessChildDoes(t *testing.T, p rootlessPull) (Result, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "oci-rootless")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Mkdir(dir+"/work", 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, dir + "/work"} {
		if err := os.Chown(p, rootlessUID, rootlessUID); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := dir + "/oci.test"
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	p.Dir = dir
	spec, _ := json.Marshal(p)
	cmd := exec.Command(bin, "-test.run", "^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BANGER_OCI_ROOTLESS_PULL="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: rootlessUID, Gid: rootlessUID}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the pull as uid %d: %v\n%s", rootlessUID, err, out)
	}
	_, line, ok := strings.Cut(string(out), "RESULT ")
	line, _, _ = strings.Cut(line, "\n")
	var res Result
	if !ok || json.Unmarshal([]byte(line), &res) != nil {
		t.Fatalf("the pull as uid %d: %s", rootlessUID, out)
	}
	fsPath := dir + "/rootfs.ext4"
	if fi, err := os.Stat(fsPath); err != nil || fi.Sys().(*syscall.Stat_t).Uid != rootlessUID {
		t.Fatalf("%s: %v, want a file of uid %d", fsPath, err, rootlessUID)
	}
	if left, _ := os.ReadDir(dir + "/work"); len(left) != 0 {
		t.Errorf("staging left behind: %v", left)
	}
	return res, fsPath
}

// pushLayered pushes a three-layer image that exercises every kind of
// entry, whiteouts and opaque directories, and returns its reference.
func pushLayered(t *testing.T) (string, v1.Image, v1.Config) {
	t.Helper()
	host := ocitest.Registry(t, nil)

	base := gzLayer(t,
		ent{name: "./", typ: tar.TypeDir, mode: 0o750, gid: 10},
		dir("etc/", 0o755),
		file("etc/hostname", "base\n", 0o644),
		file("etc/os-release", "ID=test\n", 0o644),
		dir("usr/", 0o755), dir("usr/lib/", 0o755), dir("usr/bin/", 0o755), dir("usr/sbin/", 0o755),
		symlink("lib", "usr/lib"),
		dir("usr/lib/systemd/", 0o755),
		file("usr/lib/systemd/systemd", "#!systemd\n", 0o755),
		file("usr/bin/apt-get", "#!apt\n", 0o755),
		file("usr/bin/sudo", "sudo", 0o4755),
		ent{name: "usr/bin/wall", body: "wall", mode: 0o2755, gid: 5},
		ent{name: "usr/bin/hard1", body: "linked", mode: 0o750, uid: 7, gid: 8},
		hardlink("usr/bin/hard2", "usr/bin/hard1"),
		dir("tmp/", 0o1777),
		ent{name: "home/user/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
		ent{name: "home/user/.profile", body: "PS1=x\n", mode: 0o644, uid: 1000, gid: 1000},
		ent{name: "nobody", body: "n", mode: 0o600, uid: 65534, gid: 65534},
		dir("dev/", 0o755),
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		hardlink("dev/null2", "dev/null"),
		ent{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0, gid: 6},
		ent{name: "run/initctl", typ: tar.TypeFifo, mode: 0o600},
		symlink("etc/mtab", "/proc/self/mounts"),
		ent{name: "etc/xattr", body: "x", mode: 0o644, xattrs: map[string]string{"user.banger": "hello"}},
		file("gone", "bye", 0o644),
		dir("old/", 0o755), file("old/a", "a", 0o644), dir("old/sub/", 0o755), file("old/sub/b", "b", 0o644),
		dir("opq/", 0o755), file("opq/lower", "l", 0o644), dir("opq/lowerdir/", 0o755), file("opq/lowerdir/x", "x", 0o644),
		dir("opq/keepdir/", 0o755), file("opq/keepdir/lowerfile", "l", 0o644),
		// 4 MiB, all zero but its last bytes: must stay sparse.
		ent{name: "var/log/lastlog", body: strings.Repeat("\x00", 4<<20) + "end", mode: 0o664, gid: 43},
	)
	top := gzLayer(t,
		file(".wh.gone", "", 0o644),
		file(".wh.old", "", 0o644),
		dir("opq/", 0o711),
		file("opq/new", "new", 0o644),
		dir("opq/keepdir/", 0o755),
		file("opq/keepdir/upper", "u", 0o644),
		// The marker comes after this layer's own entries: they stay.
		file("opq/.wh..wh..opq", "", 0o644),
		file("lib/x", "through the lib symlink", 0o644),
		file("etc/hostname", "top\n", 0o644),
		file("usr/sbin/sshd", "sshd", 0o755),
	)
	third := zstdLayer(t,
		dir("etc/", 0o751), // metadata only: etc keeps its files
		hardlink("usr/bin/hard3", "usr/bin/hard1"),
		file("etc/.wh.os-release", "", 0o644),
	)
	if mt, err := third.MediaType(); err != nil || mt != types.OCILayerZStd {
		t.Fatalf("third layer media type %s (%v), want zstd", mt, err)
	}
	run := v1.Config{Env: []string{"PATH=/usr/bin:/bin", "A=b"}, Cmd: []string{"/bin/sh"}, Entrypoint: []string{"/init"}, WorkingDir: "/root", User: "root"}
	img := ocitest.Image(t, "amd64", run, base, top, third)
	ref := host + "/test/layered:v1"
	ocitest.Push(t, ref, img)
	return ref, img, run
}

// checkLayered checks what a pull of pushLayered's image made.
func checkLayered(t *testing.T, img v1.Image, run v1.Config, res Result, fsPath string) {
	t.Helper()
	if want := digestOf(t, img); res.Digest != want || res.RefDigest != want {
		t.Errorf("digests %s / %s, want %s", res.Digest, res.RefDigest, want)
	}
	if !res.HasSystemd || !res.HasSSHD || res.PackageManager != "apt" {
		t.Errorf("detected systemd=%v sshd=%v pm=%q, want true true apt", res.HasSystemd, res.HasSSHD, res.PackageManager)
	}
	if !reflect.DeepEqual(res.Config, ImageConfig{Env: run.Env, Cmd: run.Cmd, Entrypoint: run.Entrypoint, WorkingDir: "/root", User: "root"}) {
		t.Errorf("config %+v", res.Config)
	}
	if res.SizeBytes != 1<<30 {
		t.Errorf("size %d, want the 1 GiB floor", res.SizeBytes)
	}
	if res.ContentBytes <= 0 || res.ContentBytes > 1<<20 {
		t.Errorf("content %d bytes, want a little (the sparse file must not count its holes)", res.ContentBytes)
	}
	if fi, err := os.Stat(fsPath); err != nil || fi.Size() != res.SizeBytes {
		t.Errorf("dest file: %v, size %v, want %d", err, fi, res.SizeBytes)
	}
	checkTree(t, fsPath, []want{
		{path: "/", typ: "directory", mode: 0o750, gid: 10},
		{path: "/etc", typ: "directory", mode: 0o751},
		{path: "/etc/hostname", typ: "regular", mode: 0o644, body: str("top\n")},
		{path: "/etc/os-release", absent: true},
		{path: "/lib", typ: "symlink", link: "usr/lib"},
		{path: "/usr/lib/x", typ: "regular", mode: 0o644, body: str("through the lib symlink")},
		{path: "/usr/lib/systemd/systemd", typ: "regular", mode: 0o755, body: str("#!systemd\n")},
		{path: "/usr/bin/sudo", typ: "regular", mode: 0o4755, body: str("sudo")},
		{path: "/usr/bin/wall", typ: "regular", mode: 0o2755, gid: 5},
		{path: "/usr/bin/hard1", typ: "regular", mode: 0o750, uid: 7, gid: 8, body: str("linked")},
		{path: "/tmp", typ: "directory", mode: 0o1777},
		{path: "/home/user", typ: "directory", mode: 0o700, uid: 1000, gid: 1000},
		{path: "/home/user/.profile", typ: "regular", mode: 0o644, uid: 1000, gid: 1000, body: str("PS1=x\n")},
		{path: "/nobody", typ: "regular", mode: 0o600, uid: 65534, gid: 65534},
		{path: "/dev/null", typ: "character special", mode: 0o666, major: 1, minor: 3},
		{path: "/dev/null2", typ: "character special", mode: 0o666, major: 1, minor: 3},
		{path: "/dev/sda", typ: "block special", mode: 0o660, gid: 6, major: 8, minor: 0},
		{path: "/run", typ: "directory", mode: 0o755}, // made implicitly
		{path: "/run/initctl", typ: "FIFO", mode: 0o600},
		{path: "/etc/mtab", typ: "symlink", link: "/proc/self/mounts"},
		{path: "/gone", absent: true},
		{path: "/old", absent: true},
		{path: "/opq", typ: "directory", mode: 0o711},
		{path: "/opq/new", typ: "regular", mode: 0o644, body: str("new")},
		{path: "/opq/lower", absent: true},
		{path: "/opq/lowerdir", absent: true},
		{path: "/opq/keepdir/upper", typ: "regular", mode: 0o644, body: str("u")},
		{path: "/opq/keepdir/lowerfile", absent: true},
		{path: "/usr/sbin/sshd", typ: "regular", mode: 0o755},
		{path: "/var/log/lastlog", typ: "regular", mode: 0o664, gid: 43},
	})

	// Hard links share one inode, also across layers.
	h1, h2, h3 := stat(t, fsPath, "/usr/bin/hard1"), stat(t, fsPath, "/usr/bin/hard2"), stat(t, fsPath, "/usr/bin/hard3")
	if h1 == nil || h2 == nil || h3 == nil || h1.Inode != h2.Inode || h1.Inode != h3.Inode || h1.Links != 3 {
		t.Errorf("hard links: %+v %+v %+v, want one inode with 3 links", h1, h2, h3)
	}
	if e := stat(t, fsPath, "/var/log/lastlog"); e == nil || e.Size != 4<<20+3 || e.Blocks > 64 {
		t.Errorf("lastlog: %+v, want size %d in a few blocks", e, 4<<20+3)
	}
	for _, p := range []string{"/etc/hostname", "/opq", "/usr/bin/sudo", "/dev/null", "/lib"} {
		if e := stat(t, fsPath, p); e == nil || e.Mtime != testMtime.Unix() {
			t.Errorf("%s: mtime %+v, want %d", p, e, testMtime.Unix())
		}
	}
	if out := debugfs(t, fsPath, "ea_get /etc/xattr user.banger"); !strings.Contains(out, "hello") {
		t.Errorf("xattr user.banger: %q, want hello", out)
	}
	if out := debugfs(t, fsPath, "stats"); !strings.Contains(out, "Filesystem volume name:   bangerroot") {
		t.Errorf("label missing from superblock:\n%s", out)
	}
}

func randName(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "banger-oci-test-" + hex.EncodeToString(b)
}

// Malicious layers through the whole pull: refused, or confined to the
// image, and never touching the host.
func TestPullUnsafeLayers(t *testing.T) {
	needRoot(t)
	host := ocitest.Registry(t, nil)

	t.Run("traversal is refused", func(t *testing.T) {
		victim := randName(t)
		l := gzLayer(t, file("ok", "fine", 0o644), file("../../../../../../../../../../tmp/"+victim, "pwned", 0o644))
		ref := host + "/evil/traversal:1"
		ocitest.Push(t, ref, ocitest.Image(t, "amd64", v1.Config{}, gzLayer(t, file("base", "b", 0o644)), l))
		_, _, err := pullTo(t, ref, Options{})
		if err == nil {
			t.Fatal("pull of a layer with ../ succeeded")
		}
		t.Logf("error: %v", err)
		if !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), "layer 2") || !strings.Contains(err.Error(), victim) {
			t.Errorf("error %q: want bad_request naming layer 2 and the entry", err)
		}
		if _, err := os.Lstat("/tmp/" + victim); !os.IsNotExist(err) {
			os.Remove("/tmp/" + victim)
			t.Errorf("/tmp/%s was written on the host", victim)
		}
	})

	t.Run("writes through escaping symlinks land inside", func(t *testing.T) {
		v1n, v2n := randName(t), randName(t)
		l1 := gzLayer(t, symlink("evil", "/"), symlink("evil2", "../../../../../../.."))
		l2 := gzLayer(t, file("evil/tmp/"+v1n, "inside", 0o644), file("evil2/tmp/"+v2n, "inside2", 0o644))
		ref := host + "/evil/symlink:1"
		ocitest.Push(t, ref, ocitest.Image(t, "amd64", v1.Config{}, l1, l2))
		_, fsPath, err := pullTo(t, ref, Options{})
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		for _, n := range []string{v1n, v2n} {
			if _, err := os.Lstat("/tmp/" + n); !os.IsNotExist(err) {
				os.Remove("/tmp/" + n)
				t.Errorf("/tmp/%s was written on the host", n)
			}
		}
		checkTree(t, fsPath, []want{
			{path: "/evil", typ: "symlink", link: "/"},
			{path: "/evil2", typ: "symlink", link: "../../../../../../.."},
			{path: "/tmp/" + v1n, typ: "regular", mode: 0o644, body: str("inside")},
			{path: "/tmp/" + v2n, typ: "regular", mode: 0o644, body: str("inside2")},
		})
	})
}

func TestPullPlatforms(t *testing.T) {
	needRoot(t)
	host := ocitest.Registry(t, nil)
	amd := ocitest.Image(t, "amd64", v1.Config{}, gzLayer(t, file("arch", "amd64", 0o644)))
	arm := ocitest.Image(t, "arm64", v1.Config{}, gzLayer(t, file("arch", "arm64", 0o644)))
	armOnly := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: arm,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	both := mutate.AppendManifests(armOnly, mutate.IndexAddendum{Add: amd,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	pushIndex(t, host+"/multi/armonly:1", armOnly)
	pushIndex(t, host+"/multi/both:1", both)
	ocitest.Push(t, host+"/single/arm:1", arm)

	t.Run("index picks linux/amd64, by digest", func(t *testing.T) {
		ref := host + "/multi/both@" + digestOf(t, both)
		res, fsPath, err := pullTo(t, ref, Options{})
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		if res.Digest != digestOf(t, amd) || res.RefDigest != digestOf(t, both) {
			t.Errorf("digest %s ref digest %s, want %s and %s", res.Digest, res.RefDigest, digestOf(t, amd), digestOf(t, both))
		}
		if got := cat(t, fsPath, "/arch"); got != "amd64" {
			t.Errorf("/arch = %q, want amd64", got)
		}
		if res.HasSystemd || res.HasSSHD || res.PackageManager != "" {
			t.Errorf("detected %+v in an image without them", res)
		}
	})

	for _, tc := range []struct{ name, ref, want string }{
		{"index without linux/amd64", host + "/multi/armonly:1", "linux/arm64"},
		{"single manifest for arm64", host + "/single/arm:1", "linux/arm64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := pullTo(t, tc.ref, Options{})
			if err == nil {
				t.Fatal("pull succeeded")
			}
			t.Logf("error: %v", err)
			if !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "linux/amd64") {
				t.Errorf("error %q: want bad_request naming %s and linux/amd64", err, tc.want)
			}
		})
	}
}

// corruptBlob serves blob digest through fix, which changes its bytes.
func corruptBlob(digest string, fix func([]byte) []byte) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+digest) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			body := fix(rec.Body.Bytes())
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	}
}

func TestPullRegistryFailures(t *testing.T) {
	needRoot(t)
	// An uncompressed layer: a flipped byte still parses as tar, so only
	// the digest check can catch it.
	content := strings.Repeat("payload ", 512)
	rawTar := tarBytes(t, file("data", content, 0o644))
	raw := static.NewLayer(rawTar, types.OCIUncompressedLayer)
	img := ocitest.Image(t, "amd64", v1.Config{}, gzLayer(t, file("base", "b", 0o644)), raw)
	layerDigest := digestOf(t, raw)

	// An image whose config names a different diff ID for its layer.
	lying := func() v1.Image {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.RootFS.DiffIDs[1] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
		bad, err := mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return bad
	}()

	fail500 := func(match string) func(http.Handler) http.Handler {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && strings.Contains(r.URL.Path, match) {
					http.Error(w, "boom", http.StatusInternalServerError)
					return
				}
				next.ServeHTTP(w, r)
			})
		}
	}
	flip := func(b []byte) []byte {
		c := bytes.Clone(b)
		i := bytes.Index(c, []byte("payload"))
		c[i] ^= 0x20
		return c
	}
	truncate := func(b []byte) []byte { return b[:len(b)/2] }

	for _, tc := range []struct {
		name  string
		wrap  func(http.Handler) http.Handler
		image v1.Image
		want  string
		code  api.Code
	}{
		{"manifests answer 500", fail500("/manifests/"), img, "500", api.CodeOperationFailed},
		{"layer blob answers 500", fail500("/blobs/" + layerDigest), img, "500", api.CodeOperationFailed},
		{"corrupted blob", corruptBlob(layerDigest, flip), img, "sha256", api.CodeOperationFailed},
		{"truncated blob", corruptBlob(layerDigest, truncate), img, "layer 2", api.CodeOperationFailed},
		{"config lies about the diff ID", nil, lying, "uncompressed content has digest", api.CodeOperationFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := ocitest.Registry(t, tc.wrap)
			ref := host + "/broken/img:1"
			ocitest.Push(t, ref, tc.image)
			_, _, err := pullTo(t, ref, Options{})
			if err == nil {
				t.Fatal("pull succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tc.want) || api.CodeOf(err) != tc.code {
				t.Errorf("error %q (code %s): want %q, code %s", err, api.CodeOf(err), tc.want, tc.code)
			}
		})
	}
}

func TestPullBadInput(t *testing.T) {
	needRoot(t)
	host := ocitest.Registry(t, nil)
	big := make([]byte, 3<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	ocitest.Push(t, host+"/big/img:1", ocitest.Image(t, "amd64", v1.Config{}, gzLayer(t, file("noise", string(big), 0o644))))

	for _, tc := range []struct {
		name string
		ref  string
		opts Options
		code api.Code
		want string
	}{
		{"bad reference", "UPPER/Case::x", Options{}, api.CodeBadRequest, "not an image reference"},
		{"unknown repository", host + "/nope/nothing:1", Options{}, api.CodeNotFound, "not found"},
		{"unknown tag", host + "/big/img:missing", Options{}, api.CodeNotFound, "not found"},
		{"size too small", host + "/big/img:1", Options{SizeBytes: 2 << 20}, api.CodeBadRequest, "too small"},
		// The space checks, with statfs answered by the test.
		{"cache too small for the layers", host + "/big/img:1", Options{FreeBytes: func(string) (int64, error) { return 1 << 20, nil }},
			api.CodeOperationFailed, "(its compressed layers alone): needs at least 4 MB, 1 MB free"},
		{"no room for the filesystem", host + "/big/img:1", Options{FreeBytes: func(dir string) (int64, error) {
			if strings.HasSuffix(dir, "/work") {
				return 1 << 30, nil
			}
			return 2 << 20, nil
		}}, api.CodeOperationFailed, "filesystem: needs at least 4 MB, 2 MB free"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := pullTo(t, tc.ref, tc.opts)
			if err == nil {
				t.Fatal("pull succeeded")
			}
			t.Logf("error: %v", err)
			if api.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q (code %s): want code %s and %q", err, api.CodeOf(err), tc.code, tc.want)
			}
		})
	}

	t.Run("existing destination is kept", func(t *testing.T) {
		dest := t.TempDir() + "/rootfs.ext4"
		if err := os.WriteFile(dest, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Pull(context.Background(), nil, host+"/big/img:1", Options{DestFile: dest, retry: fastRetry})
		if !api.IsCode(err, api.CodeAlreadyExists) {
			t.Errorf("error %v, want already_exists", err)
		}
		if b, _ := os.ReadFile(dest); string(b) != "precious" {
			t.Errorf("existing file changed to %q", b)
		}
	})

	t.Run("mkfs failure removes the destination", func(t *testing.T) {
		dir := t.TempDir()
		dest := dir + "/rootfs.ext4"
		_, err := Pull(context.Background(), failingRunner{}, host+"/big/img:1", Options{DestFile: dest, WorkDir: dir, retry: fastRetry})
		if err == nil || !strings.Contains(err.Error(), "mkfs.ext4") {
			t.Fatalf("error %v, want the mkfs failure", err)
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}

// failingRunner is the runner edge failing, as mkfs.ext4 would on a full disk.
type failingRunner struct{}

func (failingRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	return nil, errors.New(argv[0] + ": No space left on device")
}

// recordingRunner stands in for the host at the runner edge and keeps
// the commands it was given.
type recordingRunner struct{ calls [][]string }

func (r *recordingRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	r.calls = append(r.calls, argv)
	return nil, nil
}

func TestMakeExt4Argv(t *testing.T) {
	needRoot(t) // chowns the tree
	const gib = 1 << 30
	mkfs := func(extra ...string) []string {
		argv := []string{"mkfs.ext4", "-F", "-q", "-d", "TREE", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-L", "bangerroot"}
		return append(argv, extra...)
	}
	for _, tc := range []struct {
		name     string
		size     int64
		inodes   int64
		rootMode uint32
		rootGID  int
		want     [][]string
	}{
		{"default inodes suffice", gib, 1000, 0o755, 0,
			[][]string{mkfs("FILE", "1048576k")}},
		{"many small files get more inodes", gib, 100000, 0o755, 0,
			[][]string{mkfs("-N", "151024", "FILE", "1048576k")}},
		{"small filesystems keep mke2fs's denser default", 100 << 20, 10000, 0o755, 0,
			[][]string{mkfs("FILE", "102400k")}},
		{"a root directory other than 0755 root:root is copied", gib, 10, 0o1750, 10,
			[][]string{mkfs("FILE", "1048576k"),
				{"debugfs", "-w", "-R", "set_inode_field / mode 041750", "FILE"},
				{"debugfs", "-w", "-R", "set_inode_field / uid 0", "FILE"},
				{"debugfs", "-w", "-R", "set_inode_field / gid 10", "FILE"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file, tree := dir+"/fs", dir+"/tree"
			if err := os.WriteFile(file, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(tree, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Chmod(tree, tc.rootMode); err != nil { // os.Chmod would drop the sticky bit
				t.Fatal(err)
			}
			if err := os.Chown(tree, 0, tc.rootGID); err != nil {
				t.Fatal(err)
			}
			r := &recordingRunner{}
			if err := makeExt4(context.Background(), r, tree, file, tc.size, tc.inodes, true); err != nil {
				t.Fatal(err)
			}
			for _, argv := range tc.want {
				for i, a := range argv {
					switch a {
					case "FILE":
						argv[i] = file
					case "TREE":
						argv[i] = tree
					}
				}
			}
			if !reflect.DeepEqual(r.calls, tc.want) {
				t.Errorf("commands %q\nwant %q", r.calls, tc.want)
			}
			if fi, err := os.Stat(file); err != nil || fi.Size() != tc.size {
				t.Errorf("file sized %v (%v), want %d", fi, err, tc.size)
			}
		})
	}
}

func TestFSSize(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	for _, tc := range []struct {
		content, requested, want int64
		bad                      bool
	}{
		{content: 10 * mib, want: gib},
		{content: 2 * gib, want: 3 * gib},
		{content: 1000*mib + 1, want: 1501 * mib},
		{content: 10 * mib, requested: 20*mib + 5, want: 21 * mib},
		{content: 19 * mib, requested: 20 * mib, bad: true},
	} {
		got, err := fsSize(tc.content, tc.requested)
		if tc.bad {
			if !api.IsCode(err, api.CodeBadRequest) {
				t.Errorf("fsSize(%d, %d) error %v, want bad_request", tc.content, tc.requested, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("fsSize(%d, %d) = %d, %v; want %d", tc.content, tc.requested, got, err, tc.want)
		}
	}
}
