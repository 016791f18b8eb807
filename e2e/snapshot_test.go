//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type snapshotJSON struct {
	Name       string   `json:"name"`
	Kind       string   `json:"kind"`
	Image      string   `json:"image"`
	StateBytes int64    `json:"state_bytes"`
	SizeBytes  int64    `json:"size_bytes"`
	SaveMS     int64    `json:"save_ms"`
	Stale      string   `json:"stale"`
	VMs        []string `json:"vms"`
	GuestIP    string   `json:"guest_ip"`
	GuestMAC   string   `json:"guest_mac"`
}

func (e *env) snapshots() []snapshotJSON {
	e.t.Helper()
	var out []snapshotJSON
	if err := json.Unmarshal([]byte(e.must("snapshot", "list", "--json")), &out); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// guestFacts reads what must differ between VMs restored from one
// snapshot, in one exec.
func (e *env) guestFacts(vm string) map[string]string {
	e.t.Helper()
	out := e.must("vm", "exec", vm, "--", "sh", "-c",
		`echo "hostname=$(hostname)"; echo "ip=$(ip -4 -o addr show scope global | awk '{print $4}')"; `+
			`echo "mac=$(cat /sys/class/net/*/address | grep -v 00:00:00:00:00:00)"; echo "machineid=$(cat /etc/machine-id)"; `+
			`echo "hostkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)"; echo "ecdsa=$(cut -d' ' -f2 /etc/ssh/ssh_host_ecdsa_key.pub)"; `+
			`echo "random=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"; echo "clock=$(date +%s.%N)"; echo "rootsize=$(df -B1 --output=size /root | tail -1)"`)
	facts := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			facts[k] = strings.TrimSpace(v)
		}
	}
	return facts
}

// TestSnapshots: a warm image; three VMs restored from it, each its own;
// a user's running VM snapshotted and forked twice; stale snapshots
// refused; a daemon killed mid-warm leaves nothing.
func TestSnapshots(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	start := time.Now()
	e.must("image", "warm", "debian-bookworm")
	t.Logf("image warm: %s", time.Since(start).Round(100*time.Millisecond))
	snaps := e.snapshots()
	if len(snaps) != 1 || snaps[0].Kind != "warm" || snaps[0].Stale != "" || snaps[0].StateBytes == 0 {
		t.Fatalf("after warm: %+v", snaps)
	}
	t.Logf("warm snapshot %s: state %d MiB saved in %d ms, %d MiB on disk", snaps[0].Name, snaps[0].StateBytes>>20, snaps[0].SaveMS, snaps[0].SizeBytes>>20)
	if out := e.must("vm", "list"); strings.Contains(out, "imgwarm-") {
		t.Errorf("vm list shows the template:\n%s", out)
	}

	// Three VMs from the snapshot, one with a bigger work disk.
	names := []string{"r1", "r2", "r3"}
	for i, name := range names {
		args := []string{"vm", "create", "--name", name}
		if i == 2 {
			args = append(args, "--disk-size", "2G")
		}
		start := time.Now()
		e.must(args...)
		t.Logf("create %s from the snapshot: %s", name, time.Since(start).Round(10*time.Millisecond))
	}
	facts := map[string]map[string]string{}
	for _, name := range names {
		before := float64(time.Now().UnixNano()) / 1e9
		f := e.guestFacts(name)
		after := float64(time.Now().UnixNano()) / 1e9
		facts[name] = f
		v := e.show(name)
		if f["hostname"] != name || f["ip"] != v.IP+"/24" || f["mac"] != v.MAC {
			t.Errorf("%s: hostname %q ip %q mac %q; want %s, %s/24, %s", name, f["hostname"], f["ip"], f["mac"], name, v.IP, v.MAC)
		}
		// The guest read its clock during the exec: within 1 s of the
		// host's clock over that time, however slow the exec was.
		clock, _ := strconv.ParseFloat(f["clock"], 64)
		if clock < before-1 || clock > after+1 {
			t.Errorf("%s: clock %s is outside the host's [%.1f, %.1f] ±1 s during the exec", name, f["clock"], before, after)
		}
		var show struct {
			StartedFrom string `json:"started_from"`
		}
		_ = json.Unmarshal([]byte(e.must("vm", "show", name, "--json")), &show)
		if show.StartedFrom != "snapshot "+snaps[0].Name {
			t.Errorf("%s started_from = %q", name, show.StartedFrom)
		}
	}
	for _, k := range []string{"hostname", "ip", "mac", "machineid", "hostkey", "ecdsa", "random"} {
		seen := map[string]string{}
		for _, name := range names {
			v := facts[name][k]
			if v == "" {
				t.Errorf("%s: no %s", name, k)
			}
			if other, dup := seen[v]; dup {
				t.Errorf("%s and %s share %s %s", other, name, k, v)
			}
			seen[v] = name
		}
	}
	if size, _ := strconv.ParseInt(facts["r3"]["rootsize"], 10, 64); size < 1900<<20 {
		t.Errorf("r3's /root is %d bytes, want about 2G", size)
	}
	// Writes stay each VM's own, in / and /root.
	e.must("vm", "exec", "r1", "--", "sh", "-c", "echo one > /etc/only-r1 && echo one > /root/only-r1 && sync")
	for _, p := range []string{"/etc/only-r1", "/root/only-r1"} {
		if _, _, code := e.banger("vm", "exec", "r2", "--", "test", "-e", p); code == 0 {
			t.Errorf("r2 sees r1's %s", p)
		}
	}
	// A restored VM cold-boots fine later (its disks are ordinary layers).
	e.must("vm", "restart", "r2")
	if got := strings.TrimSpace(e.must("vm", "exec", "r2", "--", "hostname")); got != "r2" {
		t.Errorf("r2 after a cold restart is %q", got)
	}
	// --cold skips the snapshot.
	e.must("vm", "create", "--name", "cold", "--cold")
	var cold struct {
		StartedFrom string `json:"started_from"`
	}
	_ = json.Unmarshal([]byte(e.must("vm", "show", "cold", "--json")), &cold)
	if cold.StartedFrom != "" {
		t.Errorf("--cold VM started from %q", cold.StartedFrom)
	}

	// A user's running VM, forked twice with its processes.
	e.must("vm", "exec", "cold", "--", "sh", "-c", "echo parent > /root/file && (setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /run/sleeper) && sync")
	e.must("vm", "snapshot", "cold", "fork-point")
	e.must("vm", "exec", "cold", "--", "true") // the source runs on
	for _, f := range []string{"f1", "f2"} {
		e.must("vm", "create", "--name", f, "--from-snapshot", "fork-point")
		if got := e.must("vm", "exec", f, "--", "cat", "/root/file"); got != "parent\n" {
			t.Errorf("%s /root/file = %q", f, got)
		}
		if _, _, code := e.banger("vm", "exec", f, "--", "sh", "-c", "kill -0 $(cat /run/sleeper)"); code != 0 {
			t.Errorf("%s: the parent's process is not running in the fork", f)
		}
	}
	e.must("vm", "exec", "f1", "--", "sh", "-c", "echo f1 > /root/file")
	if got := e.must("vm", "exec", "f2", "--", "cat", "/root/file"); got != "parent\n" {
		t.Errorf("f2 sees f1's write: %q", got)
	}
	if got := e.must("vm", "exec", "cold", "--", "cat", "/root/file"); got != "parent\n" {
		t.Errorf("the source sees a fork's write: %q", got)
	}

	// Refusals: a snapshot that does not match, or no longer can be.
	if _, errOut, code := e.banger("vm", "create", "--name", "x", "--from-snapshot", "fork-point", "--vcpu", "1"); code == 0 || !strings.Contains(errOut, "a restore keeps them") {
		t.Errorf("--from-snapshot with another vcpu: exit %d %s", code, errOut)
	}
	var img struct {
		RootfsPath string `json:"rootfs_path"`
	}
	_ = json.Unmarshal([]byte(e.must("image", "show", "debian-bookworm", "--json")), &img)
	// Another build of the kernel makes both snapshots stale.
	e.stopDaemon()
	manifest := filepath.Join(e.root, "state", "banger", "kernels", "debian-6.1", "manifest.json")
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var km map[string]any
	if err := json.Unmarshal(data, &km); err != nil {
		t.Fatal(err)
	}
	files := km["files"].(map[string]any)
	vmlinuz := files["vmlinuz"].(map[string]any)
	orig := vmlinuz["sha256"]
	vmlinuz["sha256"] = strings.Repeat("0", 64)
	changed, _ := json.Marshal(km)
	if err := os.WriteFile(manifest, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	for _, s := range e.snapshots() {
		if !strings.Contains(s.Stale, "kernel debian-6.1 changed") {
			t.Errorf("snapshot %s after a kernel change: stale %q", s.Name, s.Stale)
		}
	}
	if _, errOut, code := e.banger("vm", "create", "--name", "x", "--from-snapshot", "fork-point"); code == 0 || !strings.Contains(errOut, "is stale: its kernel debian-6.1 changed") {
		t.Errorf("stale --from-snapshot: exit %d %s", code, errOut)
	}
	vmlinuz["sha256"] = orig
	restored, _ := json.Marshal(km)
	e.stopDaemon()
	if err := os.WriteFile(manifest, restored, 0o644); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()

	// SIGKILL of the daemon during a warm, and during a vm snapshot,
	// leaves nothing once a daemon runs again.
	for _, vm := range append(names, "cold", "f1", "f2") {
		e.must("vm", "delete", vm)
	}
	for _, s := range e.snapshots() {
		e.must("snapshot", "rm", s.Name)
	}
	layers := filepath.Join(e.root, "state", "banger", "layers")
	if entries, _ := os.ReadDir(layers); len(entries) != 0 {
		t.Errorf("layers left after every VM and snapshot went: %v", entries)
	}
	e.killDaemonDuring("image", "warm", "debian-bookworm")
	e.assertNothingLeft("imgwarm-")
	if s := e.snapshots(); len(s) != 0 {
		t.Errorf("snapshots after a daemon died mid-warm: %+v", s)
	}
	for _, dir := range []string{layers, filepath.Join(e.root, "state", "banger", "snapshots")} {
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s after a daemon died mid-warm: %v", dir, entries)
		}
	}
}

// killDaemonDuring runs the CLI with args and SIGKILLs the daemon once
// the operation reaches its save stage, then starts a new daemon.
func (e *env) killDaemonDuring(args ...string) {
	e.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "--no-autostart"}, args...)...)
	cmd.Env = e.vars
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	var once sync.Once
	wait := func() { once.Do(func() { _ = cmd.Wait() }) }
	defer wait()
	for i := 0; i < 1200; i++ {
		out, _, _ := e.banger("ops", "--json")
		if strings.Contains(out, `"stage": "wait for SSH"`) || strings.Contains(out, `"stage": "quiesce"`) || strings.Contains(out, `"stage": "save snapshot"`) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := e.daemon.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGKILL)
	_ = e.daemon.Wait()
	e.daemon = nil
	wait()
	// The template's VMM outlives the daemon; the next daemon kills it.
	e.startDaemon()
	for i := 0; i < 100; i++ {
		if out, _ := exec.Command("pgrep", "-f", "guest=imgwarm-").Output(); len(out) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := exec.Command("pgrep", "-af", "guest=imgwarm-").Output()
	e.t.Errorf("the template's VMM survived a daemon restart: %s", fmt.Sprint(string(out)))
}
