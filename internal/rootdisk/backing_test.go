package rootdisk

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"banger/internal/system"
)

func TestBackingChainReadsTheFiles(t *testing.T) {
	if _, err := system.LookPath("qemu-img"); err != nil {
		t.Skipf("needs qemu-img (qemu-utils): %v", err)
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &system.Exec{}
	layer := filepath.Join(dir, "layers", "L1")
	if err := os.MkdirAll(filepath.Dir(layer), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", layer); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "vm", "root.qcow2")
	if err := os.MkdirAll(filepath.Dir(overlay), 0o755); err != nil {
		t.Fatal(err)
	}
	// A relative backing name, as QEMU allows: resolved from the overlay's dir.
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "../layers/L1", "-F", "qcow2", overlay); err != nil {
		t.Fatal(err)
	}
	chain, err := BackingChain(overlay)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "vm", "../layers/L1"), base}
	if !reflect.DeepEqual(chain, want) {
		t.Fatalf("chain = %q, want %q", chain, want)
	}
	if chain, err := BackingChain(base); err != nil || len(chain) != 0 {
		t.Fatalf("a raw file's chain = %q, %v", chain, err)
	}
}
