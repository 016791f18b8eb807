//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/system"
)

// rootlessBuilder is the uid the catalog image is built as here, as a
// system install's unprivileged daemon builds it.
const rootlessBuilder = 4242

// rootlessBuild is what the test asks of its child.
type rootlessBuild struct {
	Dir, Modules, Version string
}

// rootlessBuildChild builds the image, when this process is that child,
// and says whether it was.
func rootlessBuildChild() bool {
	spec := os.Getenv("BANGER_E2E_ROOTLESS_BUILD")
	if spec == "" {
		return false
	}
	var b rootlessBuild
	if err := json.Unmarshal([]byte(spec), &b); err != nil {
		fmt.Println("RESULT error", err)
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	_, err := image.BuildDebianBookworm(ctx, &system.Exec{}, image.BuildOptions{
		WorkDir: filepath.Join(b.Dir, "work"), DestDir: filepath.Join(b.Dir, "image"),
		KernelModulesDir: b.Modules, KernelVersion: b.Version,
		Progress: func(s string) { fmt.Printf("stage %s at %s\n", s, time.Since(start).Round(time.Second)) },
	})
	if err != nil {
		fmt.Println("RESULT error", err)
		return true
	}
	fmt.Printf("RESULT ok in %s\n", time.Since(start).Round(time.Second))
	return true
}

// TestRootlessCatalogImage: the catalog image built by a user who is not
// root (mmdebstrap under fakechroot into a tar, the rootless conversion,
// banger's edits and depmod in it) holds every file of the image root
// builds, of the same type, mode, owner and group, and a VM of it boots
// and works: sudo (setuid root) runs, the kernel's modules load, the
// journal's directory is systemd-journal's.
func TestRootlessCatalogImage(t *testing.T) {
	if rootlessBuildChild() {
		return
	}
	kernelDir, rootRootfs := artifacts(t)
	km, err := kernel.LoadManifest(kernelDir)
	if err != nil {
		t.Fatal(err)
	}
	rootfs, _ := buildRootless(t, kernelDir, km)
	if out, err := exec.Command("e2fsck", "-f", "-n", rootfs).CombinedOutput(); err != nil {
		t.Errorf("e2fsck: %v\n%s", err, out)
	}

	// Every file, as root builds it (names, types, modes, owners), but
	// for what differs for reasons outside banger: mmdebstrap leaves apt's
	// partial directories to _apt (42) in fakechroot mode and to root in
	// root mode (both are apt's), and systemd's postinst sets the
	// journal's group and setgid bit through systemd-tmpfiles, which
	// works on /proc/self/fd paths fakeroot does not see (tmpfiles sets
	// it again at every boot: checked in the VM below).
	want, got := listImage(t, rootRootfs), listImage(t, rootfs)
	for p, w := range map[string]string{
		"./var/lib/apt/lists/partial":      "d 700 42 0 ",
		"./var/cache/apt/archives/partial": "d 700 42 0 ",
		"./var/log/journal":                "d 755 0 0 ",
	} {
		if got[p] == w {
			got[p] = want[p]
		}
	}
	if missing, extra, differ := compareListings(want, got); len(missing)+len(extra)+len(differ) != 0 {
		t.Errorf("the rootless image differs from root's: %d missing, %d extra, %d different\nmissing %q\nextra %q\ndifferent %q",
			len(missing), len(extra), len(differ), head(missing, 20), head(extra, 20), head(differ, 20))
	}

	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "rootless", "--rootfs", rootfs, "--kernel", "debian-6.1")
	got1 := e.must("vm", "run", "--image", "rootless", "--name", "r", "--", "sh", "-c",
		"stat -c '%U:%G %a' /etc/shadow /usr/bin/sudo /var/log/journal && sudo -n id -u && modprobe dummy && grep -c '^dummy ' /proc/modules")
	wantOut := "root:root 640\nroot:root 4755\nroot:systemd-journal 2755\n0\n1\n"
	if got1 != wantOut {
		t.Errorf("in a VM of the rootless image:\n%s\nwant\n%s", got1, wantOut)
	}
	e.must("vm", "delete", "r")
	e.assertNoLeaks("after the rootless image's VM")
}

// buildRootless builds the catalog image as rootlessBuilder, from the
// host's mirrors in the host's namespace (no VM runs there), with /tmp
// read-only as under a system install's unit, and returns its rootfs
// (removed when the test ends) and how long the build took.
func buildRootless(t *testing.T, kernelDir string, km kernel.Manifest) (string, time.Duration) {
	t.Helper()
	dir, err := os.MkdirTemp(cacheDir(), "rootless-build-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chown(dir, rootlessBuilder, rootlessBuilder); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "e2e.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(rootlessBuild{Dir: dir, Modules: filepath.Join(kernelDir, km.ModulesDir), Version: km.Version})
	// /tmp read-only in a mount namespace of the child's own: the build
	// keeps its temporary files in its work directory.
	uid := strconv.Itoa(rootlessBuilder)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp && exec "$@"`, "sh",
		"setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups",
		bin, "-test.run", "^TestRootlessCatalogImage$", "-test.count=1", "-test.timeout=40m")
	cmd.Env = append(os.Environ(), "BANGER_E2E_ROOTLESS_BUILD="+string(spec), "HOME="+dir)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	t.Logf("the build as uid %d:\n%s", rootlessBuilder, lastLines(string(out), 40))
	if err != nil || !strings.Contains(string(out), "RESULT ok") {
		t.Fatalf("the build as uid %d failed: %v", rootlessBuilder, err)
	}
	rootfs := filepath.Join(dir, "image", "rootfs.ext4")
	if fi, err := os.Stat(rootfs); err != nil || fi.Sys().(*syscall.Stat_t).Uid != rootlessBuilder {
		t.Fatalf("%s: %v, want a file of uid %d", rootfs, err, rootlessBuilder)
	}
	return rootfs, took
}

// listImage lists every file of the ext4 image at img as
// "path type mode uid gid symlink-target" (its own mount namespace:
// nothing stays mounted).
func listImage(t *testing.T, img string) map[string]string {
	t.Helper()
	mnt := t.TempDir()
	out, err := exec.Command("unshare", "-m", "sh", "-c",
		`mount -o ro,loop,noload "$1" "$2" && cd "$2" && find . -printf '%p %y %m %U %G %l\n'`, "sh", img, mnt).Output()
	if err != nil {
		t.Fatalf("list %s: %v", img, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		p, rest, _ := strings.Cut(line, " ")
		m[p] = rest
	}
	return m
}

// compareListings says what want has that got has not, the other way,
// and what differs.
func compareListings(want, got map[string]string) (missing, extra, differ []string) {
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			missing = append(missing, p)
		case g != w:
			differ = append(differ, p+": "+g+", root's "+w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			extra = append(extra, p)
		}
	}
	return missing, extra, differ
}

func head(xs []string, n int) []string {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
