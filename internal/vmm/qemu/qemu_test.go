package qemu

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/system"
	"banger/internal/vmm/vmmcore"
)

// testSpec returns a spec whose files exist (their content is whatever the
// test needs) in a fresh directory.
func testSpec(t *testing.T, kernel []byte) vmmcore.Spec {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	root := write("root.img", nil)
	work := write("work.img", nil)
	for _, p := range []string{root, work} {
		if err := os.Truncate(p, 16<<20); err != nil {
			t.Fatal(err)
		}
	}
	return vmmcore.Spec{
		Name: "qtest", VCPU: 1, MemoryMiB: 128,
		KernelPath: write("bzImage", kernel),
		Cmdline:    "console=ttyS0",
		RootDisk:   root, WorkDisk: work,
		RuntimeDir: filepath.Join(dir, "run"),
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

func valueAfter(argv []string, flag string) []string {
	var out []string
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			out = append(out, argv[i+1])
		}
	}
	return out
}

func TestCommand(t *testing.T) {
	base := vmmcore.Spec{Name: "dev", VCPU: 2, MemoryMiB: 1024, KernelPath: "/k/bzImage",
		Cmdline: "console=ttyS0 root=/dev/vda", RootDisk: "/d/root.img", WorkDisk: "/d/work.img",
		RuntimeDir: "/run/banger/vms/dev", ConsoleLog: "/var/log/dev.log"}
	cases := []struct {
		name   string
		kvm    bool
		mutate func(*vmmcore.Spec)
		check  func(t *testing.T, argv []string)
	}{
		{"tcg", false, nil, func(t *testing.T, argv []string) {
			if got := valueAfter(argv, "-accel"); !slices.Equal(got, []string{"tcg"}) {
				t.Errorf("-accel %v", got)
			}
			if got := valueAfter(argv, "-cpu"); !slices.Equal(got, []string{"max"}) {
				t.Errorf("-cpu %v", got)
			}
		}},
		{"kvm", true, nil, func(t *testing.T, argv []string) {
			if got := valueAfter(argv, "-accel"); !slices.Equal(got, []string{"kvm"}) {
				t.Errorf("-accel %v", got)
			}
			if got := valueAfter(argv, "-cpu"); !slices.Equal(got, []string{"host,-arch-capabilities"}) {
				t.Errorf("-cpu %v", got)
			}
		}},
		{"machine and sizes", true, nil, func(t *testing.T, argv []string) {
			want := map[string]string{"-machine": "microvm,acpi=on,rtc=on", "-m": "1024", "-smp": "2",
				"-kernel": "/k/bzImage", "-append": "console=ttyS0 root=/dev/vda",
				"-pidfile": "/run/banger/vms/dev/qemu.pid", "-serial": "chardev:console"}
			for flag, v := range want {
				if got := valueAfter(argv, flag); !slices.Equal(got, []string{v}) {
					t.Errorf("%s = %v, want %s", flag, got, v)
				}
			}
			for _, f := range []string{"-nodefaults", "-no-user-config", "-no-reboot"} {
				if !slices.Contains(argv, f) {
					t.Errorf("missing %s", f)
				}
			}
			if slices.Contains(argv, "-initrd") || slices.Contains(argv, "-netdev") {
				t.Errorf("unexpected -initrd or -netdev: %v", argv)
			}
		}},
		{"config disk last and read-only, qcow2 layers", false, func(s *vmmcore.Spec) {
			s.ConfigDisk, s.RootFormat, s.WorkFormat = "/d/config.img", "qcow2", "qcow2"
		}, func(t *testing.T, argv []string) {
			drives := valueAfter(argv, "-drive")
			want := []string{
				"id=root,file=/d/root.img,format=qcow2,if=none,cache=writeback,aio=threads,discard=unmap,werror=stop,rerror=report",
				"id=work,file=/d/work.img,format=qcow2,if=none,cache=writeback,aio=threads,discard=unmap,werror=stop,rerror=report",
				"id=config,file=/d/config.img,format=raw,if=none,cache=writeback,aio=threads,readonly=on",
			}
			if !slices.Equal(drives, want) {
				t.Errorf("drives\n%q\nwant\n%q", drives, want)
			}
			if devs := valueAfter(argv, "-device"); !slices.Contains(devs, "virtio-blk-device,drive=config") {
				t.Errorf("devices %v", devs)
			}
		}},
		{"root before work", false, nil, func(t *testing.T, argv []string) {
			drives := valueAfter(argv, "-drive")
			if len(drives) != 2 || !strings.HasPrefix(drives[0], "id=root,file=/d/root.img,format=raw") ||
				!strings.HasPrefix(drives[1], "id=work,file=/d/work.img,format=raw") {
				t.Errorf("drives %v", drives)
			}
			devs := valueAfter(argv, "-device")
			if !slices.Contains(devs, "virtio-blk-device,drive=root") || !slices.Contains(devs, "virtio-blk-device,drive=work") {
				t.Errorf("devices %v", devs)
			}
		}},
		{"no work disk", false, func(s *vmmcore.Spec) { s.WorkDisk = "" }, func(t *testing.T, argv []string) {
			if drives := valueAfter(argv, "-drive"); len(drives) != 1 {
				t.Errorf("drives %v", drives)
			}
		}},
		{"initrd", false, func(s *vmmcore.Spec) { s.InitrdPath = "/k/initrd.img" }, func(t *testing.T, argv []string) {
			if got := valueAfter(argv, "-initrd"); !slices.Equal(got, []string{"/k/initrd.img"}) {
				t.Errorf("-initrd %v", got)
			}
		}},
		{"tap and mac", false, func(s *vmmcore.Spec) { s.Tap = "tap-dev"; s.MAC = "02:fc:00:00:00:07" }, func(t *testing.T, argv []string) {
			if got := valueAfter(argv, "-netdev"); !slices.Equal(got, []string{"tap,id=net0,ifname=tap-dev,script=no,downscript=no"}) {
				t.Errorf("-netdev %v", got)
			}
			if !slices.Contains(valueAfter(argv, "-device"), "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:07") {
				t.Errorf("no virtio-net device in %v", argv)
			}
		}},
		{"agent port and qmp", false, nil, func(t *testing.T, argv []string) {
			devs := valueAfter(argv, "-device")
			if !slices.Contains(devs, "virtserialport,bus=vser0.0,chardev=agent,name=org.banger.agent") {
				t.Errorf("no agent port in %v", devs)
			}
			chardevs := valueAfter(argv, "-chardev")
			if !slices.Contains(chardevs, "socket,id=qmp,server=on,wait=off,path=/run/banger/vms/dev/qmp.sock") ||
				!slices.Contains(chardevs, "socket,id=agent,server=on,wait=off,path=/run/banger/vms/dev/agent.sock") {
				t.Errorf("chardevs %v", chardevs)
			}
		}},
		{"commas escaped", false, func(s *vmmcore.Spec) {
			s.RootDisk = "/d/a,b.img"
			s.ConsoleLog = "/l/x,y.log"
			s.Name = "a,b"
		}, func(t *testing.T, argv []string) {
			if d := valueAfter(argv, "-drive")[0]; !strings.Contains(d, "file=/d/a,,b.img,") {
				t.Errorf("drive %q", d)
			}
			if !slices.Contains(valueAfter(argv, "-chardev"), "file,id=console,append=on,path=/l/x,,y.log") {
				t.Errorf("console chardev not escaped: %v", argv)
			}
			if got := valueAfter(argv, "-name"); !slices.Equal(got, []string{"guest=a,,b,debug-threads=on"}) {
				t.Errorf("-name %v", got)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			if tc.mutate != nil {
				tc.mutate(&s)
			}
			argv, err := New(Config{Binary: "/usr/bin/qemu-system-x86_64", KVM: tc.kvm}).Command(s)
			if err != nil {
				t.Fatal(err)
			}
			if argv[0] != "/usr/bin/qemu-system-x86_64" {
				t.Errorf("argv[0] = %q", argv[0])
			}
			tc.check(t, argv)
		})
	}
}

// fakeQMP serves one QMP connection on a unix socket: it greets (or not),
// then answers each command with replies[command], one JSON line each.
func fakeQMP(t *testing.T, greeting string, replies map[string][]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(greeting + "\n")); err != nil {
			return
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var cmd string
			for name := range replies {
				if strings.Contains(sc.Text(), `"execute":"`+name+`"`) {
					cmd = name
				}
			}
			out := replies[cmd]
			if cmd == "" {
				out = []string{`{"error": {"class": "CommandNotFound", "desc": "unknown"}}`}
			}
			for _, line := range out {
				if _, err := c.Write([]byte(line + "\n")); err != nil {
					return
				}
			}
		}
	}()
	return path
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`

func TestQMP(t *testing.T) {
	ok := `{"return": {}}`
	cases := []struct {
		name     string
		greeting string
		replies  map[string][]string
		wantStat string
		wantErr  string
	}{
		{"status", greeting, map[string][]string{
			"qmp_capabilities": {ok},
			"query-status":     {`{"return": {"status": "running", "singlestep": false, "running": true}}`},
		}, "running", ""},
		{"events before the reply are skipped", greeting, map[string][]string{
			"qmp_capabilities": {ok},
			"query-status": {
				`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}`,
				`{"return": {"status": "paused", "running": false}}`,
			},
		}, "paused", ""},
		{"error reply", greeting, map[string][]string{
			"qmp_capabilities": {ok},
			"query-status":     {`{"error": {"class": "GenericError", "desc": "nope"}}`},
		}, "", "qmp query-status: GenericError: nope"},
		{"not a QMP greeting", `{"hello": 1}`, nil, "", "did not greet like QEMU"},
		{"capabilities refused", greeting, map[string][]string{
			"qmp_capabilities": {`{"error": {"class": "CommandNotFound", "desc": "x"}}`},
		}, "", "qmp qmp_capabilities"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock := fakeQMP(t, tc.greeting, tc.replies)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := New(Config{}).Status(ctx, vmmcore.Handle{Driver: DriverName, APISocket: sock})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Status = %q, %v; want error %q", st, err, tc.wantErr)
				}
				return
			}
			if err != nil || st != tc.wantStat {
				t.Fatalf("Status = %q, %v; want %q", st, err, tc.wantStat)
			}
		})
	}
	var qe *QMPError
	sock := fakeQMP(t, greeting, map[string][]string{"qmp_capabilities": {ok},
		"system_powerdown": {`{"error": {"class": "GenericError", "desc": "x"}}`}})
	err := qmpDo(context.Background(), sock, "system_powerdown", nil, nil)
	if !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Fatalf("qmpDo error %v is not a *QMPError", err)
	}
}

func TestStartRefusesLiveSocket(t *testing.T) {
	spec := testSpec(t, []byte("not a kernel"))
	if err := os.MkdirAll(spec.RuntimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(spec.RuntimeDir, QMPSocketName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	d := New(Config{})
	d.launch = func([]string, *os.File, []*os.File) (int, error) {
		t.Fatal("Start launched a VMM although another one owns the socket")
		return 0, nil
	}
	_, err = d.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "still listening") {
		t.Fatalf("Start = %v, want a refusal naming the live socket", err)
	}
}

func qemuBinary(t *testing.T) string {
	t.Helper()
	p, err := system.LookPath(DefaultBinary)
	if err != nil {
		t.Skipf("%s not installed (apt-get install qemu-system-x86): %v", DefaultBinary, err)
	}
	return p
}

// processesMentioning lists pids whose command line contains s.
func processesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		argv, err := vmmcore.ProcCmdline(pid)
		if err == nil && strings.Contains(strings.Join(argv, " "), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestStartBogusKernelFailsCleanly(t *testing.T) {
	bin := qemuBinary(t)
	spec := testSpec(t, []byte("this is not a kernel image\n"))
	d := New(Config{Binary: bin})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err == nil {
		_ = d.Kill(h)
		t.Fatal("Start with a bogus kernel succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"start vm qtest with qemu", "last lines of " + spec.ConsoleLog} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not contain %q:\n%s", want, msg)
		}
	}
	// QEMU's own complaint (7.2 says "qemu: invalid kernel header") must
	// reach the user, not just banger's boot marker.
	_, tail, _ := strings.Cut(msg, "last lines of")
	var qemuSaid bool
	for _, line := range strings.Split(tail, "\n") {
		if !strings.HasPrefix(line, "[banger") && strings.Contains(line, "qemu") && strings.Contains(line, "kernel") {
			qemuSaid = true
		}
	}
	if !qemuSaid {
		t.Errorf("the console tail carries no message from QEMU about the kernel:\n%s", msg)
	}
	if pids := processesMentioning(spec.RuntimeDir); len(pids) != 0 {
		t.Errorf("processes still running for the VM: %v", pids)
	}
	left, _ := os.ReadDir(spec.RuntimeDir)
	if len(left) != 0 {
		t.Errorf("runtime dir not cleaned: %v", left)
	}
	t.Logf("error as the user sees it:\n%s", msg)
}

// TestBootKernel boots a real kernel under TCG (KVM with
// BANGER_TEST_QEMU_KVM=1). Set BANGER_TEST_KERNEL to a bzImage (for example
// /boot/vmlinuz-* of a Debian linux-image package) and optionally
// BANGER_TEST_INITRD. Without an initrd the guest panics for lack of a root
// file system, which is fine: the test is about the VMM's lifecycle.
func TestBootKernel(t *testing.T) {
	bin := qemuBinary(t)
	kernel := os.Getenv("BANGER_TEST_KERNEL")
	if kernel == "" {
		t.Skip("set BANGER_TEST_KERNEL to a bzImage to boot a real guest")
	}
	spec := testSpec(t, nil)
	spec.KernelPath = kernel
	spec.InitrdPath = os.Getenv("BANGER_TEST_INITRD")
	d := New(Config{Binary: bin, KVM: os.Getenv("BANGER_TEST_QEMU_KVM") == "1"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })
	if h.Driver != DriverName || h.PID <= 0 || h.StartTime == 0 || h.APISocket != filepath.Join(spec.RuntimeDir, QMPSocketName) {
		t.Fatalf("handle %+v", h)
	}
	if !d.Alive(h) {
		t.Fatal("Alive = false right after Start")
	}
	if d.Alive(vmmcore.Handle{Driver: DriverName, PID: h.PID, StartTime: h.StartTime + 1, APISocket: h.APISocket}) {
		t.Fatal("Alive = true with a wrong start time")
	}
	if st, err := d.Status(ctx, h); err != nil || st != "running" {
		t.Fatalf("Status = %q, %v", st, err)
	}
	if pid, err := os.ReadFile(filepath.Join(spec.RuntimeDir, PIDFileName)); err != nil || strings.TrimSpace(string(pid)) != strconv.Itoa(h.PID) {
		t.Fatalf("pid file = %q, %v; want %d", pid, err, h.PID)
	}
	if _, err := os.Stat(AgentSocket(h)); err != nil {
		t.Fatalf("agent socket: %v", err)
	}

	// The guest kernel prints its banner on the serial console.
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(spec.ConsoleLog)
		if strings.Contains(string(b), "Linux version") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kernel banner in the console log:\n%s", vmmcore.ConsoleTail(spec.ConsoleLog, 20))
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := d.Cleanup(h); err == nil {
		t.Fatal("Cleanup succeeded while QEMU runs")
	}
	if err := d.Kill(h); err != nil {
		t.Fatal(err)
	}
	if err := vmmcore.WaitGone(ctx, func() bool { return d.Alive(h) }, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(ctx, h); !errors.Is(err, vmmcore.ErrNotRunning) {
		t.Fatalf("Shutdown after Kill = %v, want ErrNotRunning", err)
	}

	// SIGKILL left the sockets behind; a second start must clear them.
	h2, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("restart over stale sockets: %v", err)
	}
	t.Cleanup(func() { _ = d.Kill(h2) })
	if err := d.Kill(h2); err != nil {
		t.Fatal(err)
	}
	if err := vmmcore.WaitGone(ctx, func() bool { return d.Alive(h2) }, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(h2); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(spec.RuntimeDir); len(left) != 0 {
		t.Fatalf("runtime dir after Cleanup: %v", left)
	}
	if b, _ := os.ReadFile(spec.ConsoleLog); strings.Count(string(b), "starting qemu") != 2 {
		t.Fatalf("console log should hold both boots, appended:\n%s", b)
	}
}

func TestTSCHintForTCG(t *testing.T) {
	if got := parseCPUMHz("processor\t: 0\ncpu MHz\t\t: 2596.146\nflags: fpu\n"); got != 2596146 {
		t.Errorf("parseCPUMHz = %d", got)
	}
	if got := parseCPUMHz("processor: 0\n"); got != 0 {
		t.Errorf("parseCPUMHz without the field = %d", got)
	}
	if got := withTSCHint("root=/dev/vda tsc_early_khz=5"); got != "root=/dev/vda tsc_early_khz=5" {
		t.Errorf("an explicit hint was overridden: %q", got)
	}
	if hostTSCkHz() > 0 && !strings.Contains(withTSCHint("root=/dev/vda"), " tsc_early_khz=") {
		t.Error("TCG command line lacks the TSC hint")
	}
}

func TestKVMVerdictIsPerHostKernel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kvm-stalled")
	if KVMStalledBefore(path) || KVMStalledBefore("") {
		t.Fatal("a verdict without a file")
	}
	if err := os.WriteFile(path, []byte(hostKernelRelease()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !KVMStalledBefore(path) {
		t.Fatal("the verdict for this kernel was not read back")
	}
	if err := os.WriteFile(path, []byte("0.0.0-another-kernel\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if KVMStalledBefore(path) {
		t.Fatal("a verdict for another host kernel was trusted")
	}
}

// TestLaunchedFailureStopsTheStart: QEMU is reported the moment its
// process exists; a caller that cannot record it stops the start, with
// no QEMU left running.
func TestLaunchedFailureStopsTheStart(t *testing.T) {
	bin := qemuBinary(t)
	spec := testSpec(t, []byte("this is not a kernel image\n"))
	var got []vmmcore.Handle
	spec.Launched = func(h vmmcore.Handle) error {
		got = append(got, h)
		return errors.New("the database is gone")
	}
	d := New(Config{Binary: bin})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err == nil {
		_ = d.Kill(h)
		t.Fatal("Start succeeded although Launched failed")
	}
	if !strings.Contains(err.Error(), "the database is gone") {
		t.Errorf("Start = %v, want Launched's error", err)
	}
	if len(got) != 1 || got[0].PID == 0 || got[0].StartTime == 0 || got[0].APISocket != filepath.Join(spec.RuntimeDir, QMPSocketName) {
		t.Errorf("Launched got %+v, want one handle naming the QMP socket", got)
	}
	if pids := processesMentioning(spec.RuntimeDir); len(pids) != 0 {
		t.Errorf("processes still running for the VM: %v", pids)
	}
}
