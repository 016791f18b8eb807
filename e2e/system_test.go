//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/miekg/dns"
)

// procStatus reads one field ("Uid", "CapEff") of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return ""
}

// TestSystemMode: bangerd runs as its owner (nobody: OpenSSH wants the
// uid to have a passwd entry; any unprivileged user does) with no
// capabilities, and banger's root helper, as root, makes the bridge, taps,
// rules and the guests' DNS port for it. A VM is created, answers exec and
// resolves NAME.vm, gets NAT, stops, starts and is deleted; an OCI image
// is pulled and converted without root; nothing is left, and the helper's
// log shows it did the privileged work.
func TestSystemMode(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("needs the user nobody: %v", err)
	}
	owner, _ := strconv.Atoi(u.Uid)
	e := newSystemEnv(t, owner, `qemu_accel = "tcg"`)
	pid := e.daemon.Process.Pid
	if uid := strings.Fields(procStatus(t, pid, "Uid")); uid[0] != u.Uid || uid[1] != u.Uid {
		t.Fatalf("bangerd runs as uid %v, want %s", uid, u.Uid)
	}
	if caps := procStatus(t, pid, "CapEff"); caps != "0000000000000000" {
		t.Fatalf("bangerd has capabilities %s, want none", caps)
	}
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("vm", "create", "--name", "sys")
	if got := strings.TrimSpace(e.must("vm", "exec", "sys", "--", "cat", "/etc/hostname")); got != "sys" {
		t.Errorf("hostname in the VM: %q, want sys", got)
	}
	v := e.show("sys")
	if uid := strings.Fields(procStatus(t, v.PID, "Uid")); uid[0] != u.Uid {
		t.Errorf("the VM's QEMU runs as uid %v, want the owner's %s", uid, u.Uid)
	}
	// The guests' resolver is port 53 on the bridge's address, which
	// only the helper could bind.
	if got := aRecord(t, lookupAt(t, e, "172.31.250.1:53", "sys.vm", dns.TypeA)); got != v.IP {
		t.Errorf("sys.vm from the bridge's resolver: %s, want %s", got, v.IP)
	}
	e.must("vm", "set", "sys", "--nat")
	e.assertNoLeaks("with NAT on") // the rules the rows ask for are the kernel's
	e.must("vm", "stop", "sys")
	e.must("vm", "start", "sys")
	if got := strings.TrimSpace(e.must("vm", "exec", "sys", "--", "cat", "/etc/hostname")); got != "sys" {
		t.Errorf("hostname after a restart: %q, want sys", got)
	}
	e.must("vm", "delete", "sys")
	e.assertNoLeaks("after delete")

	// An OCI image converts without root: the daemon unpacks it as
	// itself and gives the files their owners inside the image.
	e.must("image", "pull", nsRegistryImage(t, e.ns), "--name", "tiny")
	img := filepath.Join(e.root, "state", "banger", "images", "tiny", "rootfs.ext4")
	if fi, err := os.Stat(img); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(owner) {
		t.Errorf("%s: %v, want the owner's", img, err)
	}
	for _, p := range []string{"/", "/etc/passwd"} {
		out, err := exec.Command("debugfs", "-R", "stat "+p, img).Output()
		if err != nil || !regexp.MustCompile(`User:\s+0\s+Group:\s+0\b`).Match(out) {
			t.Errorf("%s in the pulled image is not root's (%v):\n%s", p, err, out)
		}
	}
	e.must("image", "delete", "tiny")
	e.assertNoLeaks("after an OCI pull")
	for _, pid := range processesUnder(e.root) {
		if pid == e.helper.Process.Pid || pid == e.daemon.Process.Pid {
			continue // banger's own two, whose arguments name the root
		}
		cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		t.Errorf("process %d left under %s: %s", pid, e.root, strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	log := e.helperLog()
	for _, op := range []string{"ensure_bridge", "create_tap", "open_tap", "delete_tap", "sync_nat", "listen_dns", "enable_ip_forward", "route_dns", "snapshots_available"} {
		if !strings.Contains(log, `"op":"`+op+`"`) {
			t.Errorf("the root helper never did %s; its log:\n%s", op, log)
		}
	}
	if strings.Contains(log, "refused") {
		t.Errorf("the root helper refused something banger's daemon asked:\n%s", log)
	}
}
