package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/vmm/firecracker/fctest"
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
	if err := d.SaveState(ctx, h, state); err == nil || !strings.Contains(err.Error(), fctest.FaultNotPaused) {
		t.Fatalf("SaveState of a running guest = %v, want %q", err, fctest.FaultNotPaused)
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
	reqs, _ := fv.api.Seen()
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
	reqs, _ = fv2.api.Seen()
	if want := []string{"PUT /logger", "PUT /snapshot/load", "GET /", "PATCH /vm", "GET /"}; !slices.Equal(reqs, want) {
		t.Errorf("restore requests = %q, want %q", reqs, want)
	}
	f := fv2.api
	f.Lock()
	if f.Loaded != state || f.Paused || !f.Started {
		t.Errorf("loaded %q, paused %v, started %v", f.Loaded, f.Paused, f.Started)
	}
	if n := f.Ifaces["eth0"]; *n.HostDevName != "bg-jail" {
		t.Errorf("the restored NIC uses tap %s, want the fork's bg-jail", *n.HostDevName)
	}
	if *f.Vsock.UDSPath != filepath.Join(fork.RuntimeDir, VsockName) {
		t.Errorf("the restored vsock listens at %s, want the fork's own", *f.Vsock.UDSPath)
	}
	f.Unlock()
	// The saved drive names, /proc/self/fd/N, opened by the fork's VMM
	// are the fork's own disks.
	f.Lock()
	for id, want := range map[string]string{"rootfs": fork.RootDisk, "work": fork.WorkDisk, "config": fork.ConfigDisk} {
		if got := f.Opened[id]; got != want {
			t.Errorf("restored drive %s opened %s, want the fork's %s", id, got, want)
		}
	}
	f.Unlock()
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
	f.Lock()
	patched := slices.Clone(f.Patched)
	f.Unlock()
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

// TestRestoreOfAMissingSnapshot fails cleanly: no VMM, no sockets.
func TestRestoreOfAMissingSnapshot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	spec := testSpec(t)
	spec.IncomingState = filepath.Join(t.TempDir(), "missing.bin")
	if err := os.WriteFile(spec.IncomingState+MemFileSuffix, nil, 0o600); err != nil {
		t.Fatal(err)
	}
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
}

// TestJailedSnapshot: under the jailer, each VM runs as its own uid in
// its own cgroup; a save is written in the jail and moved out to root; a
// restore gets its own copy of the snapshot in its own jail, and the
// saved drive paths (/root.img, ...) are its own disks there.
func TestJailedSnapshot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the jailed layout hands files to other uids, which needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := filepath.Join(t.TempDir(), "jail")
	cgroots := t.TempDir()
	jcfg := func() Config {
		return Config{Binary: "/opt/fc/firecracker", Jailer: &JailerConfig{ChrootBase: base, CgroupVersion: 2, CgroupRoot: cgroots}}
	}
	src := testSpec(t)
	src.RunAs = "5000:5001"
	d := New(jcfg())
	fv := installFake(t, d)
	h, err := d.Start(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })
	wantArgv := []string{"jailer", "--id", "fctest", "--exec-file", "/opt/fc/firecracker", "--uid", "5000", "--gid", "5001",
		"--chroot-base-dir", base, "--cgroup-version", "2", "--parent-cgroup", "banger",
		"--cgroup", "memory.max=536870912", "--cgroup", "pids.max=256", "--", "--api-sock", "/run/firecracker.socket"}
	if !slices.Equal(fv.argv, wantArgv) {
		t.Errorf("argv = %q\nwant %q", fv.argv, wantArgv)
	}
	srcRoot := filepath.Join(base, "firecracker", "fctest", "root")
	for _, f := range []string{"root.img", "work.img", "config.img"} {
		if uid, gid := owner(t, filepath.Join(srcRoot, f)); uid != 5000 || gid != 5001 {
			t.Errorf("%s owned by %d:%d, want the VM's 5000:5001", f, uid, gid)
		}
	}
	state := filepath.Join(t.TempDir(), "state.bin")
	if err := d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := d.SaveState(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	for _, f := range d.StateFiles(state) {
		if uid, _ := owner(t, f); uid != 0 {
			t.Errorf("%s owned by uid %d after the save, want root", f, uid)
		}
	}
	for _, f := range []string{"snapshot.state", "snapshot.state.mem"} {
		if _, err := os.Lstat(filepath.Join(srcRoot, f)); err == nil {
			t.Errorf("%s left in the source's jail", f)
		}
	}

	fork := testSpec(t)
	fork.Name, fork.Tap, fork.RunAs, fork.IncomingState = "fork", "bg-jail", "5002:5002", state
	d2 := New(jcfg())
	fv2 := installFake(t, d2)
	h2, err := d2.Start(ctx, fork)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d2.Kill(h2) })
	forkRoot := filepath.Join(base, "firecracker", "fork", "root")
	f := fv2.api
	f.Lock()
	loaded, opened := f.Loaded, f.Opened
	tap, vsock := *f.Ifaces["eth0"].HostDevName, *f.Vsock.UDSPath
	f.Unlock()
	if loaded != "/incoming.state" {
		t.Errorf("the jailed restore loaded %q, want its jail's /incoming.state", loaded)
	}
	for _, f := range []string{"incoming.state", "incoming.state.mem"} {
		if _, err := os.Lstat(filepath.Join(forkRoot, f)); err == nil {
			t.Errorf("the fork's copy %s stays in its jail after the load", f)
		}
	}
	for id, want := range map[string]string{"rootfs": fork.RootDisk, "work": fork.WorkDisk, "config": fork.ConfigDisk} {
		a, err1 := os.Stat(opened[id])
		b, err2 := os.Stat(want)
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("restored drive %s opened %s, want the fork's %s", id, opened[id], want)
		}
	}
	if tap != "bg-jail" || vsock != "/run/vsock.sock" {
		t.Errorf("restored tap %s vsock %s", tap, vsock)
	}
	if err := d2.ResizeDisk(ctx, h2, "work", 1<<20); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(fork.WorkDisk); st.Size() != 1<<20 {
		t.Errorf("the fork's work disk is %d bytes after ResizeDisk, want %d", st.Size(), 1<<20)
	}
	// The restored VM saves a snapshot of its own (a fork of a fork):
	// written beside, never over, what its memory came from.
	state2 := filepath.Join(t.TempDir(), "state2.bin")
	if err := d2.Pause(ctx, h2); err != nil {
		t.Fatal(err)
	}
	if err := d2.SaveState(ctx, h2, state2); err != nil {
		t.Fatalf("save of a restored jailed VM: %v", err)
	}
	if err := d2.Resume(ctx, h2); err != nil {
		t.Fatal(err)
	}

	// Cleanup takes the jail and the cgroups the jailer made.
	cgs := cgroupDirs(cgroots, "banger", "fork")
	for _, dir := range cgs[:2] {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := d2.Kill(h2); err != nil {
		t.Fatal(err)
	}
	if err := vmmcore.WaitGone(ctx, func() bool { return d2.Alive(h2) }, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d2.Cleanup(h2); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(cgs, filepath.Dir(forkRoot)) {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after Cleanup", p)
		}
	}
}

func owner(t *testing.T, p string) (uint32, uint32) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return sys.Uid, sys.Gid
}

// TestBlockDeviceInJail: a dm root (a block device in /dev) gets a node
// of the same device in the jail; a hard link could not cross into it.
func TestBlockDeviceInJail(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mknod needs root")
	}
	dir := t.TempDir()
	dev := filepath.Join(dir, "dm-root")
	if err := unix.Mknod(dev, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 250))); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "jailroot.img")
	if err := placeInJail(dev, dst, dir); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 || st.Sys().(*syscall.Stat_t).Rdev != unix.Mkdev(7, 250) {
		t.Fatalf("jail node %v rdev %d, want block device 7:250", st.Mode(), st.Sys().(*syscall.Stat_t).Rdev)
	}
	if err := placeInJail("/dev/null", filepath.Join(dir, "null.img"), dir); err == nil {
		t.Fatal("a character device was accepted as a disk")
	}
}

// TestJailedStartFailureLeavesNothing: a jailed start that fails takes
// its jail and the cgroups the jailer made with it; a stale jail of the
// same VM is replaced, not refused.
func TestJailedStartFailureLeavesNothing(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the jailed layout hands files to other uids, which needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := filepath.Join(t.TempDir(), "jail")
	cgroots := t.TempDir()
	spec := testSpec(t)
	spec.RunAs = "5000:5000"
	if err := os.WriteFile(spec.KernelPath, []byte("not an ELF kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(base, "firecracker", "fctest", "root", "dev", "kvm")
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := New(Config{Binary: "/opt/fc/firecracker", Jailer: &JailerConfig{ChrootBase: base, CgroupVersion: 1, CgroupRoot: cgroots}})
	fv := installFake(t, d)
	// The jailer makes the VM's cgroups as it starts.
	for _, dir := range cgroupDirs(cgroots, "banger", "fctest")[1:] {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "failed to load ELF kernel") {
		t.Fatalf("jailed start with a bad kernel = %v", err)
	}
	if !fv.gone() {
		t.Error("the VMM still runs")
	}
	for _, p := range append(cgroupDirs(cgroots, "banger", "fctest"), filepath.Join(base, "firecracker", "fctest")) {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after a failed jailed start", p)
		}
	}

	// A jail a dead VMM left (the jailer would refuse its old device
	// nodes) is replaced by the next start.
	if err := os.WriteFile(spec.KernelPath, []byte("\x7fELF\x02\x01\x01 vmlinux"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := New(Config{Binary: "/opt/fc/firecracker", Jailer: &JailerConfig{ChrootBase: base, CgroupVersion: 1, CgroupRoot: cgroots}})
	installFake(t, d2)
	h, err := d2.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d2.Kill(h) })
	if _, err := os.Lstat(stale); err == nil {
		t.Error("the stale jail's files survived a new start")
	}
}
