package firecracker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/vmm/firecracker/fctest"
	"banger/internal/vmm/vmmcore"
)

func testSpec(t *testing.T) vmmcore.Spec {
	t.Helper()
	dir := t.TempDir()
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("\x7fELF\x02\x01\x01 vmlinux"), 0o644); err != nil {
		t.Fatal(err)
	}
	return vmmcore.Spec{
		Name: "fctest", VCPU: 2, MemoryMiB: 256,
		KernelPath: kernel, InitrdPath: write("initrd.img"),
		Cmdline:  "console=ttyS0 reboot=k panic=1",
		RootDisk: write("root.img"), WorkDisk: write("work.img"), ConfigDisk: write("config.img"),
		Tap: "tap-fctest", MAC: "02:fc:00:00:00:02",
		RuntimeDir: filepath.Join(dir, "run"),
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

// fakeVMM replaces the process start of a Driver: it serves the fake API on
// the socket the command line names, and starts a real stand-in process
// whose command line carries the same arguments (so identity checks, Kill
// and WaitExit work on a real pid) and which ends by itself after 60s.
type fakeVMM struct {
	t     *testing.T
	argv  []string
	api   *fctest.Server
	pid   int
	fifo  string
	serve bool // false: start the stand-in without an API server
	// script is the stand-in's bash script; $1 is a fifo to block on.
	script string
}

// fakeTaps are the tap names the fake accepts as existing.
var fakeTaps = map[string]bool{"tap-fctest": true, "bg-jail": true}

// serveFake serves a stand-in Firecracker API (fctest) on a unix socket at
// sock until the test ends; root is the jail, when there is one.
func serveFake(t *testing.T, sock, root string) *fctest.Server {
	t.Helper()
	f := fctest.New()
	f.Root, f.TapExists = root, func(name string) bool { return fakeTaps[name] }
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("fake firecracker: %v", err)
	}
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		f.Close()
	})
	return f
}

func installFake(t *testing.T, d *Driver) *fakeVMM {
	fv := &fakeVMM{t: t, serve: true, script: `read -t 60 <>"$1"`}
	d.launch = fv.launch
	return fv
}

func (fv *fakeVMM) launch(argv []string, console *os.File, extra []*os.File) (int, error) {
	t := fv.t
	fv.argv = argv
	if fv.serve {
		sock, root := apiSocketOf(t, argv)
		fv.api = serveFake(t, sock, root)
	}
	fv.fifo = filepath.Join(t.TempDir(), "standin.fifo")
	if err := unix.Mkfifo(fv.fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	standin := append([]string{"bash", "-c", fv.script, "fc-standin", fv.fifo}, argv...)
	pid, err := vmmcore.LaunchWith(standin, console, extra)
	if err != nil {
		return 0, err
	}
	fv.pid = pid
	if fv.api != nil {
		fv.api.SetPID(pid)
	}
	start, _ := vmmcore.ProcStartTime(pid)
	t.Cleanup(func() { _ = vmmcore.Kill(pid, start, vmmcore.ArgMentions(fv.fifo)) })
	return pid, nil
}

// gone reports whether the stand-in process has exited (or never started).
func (fv *fakeVMM) gone() bool {
	if fv.pid == 0 {
		return true
	}
	argv, err := vmmcore.ProcCmdline(fv.pid)
	if err != nil || !slices.Contains(argv, fv.fifo) {
		return true
	}
	st, err := os.ReadFile("/proc/" + itoa(fv.pid) + "/stat")
	return err != nil || strings.Contains(string(st), ") Z ")
}

func itoa(i int) string { return strconv.Itoa(i) }

// heldFile returns the file process pid holds as descriptor fd and its
// access mode (O_RDONLY, O_WRONLY or O_RDWR).
func heldFile(t *testing.T, pid, fd int) (string, int) {
	t.Helper()
	target, err := os.Readlink("/proc/" + itoa(pid) + "/fd/" + itoa(fd))
	if err != nil {
		t.Fatalf("fd %d of pid %d: %v", fd, pid, err)
	}
	info, err := os.ReadFile("/proc/" + itoa(pid) + "/fdinfo/" + itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			return target, int(flags) & unix.O_ACCMODE
		}
	}
	t.Fatalf("no flags in fdinfo %d of pid %d", fd, pid)
	return "", 0
}

func flagValue(argv []string, flag string) string {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// apiSocketOf works out, like Firecracker and its jailer would, where the
// API socket of argv ends up, and the jail root (empty when not jailed).
func apiSocketOf(t *testing.T, argv []string) (sock, root string) {
	t.Helper()
	sock = flagValue(argv, "--api-sock")
	if filepath.Base(argv[0]) != "jailer" {
		return sock, ""
	}
	root = filepath.Join(flagValue(argv, "--chroot-base-dir"), filepath.Base(flagValue(argv, "--exec-file")),
		flagValue(argv, "--id"), "root")
	return filepath.Join(root, sock), root
}

func TestStartConfiguresThenStarts(t *testing.T) {
	spec := testSpec(t)
	d := New(Config{Binary: "/opt/fc/firecracker"})
	fv := installFake(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	wantArgv := []string{"/opt/fc/firecracker", "--api-sock", filepath.Join(spec.RuntimeDir, "fc.sock"), "--id", "fctest"}
	if !slices.Equal(fv.argv, wantArgv) {
		t.Errorf("argv = %q, want %q", fv.argv, wantArgv)
	}
	reqs, started := fv.api.Seen()
	wantReqs := []string{"PUT /logger", "PUT /boot-source", "PUT /drives/rootfs", "PUT /drives/work", "PUT /drives/config",
		"PUT /machine-config", "PUT /network-interfaces/eth0", "PUT /vsock", "PUT /actions", "GET /"}
	if !slices.Equal(reqs, wantReqs) {
		t.Errorf("requests = %q\nwant %q", reqs, wantReqs)
	}
	if !started {
		t.Fatal("the fake never got InstanceStart")
	}

	f := fv.api
	f.Lock()
	if *f.Boot.KernelImagePath != spec.KernelPath || *f.Boot.BootArgs != spec.Cmdline || *f.Boot.InitrdPath != spec.InitrdPath {
		t.Errorf("boot source %+v", f.Boot)
	}
	// The disks are the VMM's inherited descriptors 3, 4 and 5, named
	// /proc/self/fd/N, and are the spec's files: read-write, read-write,
	// read-only.
	if r := f.Drives["rootfs"]; *r.PathOnHost != "/proc/self/fd/3" || !*r.IsRootDevice || *r.IsReadOnly {
		t.Errorf("root drive %+v", r)
	}
	if w := f.Drives["work"]; *w.PathOnHost != "/proc/self/fd/4" || *w.IsRootDevice {
		t.Errorf("work drive %+v", w)
	}
	if c := f.Drives["config"]; *c.PathOnHost != "/proc/self/fd/5" || *c.IsRootDevice || !*c.IsReadOnly {
		t.Errorf("config drive %+v", c)
	}
	for fd, want := range map[int]struct {
		path string
		mode int
	}{3: {spec.RootDisk, unix.O_RDWR}, 4: {spec.WorkDisk, unix.O_RDWR}, 5: {spec.ConfigDisk, unix.O_RDONLY}} {
		if got, mode := heldFile(t, fv.pid, fd); got != want.path || mode != want.mode {
			t.Errorf("fd %d of the VMM = %s (mode %d), want %s (mode %d)", fd, got, mode, want.path, want.mode)
		}
	}
	if *f.Machine.VcpuCount != 2 || *f.Machine.MemSizeMib != 256 || f.Machine.Smt == nil || *f.Machine.Smt {
		t.Errorf("machine config %+v", f.Machine)
	}
	if n := f.Ifaces["eth0"]; *n.HostDevName != spec.Tap || *n.GuestMAC != spec.MAC {
		t.Errorf("network interface %+v", n)
	}
	if *f.Vsock.GuestCID != GuestCID || *f.Vsock.UDSPath != filepath.Join(spec.RuntimeDir, VsockName) {
		t.Errorf("vsock %+v", f.Vsock)
	}
	f.Unlock()

	if h.Driver != DriverName || h.PID != fv.pid || h.APISocket != filepath.Join(spec.RuntimeDir, APISocketName) {
		t.Errorf("handle %+v", h)
	}
	if want, _ := vmmcore.ProcStartTime(fv.pid); h.StartTime != want {
		t.Errorf("handle start time %d, want %d", h.StartTime, want)
	}
	if !d.Alive(h) {
		t.Fatal("Alive = false after Start")
	}
	if AgentSocket(h) != filepath.Join(spec.RuntimeDir, VsockName) {
		t.Errorf("AgentSocket = %s", AgentSocket(h))
	}

	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	f.Lock()
	if f.CtrlAltDels != 1 {
		t.Errorf("SendCtrlAltDel sent %d times, want 1", f.CtrlAltDels)
	}
	f.Unlock()

	if err := d.Cleanup(h); err == nil {
		t.Fatal("Cleanup succeeded while the VMM runs")
	}
	if err := d.Kill(h); err != nil {
		t.Fatal(err)
	}
	if err := vmmcore.WaitGone(ctx, func() bool { return d.Alive(h) }, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(ctx, h); !errors.Is(err, vmmcore.ErrNotRunning) {
		t.Fatalf("Shutdown after Kill = %v, want ErrNotRunning", err)
	}
	if err := d.Cleanup(h); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{h.APISocket, AgentSocket(h)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Cleanup: %v", p, err)
		}
	}
}

func TestStartMinimalSpec(t *testing.T) {
	spec := testSpec(t)
	spec.InitrdPath, spec.WorkDisk, spec.ConfigDisk, spec.Tap, spec.MAC = "", "", "", "", ""
	d := New(Config{})
	fv := installFake(t, d)
	h, err := d.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })
	reqs, _ := fv.api.Seen()
	want := []string{"PUT /logger", "PUT /boot-source", "PUT /drives/rootfs", "PUT /machine-config",
		"PUT /vsock", "PUT /actions", "GET /"}
	if !slices.Equal(reqs, want) {
		t.Errorf("requests = %q\nwant %q", reqs, want)
	}
	fv.api.Lock()
	defer fv.api.Unlock()
	if fv.api.Boot.InitrdPath != nil {
		t.Errorf("initrd_path sent although the spec has none: %q", *fv.api.Boot.InitrdPath)
	}
}

func TestStartClearsStaleSockets(t *testing.T) {
	spec := testSpec(t)
	if err := os.MkdirAll(spec.RuntimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A killed Firecracker leaves both socket files behind; the fake, like
	// Firecracker, refuses to bind a vsock path that exists.
	for _, name := range []string{APISocketName, VsockName} {
		if err := os.WriteFile(filepath.Join(spec.RuntimeDir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := New(Config{})
	installFake(t, d)
	h, err := d.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })
}

func TestStartFailuresCleanUp(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(*vmmcore.Spec, *Driver, *fakeVMM)
		want    []string
		wantErr error
	}{
		{
			name:   "fault message from firecracker",
			mutate: func(s *vmmcore.Spec, _ *Driver, _ *fakeVMM) { s.VCPU = 64 },
			want: []string{"firecracker PUT /machine-config: 400",
				"The vCPU number is invalid!", "last lines of"},
		},
		{
			name:   "a tap that does not exist",
			mutate: func(s *vmmcore.Spec, _ *Driver, _ *fakeVMM) { s.Tap = "no-such-tap" },
			want:   []string{"firecracker PUT /network-interfaces/eth0: 400", "Invalid TUN/TAP Backend provided by no-such-tap"},
		},
		{
			name: "a bzImage where an ELF vmlinux belongs",
			mutate: func(s *vmmcore.Spec, _ *Driver, _ *fakeVMM) {
				if err := os.WriteFile(s.KernelPath, []byte("MZ\x00\x00bzImage"), 0o644); err != nil {
					panic(err)
				}
			},
			want: []string{"firecracker PUT /actions: 400", "failed to load ELF kernel image"},
		},
		{
			name: "process exits before its socket appears",
			mutate: func(_ *vmmcore.Spec, _ *Driver, fv *fakeVMM) {
				fv.serve = false
				fv.script = `echo "firecracker: could not open /dev/kvm" >&2; exit 1`
			},
			want:    []string{"exited during start", "could not open /dev/kvm"},
			wantErr: vmmcore.ErrExited,
		},
		{
			name: "socket never appears",
			mutate: func(_ *vmmcore.Spec, d *Driver, fv *fakeVMM) {
				fv.serve = false
				d.cfg.StartTimeout = 300 * time.Millisecond
			},
			want:    []string{"wait for", "fc.sock"},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t)
			d := New(Config{})
			fv := installFake(t, d)
			tc.mutate(&spec, d, fv)
			_, err := d.Start(context.Background(), spec)
			if err == nil {
				t.Fatal("Start succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v is not %v", err, tc.wantErr)
			}
			if !fv.gone() {
				t.Errorf("the VMM process %d is still running after a failed Start", fv.pid)
			}
			for _, name := range []string{APISocketName, VsockName} {
				if _, err := os.Lstat(filepath.Join(spec.RuntimeDir, name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left behind: %v", name, err)
				}
			}
		})
	}
}

func TestConfigurationAfterStartIsRejected(t *testing.T) {
	spec := testSpec(t)
	d := New(Config{})
	installFake(t, d)
	h, err := d.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })
	err = newClient(h.APISocket).put(context.Background(), "/machine-config", machineConfig{VcpuCount: 4, MemSizeMib: 512})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.FaultMessage != fctest.FaultPostBoot {
		t.Fatalf("PUT /machine-config after start = %v, want 400 %q", err, fctest.FaultPostBoot)
	}
}

// TestFakeRejectsWhatFirecrackerRejects keeps the fake honest, and shows the
// client surfaces each fault message.
func TestFakeRejectsWhatFirecrackerRejects(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	type put struct {
		path string
		body any
	}
	cases := []struct {
		name  string
		setup []put
		req   put
		want  string
	}{
		{"unknown field", nil, put{"/machine-config", map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 2}}, "unknown field"},
		{"wrong type", nil, put{"/machine-config", map[string]any{"vcpu_count": "2", "mem_size_mib": 128}}, "deserializing"},
		{"missing vcpu_count", nil, put{"/machine-config", map[string]any{"mem_size_mib": 128}}, "missing field `vcpu_count`"},
		{"zero vcpus", nil, put{"/machine-config", map[string]any{"vcpu_count": 0, "mem_size_mib": 128}}, "vCPU number is invalid"},
		{"zero memory", nil, put{"/machine-config", map[string]any{"vcpu_count": 1, "mem_size_mib": 0}}, "memory size (MiB) is invalid"},
		{"kernel missing", nil, put{"/boot-source", map[string]any{"kernel_image_path": filepath.Join(dir, "nope")}}, "kernel file cannot be opened"},
		{"drive id mismatch", nil, put{"/drives/a", map[string]any{"drive_id": "b", "path_on_host": disk, "is_root_device": false}}, "does not match"},
		{"drive path missing", nil, put{"/drives/a", map[string]any{"drive_id": "a", "path_on_host": filepath.Join(dir, "x"), "is_root_device": false}}, "Unable to open the disk file"},
		{"second root device",
			[]put{{"/drives/a", map[string]any{"drive_id": "a", "path_on_host": disk, "is_root_device": true}}},
			put{"/drives/b", map[string]any{"drive_id": "b", "path_on_host": disk, "is_root_device": true}}, "root block device already exists"},
		{"empty tap name", nil, put{"/network-interfaces/eth0", map[string]any{"iface_id": "eth0", "host_dev_name": ""}}, "host_dev_name"},
		{"reserved cid", nil, put{"/vsock", map[string]any{"guest_cid": 2, "uds_path": filepath.Join(dir, "v.sock")}}, "invalid guest CID"},
		{"ctrl-alt-del before start", nil, put{"/actions", map[string]any{"action_type": "SendCtrlAltDel"}}, fctest.FaultPreBoot},
		{"start without kernel", nil, put{"/actions", map[string]any{"action_type": "InstanceStart"}}, "without kernel configuration"},
		{"unknown path", nil, put{"/balloon-ish", map[string]any{}}, "Invalid request method and/or path"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(dir, "api"+itoa(i)+".sock")
			serveFake(t, sock, "")
			c := newClient(sock)
			ctx := context.Background()
			for _, s := range tc.setup {
				if err := c.put(ctx, s.path, s.body); err != nil {
					t.Fatalf("setup PUT %s: %v", s.path, err)
				}
			}
			err := c.put(ctx, tc.req.path, tc.req.body)
			var apiErr *APIError
			if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.FaultMessage, tc.want) {
				t.Fatalf("PUT %s = %v, want 400 with %q", tc.req.path, err, tc.want)
			}
		})
	}
}

func TestJailedStart(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the jailed layout hands disks to another uid, which needs root")
	}
	spec := testSpec(t)
	base := filepath.Join(t.TempDir(), "jail")
	d := New(Config{Binary: "/opt/fc/firecracker", Jailer: &JailerConfig{UID: 4242, GID: 4343, ChrootBase: base}})
	fv := installFake(t, d)
	ctx := context.Background()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })

	jail := filepath.Join(base, "firecracker", "fctest")
	root := filepath.Join(jail, "root")
	wantArgv := []string{"jailer", "--id", "fctest", "--exec-file", "/opt/fc/firecracker", "--uid", "4242",
		"--gid", "4343", "--chroot-base-dir", base, "--", "--api-sock", "/run/firecracker.socket"}
	if !slices.Equal(fv.argv, wantArgv) {
		t.Errorf("argv = %q\nwant %q", fv.argv, wantArgv)
	}
	if h.APISocket != filepath.Join(root, "run", "firecracker.socket") {
		t.Errorf("APISocket = %s", h.APISocket)
	}
	if !d.Alive(h) {
		t.Fatal("Alive = false for the jailed VMM")
	}
	fv.api.Lock()
	if *fv.api.Boot.KernelImagePath != "/kernel" || *fv.api.Drives["rootfs"].PathOnHost != "/root.img" ||
		*fv.api.Drives["work"].PathOnHost != "/work.img" || *fv.api.Vsock.UDSPath != "/run/vsock.sock" {
		t.Errorf("paths sent are not the jail's: boot %+v drives %+v vsock %+v", fv.api.Boot, fv.api.Drives, fv.api.Vsock)
	}
	fv.api.Unlock()
	links := map[string]string{"kernel": spec.KernelPath, "initrd": spec.InitrdPath, "root.img": spec.RootDisk, "work.img": spec.WorkDisk}
	for name, orig := range links {
		a, err1 := os.Stat(filepath.Join(root, name))
		b, err2 := os.Stat(orig)
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s is not a hard link of %s (%v, %v)", name, orig, err1, err2)
		}
	}
	for _, disk := range []string{"root.img", "work.img"} {
		st, _ := os.Stat(filepath.Join(root, disk))
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 4242 || sys.Gid != 4343 {
			t.Errorf("%s owned by %d:%d, want 4242:4343", disk, sys.Uid, sys.Gid)
		}
	}
	if AgentSocket(h) != filepath.Join(root, "run", "vsock.sock") {
		t.Errorf("AgentSocket = %s", AgentSocket(h))
	}

	if err := d.Kill(h); err != nil {
		t.Fatal(err)
	}
	if err := vmmcore.WaitGone(ctx, func() bool { return d.Alive(h) }, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(jail); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail %s still there: %v", jail, err)
	}
	if _, err := os.Stat(spec.RootDisk); err != nil {
		t.Errorf("original root disk gone: %v", err)
	}
}

func TestJailerConfigChecks(t *testing.T) {
	spec := testSpec(t)
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"relative binary", Config{Binary: "firecracker", Jailer: &JailerConfig{ChrootBase: "/srv/j"}}, "absolute path"},
		{"binary name", Config{Binary: "/usr/bin/fc", Jailer: &JailerConfig{ChrootBase: "/srv/j"}}, "contains \"firecracker\""},
		{"relative base", Config{Binary: "/usr/bin/firecracker", Jailer: &JailerConfig{ChrootBase: "srv"}}, "chroot base"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := New(tc.cfg)
			d.launch = func([]string, *os.File, []*os.File) (int, error) { t.Fatal("launched"); return 0, nil }
			_, err := d.Start(context.Background(), spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestIdentityHelpers(t *testing.T) {
	ids := map[string]string{"dev": "dev", "my_box.1": "my-box-1", "": "vm", strings.Repeat("a", 70): strings.Repeat("a", 64)}
	for in, want := range ids {
		if got := instanceID(in); got != want {
			t.Errorf("instanceID(%q) = %q, want %q", in, got, want)
		}
	}
	jails := []struct {
		sock, dir, id string
		ok            bool
	}{
		{"/srv/jailer/firecracker/dev/root/run/firecracker.socket", "/srv/jailer/firecracker/dev", "dev", true},
		{"/run/banger/vms/dev/fc.sock", "", "", false},
		{"/root/run/firecracker.socket", "", "", false},
	}
	for _, j := range jails {
		dir, id, ok := jailOf(j.sock)
		if dir != j.dir || id != j.id || ok != j.ok {
			t.Errorf("jailOf(%s) = %q %q %v", j.sock, dir, id, ok)
		}
	}
	if !hasID([]string{"firecracker", "--id=dev"}, "dev") || !hasID([]string{"jailer", "--id", "dev"}, "dev") ||
		hasID([]string{"firecracker", "--id", "dev2"}, "dev") || hasID([]string{"--id"}, "dev") {
		t.Error("hasID")
	}
}

func TestStartRefusesQCOW2(t *testing.T) {
	spec := testSpec(t)
	spec.RootFormat = "qcow2"
	d := New(Config{Binary: "/opt/fc/firecracker"})
	fv := installFake(t, d)
	_, err := d.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "cannot open a qcow2 root disk") {
		t.Fatalf("Start with a qcow2 root = %v", err)
	}
	if fv.pid != 0 {
		t.Fatal("Firecracker was started for a qcow2 root")
	}
}

// TestLaunchedIsReportedBeforeConfiguration: the VMM is reported the
// moment it exists (before a request reaches it), and a caller that
// cannot record it stops the start, with nothing left running.
func TestLaunchedIsReportedBeforeConfiguration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	spec := testSpec(t)
	d := New(Config{})
	fv := installFake(t, d)
	var got []vmmcore.Handle
	var requestsThen []string
	spec.Launched = func(h vmmcore.Handle) error {
		got = append(got, h)
		requestsThen, _ = fv.api.Seen()
		return nil
	}
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != h {
		t.Fatalf("Launched got %+v, want once with the handle Start returned (%+v)", got, h)
	}
	if len(requestsThen) != 0 {
		t.Errorf("Launched was called after %q reached the VMM", requestsThen)
	}

	spec2 := testSpec(t)
	spec2.Launched = func(vmmcore.Handle) error { return errors.New("the database is gone") }
	d2 := New(Config{})
	fv2 := installFake(t, d2)
	if _, err := d2.Start(ctx, spec2); err == nil || !strings.Contains(err.Error(), "the database is gone") {
		t.Fatalf("Start with a failing Launched = %v", err)
	}
	if !fv2.gone() {
		t.Error("the VMM still runs after Launched failed")
	}
	if _, err := os.Lstat(filepath.Join(spec2.RuntimeDir, APISocketName)); err == nil {
		t.Error("the API socket is left after Launched failed")
	}
}
