package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/rootdisk"
	"banger/internal/store"
	"banger/internal/system"
)

// TestGCLayersKeepsALayerADiskStandsOn: a clone interrupted between
// freezing a layer and recording it leaves a VM whose overlay stands on a
// layer its row does not name; collecting layers must keep it, and remove
// it once nothing stands on it.
func TestGCLayersKeepsALayerADiskStandsOn(t *testing.T) {
	if _, err := system.LookPath("qemu-img"); err != nil {
		t.Skipf("needs qemu-img (qemu-utils): %v", err)
	}
	d := openArtifactDaemon(t)
	ctx := context.Background()
	base := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d.layersDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(d.layersDir(), "vm1-root")
	overlay := filepath.Join(t.TempDir(), "root.qcow2")
	r := &system.Exec{}
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", layer); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", layer, "-F", "qcow2", overlay); err != nil {
		t.Fatal(err)
	}
	// The row still names the chain from before the freeze.
	stale := rootdisk.Disk{Strategy: rootdisk.QCOW2, Path: overlay, Format: rootdisk.FormatQCOW2, Chain: []string{base}}
	v := store.VM{Name: "src", Image: "img", Kernel: "k", State: store.StateStopped, VCPU: 1, MemoryMiB: 256,
		DiskSizeBytes: 1 << 30, VMM: "qemu", RootDisk: encodeDisk(stale)}
	if err := d.store.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	d.gcLayers(ctx)
	if _, err := os.Stat(layer); err != nil {
		t.Fatalf("a layer a VM's disk stands on was removed: %v", err)
	}
	// Once no file stands on it, it goes.
	if err := os.Remove(overlay); err != nil {
		t.Fatal(err)
	}
	d.gcLayers(ctx)
	if _, err := os.Stat(layer); !os.IsNotExist(err) {
		t.Fatalf("an unused layer was kept: %v", err)
	}
}
