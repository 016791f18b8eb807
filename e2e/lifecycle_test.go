//go:build e2e

package e2e

import (
	"banger/internal/vmm"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVMLifecycle walks one VM through everything a user does with it and
// then checks that delete leaves nothing behind.
func TestVMLifecycle(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)

	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	start := time.Now()
	_, createErr, code := e.banger("vm", "create", "--name", "e2e1")
	if code != 0 {
		t.Fatalf("vm create failed (%d): %s\nlog:\n%s", code, createErr, e.daemonLog())
	}
	t.Logf("create to SSH: %s\n%s", time.Since(start).Round(time.Millisecond), createErr)
	// This host has no KVM: the create says what that means for isolation.
	if vmm.CheckKVM() != nil && !strings.Contains(createErr, "warning: this host has no usable KVM: the guest runs under QEMU's TCG emulation, which QEMU does not count as a security boundary") {
		t.Errorf("a TCG create does not warn that TCG is no security boundary:\n%s", createErr)
	}
	for _, stage := range []string{"prepare root disk", "make identity", "write config disk", "start VMM", "wait for SSH"} {
		if !strings.Contains(createErr, stage) {
			t.Errorf("create output does not show stage %q:\n%s", stage, createErr)
		}
	}
	vm := e.show("e2e1")
	if vm.State != "running" || vm.PID == 0 || vm.Tap == "" {
		t.Fatalf("after create: %+v", vm)
	}

	// Bad input is refused with the right codes.
	if _, errOut, code := e.banger("vm", "create", "--name", "e2e1"); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("duplicate create: exit %d, %s", code, errOut)
	}
	if _, errOut, code := e.banger("vm", "create", "--name", "Bad_Name"); code == 0 || !strings.Contains(errOut, "invalid VM name") {
		t.Errorf("bad name: exit %d, %s", code, errOut)
	}
	if _, errOut, code := e.banger("vm", "create", "--vcpu", "999"); code == 0 || !strings.Contains(errOut, "vcpu 999 out of range") {
		t.Errorf("vcpu 999: exit %d, %s", code, errOut)
	}
	if _, errOut, code := e.banger("vm", "show", "nope"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("show unknown: exit %d, %s", code, errOut)
	}

	// exec: output and exit status pass through.
	uname := strings.TrimSpace(e.must("vm", "exec", "e2e1", "--", "uname", "-r"))
	if !strings.Contains(uname, "amd64") {
		t.Errorf("uname -r = %q", uname)
	}
	if _, _, code := e.banger("vm", "exec", "e2e1", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec exit status = %d, want 7", code)
	}
	e.must("vm", "exec", "e2e1", "--", "sh", "-c", "echo banger-was-here > /root/marker && sync")
	if host := strings.TrimSpace(e.must("vm", "exec", "e2e1", "--", "hostname")); host != "e2e1" {
		t.Errorf("guest hostname = %q", host)
	}

	// The console log is there for the user.
	if logs := e.must("vm", "logs", "e2e1"); !strings.Contains(logs, "Linux version") {
		t.Errorf("vm logs lacks the kernel banner:\n%.2000s", logs)
	}
	// The VMM runs under QEMU's seccomp sandbox.
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.show("e2e1").PID)); err != nil || !strings.Contains(string(status), "Seccomp:\t2") {
		t.Errorf("the VMM is not under a seccomp filter (err %v):\n%s", err, status)
	}

	// A guest that floods its console costs the host a bounded log: the
	// watch loop keeps the newest 8 MiB in console.log.1 and empties the log.
	floodStart := time.Now()
	e.must("vm", "exec", "e2e1", "--", "sh", "-c", "head -c 9000000 /dev/zero | tr '\\0' a > /dev/ttyS0")
	t.Logf("9 MB to the console in %s", time.Since(floodStart).Round(100*time.Millisecond))
	consoleLog := filepath.Join(e.show("e2e1").Dir, "console.log")
	var rotated, live int64
	for i := 0; i < 50; i++ {
		if st, err := os.Stat(consoleLog + ".1"); err == nil {
			rotated = st.Size()
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st, err := os.Stat(consoleLog); err == nil {
		live = st.Size()
	}
	if rotated != 8<<20 || live >= 8<<20 {
		t.Errorf("after a 9 MB flood: console.log.1 %d bytes (want 8 MiB), console.log %d bytes (want under 8 MiB)", rotated, live)
	}

	// stop, start: the work disk keeps its data. The guest powers off by
	// itself (no kill after the timeout, which stop would report).
	stopStart := time.Now()
	stopOut := e.must("vm", "stop", "e2e1")
	t.Logf("graceful stop took %s", time.Since(stopStart).Round(time.Millisecond))
	if strings.Contains(stopOut, "killed") {
		t.Errorf("stop had to kill the VMM: %s", stopOut)
	}
	if v := e.show("e2e1"); v.State != "stopped" || pidAlive(vm.PID) {
		t.Fatalf("after stop: %+v (old pid alive: %v)", v, pidAlive(vm.PID))
	}
	if strings.Contains(e.links(), vm.Tap) {
		t.Errorf("tap %s still present after stop:\n%s", vm.Tap, e.links())
	}
	if _, errOut, code := e.banger("vm", "kill", "e2e1"); code == 0 || !strings.Contains(errOut, "not running") {
		t.Errorf("kill of a stopped VM: exit %d, %s", code, errOut)
	}
	e.must("vm", "set", "e2e1", "--memory", "768", "--disk-size", "2G")
	e.must("vm", "start", "e2e1")
	if got := strings.TrimSpace(e.must("vm", "exec", "e2e1", "--", "cat", "/root/marker")); got != "banger-was-here" {
		t.Fatalf("marker after restart = %q", got)
	}
	// The work disk was 1G; grown to 2G while stopped, /root must show it.
	sizeOut := strings.TrimSpace(e.must("vm", "exec", "e2e1", "--", "sh", "-c", "df -B1M --output=size /root | tail -1"))
	if mib, err := strconv.Atoi(sizeOut); err != nil || mib < 1800 || mib > 2048 {
		t.Errorf("work disk after growing to 2G: df says %q MiB", sizeOut)
	}
	// MemTotal is what was asked for less the kernel's own reserve (tens
	// of MiB): 1024 MiB, the size before, would read about 990.
	memOut := strings.TrimSpace(e.must("vm", "exec", "e2e1", "--", "sh", "-c", "awk '/MemTotal/{print int($2/1024)}' /proc/meminfo"))
	if mem, err := strconv.Atoi(memOut); err != nil || mem > 768 || mem < 768-64 {
		t.Errorf("memory after vm set --memory 768: MemTotal %q MiB, want 704..768", memOut)
	}

	// The daemon restarts; the VM keeps running and is re-adopted.
	vm = e.show("e2e1")
	e.stopDaemon()
	if !pidAlive(vm.PID) {
		t.Fatalf("VMM pid %d died with the daemon", vm.PID)
	}
	e.startDaemon()
	if v := e.show("e2e1"); v.State != "running" || v.PID != vm.PID {
		t.Fatalf("after daemon restart: %+v, want running with pid %d", v, vm.PID)
	}
	if got := strings.TrimSpace(e.must("vm", "exec", "e2e1", "--", "cat", "/root/marker")); got != "banger-was-here" {
		t.Fatalf("exec after daemon restart = %q", got)
	}

	// The VMM dies behind the daemon's back: the daemon notices.
	if err := syscall.Kill(vm.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var list []vmJSON
	for time.Now().Before(deadline) {
		out, _, _ := e.banger("vm", "list", "--json")
		list = nil
		_ = json.Unmarshal([]byte(out), &list)
		if len(list) == 1 && list[0].State == "stopped" {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(list) != 1 || list[0].State != "stopped" {
		t.Fatalf("daemon did not notice the VMM's death: %+v", list)
	}
	if strings.Contains(e.links(), vm.Tap) {
		t.Errorf("tap %s left after the VMM died", vm.Tap)
	}

	// Start again and delete while running: nothing may remain.
	e.must("vm", "start", "e2e1")
	vm = e.show("e2e1")
	e.must("vm", "delete", "e2e1")
	if pidAlive(vm.PID) {
		t.Errorf("VMM pid %d alive after delete", vm.PID)
	}
	if strings.Contains(e.links(), vm.Tap) {
		t.Errorf("tap %s left after delete:\n%s", vm.Tap, e.links())
	}
	if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
		t.Errorf("VM dir %s left after delete (%v)", vm.Dir, err)
	}
	if out := strings.TrimSpace(e.must("vm", "list", "--json")); out != "[]" {
		t.Errorf("vm list after delete = %s", out)
	}
	kh, _ := os.ReadFile(filepath.Join(e.root, "state", "banger", "ssh", "known_hosts"))
	if strings.Contains(string(kh), vm.IP+" ") || strings.Contains(string(kh), "e2e1.vm") {
		t.Errorf("known_hosts still pins the deleted VM:\n%s", kh)
	}
	runDir := filepath.Join(e.root, "run", "banger", "vms")
	if entries, _ := os.ReadDir(runDir); len(entries) != 0 {
		t.Errorf("runtime dirs left: %v", entries)
	}
}
