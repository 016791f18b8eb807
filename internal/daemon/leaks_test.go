package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/internal/store"
	"banger/internal/vmm/vmmcore"
)

func leakNames(t *testing.T, d *Daemon) []string {
	t.Helper()
	res, err := d.findLeaks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range res.Leaks {
		out = append(out, l.Kind+" "+l.Name)
	}
	slices.Sort(out)
	return out
}

// The leak checker finds what no record accounts for, and nothing that
// one does.
func TestFindLeaks(t *testing.T) {
	d := openArtifactDaemon(t)
	ctx := t.Context()
	if got := leakNames(t, d); len(got) != 0 {
		t.Fatalf("a fresh daemon has leaks: %v", got)
	}

	// A stopped VM with its directory, runtime dir and pinned key: accounted.
	v := store.VM{Name: "web", Image: "debian", Kernel: "6.1", State: store.StateStopped, VCPU: 1, MemoryMiB: 512,
		DiskSizeBytes: 1 << 30, IP: "172.31.9.2", MAC: "02:00:00:00:00:01", VMM: "qemu"}
	if err := d.store.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	p := d.pathsFor(v.ID)
	for _, dir := range []string{p.dir, p.run} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(d.layout.KnownHosts), 0o700); err != nil {
		t.Fatal(err)
	}
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	if err := os.WriteFile(d.layout.KnownHosts, []byte("172.31.9.2,web.vm "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := leakNames(t, d); len(got) != 0 {
		t.Fatalf("a recorded VM counted as leaks: %v", got)
	}

	// What a daemon that died could leave: a VM dir and a runtime dir no
	// row names, a key pinned for a deleted VM, an image dir never
	// recorded, a build dir of no operation, a row stuck in creating.
	for _, dir := range []string{filepath.Join(d.layout.VMsDir, "gone"), filepath.Join(d.layout.RuntimeDir, "vms", "gone"),
		filepath.Join(d.layout.ImagesDir, "half"), filepath.Join(d.layout.ImagesDir, ".build-op-dead")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(d.layout.KnownHosts, []byte("172.31.9.2,web.vm "+key+"\n172.31.9.3,old.vm "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stuck := store.VM{Name: "stuck", Image: "debian", Kernel: "6.1", State: store.StateCreating, VCPU: 1, MemoryMiB: 512,
		DiskSizeBytes: 1 << 30, IP: "172.31.9.4", MAC: "02:00:00:00:00:02", VMM: "qemu"}
	if err := d.store.CreateVM(ctx, &stuck); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d.pathsFor(stuck.ID).dir, 0o700); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"file " + filepath.Join(d.layout.ImagesDir, ".build-op-dead"),
		"file " + filepath.Join(d.layout.ImagesDir, "half"),
		"file " + filepath.Join(d.layout.RuntimeDir, "vms", "gone"),
		"file " + filepath.Join(d.layout.VMsDir, "gone"),
		"host key 172.31.9.3,old.vm",
		"row stuck",
	}
	slices.Sort(want)
	if got := leakNames(t, d); !slices.Equal(got, want) {
		t.Fatalf("leaks:\n got %q\nwant %q", got, want)
	}

	// Through the RPC method: never null.
	res, err := d.leaks(ctx, noParams{})
	if err != nil || len(res.Leaks) != len(want) {
		t.Fatalf("daemon.leaks: %d leaks, %v", len(res.Leaks), err)
	}
}

// A vm start that died with its daemon (row "starting", VMM recorded):
// the next daemon kills exactly that VMM, releases the runtime and stops
// the VM with the reason; the leak checker then finds nothing.
func TestAdoptionAbortsAnInterruptedStart(t *testing.T) {
	d := openArtifactDaemon(t)
	ctx := t.Context()
	v := store.VM{Name: "half", Image: "debian", Kernel: "6.1", State: store.StateStarting, VCPU: 1, MemoryMiB: 512,
		DiskSizeBytes: 1 << 30, IP: "172.31.9.5", MAC: "02:00:00:00:00:05", VMM: "qemu"}
	if err := d.store.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	p := d.pathsFor(v.ID)
	for _, dir := range []string{p.dir, p.run} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A process standing in for the VMM: its command line names the
	// socket the row records, as QEMU's does.
	sock := filepath.Join(p.run, "qmp.sock")
	vmmProc := exec.Command("sh", "-c", "sleep 600", sock)
	if err := vmmProc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = vmmProc.Wait(); close(exited) }()
	t.Cleanup(func() { _ = vmmProc.Process.Kill(); <-exited })
	st, err := vmmcore.ProcStartTime(vmmProc.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	v.PID, v.PIDStartTime, v.APISocket = vmmProc.Process.Pid, st, sock
	if err := d.store.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}

	d.adoptVMs(ctx)

	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatal("the VMM of the interrupted start still runs")
	}
	got, err := d.store.GetVM(ctx, "half")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.StateStopped || got.PID != 0 || got.LastError != "bangerd stopped while the VM was starting; start it again" {
		t.Fatalf("after adoption: state %s, pid %d, error %q", got.State, got.PID, got.LastError)
	}
	if _, err := os.Stat(p.run); !os.IsNotExist(err) {
		t.Fatalf("runtime dir left: %v", err)
	}
	if _, err := os.Stat(p.dir); err != nil {
		t.Fatalf("the VM's own dir went: %v", err)
	}
	if leaks := leakNames(t, d); len(leaks) != 0 {
		t.Fatalf("leaks after adoption: %v", leaks)
	}
}

// Each VM's VMM gets an identity of its own, from its address.
func TestVMMIdentity(t *testing.T) {
	d := openArtifactDaemon(t)
	d.cfg.BridgeCIDR = "172.31.0.1/16"
	got, err := d.vmmIdentity("172.31.1.7")
	if err != nil {
		t.Fatal(err)
	}
	want := "1879048455:1879048455" // 0x70000000 + 0x0107
	if os.Geteuid() != 0 {
		want = ""
	}
	if got != want {
		t.Fatalf("vmmIdentity = %q, want %q", got, want)
	}
	if other, _ := d.vmmIdentity("172.31.1.8"); os.Geteuid() == 0 && other == got {
		t.Fatal("two VMs share a VMM identity")
	}
	if _, err := d.vmmIdentity("10.0.0.2"); os.Geteuid() == 0 && err == nil {
		t.Fatal("an address outside the bridge got an identity")
	}
}

// TestScratchLeftovers: what a pull or build killed with its daemon left
// (a work tree in the cache, staging beside images, a half-imported
// kernel) is a leak until the next daemon's start-up sweep removes it.
func TestScratchLeftovers(t *testing.T) {
	d := openArtifactDaemon(t)
	left := []string{
		filepath.Join(d.layout.CacheDir, "build", "oci-tiny"),
		filepath.Join(d.layout.ImagesDir, ".tiny.pulling"),
		filepath.Join(d.layout.KernelsDir, "k1.importing"),
		// A replacement that died between its renames: the old copy is
		// the only one and goes back, not away.
		filepath.Join(d.layout.KernelsDir, ".k2.old-123"),
		// One whose new copy was published: the old one is scratch.
		filepath.Join(d.layout.ImagesDir, ".img3.old-456"),
	}
	for _, p := range left {
		if err := os.MkdirAll(filepath.Join(p, "old"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Kernel k2 is recorded; its directory was moved aside and the daemon
	// died before the new one took its place.
	importTestKernel(t, d, "k2", kernelSpec{version: "6.1.0-k2"})
	if err := os.RemoveAll(filepath.Join(d.layout.KernelsDir, ".k2.old-123")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.layout.KernelsDir, ".k2.old-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(d.layout.KernelsDir, "k2"), filepath.Join(d.layout.KernelsDir, ".k2.old-123", "old")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.layout.ImagesDir, "img3"), 0o755); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, p := range left {
		want = append(want, "file "+p)
	}
	want = append(want, "file "+filepath.Join(d.layout.ImagesDir, "img3")) // no row names it
	slices.Sort(want)
	if got := leakNames(t, d); !slices.Equal(got, want) {
		t.Fatalf("leaks = %q\nwant %q", got, want)
	}
	layout, cfg := d.layout, d.cfg
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(t.Context(), Options{Layout: layout, Config: cfg, Logger: d.log})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	for _, p := range left {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s survived the start-up sweep", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(d.layout.KernelsDir, "k2", "vmlinux")); err != nil || !strings.Contains(string(b), "6.1.0-k2") {
		t.Errorf("the only copy of kernel k2 was not put back: %q %v", b, err)
	}
}
