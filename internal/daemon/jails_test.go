package daemon

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"banger/internal/store"
)

// TestJailLeftovers: the jail and cgroups of a VM that runs stay; those
// of a stopped VM, or of no VM at all, are leaks, and the start-up sweep
// removes them.
func TestJailLeftovers(t *testing.T) {
	d := openArtifactDaemon(t)
	ctx := t.Context()
	d.cgroupRoot = t.TempDir()
	mk := func(name, state string) store.VM {
		v := store.VM{Name: name, Image: "debian", Kernel: "6.1", State: state, VCPU: 1, MemoryMiB: 512,
			DiskSizeBytes: 1 << 30, VMM: "firecracker"}
		if err := d.store.CreateVM(ctx, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	running, stopped := mk("up", store.StateRunning), mk("down", store.StateStopped)
	var kept, gone []string
	for id, keep := range map[string]bool{shortID(running.ID): true, shortID(stopped.ID): false, "0123456789ab": false} {
		dirs := []string{
			filepath.Join(d.jailBase(), "firecracker", id),
			filepath.Join(d.cgroupRoot, "banger", id),
			filepath.Join(d.cgroupRoot, "memory", "banger", id),
		}
		for _, dir := range dirs {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if keep {
			kept = append(kept, dirs...)
		} else {
			gone = append(gone, dirs...)
		}
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := d.jailLeftovers(vms)
	slices.Sort(got)
	slices.Sort(gone)
	if !slices.Equal(got, gone) {
		t.Fatalf("leftovers = %q\nwant %q", got, gone)
	}
	if leaks := leakNames(t, d); !slices.Contains(leaks, "file "+filepath.Join(d.jailBase(), "firecracker", shortID(stopped.ID))) {
		t.Errorf("the leak checker missed the stopped VM's jail: %q", leaks)
	}
	d.sweepJails(ctx)
	for _, p := range gone {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s survived the sweep", p)
		}
	}
	for _, p := range kept {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("the running VM's %s was swept: %v", p, err)
		}
	}
}
