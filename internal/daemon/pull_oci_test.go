package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/api"
	"banger/internal/artifact"
	"banger/internal/guestfs"
	"banger/internal/oci/ocitest"
	"banger/internal/system"
)

func needRootForOCI(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: converting an OCI image keeps owners and makes device nodes")
	}
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs)", tool)
		}
	}
}

// layerEntry is one file of a test image layer: content, or "->target"
// for a symlink, or a trailing "/" in the path for a directory.
type layerEntry struct {
	path string
	body string
	mode int64
}

func testImage(t *testing.T, entries ...layerEntry) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.path, Mode: e.mode, ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		switch {
		case strings.HasSuffix(e.path, "/"):
			h.Typeflag, h.Size = tar.TypeDir, 0
		case strings.HasPrefix(e.body, "->"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, strings.TrimPrefix(e.body, "->"), 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return ocitest.Image(t, "amd64", v1.Config{Cmd: []string{"/bin/sh"}}, ocitest.Layer(t, buf.Bytes()))
}

// gatedRegistry serves an in-memory registry on 127.0.0.1; downloads of
// the blob hold (any blob when hold is "") wait until open is closed.
func gatedRegistry(t *testing.T, hold string) (host string, open chan struct{}) {
	t.Helper()
	open = make(chan struct{})
	host = ocitest.Registry(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/"+hold) {
				select {
				case <-open:
				case <-r.Context().Done():
					return
				case <-time.After(30 * time.Second):
				}
			}
			reg.ServeHTTP(w, r)
		})
	})
	return host, open
}

// TestImagePullOCI pulls a registry image through the daemon: concurrent
// pulls share one operation, and the recorded image holds the kernel's
// modules and banger's bootstrap.
func TestImagePullOCI(t *testing.T) {
	needRootForOCI(t)
	busybox, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		t.Skip("needs a busybox binary to put in the test kernel's initrd:", err)
	}
	d := openArtifactDaemon(t)
	k := importTestKernel(t, d, defaultPullKernel, kernelSpec{version: "6.1.0-test", busybox: busybox,
		modules: map[string]string{"modules.dep": "kernel/net/x.ko:\n", "kernel/net/x.ko": "module x"}})
	img := testImage(t,
		layerEntry{"etc/", "", 0o755},
		layerEntry{"etc/os-release", "ID=tiny\n", 0o644},
		layerEntry{"etc/ssh/", "", 0o755},
		layerEntry{"etc/ssh/ssh_host_rsa_key", "baked-in secret", 0o600},
		layerEntry{"usr/", "", 0o755}, layerEntry{"usr/bin/", "", 0o755},
		layerEntry{"usr/bin/apt-get", "#!apt\n", 0o755},
		layerEntry{"var/", "", 0o755}, layerEntry{"var/lib/", "", 0o755}, layerEntry{"var/lib/dpkg/", "", 0o755},
		layerEntry{"var/lib/dpkg/status", "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: install ok installed\n", 0o644},
		layerEntry{"tmp/", "", 0o1777},
	)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layerDigest, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	host, open := gatedRegistry(t, layerDigest.String())
	ref := host + "/test/tiny:1"
	ocitest.Push(t, ref, img)

	// Two pulls of one ref while the registry holds the blobs back.
	var wg sync.WaitGroup
	results := make([]api.PullResult, 2)
	errs := make([]error, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = d.imagePull(t.Context(), api.ImagePullParams{Source: ref})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if results[0].OpID != results[1].OpID || results[0].Joined == results[1].Joined {
		t.Fatalf("concurrent pulls of one ref: %+v and %+v, want one operation, one joined", results[0], results[1])
	}
	if results[0].Name != "tiny-1" {
		t.Errorf("default name %q, want tiny-1", results[0].Name)
	}
	_, err = d.imagePull(t.Context(), api.ImagePullParams{Source: ref, Name: "other"})
	wantCode(t, err, api.CodeBadRequest, "tiny-1")
	// The layer download waits: the operation shows its byte count.
	waitForProgress(t, d, results[0].OpID)
	close(open)
	if s := waitPull(t, d, results[0].OpID); s.Error != "" {
		t.Fatalf("pull failed: %s", s.Error)
	}

	im, err := d.store.GetImage(t.Context(), "tiny-1")
	if err != nil {
		t.Fatal(err)
	}
	var m api.ImageManifest
	if err := json.Unmarshal([]byte(im.Manifest), &m); err != nil {
		t.Fatal(err)
	}
	if m.Kind != api.ImageKindOCI || !strings.HasSuffix(m.Ref, "/test/tiny:1") || !strings.HasPrefix(m.Digest, "sha256:") ||
		m.PackageManager != "apt" || m.Packages != 2 || m.HasSystemd || m.HasSSHD || m.Init != initBanger ||
		m.Kernel != defaultPullKernel || m.KernelVersion != "6.1.0-test" || m.SHA256 != im.SHA256 || len(m.Cmd) != 1 {
		t.Errorf("manifest = %+v", m)
	}
	if sum, _, err := artifact.HashFile(im.RootfsPath); err != nil || sum != im.SHA256 {
		t.Errorf("rootfs sha256 %s (%v), row says %s", sum, err, im.SHA256)
	}
	if !im.IsDefault || im.Kernel != defaultPullKernel || im.RootfsPath != filepath.Join(d.layout.ImagesDir, "tiny-1", "rootfs.ext4") {
		t.Errorf("image row = %+v", im)
	}

	script, err := renderGuestInit("apt", true)
	if err != nil {
		t.Fatal(err)
	}
	checkGuest(t, im.RootfsPath, []guestWant{
		{path: "/lib/modules/6.1.0-test/modules.dep", body: "kernel/net/x.ko:\n"},
		{path: "/lib/modules/6.1.0-test/kernel/net/x.ko", body: "module x"},
		{path: guestInitPath, body: string(script), mode: 0o755},
		{path: guestBusyboxPath, body: string(busybox), mode: 0o755},
		{path: "/sbin/init", link: guestInitPath},
		{path: "/etc/ssh/ssh_host_rsa_key", absent: true},
		{path: "/etc/os-release", body: "ID=tiny\n"},
		{path: "/proc", dir: true}, {path: "/sys", dir: true}, {path: "/dev", dir: true}, {path: "/root", dir: true},
	})
	for _, left := range []string{d.ociWorkDir("tiny-1"), d.ociStagingDir("tiny-1")} {
		if _, err := os.Stat(left); !os.IsNotExist(err) {
			t.Errorf("pull left %s behind (stat: %v)", left, err)
		}
	}
	if _, err := d.kernelRm(t.Context(), api.ArtifactRef{Name: k.Name}); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("kernel rm with a pulled image using it: %v", err)
	}
	_, err = d.imagePull(t.Context(), api.ImagePullParams{Source: ref})
	wantCode(t, err, api.CodeAlreadyExists, "tiny-1")
}

// TestImagePullOCISystemd: an image with systemd and sshd keeps systemd
// as init and gets banger's unit; a kernel without busybox makes the
// script use the image's /bin/sh.
func TestImagePullOCISystemd(t *testing.T) {
	needRootForOCI(t)
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "plain", kernelSpec{version: "6.1.0-plain"})
	host, open := gatedRegistry(t, "")
	close(open)
	ref := host + "/test/sysd:2"
	ocitest.Push(t, ref, testImage(t,
		layerEntry{"usr/", "", 0o755}, layerEntry{"usr/lib/", "", 0o755}, layerEntry{"usr/bin/", "", 0o755}, layerEntry{"usr/sbin/", "", 0o755},
		layerEntry{"lib", "->usr/lib", 0o777},
		layerEntry{"bin", "->usr/bin", 0o777},
		layerEntry{"usr/bin/sh", "#!sh\n", 0o755},
		layerEntry{"usr/lib/systemd/", "", 0o755}, layerEntry{"usr/lib/systemd/system/", "", 0o755},
		layerEntry{"usr/lib/systemd/systemd", "#!systemd\n", 0o755},
		layerEntry{"usr/lib/systemd/system/ssh.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n", 0o644},
		layerEntry{"usr/sbin/sshd", "#!sshd\n", 0o755},
		layerEntry{"usr/bin/dnf", "#!dnf\n", 0o755},
		layerEntry{"etc/", "", 0o755}, layerEntry{"etc/ssh/", "", 0o755},
		layerEntry{"etc/ssh/sshd_config", "UsePAM yes\n", 0o644},
		layerEntry{"etc/machine-id", "0123456789abcdef\n", 0o444},
	))
	res, err := d.imagePull(t.Context(), api.ImagePullParams{Source: ref, Name: "sysd", Kernel: "plain", Size: "1G"})
	if err != nil {
		t.Fatal(err)
	}
	if s := waitPull(t, d, res.OpID); s.Error != "" {
		t.Fatalf("pull failed: %s", s.Error)
	}
	got, err := d.imageShow(t.Context(), api.ArtifactRef{Name: "sysd"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Manifest.Init != initSystemd || got.Manifest.PackageManager != "dnf" || got.Manifest.Packages != -1 ||
		got.Manifest.SizeBytes != 1<<30 || got.Kernel != "plain" {
		t.Errorf("image = %+v", got)
	}
	script, err := renderGuestInit("dnf", false)
	if err != nil {
		t.Fatal(err)
	}
	wants := "/etc/systemd/system/multi-user.target.wants/"
	checkGuest(t, got.RootfsPath, []guestWant{
		{path: guestInitPath, body: string(script), mode: 0o755},
		{path: guestBusyboxPath, absent: true},
		{path: guestBootstrapSvc, body: bootstrapUnit},
		{path: wants + "banger-bootstrap.service", link: guestBootstrapSvc},
		{path: guestAcpidSvc, body: acpidUnit},
		{path: wants + "banger-acpid.service", link: guestAcpidSvc},
		{path: wants + "ssh.service", link: "/usr/lib/systemd/system/ssh.service"},
		{path: "/sbin/init", link: "/lib/systemd/systemd"},
		{path: "/etc/fstab", body: bootstrapFstab},
		{path: "/etc/machine-id", body: ""},
		{path: "/etc/ssh/sshd_config", body: "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n"},
	})
}

// waitForProgress waits (bounded) until the pull reports the bytes of
// its layer download.
func waitForProgress(t *testing.T, d *Daemon, opID string) {
	t.Helper()
	op, ok := d.ops.imagePull.Get(opID)
	if !ok {
		t.Fatalf("operation %s not registered", opID)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := op.summary()
		if s.Stage == "download layers" && s.ProgressTotal > 0 && s.ProgressDone < s.ProgressTotal {
			return
		}
		if s.Done || time.Now().After(deadline) {
			t.Fatalf("no layer progress reported: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// guestWant is the expected state of one path inside an image.
type guestWant struct {
	path   string
	body   string
	mode   fs.FileMode
	link   string
	dir    bool
	absent bool
}

func checkGuest(t *testing.T, rootfs string, wants []guestWant) {
	t.Helper()
	g := guestfs.Open(&system.Exec{}, rootfs)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, w := range wants {
		fi, err := g.Lstat(ctx, w.path)
		switch {
		case w.absent:
			if err == nil {
				t.Errorf("%s: present, want it gone", w.path)
			}
			continue
		case err != nil:
			t.Errorf("%s: %v", w.path, err)
			continue
		case w.dir:
			if !fi.IsDir() {
				t.Errorf("%s: %v, want a directory", w.path, fi.Mode)
			}
		case w.link != "":
			if fi.Mode&fs.ModeSymlink == 0 || fi.LinkTarget != w.link {
				t.Errorf("%s: mode %v link %q, want a symlink to %q", w.path, fi.Mode, fi.LinkTarget, w.link)
			}
		default:
			data, err := g.ReadFile(ctx, w.path)
			if err != nil || string(data) != w.body {
				t.Errorf("%s: %d bytes (err %v), want %d bytes %.40q", w.path, len(data), err, len(w.body), w.body)
			}
			if w.mode != 0 && fi.Mode.Perm() != w.mode {
				t.Errorf("%s: mode %v, want %v", w.path, fi.Mode.Perm(), w.mode)
			}
			if fi.UID != 0 || fi.GID != 0 {
				t.Errorf("%s: owner %d:%d, want root", w.path, fi.UID, fi.GID)
			}
		}
	}
}
