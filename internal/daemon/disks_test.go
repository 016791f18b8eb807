package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/rootdisk"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vmm/firecracker"
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

// TestFreezeCopy: for a VMM that cannot layer a live disk (Firecracker),
// a snapshot's layer is a copy of the disk as it was while the guest was
// paused; the VM's later writes do not reach it, and the gc keeps it
// while a snapshot names it.
func TestFreezeCopy(t *testing.T) {
	d := openArtifactDaemon(t)
	ctx := context.Background()
	if d.layersLive("firecracker") || !d.layersLive("qemu") {
		t.Fatalf("layersLive: firecracker %v, qemu %v; want false, true", d.layersLive("firecracker"), d.layersLive("qemu"))
	}
	if err := os.MkdirAll(d.layersDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(t.TempDir(), "work.ext4")
	before := append([]byte("saved"), make([]byte, 64<<10)...)
	if err := os.WriteFile(work, before, 0o600); err != nil {
		t.Fatal(err)
	}
	v := store.VM{ID: "0123456789abcdef", Name: "fc"}
	frozen, err := d.freezeCopy(ctx, v, "work", rootdisk.NewRaw(work), "snap1")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(d.layersDir(), "snap1-work-0123456789ab.raw"); frozen.Path != want || frozen.Format != rootdisk.FormatRaw || len(frozen.Chain) != 0 {
		t.Fatalf("frozen = %+v, want a raw layer at %s", frozen, want)
	}
	if err := os.WriteFile(work, []byte("after"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(frozen.Path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got[:5]) != "saved" || len(got) != len(before) {
		t.Fatalf("the layer holds %q (%d bytes), want the disk as it was when frozen", got[:5], len(got))
	}
	// A layered disk cannot be frozen as one file.
	if _, err := d.freezeCopy(ctx, v, "root", rootdisk.Disk{Strategy: rootdisk.QCOW2, Path: work, Format: rootdisk.FormatQCOW2, Chain: []string{"/x"}}, "snap2"); err == nil {
		t.Fatal("freezeCopy of a qcow2 overlay succeeded")
	}
	if _, err := os.Lstat(filepath.Join(d.layersDir(), "snap2-root-0123456789ab.raw")); err == nil {
		t.Fatal("a refused freeze left a layer")
	}
}

// TestSnapshotMismatchJailer: a Firecracker snapshot names its disks by
// jail paths or by descriptor; one saved jailed restores only jailed, and
// the other way round.
func TestSnapshotMismatchJailer(t *testing.T) {
	unjailed := firecracker.New(firecracker.Config{Binary: "/usr/bin/firecracker"})
	jailedDrv := firecracker.New(firecracker.Config{Binary: "/usr/bin/firecracker", Jailer: &firecracker.JailerConfig{}})
	snap := func(j bool) store.Snapshot {
		meta := `{"jailed":false}`
		if j {
			meta = `{"jailed":true}`
		}
		return store.Snapshot{Name: "s", VMM: "firecracker", Accel: "kvm", Meta: meta}
	}
	if why := snapshotMismatch(snap(true), unjailed); !strings.Contains(why, "saved by a Firecracker under its jailer and this one runs unjailed") {
		t.Errorf("jailed snapshot, unjailed driver: %q", why)
	}
	if why := snapshotMismatch(snap(false), jailedDrv); !strings.Contains(why, "saved by a Firecracker unjailed and this one runs under its jailer") {
		t.Errorf("unjailed snapshot, jailed driver: %q", why)
	}
	if why := snapshotMismatch(snap(true), jailedDrv); why != "" {
		t.Errorf("jailed snapshot, jailed driver: %q", why)
	}
	if why := snapshotMismatch(snap(false), unjailed); why != "" {
		t.Errorf("unjailed snapshot, unjailed driver: %q", why)
	}
}
