package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/internal/vmm/vmmcore"
)

// TestSnapshotSaveAndRestore saves a running VM and restores it into a
// second VM with its own disks, tap and vsock socket while the first
// still runs, as banger forks a VM.
func TestSnapshotSaveAndRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src := testSpec(t)
	d := New(Config{})
	fv := installFake(t, d)
	h, err := d.Start(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state.bin")

	// A guest that runs cannot be saved, and the refusal leaves nothing.
	if err := d.SaveState(ctx, h, state); err == nil || !strings.Contains(err.Error(), faultNotPaused) {
		t.Fatalf("SaveState of a running guest = %v, want %q", err, faultNotPaused)
	}
	for _, f := range d.StateFiles(state) {
		if _, err := os.Lstat(f); err == nil {
			t.Fatalf("%s left by a refused save", f)
		}
	}
	if err := d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := d.SaveState(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if got := d.StateFiles(state); !slices.Equal(got, []string{state, state + ".mem"}) {
		t.Fatalf("StateFiles = %q", got)
	}
	for _, f := range d.StateFiles(state) {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("SaveState wrote no %s: %v", f, err)
		}
	}
	if err := d.SaveState(ctx, h, state); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("a second save over the first = %v, want already exists", err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	reqs, _ := fv.api.snapshot()
	want := []string{"PATCH /vm", "PUT /snapshot/create", "PATCH /vm"}
	if got := reqs[len(reqs)-4:]; !slices.Equal(got, append([]string{"PUT /snapshot/create"}, want...)) {
		t.Errorf("save requests = %q", got)
	}

	// The fork: other disks, tap and runtime directory; the source runs on.
	fork := testSpec(t)
	fork.Name, fork.Tap, fork.IncomingState = "fork", "bg-jail", state
	d2 := New(Config{})
	fv2 := installFake(t, d2)
	h2, err := d2.Start(ctx, fork)
	if err != nil {
		t.Fatal(err)
	}
	reqs, _ = fv2.api.snapshot()
	if want := []string{"PUT /logger", "PUT /snapshot/load", "GET /", "PATCH /vm", "GET /"}; !slices.Equal(reqs, want) {
		t.Errorf("restore requests = %q, want %q", reqs, want)
	}
	f := fv2.api
	f.mu.Lock()
	if f.loaded != state || f.paused || !f.started {
		t.Errorf("loaded %q, paused %v, started %v", f.loaded, f.paused, f.started)
	}
	if n := f.ifaces["eth0"]; *n.HostDevName != "bg-jail" {
		t.Errorf("the restored NIC uses tap %s, want the fork's bg-jail", *n.HostDevName)
	}
	if *f.vsock.UDSPath != filepath.Join(fork.RuntimeDir, VsockName) {
		t.Errorf("the restored vsock listens at %s, want the fork's own", *f.vsock.UDSPath)
	}
	f.mu.Unlock()
	// The saved drive names, /proc/self/fd/N, opened by the fork's VMM
	// are the fork's own disks.
	f.mu.Lock()
	for id, want := range map[string]string{"rootfs": fork.RootDisk, "work": fork.WorkDisk, "config": fork.ConfigDisk} {
		if got := f.opened[id]; got != want {
			t.Errorf("restored drive %s opened %s, want the fork's %s", id, got, want)
		}
	}
	f.mu.Unlock()
	if !d.Alive(h) || !d2.Alive(h2) {
		t.Fatal("the source and the fork should both run")
	}

	// The fork's work disk grows in place and the guest is told.
	if err := d2.ResizeDisk(ctx, h2, "work", 1<<20); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(fork.WorkDisk); err != nil || st.Size() != 1<<20 {
		t.Fatalf("work disk after ResizeDisk: %v, %v", st, err)
	}
	f.mu.Lock()
	patched := slices.Clone(f.patched)
	f.mu.Unlock()
	if !slices.Equal(patched, []string{"work"}) {
		t.Errorf("PATCHed drives = %q, want [work]", patched)
	}
	if err := d2.ResizeDisk(ctx, h2, "work", 1<<10); err == nil || !strings.Contains(err.Error(), "only grows") {
		t.Errorf("shrinking = %v, want refused", err)
	}
	if st, _ := os.Stat(fork.WorkDisk); st.Size() != 1<<20 {
		t.Errorf("a refused shrink changed the disk to %d bytes", st.Size())
	}
	if err := d2.ResizeDisk(ctx, h2, "swap", 1<<20); err == nil {
		t.Error("resizing an unknown drive succeeded")
	}
	if src, _ := os.Stat(src.WorkDisk); src.Size() == 1<<20 {
		t.Error("resizing the fork's disk grew the source's")
	}
}

// TestRestoreRefusals: a snapshot that is gone, and a jailed restore.
func TestRestoreRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	spec := testSpec(t)
	spec.IncomingState = filepath.Join(t.TempDir(), "missing.bin")
	d := New(Config{})
	fv := installFake(t, d)
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "Cannot open the snapshot file") {
		t.Fatalf("restore of a missing snapshot = %v", err)
	}
	if !fv.gone() {
		t.Error("the VMM of a failed restore still runs")
	}
	for _, p := range []string{filepath.Join(spec.RuntimeDir, APISocketName), filepath.Join(spec.RuntimeDir, VsockName)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left by a failed restore", p)
		}
	}

	jailed := New(Config{Binary: "/opt/fc/firecracker", Jailer: &JailerConfig{ChrootBase: t.TempDir(), UID: 1, GID: 1}})
	jailed.launch = func([]string, *os.File, []*os.File) (int, error) { t.Fatal("launched"); return 0, nil }
	if _, err := jailed.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "under the jailer") {
		t.Fatalf("jailed restore = %v", err)
	}
	if err := jailed.SaveState(ctx, vmmcore.Handle{Driver: DriverName, PID: 1, APISocket: "/srv/jailer/firecracker/x/root/run/firecracker.socket"}, "/tmp/x"); err == nil {
		t.Fatal("SaveState of a jailed VMM succeeded")
	}
}
