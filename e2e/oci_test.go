//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/oci/ocitest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestOCIImageBoots pulls a registry image through bangerd and boots it:
// the bookworm tree, served as a two-layer OCI image by a registry on
// loopback. The pull runs with a bangerd in the host namespace (it only
// talks to loopback), the boot with one inside the test's namespace,
// sharing the state directory.
func TestOCIImageBoots(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	layerTar := bookwormTar(t, rootfs)

	// Two layers: the tree, then a layer that deletes a file (a whiteout)
	// and adds one, so the replay is exercised on real content.
	base, err := tarball.LayerFromFile(layerTar)
	if err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(t.TempDir(), "top.tar")
	topDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(topDir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(topDir, "etc", "banger-oci-marker"), []byte("from layer 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(topDir, "etc", ".wh.motd"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "tar", "-C", topDir, "-cf", top, "./etc/banger-oci-marker", "./etc/.wh.motd")
	topLayer, err := tarball.LayerFromFile(top)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ref := serveImage(t, "e2e/bookworm:1", base, topLayer)
	t.Logf("pushed %s in %s", ref, time.Since(start).Round(time.Millisecond))

	e := newEnv(t, `qemu_accel = "tcg"`)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)

	// Pull in the host namespace: stop the namespaced daemon, run one here.
	e.stopDaemon()
	// --no-network: this daemon only pulls; the host namespace gets no
	// bridge, rules or DNS listener from the test.
	host := exec.Command(filepath.Join(e.bin, "bangerd"), "--foreground", "--no-network")
	host.Env = e.vars
	logf, _ := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	host.Stdout, host.Stderr = logf, logf
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitForDaemon(host.Process.Pid)
	stopHost := func() {
		_ = host.Process.Signal(syscall.SIGTERM)
		_ = host.Wait()
		logf.Close()
	}
	start = time.Now()
	pull := exec.Command(filepath.Join(e.bin, "banger"), "--no-autostart", "image", "pull", ref, "--name", "oci-bookworm")
	pull.Env = e.vars
	out, err := pull.CombinedOutput()
	stopHost()
	if exec.Command("ip", "link", "show", "bge2e0").Run() == nil {
		t.Error("the pulling daemon made the VM bridge in the host's own network namespace")
	}
	if err != nil {
		t.Fatalf("image pull: %v\n%s\nlog:\n%s", err, out, e.daemonLog())
	}
	t.Logf("pulled in %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	e.startDaemon()

	show := e.must("image", "show", "oci-bookworm")
	if !strings.Contains(show, ref) {
		t.Errorf("image show does not name the source %s:\n%s", ref, show)
	}
	e.must("vm", "create", "--name", "ocivm", "--image", "oci-bookworm")
	if got := strings.TrimSpace(e.must("vm", "exec", "ocivm", "--", "cat", "/etc/banger-oci-marker")); got != "from layer 2" {
		t.Errorf("layer 2 file = %q", got)
	}
	if _, _, code := e.banger("vm", "exec", "ocivm", "--", "test", "-e", "/etc/motd"); code == 0 {
		t.Error("/etc/motd survived its whiteout")
	}
	if host := strings.TrimSpace(e.must("vm", "exec", "ocivm", "--", "hostname")); host != "ocivm" {
		t.Errorf("hostname = %q", host)
	}
	e.must("vm", "delete", "ocivm")
	e.assertNothingLeft("ocivm")
	e.must("image", "delete", "oci-bookworm")
}

// serveImage pushes a linux/amd64 image of layers to a registry on
// loopback that lives until the test ends, and returns its reference.
func serveImage(t *testing.T, repoTag string, layers ...v1.Layer) string {
	t.Helper()
	ref := ocitest.Registry(t, nil) + "/" + repoTag
	ocitest.Push(t, ref, ocitest.Image(t, "amd64", v1.Config{}, layers...))
	return ref
}

// bookwormTar returns a tar of the built image's tree (cached beside the
// image: making it needs a read-only loop mount).
func bookwormTar(t *testing.T, rootfs string) string {
	t.Helper()
	out := filepath.Join(filepath.Dir(rootfs), "tree.tar")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	mnt := t.TempDir()
	run(t, "mount", "-o", "loop,ro", rootfs, mnt)
	defer func() {
		if out, err := exec.Command("umount", "-d", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	}()
	tmp := out + ".tmp"
	run(t, "tar", "--numeric-owner", "--xattrs", "-C", mnt, "-cf", tmp, "--exclude=./lost+found", ".")
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	return out
}
