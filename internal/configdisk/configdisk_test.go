package configdisk

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/kernel"
)

func sampleFiles() []File {
	return []File{
		{Path: "/etc/hostname", Data: []byte("web\n")},
		{Path: "/etc/ssh/ssh_host_ed25519_key", Data: []byte("PRIVATE"), Mode: 0o600},
		{Path: "/etc/systemd/system/multi-user.target.wants/banger-agent.service", Target: "/etc/systemd/system/banger-agent.service"},
		{Path: "/etc/resolv.conf", Data: []byte("nameserver 172.30.0.1\n")},
	}
}

func TestBuildStartsWithMagicAndRoundTrips(t *testing.T) {
	img, err := Build(sampleFiles())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(img, []byte(Magic)) {
		t.Fatalf("image starts with %q, want %q", img[:20], Magic)
	}
	if len(img)%4096 != 0 {
		t.Fatalf("image is %d bytes, not a 4 KiB multiple", len(img))
	}
	got, err := Read(img)
	if err != nil {
		t.Fatal(err)
	}
	want := []File{
		{Path: "/etc/hostname", Data: []byte("web\n"), Mode: 0o644},
		{Path: "/etc/resolv.conf", Data: []byte("nameserver 172.30.0.1\n"), Mode: 0o644},
		{Path: "/etc/ssh/ssh_host_ed25519_key", Data: []byte("PRIVATE"), Mode: 0o600},
		{Path: "/etc/systemd/system/multi-user.target.wants/banger-agent.service", Mode: 0o777, Target: "/etc/systemd/system/banger-agent.service"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Read = %+v\nwant  %+v", got, want)
	}
	again, _ := Build(sampleFiles())
	if !bytes.Equal(img, again) {
		t.Fatal("Build is not deterministic")
	}
}

func TestBuildRefusesBadPaths(t *testing.T) {
	for _, p := range []string{"etc/hostname", "/", "/etc/../shadow", "/etc//x", "/etc/x/", "/a\nb", "/" + strings.Repeat("x", 300)} {
		if _, err := Build([]File{{Path: p}}); err == nil {
			t.Errorf("Build accepted path %q", p)
		}
	}
	if _, err := Build([]File{{Path: "/etc/x"}, {Path: "/etc/x"}}); err == nil {
		t.Error("Build accepted a path twice")
	}
	if _, err := Build([]File{{Path: "/etc"}, {Path: "/etc/x"}}); err == nil {
		t.Error("Build accepted a path that is a file and a directory")
	}
	if _, err := Build([]File{{Path: "/big", Data: make([]byte, MaxSize+1)}}); err == nil {
		t.Error("Build accepted more than MaxSize")
	}
}

// busyboxBin makes a directory of busybox applet links, as the initrd has.
func busyboxBin(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skipf("needs busybox (busybox-static, a host package of banger): %v", err)
	}
	bin := t.TempDir()
	for _, a := range []string{"sh", "head", "rm", "mkdir", "tar", "cat", "find", "cp", "wc"} {
		if err := os.Symlink(bb, filepath.Join(bin, a)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// TestInitrdAppliesConfigDisk runs the initrd's banger-apply-config, with
// busybox as in the initrd, on a disk Build made and a root whose paths
// are hostile: links out of the root are replaced, never written through.
func TestInitrdAppliesConfigDisk(t *testing.T) {
	bin := busyboxBin(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "banger-apply-config")
	if err := os.WriteFile(script, []byte(kernel.ApplyConfigScript), 0o755); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "config.img")
	if err := Write(dev, sampleFiles()); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	outside := filepath.Join(dir, "outside")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(outside, []byte("host file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The image's /etc/hostname and /etc/resolv.conf are links pointing out of the root.
	for _, l := range []string{"etc/hostname", "etc/resolv.conf"} {
		if err := os.Symlink(outside, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, int) {
		cmd := exec.Command(filepath.Join(bin, "sh"), append([]string{script}, args...)...)
		cmd.Env = []string{"PATH=" + bin}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	out, code := run(dev, root, filepath.Join(dir, "work"))
	if code != 0 || !strings.Contains(out, "4 files") {
		t.Fatalf("apply: exit %d: %s", code, out)
	}
	if b, _ := os.ReadFile(outside); string(b) != "host file\n" {
		t.Fatalf("a file outside the root was written through a link: %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(root, "etc/hostname")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("etc/hostname: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "web\n" {
		t.Fatalf("etc/hostname = %q", b)
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("host key: %v %v", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/banger-agent.service")); err != nil || target != "/etc/systemd/system/banger-agent.service" {
		t.Fatalf("unit link: %q %v", target, err)
	}

	// Something that is not a config disk: exit 2, nothing touched.
	plain := filepath.Join(dir, "plain.img")
	if err := os.WriteFile(plain, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(plain, root, filepath.Join(dir, "work2")); code != 2 {
		t.Fatalf("plain disk: exit %d: %s", code, out)
	}
	// A config disk of a layout this initrd does not know: exit 1, named.
	img, _ := Build(sampleFiles())
	// The version file's data is the third 512-byte block.
	if img[1024] != Version[0] {
		t.Fatalf("block 3 starts with %q, not the version", img[1024:1030])
	}
	img[1024] = '9'
	future := filepath.Join(dir, "future.img")
	if err := os.WriteFile(future, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(future, root, filepath.Join(dir, "work3")); code != 1 || !strings.Contains(out, "layout version '9'") {
		t.Fatalf("future layout: exit %d: %s", code, out)
	}
}
