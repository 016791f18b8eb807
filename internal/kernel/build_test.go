package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"banger/internal/system"
)

// TestBuildDebian builds the real kernel from Debian packages. It
// downloads about 75 MB, so it only runs with BANGER_BUILD_TESTS=1.
// BANGER_KERNEL_DEST names a directory to build into and keep (a cache for
// later tests); otherwise the build goes to a temporary directory.
func TestBuildDebian(t *testing.T) {
	if os.Getenv("BANGER_BUILD_TESTS") != "1" {
		t.Skip("set BANGER_BUILD_TESTS=1 to build the Debian kernel (downloads ~75 MB)")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb", "xz", "env"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
	dest := os.Getenv("BANGER_KERNEL_DEST")
	if dest == "" {
		dest = filepath.Join(t.TempDir(), "kernel")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	start := time.Now()
	var stages []string
	m, err := BuildDebian(ctx, &system.Exec{}, t.TempDir(), dest, func(s string) {
		stages = append(stages, s)
		t.Logf("%6.1fs %s", time.Since(start).Seconds(), s)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s %s from %s %s in %v", m.Name, m.Version, m.Source.Package, m.Source.Version, time.Since(start).Round(time.Second))

	loaded, err := LoadManifest(dest)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Version != m.Version || loaded.Source != m.Source {
		t.Errorf("LoadManifest = %+v, BuildDebian returned %+v", loaded, m)
	}
	if err := loaded.Verify(dest); err != nil {
		t.Error(err)
	}
	if !strings.HasPrefix(m.Source.Package, "linux-image-") || m.Arch != "amd64" {
		t.Errorf("source %+v arch %q, want a linux-image-* amd64 package", m.Source, m.Arch)
	}
	if !m.PVH {
		t.Error("vmlinux has no PVH note; Debian's 6.1 kernel has CONFIG_PVH=y")
	}
	vmlinux, err := m.Path(dest, RoleVmlinux)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkKernelELF(data); err != nil {
		t.Error(err)
	}
	if !bytes.Contains(data, []byte("Linux version "+m.Version)) {
		t.Errorf("vmlinux does not contain %q", "Linux version "+m.Version)
	}
	for _, f := range []string{"modules.dep", "kernel/fs/ext4/ext4.ko"} {
		if _, err := os.Stat(filepath.Join(dest, m.ModulesDir, f)); err != nil {
			t.Errorf("modules tree: %v", err)
		}
	}

	// The initrd holds init, busybox and every module it loads.
	entries := readInitrd(t, filepath.Join(dest, m.Files[RoleInitrd].Path))
	for _, want := range []string{"init", "bin/busybox", "bin/switch_root", initrdModuleList,
		"lib/modules/" + m.Version + "/kernel/fs/ext4/ext4.ko",
		"lib/modules/" + m.Version + "/kernel/drivers/virtio/virtio_mmio.ko"} {
		if _, ok := entries[want]; !ok {
			t.Errorf("initrd has no %s", want)
		}
	}
	order := strings.Fields(string(entries[initrdModuleList]))
	if len(order) != len(m.InitrdModules) {
		t.Errorf("initrd loads %d modules, manifest lists %d", len(order), len(m.InitrdModules))
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[ModuleName(p)] = i
	}
	for _, pair := range [][2]string{{"virtio", "virtio_blk"}, {"jbd2", "ext4"}, {"vsock", "vmw_vsock_virtio_transport"}} {
		a, aok := pos[pair[0]]
		b, bok := pos[pair[1]]
		if !aok || !bok || a > b {
			t.Errorf("initrd load order %v: want %s before %s", order, pair[0], pair[1])
		}
	}
}

func readInitrd(t *testing.T, p string) map[string][]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string][]byte{}
	cr := cpio.NewReader(zr)
	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(cr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Linkname != "" {
			data = []byte(h.Linkname)
		}
		entries[h.Name] = data
	}
	return entries
}
