package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/version"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
)

// The VM lifecycle without booting anything: the real daemon, serving
// its socket in a network namespace of its own with its bridge, tap
// pool, rules and DNS, drives the real Firecracker driver, whose
// firecracker binary is the stand-in of fakefc_test.go (Firecracker's API
// as fctest checks it, and a guest that answers SSH and the agent). Every
// step of create, start, stop, kill, set, delete, prune, adoption by a new
// daemon and the watch loop runs for real, and so do the rollbacks of a
// VMM that dies at launch or at boot, a guest that never answers SSH or
// its agent, and one that will not power off.

// lifecycle is one test's daemon and client.
type lifecycle struct {
	t      *testing.T
	d      *Daemon
	c      *rpc.Client
	fc     string // the stand-in firecracker binary
	dnsAt  string
	stopFn func()
	// mounted is a mount the test made under banger's trees on purpose.
	mounted string
}

func newLifecycle(t *testing.T) *lifecycle { return newLifecycleIn(t, "", false) }

// newLifecycleWith is newLifecycle whose Firecracker runs under the
// stand-in jailer when jailed.
func newLifecycleWith(t *testing.T, jailed bool) *lifecycle { return newLifecycleIn(t, "", jailed) }

// newLifecycleIn is newLifecycleWith with banger's files under root
// (empty: a directory of the test's).
func newLifecycleIn(t *testing.T, root string, jailed bool) *lifecycle {
	t.Helper()
	dns := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	if root == "" {
		root = t.TempDir()
	}
	if jailed {
		// A jail's socket path (state/jail/firecracker/ID/root/run/
		// firecracker.socket) must fit a unix socket's 107 bytes: a
		// short state directory, as a real one is.
		var err error
		if root, err = os.MkdirTemp("/tmp", "bgj"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(root) })
	}
	d := netDaemonIn(t, root, `vmm = "firecracker"
forward_ports = "none"
tap_pool_size = 2
dns_listen = "`+dns+`"
[vm_defaults]
vcpu = 1
memory_mib = 256
disk_size = "64M"`)
	bin := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fc := filepath.Join(bin, "firecracker")
	if err := os.Symlink(exe, fc); err != nil {
		t.Fatal(err)
	}
	// The agent binary the config disk carries (the stand-in never runs it).
	if err := os.WriteFile(filepath.Join(bin, "banger-agent"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	cfg := firecracker.Config{Binary: fc, StartTimeout: 10 * time.Second}
	if jailed {
		jl := filepath.Join(bin, "jailer")
		if err := os.Symlink(exe, jl); err != nil {
			t.Fatal(err)
		}
		cfg.Jailer = &firecracker.JailerConfig{Binary: jl, ChrootBase: d.jailBase(), CgroupVersion: 2}
	}
	d.driverOverride = firecracker.New(cfg)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test", features: []string{kernel.FeatureConfigDisk}})
	registerTestImage(t, d, "base", "k1")
	l := &lifecycle{t: t, d: d, c: &rpc.Client{SocketPath: d.layout.SocketPath}, fc: fc, dnsAt: dns}
	l.stopFn = serveStoppable(t, d)
	t.Cleanup(l.killAll) // runs before the daemon stops: it reads the rows
	return l
}

// standins lists the pids of this test's stand-in processes that run:
// those whose program is its own firecracker link (a path no other
// process has).
func (l *lifecycle) standins() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if argv0, _, _ := strings.Cut(string(cmd), "\x00"); err != nil || argv0 != l.fc {
			continue
		}
		if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && strings.Contains(string(st), ") Z ") {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// killAll ends every stand-in the test leaves, whatever the daemon knows
// of it, so no process outlives the test (and its namespace).
func (l *lifecycle) killAll() {
	for _, pid := range l.standins() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// serveStoppable serves d until the returned function (also run when the
// test ends) stops it and closes d, releasing its state directory.
func serveStoppable(t *testing.T, d *Daemon) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Serve: %v", err)
			}
			d.Close()
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := (&rpc.Client{SocketPath: d.layout.SocketPath}).Call(pctx, "ping", nil, nil)
		pcancel()
		if err == nil {
			return stop
		}
		select {
		case err := <-errc:
			errc <- err
			t.Fatalf("Serve: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("daemon did not answer within 10s")
	return stop
}

// fcGet reads path from the Firecracker API at sock (here, a stand-in's).
func fcGet(sock, path string, out any) error {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://localhost" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

func (l *lifecycle) call(method string, params, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return l.c.Call(ctx, method, params, out)
}

func (l *lifecycle) must(method string, params, out any) {
	l.t.Helper()
	if err := l.call(method, params, out); err != nil {
		l.t.Fatalf("%s: %v", method, err)
	}
}

// create runs a vm.create to its end with the stand-in in mode; it
// returns the VM, or the operation's error.
func (l *lifecycle) create(p api.VMCreateParams, mode string) (api.VM, string) {
	l.t.Helper()
	l.t.Setenv(fakeModeEnv, mode)
	if p.Image == "" {
		p.Image = "base"
	}
	if p.DiskSize == "" {
		p.DiskSize = "64M"
	}
	return l.follow("vm.create.begin", p)
}

// follow begins a create-like operation and waits for its end.
func (l *lifecycle) follow(method string, p any) (api.VM, string) {
	l.t.Helper()
	var begin api.VMCreateBeginResult
	l.must(method, p, &begin)
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		var st api.VMCreateStatus
		l.must("vm.create.status", api.OpRef{OpID: begin.OpID}, &st)
		if st.Operation.Done {
			if st.Operation.Error != "" {
				return api.VM{}, st.Operation.Error
			}
			return *st.VM, ""
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.t.Fatalf("%s %s did not end within 90s", method, begin.Name)
	return api.VM{}, ""
}

func (l *lifecycle) show(name string) api.VM {
	l.t.Helper()
	var v api.VM
	l.must("vm.show", api.VMRef{Name: name}, &v)
	return v
}

// row reads the VM's record without reconciling it with the host (vm
// show and vm list would).
func (l *lifecycle) row(name string) store.VM {
	l.t.Helper()
	v, err := l.d.store.GetVM(context.Background(), name)
	if err != nil {
		l.t.Fatal(err)
	}
	return v
}

func (l *lifecycle) noLeaks(when string) {
	l.t.Helper()
	var res api.LeaksResult
	l.must("daemon.leaks", nil, &res)
	for _, lk := range res.Leaks {
		if lk.Kind == "mount" && lk.Name == l.mounted {
			continue // the test's own
		}
		l.t.Errorf("%s: leak %s %s: %s", when, lk.Kind, lk.Name, lk.Detail)
	}
}

// running checks that v runs as a whole: its stand-in VMM is alive with
// the recorded identity, its tap is on the bridge, its name resolves, and
// its agent answers.
func (l *lifecycle) running(name string) store.VM {
	l.t.Helper()
	v := l.row(name)
	if v.State != store.StateRunning {
		l.t.Fatalf("%s is %s (%s), want running", name, v.State, v.LastError)
	}
	if !vmm.Alive(handleOf(v)) {
		l.t.Fatalf("%s: its VMM (pid %d) is not alive", name, v.PID)
	}
	tap, err := netlink.LinkByName(v.Tap)
	if err != nil || tap.Attrs().MasterIndex == 0 {
		l.t.Errorf("%s: tap %s missing or on no bridge: %v", name, v.Tap, err)
	}
	m := new(mdns.Msg)
	m.SetQuestion(name+".vm.", mdns.TypeA)
	r, err := mdns.Exchange(m, l.dnsAt)
	if err != nil || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != v.IP {
		l.t.Errorf("%s.vm does not resolve to %s: %v %v", name, v.IP, r, err)
	}
	var h api.AgentHealth
	l.must("vm.health", api.VMRef{Name: name}, &h)
	if h.AgentVersion != version.Version {
		l.t.Errorf("%s: agent version %q, want %q", name, h.AgentVersion, version.Version)
	}
	return v
}

// stopped checks that v is stopped with nothing of its runtime left.
func (l *lifecycle) stopped(name string, old store.VM) store.VM {
	l.t.Helper()
	v := l.row(name)
	if v.State != store.StateStopped {
		l.t.Fatalf("%s is %s, want stopped", name, v.State)
	}
	if vmm.Alive(handleOf(old)) {
		l.t.Errorf("%s: its VMM (pid %d) still runs", name, old.PID)
	}
	if _, err := netlink.LinkByName(old.Tap); err == nil {
		l.t.Errorf("%s: tap %s still exists", name, old.Tap)
	}
	if _, err := os.Stat(l.d.pathsFor(v.ID).run); err == nil {
		l.t.Errorf("%s: runtime dir still exists", name)
	}
	return v
}

func TestLifecycleWithStandInFirecracker(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	l := newLifecycle(t)

	// create, and the VM runs whole.
	if _, errMsg := l.create(api.VMCreateParams{Name: "a", VCPU: 1, MemoryMiB: 256}, ""); errMsg != "" {
		t.Fatalf("create a: %s", errMsg)
	}
	a := l.running("a")
	l.noLeaks("after create")

	// stop: ctrl-alt-del, the stand-in exits, the runtime goes.
	l.must("vm.stop", api.VMRef{Name: "a"}, nil)
	l.stopped("a", a)
	l.noLeaks("after stop")

	// set while stopped, then start: the VMM is configured with the new size.
	l.must("vm.set", api.VMSetParams{Name: "a", VCPU: 2, MemoryMiB: 384}, nil)
	l.must("vm.start", api.VMRef{Name: "a"}, nil)
	a2 := l.running("a")
	if a2.PID == a.PID {
		t.Errorf("start reused pid %d", a.PID)
	}
	var cfg struct {
		Machine struct {
			VCPU int `json:"vcpu_count"`
			Mem  int `json:"mem_size_mib"`
		} `json:"machine-config"`
	}
	if err := fcGet(handleOf(a2).APISocket, "/vm/config", &cfg); err != nil || cfg.Machine.VCPU != 2 || cfg.Machine.Mem != 384 {
		t.Errorf("after vm set: the VMM has %d vCPUs and %d MiB (%v), want 2 and 384", cfg.Machine.VCPU, cfg.Machine.Mem, err)
	}

	// kill: no ctrl-alt-del, SIGKILL; stopped all the same.
	l.must("vm.kill", api.VMRef{Name: "a"}, nil)
	l.stopped("a", a2)

	// A guest that will not power off is killed after stopTimeout.
	setTimeout(t, &stopTimeout, 2*time.Second)
	l.t.Setenv(fakeModeEnv, modeDeaf)
	l.must("vm.start", api.VMRef{Name: "a"}, nil)
	a3 := l.running("a")
	start := time.Now()
	l.must("vm.stop", api.VMRef{Name: "a"}, nil)
	if v := l.stopped("a", a3); !strings.Contains(v.LastError, "did not power off within 2s; killed") {
		t.Errorf("stop of a deaf guest: last error %q", v.LastError)
	}
	if took := time.Since(start); took < 2*time.Second || took > 30*time.Second {
		t.Errorf("stop of a deaf guest took %s, want about stopTimeout (2s), far below the default 60s", took)
	}
	l.noLeaks("after the deaf stop")

	// Adoption: a new daemon on the same state finds a running VM as it is.
	l.t.Setenv(fakeModeEnv, "")
	l.must("vm.start", api.VMRef{Name: "a"}, nil)
	a4 := l.running("a")
	l2 := l.restart()
	if v := l2.running("a"); v.PID != a4.PID || v.PIDStartTime != a4.PIDStartTime {
		t.Errorf("after a daemon restart a runs as pid %d, want the adopted %d", v.PID, a4.PID)
	}

	// The watch loop: a VMM killed behind the daemon's back is recorded
	// stopped (read from the row: vm show would reconcile by itself).
	if err := syscall.Kill(a4.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l2.row("a").State != store.StateStopped && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if v := l2.row("a"); v.State != store.StateStopped || !strings.Contains(v.LastError, "exited without banger stopping it") {
		t.Fatalf("after its VMM was killed: a is %s (%q), want stopped by the watch loop", v.State, v.LastError)
	}
	l2.stopped("a", a4)
	l2.noLeaks("after the watch loop")

	// Creates that fail roll back to nothing, each with its reason.
	setTimeout(t, &sshWaitTimeout, 3*time.Second)
	setTimeout(t, &agentWaitTimeout, 3*time.Second)
	for _, tc := range []struct{ mode, want string }{
		{modeExitAtLaunch, "exiting at launch"},
		{modeDieAtBoot, "Kernel panic - not syncing: the test asked for it"},
		{modeNoSSH, "did not answer SSH"},
		{modeNoAgent, "agent did not report health"},
	} {
		_, errMsg := l2.create(api.VMCreateParams{Name: "f", VCPU: 1, MemoryMiB: 256}, tc.mode)
		if !strings.Contains(errMsg, tc.want) {
			t.Errorf("create with a stand-in that %s: error %q, want it to say %q", tc.mode, errMsg, tc.want)
		}
		if _, err := l2.d.store.GetVM(context.Background(), "f"); err == nil {
			t.Errorf("create (%s) failed but left its VM row", tc.mode)
		}
		l2.noLeaks("after a create that failed with " + tc.mode)
	}

	// prune deletes the stopped VMs; delete the rest; nothing is left.
	sshWaitTimeout, agentWaitTimeout = 60*time.Second, 60*time.Second // back to waiting for a guest that answers
	l2.t.Setenv(fakeModeEnv, "")
	if _, errMsg := l2.create(api.VMCreateParams{Name: "b", VCPU: 1, MemoryMiB: 256}, ""); errMsg != "" {
		t.Fatalf("create b: %s", errMsg)
	}
	var pr api.VMPruneResult
	l2.must("vm.prune", api.VMPruneParams{}, &pr)
	if len(pr.Deleted) != 1 || pr.Deleted[0] != "a" {
		t.Errorf("prune deleted %q, want [a] (b runs)", pr.Deleted)
	}
	b := l2.running("b")
	l2.must("vm.delete", api.VMRef{Name: "b"}, nil)
	if vmm.Alive(handleOf(b)) {
		t.Error("delete left b's VMM running")
	}
	var list api.VMListResult
	l2.must("vm.list", nil, &list)
	if len(list.VMs) != 0 {
		t.Errorf("VMs left: %+v", list.VMs)
	}
	l2.noLeaks("after delete")
	if left := l2.standins(); len(left) != 0 {
		t.Errorf("stand-in VMMs still run after every VM is gone: pids %v", left)
	}
}

// setTimeout sets one of the lifecycle's timeouts for the rest of the
// test.
func setTimeout(t *testing.T, v *time.Duration, d time.Duration) {
	old := *v
	*v = d
	t.Cleanup(func() { *v = old })
}

// restart stops this daemon and serves a new one on the same state.
func (l *lifecycle) restart() *lifecycle { return l.restartLogging(l.d.log) }

// restartLogging is restart whose new daemon logs to log.
func (l *lifecycle) restartLogging(log *slog.Logger) *lifecycle {
	l.t.Helper()
	l.stopFn()
	d, err := Open(context.Background(), Options{Layout: l.d.layout, Config: l.d.cfg, Logger: log})
	if err != nil {
		l.t.Fatal(err)
	}
	d.driverOverride = l.d.driverOverride
	l2 := &lifecycle{t: l.t, d: d, c: l.c, fc: l.fc, dnsAt: l.dnsAt}
	l2.stopFn = serveStoppable(l.t, d)
	l.t.Cleanup(l2.killAll)
	return l2
}

// TestCloneOnAFullDisk: a clone that runs out of space fails saying so,
// leaves nothing of itself, and the source VM still starts.
func TestCloneOnAFullDisk(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	l := newLifecycle(t)
	// The VMs' directory on a small filesystem of its own (the test's
	// mount namespace is private).
	vms := l.d.layout.VMsDir
	if err := os.MkdirAll(vms, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("banger-test-full", vms, "tmpfs", 0, "size=160m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(vms, syscall.MNT_DETACH)
	l.mounted = vms
	src, errMsg := l.create(api.VMCreateParams{Name: "src", VCPU: 1, MemoryMiB: 256, NoStart: true}, "")
	if errMsg != "" {
		t.Fatalf("create src: %s", errMsg)
	}
	// Fill it but for half of what the source's disks hold (a sparse
	// copy needs all of it).
	var used int64
	for _, f := range []string{"root.ext4", "work.ext4"} {
		used += allocatedBytes(filepath.Join(l.d.pathsFor(src.ID).dir, f))
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(vms, &st); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(vms, "filler")
	if err := os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize-used/2), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(vms)
	_, errMsg = l.follow("vm.clone.begin", api.VMCloneParams{Source: "src", Name: "dst", NoStart: true})
	t.Logf("clone on a full disk: %s", errMsg)
	if !strings.Contains(errMsg, "no space left on") || !strings.Contains(errMsg, "MB free") {
		t.Errorf("clone on a full disk: %q, want it to say no space left and how much is free", errMsg)
	}
	if _, err := l.d.store.GetVM(context.Background(), "dst"); err == nil {
		t.Error("the failed clone left its VM row")
	}
	if after, _ := os.ReadDir(vms); len(after) != len(before) {
		t.Errorf("the failed clone left files: %d entries in vms/, were %d", len(after), len(before))
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	l.noLeaks("after a clone on a full disk")
	l.must("vm.start", api.VMRef{Name: "src"}, nil)
	l.running("src")
	l.must("vm.delete", api.VMRef{Name: "src"}, nil)
	l.noLeaks("after delete")
}

// TestJailedLifecycle: with the jailer (the stand-in of fakefc_test.go,
// which lays out the jail and the cgroup as the real one does), each VM's
// VMM gets a jail holding its disks and a tap given to the VM's own uid,
// and a cgroup bounding its memory; a stop, a failed create and a delete
// take the jail and the cgroup with them, and a VM starts again over
// what a dead VMM left.
func TestJailedLifecycle(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	standInCgroupfs(t)
	l := newLifecycleWith(t, true)
	if _, errMsg := l.create(api.VMCreateParams{Name: "j", VCPU: 1, MemoryMiB: 256}, ""); errMsg != "" {
		t.Fatalf("create j: %s", errMsg)
	}
	v := l.running("j")
	runAs, err := l.d.vmmIdentity(v.IP)
	if err != nil {
		t.Fatal(err)
	}
	var uid, gid int
	if _, err := fmt.Sscanf(runAs, "%d:%d", &uid, &gid); err != nil {
		t.Fatal(err)
	}
	id := shortID(v.ID)
	jail := filepath.Join(l.d.jailBase(), "firecracker", id)
	if !strings.HasPrefix(v.APISocket, jail+"/") {
		t.Errorf("the VMM's socket %s is not in its jail %s", v.APISocket, jail)
	}
	for _, f := range []string{"root.img", "work.img", "config.img"} {
		st, err := os.Stat(filepath.Join(jail, "root", f))
		if err != nil {
			t.Errorf("jail: %v", err)
			continue
		}
		if sys := st.Sys().(*syscall.Stat_t); int(sys.Uid) != uid || int(sys.Gid) != gid {
			t.Errorf("jail/%s belongs to %d:%d, want the VM's %d:%d", f, sys.Uid, sys.Gid, uid, gid)
		}
	}
	if tap, ok := mustTap(t, v.Tap); ok && (int(tap.Owner) != uid || int(tap.Group) != gid) {
		t.Errorf("tap %s belongs to %d:%d, want the VM's %d:%d", v.Tap, tap.Owner, tap.Group, uid, gid)
	}
	cg := filepath.Join("/sys/fs/cgroup", "banger", id)
	if _, err := os.Stat(cg); err != nil {
		t.Errorf("the VM's cgroup: %v", err)
	}
	if b, err := os.ReadFile(cgroupValues(id)); err != nil || !strings.Contains(string(b), "memory.max="+strconv.Itoa((256+256)<<20)+"\n") || !strings.Contains(string(b), "pids.max=256\n") {
		t.Errorf("cgroup settings %q (%v), want memory.max=%d and pids.max=256", b, err, (256+256)<<20)
	}
	l.noLeaks("jailed, running")

	l.must("vm.stop", api.VMRef{Name: "j"}, nil)
	l.stopped("j", v)
	for _, p := range []string{jail, cg} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after the stop", p)
		}
	}
	l.noLeaks("jailed, stopped")

	// A create whose guest dies at boot takes its jail and cgroup along.
	if _, errMsg := l.create(api.VMCreateParams{Name: "f", VCPU: 1, MemoryMiB: 256}, modeDieAtBoot); !strings.Contains(errMsg, "Kernel panic") {
		t.Errorf("jailed create that dies at boot: %q", errMsg)
	}
	if left, _ := os.ReadDir(filepath.Join(l.d.jailBase(), "firecracker")); len(left) != 0 {
		t.Errorf("jails left after a failed create: %v", left)
	}
	if left, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", "banger")); len(left) != 0 {
		t.Errorf("cgroups left after a failed create: %v", left)
	}
	l.noLeaks("after a failed jailed create")

	// What a VMM killed behind banger's back leaves does not stop the
	// next start (the jailer refuses old device nodes).
	l.t.Setenv(fakeModeEnv, "")
	l.must("vm.start", api.VMRef{Name: "j"}, nil)
	v2 := l.running("j")
	if err := syscall.Kill(v2.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.row("j").State != store.StateStopped && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	l.must("vm.start", api.VMRef{Name: "j"}, nil)
	l.running("j")
	l.must("vm.delete", api.VMRef{Name: "j"}, nil)
	if left, _ := os.ReadDir(filepath.Join(l.d.jailBase(), "firecracker")); len(left) != 0 {
		t.Errorf("jails left after delete: %v", left)
	}
	l.noLeaks("after delete")
}

// standInCgroupfs mounts a tmpfs of the test's own over /sys/fs/cgroup
// (its mount namespace is private), where the stand-in jailer makes the
// VMs' cgroups, until the test ends.
func standInCgroupfs(t *testing.T) {
	t.Helper()
	if err := syscall.Mount("banger-test-cgroup", "/sys/fs/cgroup", "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount("/sys/fs/cgroup", syscall.MNT_DETACH) })
}

func mustTap(t *testing.T, name string) (*netlink.Tuntap, bool) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Errorf("tap %s: %v", name, err)
		return nil, false
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok {
		t.Errorf("%s is a %s", name, l.Type())
	}
	return tap, ok
}

// TestSnapshotsWithStandInFirecracker: Firecracker snapshots end to end
// in the daemon: an image warmed (a template booted, quiesced over SSH,
// saved through the snapshot API, its raw disks copied), VMs restored
// from it (each its own disks, tap and vsock socket, then its own
// identity from the agent's restore before SSH answers), a running VM
// snapshotted and forked, and nothing left once all is deleted.
func TestSnapshotsWithStandInFirecracker(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	testStandInSnapshots(t, newLifecycle(t))
}

// TestJailedSnapshotsWithStandInFirecracker is the same under the jailer.
func TestJailedSnapshotsWithStandInFirecracker(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	if err := syscall.Mount("banger-test-cgroup", "/sys/fs/cgroup", "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount("/sys/fs/cgroup", syscall.MNT_DETACH)
	testStandInSnapshots(t, newLifecycleWith(t, true))
}

func testStandInSnapshots(t *testing.T, l *lifecycle) {
	var warm api.Snapshot
	l.must("image.warm", api.ImageWarmParams{Image: "base"}, &warm)
	if warm.VMM != "firecracker" || warm.StateBytes == 0 {
		t.Fatalf("warm snapshot %+v", warm)
	}
	l.noLeaks("after image warm")

	var vms []store.VM
	for _, name := range []string{"r1", "r2"} {
		v, errMsg := l.create(api.VMCreateParams{Name: name}, "")
		if errMsg != "" {
			t.Fatalf("create %s from the warm snapshot: %s", name, errMsg)
		}
		if v.StartedFrom != "snapshot "+warm.Name {
			t.Errorf("%s started from %q, want the warm snapshot %s", name, v.StartedFrom, warm.Name)
		}
		vms = append(vms, l.running(name))
	}
	if vms[0].IP == vms[1].IP || vms[0].MAC == vms[1].MAC {
		t.Errorf("two restores share an address: %s/%s and %s/%s", vms[0].IP, vms[0].MAC, vms[1].IP, vms[1].MAC)
	}

	// A running (restored) VM saved and forked; it runs on.
	var s1 api.Snapshot
	l.must("vm.snapshot", api.VMSnapshotParams{Name: "r1", Snapshot: "s1"}, &s1)
	if r1 := l.running("r1"); r1.PID != vms[0].PID {
		t.Errorf("r1 was restarted by its snapshot (pid %d, was %d)", r1.PID, vms[0].PID)
	}
	if _, errMsg := l.create(api.VMCreateParams{Name: "r3", FromSnapshot: "s1"}, ""); errMsg != "" {
		t.Fatalf("fork r1: %s", errMsg)
	}
	l.running("r3")
	l.noLeaks("with three restored VMs")

	for _, name := range []string{"r1", "r2", "r3"} {
		l.must("vm.delete", api.VMRef{Name: name}, nil)
	}
	for _, sn := range []string{"s1", warm.Name} {
		l.must("snapshot.rm", api.ArtifactRef{Name: sn}, nil)
	}
	l.noLeaks("after deleting them all")
	if left := l.standins(); len(left) != 0 {
		t.Errorf("stand-in VMMs still run: %v", left)
	}
}

// TestDatabaseOnAFullDisk: when the filesystem of banger's database is
// full, a create is refused naming the database, the filesystem and what
// is free, and leaves nothing; with space again it works.
func TestDatabaseOnAFullDisk(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	root := t.TempDir()
	if err := syscall.Mount("banger-test-full", root, "tmpfs", 0, "size=96m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(root, syscall.MNT_DETACH)
	l := newLifecycleIn(t, root, false)
	l.mounted = root
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(root, "filler")
	if err := os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize), 0o600); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	var begin api.VMCreateBeginResult
	err := l.call("vm.create.begin", api.VMCreateParams{Name: "x", Image: "base", NoStart: true}, &begin)
	if err == nil || !strings.Contains(err.Error(), "banger's database") || !strings.Contains(err.Error(), "no space left on "+root) || !strings.Contains(err.Error(), "MB free") {
		t.Fatalf("create with the database's filesystem full: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := l.d.store.GetVM(context.Background(), "x"); err == nil {
		t.Error("the refused create left its row")
	}
	if _, errMsg := l.create(api.VMCreateParams{Name: "x", NoStart: true}, ""); errMsg != "" {
		t.Fatalf("create with space again: %s", errMsg)
	}
	l.must("vm.delete", api.VMRef{Name: "x"}, nil)
	l.noLeaks("after a full database")
}
