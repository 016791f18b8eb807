//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVMMConfinement: each VM's QEMU runs as a uid of its own (not root),
// under seccomp, holding open only its own VM's files, the shared image
// and kernel, and its devices.
func TestVMMConfinement(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("vm", "create", "--name", "a")
	e.must("vm", "create", "--name", "b")
	state := filepath.Join(e.root, "state", "banger")
	vms := map[string]vmJSON{"a": e.show("a"), "b": e.show("b")}
	for name, v := range vms {
		other := vms[map[string]string{"a": "b", "b": "a"}[name]]
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.PID))
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr(v.IP).As4()
		uid := fmt.Sprint(0x70000000 + int(ip[3])) // bridge 172.31.250.1/24
		fields := map[string]string{}
		for _, line := range strings.Split(string(status), "\n") {
			if k, val, ok := strings.Cut(line, ":"); ok {
				fields[k] = strings.Join(strings.Fields(val), " ")
			}
		}
		if want := strings.Repeat(uid+" ", 3) + uid; fields["Uid"] != want || fields["Gid"] != want {
			t.Errorf("%s: QEMU runs as Uid %q Gid %q, want %q", name, fields["Uid"], fields["Gid"], want)
		}
		if fields["Seccomp"] != "2" {
			t.Errorf("%s: Seccomp %q, want 2 (filter mode)", name, fields["Seccomp"])
		}
		if fields["CapEff"] != "0000000000000000" {
			t.Errorf("%s: effective capabilities %s", name, fields["CapEff"])
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", v.PID))
		if err != nil {
			t.Fatal(err)
		}
		allowed := []string{v.Dir + "/", filepath.Join(e.root, "run", "banger", "vms") + "/", filepath.Join(state, "images") + "/",
			filepath.Join(state, "kernels") + "/", filepath.Join(state, "layers") + "/"}
		devices := map[string]bool{"/dev/net/tun": true, "/dev/kvm": true, "/dev/null": true, "/dev/urandom": true, "/dev/random": true}
		for _, fd := range fds {
			target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", v.PID, fd.Name()))
			if err != nil || !strings.HasPrefix(target, "/") {
				continue // sockets, pipes, anonymous inodes
			}
			if strings.HasPrefix(target, other.Dir+"/") {
				t.Errorf("%s: QEMU holds %s, a file of VM %s", name, target, other.Name)
			}
			ok := devices[target]
			for _, a := range allowed {
				ok = ok || strings.HasPrefix(target, a)
			}
			if !ok {
				t.Errorf("%s: QEMU holds %s, outside its VM's files", name, target)
			}
		}
	}
	// The VMs work: the drop happened after their disks, tap and sockets
	// were open.
	e.must("vm", "exec", "a", "--", "true")
	e.must("vm", "exec", "b", "--", "true")
}
