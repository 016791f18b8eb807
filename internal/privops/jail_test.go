package privops

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/vmmcore"
)

// jailOwner is the owner the jail tests' helper serves.
const jailOwner = 4242

// standInJailer says how it was run, then becomes the owner (as the real
// jailer does before it execs Firecracker) and waits a minute at most,
// its command line still the jailer's.
const standInJailer = `#!/bin/sh
echo "stand-in jailer: $*"
exec setpriv --reuid=4242 --regid=4242 --clear-groups sh -c 'i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done' jailer "$@"
`

// deadJailer fails before it drops its privileges, once it has made
// the VM's cgroup (under $BANGER_TEST_CGROUPS).
const deadJailer = "#!/bin/sh\nmkdir -p \"$BANGER_TEST_CGROUPS/banger/jd\"\necho \"stand-in jailer: cannot make the jail\"\nexit 1\n"

// jailWorld is a helper whose Jails work in a directory of the test's:
// the owner's state directory with a VM's files (the owner's), root's
// jails directory, a stand-in jailer that says how it was run and then
// waits (a minute at most) with the jailer's command line, and a cgroup
// root.
type jailWorld struct {
	dir, state, base, bin, cg string
	files                     []firecracker.JailFile
	jails                     *Jails
	c                         *Client
}

func newJailWorld(t *testing.T) *jailWorld {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the helper links the owner's files into root's jail")
	}
	w := &jailWorld{dir: t.TempDir()}
	w.state, w.base, w.bin, w.cg = filepath.Join(w.dir, "state"), filepath.Join(w.dir, "jail"), filepath.Join(w.dir, "bin"), filepath.Join(w.dir, "cgroup")
	for _, d := range []string{w.base, w.bin, w.cg} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range [][2]string{{"/kernel", "kernels/k/vmlinux"}, {"/initrd", "kernels/k/initrd.img"},
		{"/root.img", "vms/v/root.img"}, {"/work.img", "vms/v/work.img"}, {"/config.img", "vms/v/config.img"}} {
		dst, rel := f[0], f[1]
		p := filepath.Join(w.state, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(rel), 0o600); err != nil {
			t.Fatal(err)
		}
		w.files = append(w.files, firecracker.JailFile{Src: p, Dst: dst})
	}
	// The owner's state directory, all of it.
	if err := filepath.Walk(w.state, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, jailOwner, jailOwner)
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.bin, "jailer"), []byte(standInJailer), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.bin, "firecracker"), []byte("not run\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w.jails = &Jails{Base: w.base, StateDir: w.state, Jailer: filepath.Join(w.bin, "jailer"), Firecracker: filepath.Join(w.bin, "firecracker"),
		CgroupVersion: 2, CgroupRoot: w.cg}
	sock := serve(t, &recorder{}, jailOwner, func(s *Server) { s.Jails = w.jails })
	w.c = &Client{SocketPath: sock}
	return w
}

func (w *jailWorld) console(t *testing.T) *os.File {
	f, err := os.OpenFile(filepath.Join(w.dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// kill ends the stand-in jailer pid and waits until it has gone.
func kill(t *testing.T, pid int) {
	t.Helper()
	start, err := vmmcore.ProcStartTime(pid)
	if err != nil {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); vmmcore.Matches(pid, start, func([]string) bool { return true }); {
		if time.Now().After(deadline) {
			t.Fatalf("stand-in jailer %d still runs 10s after SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStartJail: the helper makes the jail (root's, /run the owner's),
// hard-links the VM's files in, launches root's jailer with the owner's
// uid and gid, the jail base, the VM's cgroup limits and its output on
// the caller's console; refuses a second start and the removal while the
// VMM runs; and once it has exited removes jail and cgroup.
func TestStartJail(t *testing.T) {
	w := newJailWorld(t)
	// The unit's umask.
	defer syscall.Umask(syscall.Umask(0o077))
	if name, base, err := w.c.JailAvailable(); err != nil || name != "firecracker" || base != w.base {
		t.Fatalf("JailAvailable = %q, %q, %v", name, base, err)
	}
	req := firecracker.JailRequest{ID: "vm1", MemoryMiB: 256, Files: w.files}
	pid, err := w.c.StartJail(req, w.console(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kill(t, pid) })
	root := filepath.Join(w.base, "firecracker", "vm1", "root")
	want := fmt.Sprintf("stand-in jailer: --id vm1 --exec-file %s/firecracker --uid 4242 --gid 4242 --chroot-base-dir %s "+
		"--cgroup-version 2 --parent-cgroup banger --cgroup memory.max=%d --cgroup pids.max=256 -- --api-sock /run/firecracker.socket\n",
		w.bin, w.base, (256+256)<<20)
	var got []byte
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(string(got), "stand-in jailer"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stand-in jailer wrote nothing to the console in 5s")
		}
		got, _ = os.ReadFile(filepath.Join(w.dir, "console.log"))
	}
	if string(got) != want {
		t.Errorf("the jailer ran as\n%s\nwant\n%s", got, want)
	}
	for _, f := range w.files {
		a, err1 := os.Stat(f.Src)
		b, err2 := os.Stat(filepath.Join(root, f.Dst))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("jail %s is not a hard link of %s (%v, %v)", f.Dst, f.Src, err1, err2)
		}
	}
	// Root's, and open to the owner (its VMM's sockets) now that the
	// jailer runs as the owner.
	for p, uid := range map[string]uint32{root: 0, filepath.Dir(root): 0, filepath.Dir(filepath.Dir(root)): 0, filepath.Join(root, "run"): jailOwner} {
		if fi, err := os.Stat(p); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uid || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, want uid %d, mode 0755", p, err, uid)
		}
	}
	if !firecracker.JailedVMMRuns("vm1") {
		t.Error("JailedVMMRuns(vm1) = false with its jailer running")
	}
	if _, err := w.c.StartJail(req, w.console(t)); err == nil || !strings.Contains(err.Error(), "the VMM of jail vm1 still runs") {
		t.Errorf("a second start of a running jail: %v", err)
	}
	if err := w.c.RemoveJail("vm1"); err == nil || !strings.Contains(err.Error(), "still runs") {
		t.Errorf("removal of a running jail: %v", err)
	}
	if _, err := os.Stat(root); err != nil {
		t.Fatalf("the refused calls touched the running jail: %v", err)
	}

	kill(t, pid)
	// Another user's process that looks like the VMM holds nothing up.
	impostor := exec.Command("setpriv", "--reuid=4343", "--regid=4343", "--clear-groups", "sh", "-c", "sleep 30",
		"x", "--id", "vm1", "--", "--api-sock", "/run/firecracker.socket")
	if err := impostor.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = impostor.Process.Kill(); _ = impostor.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fi, err := os.Stat(fmt.Sprintf("/proc/%d", impostor.Process.Pid))
		if err == nil && fi.Sys().(*syscall.Stat_t).Uid == 4343 && firecracker.JailedVMMRuns("vm1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the impostor never ran as uid 4343")
		}
	}
	// The jailer would have made the VM's cgroup.
	cgroup := filepath.Join(w.cg, "banger", "vm1")
	if err := os.MkdirAll(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := w.c.RemoveJail("vm1"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(w.base, "firecracker", "vm1"), cgroup} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after RemoveJail: %v", p, err)
		}
	}
	for _, f := range w.files {
		if _, err := os.Stat(f.Src); err != nil {
			t.Errorf("the VM's own %s went with the jail: %v", f.Src, err)
		}
	}
}

// TestStartJailRefuses: what the helper will not put in a jail, or run,
// and that a refused start leaves no jail behind.
func TestStartJailRefuses(t *testing.T) {
	w := newJailWorld(t)
	t.Setenv("BANGER_TEST_CGROUPS", w.cg)
	rootsFile := filepath.Join(w.state, "vms", "v", "roots.img")
	if err := os.WriteFile(rootsFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(w.state, "vms", "v", "link.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(w.state, "etc")); err != nil {
		t.Fatal(err)
	}
	with := func(src, dst string) []firecracker.JailFile {
		return append(append([]firecracker.JailFile{}, w.files[:2]...), firecracker.JailFile{Src: src, Dst: dst})
	}
	cases := []struct {
		name  string
		req   firecracker.JailRequest
		setup func() func()
		want  string
	}{
		{"id", firecracker.JailRequest{ID: "../x", MemoryMiB: 256}, nil, `jail id "../x"`},
		{"memory", firecracker.JailRequest{ID: "m", MemoryMiB: 0}, nil, "memory 0 MiB"},
		{"place", firecracker.JailRequest{ID: "p", MemoryMiB: 256, Files: with(w.files[2].Src, "/etc/passwd")}, nil, `"/etc/passwd" is not a place`},
		{"place twice", firecracker.JailRequest{ID: "p2", MemoryMiB: 256, Files: with(w.files[2].Src, w.files[0].Dst)}, nil, `"/kernel" is not a place`},
		{"outside", firecracker.JailRequest{ID: "o", MemoryMiB: 256, Files: with("/etc/hostname", "/root.img")}, nil, "/etc/hostname is not in banger's state directory"},
		{"dotdot", firecracker.JailRequest{ID: "d", MemoryMiB: 256, Files: with(w.state+"/../x", "/root.img")}, nil, "is not in banger's state directory"},
		{"symlink", firecracker.JailRequest{ID: "s", MemoryMiB: 256, Files: with(filepath.Join(w.state, "vms/v/link.img"), "/root.img")}, nil, "link.img is not a regular file"},
		{"through a symlink", firecracker.JailRequest{ID: "e", MemoryMiB: 256, Files: with(filepath.Join(w.state, "etc/hostname"), "/root.img")}, nil, "escapes"},
		{"directory", firecracker.JailRequest{ID: "dir", MemoryMiB: 256, Files: with(filepath.Join(w.state, "vms/v"), "/root.img")}, nil, "is not a regular file"},
		{"not the owner's", firecracker.JailRequest{ID: "r", MemoryMiB: 256, Files: with(rootsFile, "/root.img")}, nil, "belongs to uid 0, not to banger's owner (4242)"},
		{"device", firecracker.JailRequest{ID: "dm", MemoryMiB: 256, Files: with("/dev/mapper/banger-x", "/root.img")}, nil,
			"/dev/mapper/banger-x: a device cannot go into a jail whose VMM runs as the owner"},
		{"jailer dies", firecracker.JailRequest{ID: "jd", MemoryMiB: 256, Files: w.files},
			func() func() {
				_ = os.WriteFile(w.jails.Jailer, []byte(deadJailer), 0o755)
				return func() { _ = os.WriteFile(w.jails.Jailer, []byte(standInJailer), 0o755) }
			}, "jail jd: the jailer exited before it ran Firecracker as uid 4242"},
		{"owner's base", firecracker.JailRequest{ID: "b", MemoryMiB: 256, Files: w.files},
			func() func() { _ = os.Chown(w.base, jailOwner, -1); return func() { _ = os.Chown(w.base, 0, -1) } },
			"must belong to root and be writable by root only"},
		{"writable jailer", firecracker.JailRequest{ID: "j", MemoryMiB: 256, Files: w.files},
			func() func() {
				_ = os.Chmod(w.jails.Jailer, 0o775)
				return func() { _ = os.Chmod(w.jails.Jailer, 0o755) }
			}, "jailer_bin: " + filepath.Join(w.bin, "jailer") + " must belong to root"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				defer tc.setup()()
			}
			pid, err := w.c.StartJail(tc.req, w.console(t))
			if pid != 0 {
				kill(t, pid)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartJail: %v, want %q", err, tc.want)
			}
			if left, _ := os.ReadDir(filepath.Join(w.base, "firecracker")); len(left) != 0 {
				t.Errorf("a refused start left %v", left)
			}
			if left, _ := os.ReadDir(filepath.Join(w.cg, "banger")); len(left) != 0 {
				t.Errorf("a refused start left cgroups %v", left)
			}
		})
	}
	if err := w.c.RemoveJail("../../etc"); err == nil || !strings.Contains(err.Error(), "jail id") {
		t.Errorf("RemoveJail of a path: %v", err)
	}
}
