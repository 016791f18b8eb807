//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type diskJSON struct {
	RootDisk      string `json:"root_disk"`
	RootUsedBytes int64  `json:"root_used_bytes"`
	WorkUsedBytes int64  `json:"work_used_bytes"`
}

func (e *env) disks(name string) diskJSON {
	e.t.Helper()
	var d diskJSON
	if err := json.Unmarshal([]byte(e.must("vm", "show", name, "--json")), &d); err != nil {
		e.t.Fatal(err)
	}
	return d
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// guestHas reports whether path exists in the guest.
func (e *env) guestHas(vm, path string) bool {
	_, _, code := e.banger("vm", "exec", vm, "--", "test", "-e", path)
	return code == 0
}

// TestStorage: copy-on-write roots over one image that is never written,
// writes isolated between VMs, clones, a grown work disk, a full disk.
func TestStorage(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	var img struct {
		RootfsPath string `json:"rootfs_path"`
	}
	if err := json.Unmarshal([]byte(e.must("image", "show", "debian-bookworm", "--json")), &img); err != nil {
		t.Fatal(err)
	}
	baseSum := sha256File(t, img.RootfsPath)

	// An unstarted VM costs almost nothing beyond its work disk's metadata.
	e.must("vm", "create", "--name", "idle", "--no-start")
	if d := e.disks("idle"); d.RootDisk != "qcow2" || d.RootUsedBytes >= 10<<20 {
		t.Errorf("unstarted VM: root disk %q holding %d bytes, want qcow2 under 10 MB", d.RootDisk, d.RootUsedBytes)
	}

	// Two VMs from one image: each one's writes stay its own.
	e.must("vm", "create", "--name", "a")
	e.must("vm", "create", "--name", "b")
	e.must("vm", "exec", "a", "--", "sh", "-c", "echo a > /etc/marker-a && echo a > /root/work-a && sync")
	e.must("vm", "exec", "b", "--", "sh", "-c", "echo b > /etc/marker-b && echo b > /root/work-b && sync")
	for _, c := range []struct {
		vm, path string
		want     bool
	}{{"a", "/etc/marker-a", true}, {"a", "/etc/marker-b", false}, {"a", "/root/work-b", false},
		{"b", "/etc/marker-b", true}, {"b", "/etc/marker-a", false}, {"b", "/root/work-a", false}} {
		if got := e.guestHas(c.vm, c.path); got != c.want {
			t.Errorf("%s has %s: %v, want %v", c.vm, c.path, got, c.want)
		}
	}

	// A clone sees its source's writes from before the clone, not after.
	e.must("vm", "stop", "a")
	e.must("vm", "clone", "a", "a2")
	e.must("vm", "start", "a")
	e.must("vm", "exec", "a", "--", "sh", "-c", "echo late > /etc/after-clone && sync")
	for _, c := range []struct {
		path string
		want bool
	}{{"/etc/marker-a", true}, {"/root/work-a", true}, {"/etc/after-clone", false}} {
		if got := e.guestHas("a2", c.path); got != c.want {
			t.Errorf("clone a2 has %s: %v, want %v", c.path, got, c.want)
		}
	}
	if host := strings.TrimSpace(e.must("vm", "exec", "a2", "--", "hostname")); host != "a2" {
		t.Errorf("clone's hostname = %q", host)
	}
	// Every host key (ed25519 and ECDSA) and the machine-id are the clone's own.
	keysA := e.must("vm", "exec", "a", "--", "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
	keysA2 := e.must("vm", "exec", "a2", "--", "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
	for _, line := range strings.Split(strings.TrimSpace(keysA2), "\n") {
		if f := strings.Fields(line); len(f) < 2 || strings.Contains(keysA, f[1]) {
			t.Errorf("clone shares a host key with its source: %s", line)
		}
	}
	if n := strings.Count(keysA2, "\n"); n != 2 {
		t.Errorf("clone has %d host keys, want ed25519 and ECDSA:\n%s", n, keysA2)
	}
	idA := e.must("vm", "exec", "a", "--", "cat", "/etc/machine-id")
	idA2 := e.must("vm", "exec", "a2", "--", "cat", "/etc/machine-id")
	if idA == idA2 {
		t.Errorf("clone shares its source's machine-id %s", idA)
	}
	// The source goes; the clone keeps working on the shared layer.
	e.must("vm", "delete", "a")
	e.must("vm", "restart", "a2")
	if !e.guestHas("a2", "/etc/marker-a") {
		t.Error("clone lost its source's files after the source was deleted")
	}

	// The work disk grows: the host grows the file, the guest the filesystem.
	e.must("vm", "stop", "b")
	e.must("vm", "set", "b", "--disk-size", "2G")
	e.must("vm", "start", "b")
	out := strings.Fields(e.must("vm", "exec", "b", "--", "df", "-B1", "--output=size", "/root"))
	size, _ := strconv.ParseInt(out[len(out)-1], 10, 64)
	if size < 1900<<20 || size > 2<<30 {
		t.Errorf("/root after growing to 2G: %d bytes", size)
	}
	if !e.guestHas("b", "/root/work-b") {
		t.Error("the grown work disk lost its files")
	}

	if got := sha256File(t, img.RootfsPath); got != baseSum {
		t.Fatalf("the image was written: sha256 %s, was %s", got, baseSum)
	}

	// A create on a nearly full filesystem fails cleanly.
	// bangerd runs in the mount namespace `ip netns exec` gave it: mount
	// the small filesystem there.
	vmsDir := filepath.Join(e.root, "state", "banger", "vms")
	inDaemonNS := func(argv ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(e.daemon.Process.Pid), "-m", "--"}, argv...)...)
	}
	if out, err := inDaemonNS("mount", "-t", "tmpfs", "-o", "size=16m", "banger-e2e-full", vmsDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	defer inDaemonNS("umount", vmsDir).Run()
	_, errOut, code := e.banger("vm", "create", "--name", "full")
	if code == 0 || !strings.Contains(errOut, "no space left on") {
		t.Errorf("create on a full disk: exit %d: %s", code, errOut)
	}
	if _, _, code := e.banger("vm", "show", "full"); code == 0 {
		t.Error("a failed create left its VM")
	}
	if out, _ := inDaemonNS("ls", "-A", vmsDir).CombinedOutput(); len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("a failed create left files: %s", out)
	}
}
