package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/kernel"
)

// writeKernelDir makes a kernel directory kernel.import accepts.
func writeKernelDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]kernel.File{}
	for role, body := range map[string]string{kernel.RoleVmlinuz: "bzImage", kernel.RoleVmlinux: "\x7fELF", kernel.RoleInitrd: "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, role), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(body))
		files[role] = kernel.File{Path: role, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body))}
	}
	m := kernel.Manifest{SchemaVersion: 1, Name: "test", Version: "6.1.0-cli", Arch: "amd64", Files: files, PVH: true,
		Source: kernel.Source{Package: "linux-image-test", Version: "1", Origin: "test"}, BuiltAt: time.Now().UTC()}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, kernel.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mustRun(t *testing.T, getenv func(string) string, args ...string) string {
	t.Helper()
	out, stderr, code := runCLI(t, getenv, args...)
	if code != 0 {
		t.Fatalf("banger %s exited %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

func TestImageAndKernelCommands(t *testing.T) {
	getenv := startTestDaemon(t)
	mustRun(t, getenv, "kernel", "import", "k1", "--from", writeKernelDir(t))
	rootfs := filepath.Join(t.TempDir(), "root.ext4")
	if err := os.WriteFile(rootfs, bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"one", "two"} {
		mustRun(t, getenv, "image", "register", "--name", n, "--rootfs", rootfs, "--kernel", "k1")
	}

	var images []api.Image
	decode(t, mustRun(t, getenv, "image", "list", "--json"), &images)
	if len(images) != 2 || !images[0].Default || images[1].Default {
		t.Fatalf("image list = %+v, want one (default) and two", images)
	}
	mustRun(t, getenv, "image", "promote", "two")
	var shown api.ImageDetails
	decode(t, mustRun(t, getenv, "image", "show", "two", "--json"), &shown)
	if !shown.Default || shown.Manifest.Kind != api.ImageKindRegistered || shown.SHA256 == "" {
		t.Errorf("image show two = %+v", shown)
	}
	text := mustRun(t, getenv, "image", "show", "two")
	for _, want := range []string{"default:", "yes", "sha256:", shown.SHA256, "packages:", "unknown", "used by:", "none"} {
		if !strings.Contains(text, want) {
			t.Errorf("image show text lacks %q:\n%s", want, text)
		}
	}

	var k api.KernelDetails
	decode(t, mustRun(t, getenv, "kernel", "show", "k1", "--json"), &k)
	if strings.Join(k.Suits, ",") != "qemu,firecracker" || len(k.Files) != 3 || len(k.Images) != 2 {
		t.Errorf("kernel show = %+v", k)
	}
	if text := mustRun(t, getenv, "kernel", "show", "k1"); !strings.Contains(text, "Firecracker (vmlinux with PVH)") {
		t.Errorf("kernel show text:\n%s", text)
	}
	var catalog []api.KernelCatalogEntry
	decode(t, mustRun(t, getenv, "kernel", "list", "--available", "--json"), &catalog)
	if len(catalog) != 1 || catalog[0].Name != "debian-6.1" || catalog[0].Installed {
		t.Errorf("kernel list --available = %+v", catalog)
	}

	_, stderr, code := runCLI(t, getenv, "kernel", "rm", "k1")
	if code == 0 || !strings.Contains(stderr, "one, two") {
		t.Errorf("kernel rm of a used kernel: exit %d, %q", code, stderr)
	}
	for _, n := range []string{"one", "two"} {
		mustRun(t, getenv, "image", "delete", n)
	}
	mustRun(t, getenv, "kernel", "rm", "k1")
	decode(t, mustRun(t, getenv, "image", "list", "--json"), &images)
	if len(images) != 0 {
		t.Errorf("images left after delete: %+v", images)
	}
	if out := mustRun(t, getenv, "image", "cache", "prune", "--dry-run"); !strings.Contains(out, "nothing to remove") {
		t.Errorf("cache prune on a clean daemon: %q", out)
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

func TestLineViewPrintsStagesAndQuarters(t *testing.T) {
	var b bytes.Buffer
	v := &lineView{w: &b}
	for _, op := range []api.OperationSummary{
		{Stage: "kernel debian-6.1: download"},
		{Stage: "download layers", ProgressTotal: 4 << 20},
		{Stage: "download layers", ProgressDone: 1 << 20, ProgressTotal: 4 << 20},
		{Stage: "download layers", ProgressDone: 1<<20 + 5, ProgressTotal: 4 << 20},
		{Stage: "download layers", ProgressDone: 4 << 20, ProgressTotal: 4 << 20},
		{Stage: "inject bootstrap"},
	} {
		v.update(op)
	}
	want := "  kernel debian-6.1: download\n" +
		"  download layers\n" +
		"  download layers: 0B of 4M (0%)\n" +
		"  download layers: 1M of 4M (25%)\n" +
		"  download layers: 4M of 4M (100%)\n" +
		"  inject bootstrap\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestBarViewDrawsByteStages(t *testing.T) {
	var b bytes.Buffer
	v := &barView{w: &b}
	for _, op := range []api.OperationSummary{
		{Stage: "resolve"},
		{Stage: "download layers", ProgressDone: 1 << 20, ProgressTotal: 4 << 20},
		{Stage: "download layers", ProgressDone: 4 << 20, ProgressTotal: 4 << 20},
		{Stage: "build filesystem", ProgressDone: 0, ProgressTotal: 8 << 20},
		{Stage: "record"},
	} {
		v.update(op)
	}
	v.close()
	out := b.String()
	for _, want := range []string{"  resolve\n", "download layers 100%", "4.0/4.0 MiB", "build filesystem   0%", "  record\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar output lacks %q:\n%q", want, out)
		}
	}
	if strings.Contains(out, "build filesystem 100%") {
		t.Errorf("a stage that ended at 0%% was drawn complete:\n%q", out)
	}
}
