package daemon

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/kernel"
	"banger/internal/store"
)

// openArtifactDaemon opens a real daemon (store, layout) in a temporary
// XDG tree; it is closed when the test ends.
func openArtifactDaemon(t *testing.T) *Daemon {
	t.Helper()
	root := t.TempDir()
	env := map[string]string{
		"HOME":            root,
		"XDG_RUNTIME_DIR": filepath.Join(root, "run"),
		"XDG_STATE_HOME":  filepath.Join(root, "state"),
		"XDG_CONFIG_HOME": filepath.Join(root, "config"),
		"XDG_CACHE_HOME":  filepath.Join(root, "cache"),
	}
	layout, err := config.LayoutFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(t.Context(), Options{Layout: layout, Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// kernelSpec describes a kernel directory made by makeKernelDir.
type kernelSpec struct {
	version string
	// busybox is the content of the initrd's bin/busybox; nil leaves it out.
	busybox []byte
	modules map[string]string // relative path -> content
	pvh     bool
	// features are the initrd's (kernel.FeatureConfigDisk, ...).
	features []string
}

// makeKernelDir writes a kernel directory as banger's kernel builder lays
// it out: vmlinuz, vmlinux, an initrd (gzip'ed newc cpio), a modules tree
// and manifest.json with real checksums.
func makeKernelDir(t *testing.T, spec kernelSpec) string {
	t.Helper()
	dir := t.TempDir()
	write := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vmlinuz", []byte("bzImage "+spec.version))
	write("vmlinux", []byte("\x7fELF vmlinux "+spec.version))
	write("initrd.img", initrdWith(t, spec.busybox))
	for rel, body := range spec.modules {
		write(filepath.Join("modules", rel), []byte(body))
	}
	if err := os.MkdirAll(filepath.Join(dir, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]kernel.File{}
	for role, rel := range map[string]string{kernel.RoleVmlinuz: "vmlinuz", kernel.RoleVmlinux: "vmlinux", kernel.RoleInitrd: "initrd.img"} {
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		files[role] = kernel.File{Path: rel, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	}
	m := kernel.Manifest{SchemaVersion: 1, Name: "test", Version: spec.version, Arch: "amd64",
		Source: kernel.Source{Package: "linux-image-" + spec.version, Version: "1.0-1", Origin: "test"},
		Files:  files, ModulesDir: "modules", InitrdModules: []string{"virtio_blk"}, PVH: spec.pvh,
		Cmdline: "console=ttyS0 root=/dev/vda rw", BuiltAt: time.Unix(1700000000, 0).UTC(), InitrdFeatures: spec.features}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	write(kernel.ManifestFile, data)
	return dir
}

// initrdWith is a gzip'ed newc cpio holding bin/busybox (when given).
func initrdWith(t *testing.T, busybox []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	cw := cpio.NewWriter(zw)
	add := func(name string, mode cpio.FileMode, data []byte) {
		if err := cw.WriteHeader(&cpio.Header{Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := cw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	add("bin", cpio.TypeDir|0o755, nil)
	add("init", cpio.TypeReg|0o755, []byte("#!/bin/sh\n"))
	if busybox != nil {
		add("bin/busybox", cpio.TypeReg|0o755, busybox)
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func importTestKernel(t *testing.T, d *Daemon, name string, spec kernelSpec) api.Kernel {
	t.Helper()
	k, err := d.kernelImport(t.Context(), api.KernelImportParams{Name: name, From: makeKernelDir(t, spec)})
	if err != nil {
		t.Fatalf("import kernel %s: %v", name, err)
	}
	return k
}

// registerTestImage registers a small file as image name booting kernel.
func registerTestImage(t *testing.T, d *Daemon, name, kernelName string) api.Image {
	t.Helper()
	src := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := os.WriteFile(src, []byte(strings.Repeat("root filesystem "+name, 64)), 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := d.imageRegister(t.Context(), api.ImageRegisterParams{Name: name, Rootfs: src, Kernel: kernelName})
	if err != nil {
		t.Fatalf("register image %s: %v", name, err)
	}
	return im
}

// insertVM records a stopped VM row using image and kernel.
func insertVM(t *testing.T, d *Daemon, name, image, kernelName, ip string) {
	t.Helper()
	v := store.VM{Name: name, Image: image, Kernel: kernelName, State: store.StateStopped, VCPU: 1, MemoryMiB: 256, IP: ip}
	if err := d.store.CreateVM(t.Context(), &v); err != nil {
		t.Fatal(err)
	}
}

func wantCode(t *testing.T, err error, code api.Code, mention ...string) {
	t.Helper()
	if !api.IsCode(err, code) {
		t.Fatalf("err = %v, want code %s", err, code)
	}
	for _, m := range mention {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
}

// waitPull waits (bounded) for a pull operation and returns its summary.
func waitPull(t *testing.T, d *Daemon, opID string) api.OperationSummary {
	t.Helper()
	op, ok := d.ops.imagePull.Get(opID)
	if !ok {
		op, ok = d.ops.kernelPull.Get(opID)
	}
	if !ok {
		t.Fatalf("operation %s not registered", opID)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	select {
	case <-op.doneCh:
	case <-ctx.Done():
		t.Fatalf("operation %s did not finish: %+v", opID, op.summary())
	}
	return op.summary()
}
