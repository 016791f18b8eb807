//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// assertNothingLeft checks that no VM, tap, VMM, disk or runtime file of
// name remains.
func (e *env) assertNothingLeft(name string) {
	e.t.Helper()
	if out := strings.TrimSpace(e.must("vm", "list", "--json")); out != "[]" {
		e.t.Errorf("VMs left: %s", out)
	}
	// The daemon keeps tap_pool_size (2) idle pool taps; a VM's claimed
	// tap that was not released would be a third, or a bg- tap of its own.
	pool := 0
	for _, l := range strings.Split(e.links(), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
		switch {
		case strings.HasPrefix(name, "bg-pool-"):
			pool++
		case strings.HasPrefix(name, "bg-"):
			e.t.Errorf("tap %s left:\n%s", name, e.links())
		}
	}
	if pool > 2 {
		e.t.Errorf("%d pool taps with tap_pool_size 2: a claimed tap was not released:\n%s", pool, e.links())
	}
	if out, _ := exec.Command("pgrep", "-f", "guest="+name+",").CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		e.t.Errorf("VMM processes left for %s: %s", name, out)
	}
	for _, dir := range []string{filepath.Join(e.root, "state", "banger", "vms"), filepath.Join(e.root, "run", "banger", "vms")} {
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			e.t.Errorf("files left in %s: %v", dir, entries)
		}
	}
}

// TestCreateCancelledByCtrlC interrupts the CLI mid-create: the daemon
// rolls everything back.
func TestCreateCancelledByCtrlC(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `qemu_accel = "tcg"`)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "--no-autostart", "vm", "create", "--name", "cancelme")
	cmd.Env = e.vars
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the VMM runs and the create waits for the guest.
	var seen strings.Builder
	sc := bufio.NewScanner(stderr)
	interrupted := false
	deadline := time.AfterFunc(3*time.Minute, func() { _ = cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		seen.WriteString(sc.Text() + "\n")
		if !interrupted && strings.Contains(sc.Text(), "wait for SSH...") {
			time.Sleep(500 * time.Millisecond)
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			interrupted = true
		}
	}
	err = cmd.Wait()
	if !interrupted {
		t.Fatalf("create never reached the SSH wait:\n%s", seen.String())
	}
	if err == nil || !strings.Contains(seen.String(), "cancelled") {
		t.Fatalf("interrupted create: err=%v, output:\n%s", err, seen.String())
	}
	e.assertNothingLeft("cancelme")
	var ops []struct {
		Kind  string `json:"kind"`
		Done  bool   `json:"done"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(e.must("ops", "--json")), &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].Kind != "vm.create" || !ops[0].Done || !strings.Contains(ops[0].Error, "cancel") {
		t.Errorf("ops after cancel: %+v", ops)
	}
}

// TestVMMExitDuringBootFailsCreate boots a kernel whose root device does
// not exist: the guest powers off, the create fails with the console's
// last lines, and nothing is left.
func TestVMMExitDuringBootFailsCreate(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `qemu_accel = "tcg"`)

	// A copy of the kernel whose command line names a missing root disk.
	broken := filepath.Join(e.root, "broken-kernel")
	if out, err := exec.Command("cp", "-a", kernelDir, broken).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	mpath := filepath.Join(broken, "manifest.json")
	var m map[string]any
	data, err := os.ReadFile(mpath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["cmdline"] = "root=/dev/vdz rw rootdelay=1"
	data, _ = json.Marshal(m)
	if err := os.WriteFile(mpath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	e.must("kernel", "import", "broken", "--from", broken)
	e.must("image", "register", "--name", "noboot", "--rootfs", rootfs, "--kernel", "broken")

	start := time.Now()
	_, errOut, code := e.banger("vm", "create", "--name", "noboot", "--image", "noboot")
	if code == 0 {
		t.Fatal("create with an unbootable kernel succeeded")
	}
	if !strings.Contains(errOut, "exited during boot") || !strings.Contains(errOut, "banger-initrd") {
		t.Errorf("create error does not carry the console tail:\n%s", errOut)
	}
	if took := time.Since(start); took > 2*time.Minute {
		t.Errorf("failed boot took %s to be noticed", took)
	}
	e.assertNothingLeft("noboot")
}
