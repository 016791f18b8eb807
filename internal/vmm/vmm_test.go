package vmm

import (
	"banger/internal/system"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
	"banger/internal/vmm/vmmcore"
)

// fakeHost is a host with or without KVM and with a set of binaries.
func fakeHost(kvm error, bins ...string) probe {
	return probe{
		kvm: func() error { return kvm },
		lookPath: func(name string) (string, error) {
			for _, b := range bins {
				if b == name {
					return "/usr/bin/" + name, nil
				}
			}
			return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
		},
		root:          func() bool { return true },
		cgroupVersion: func() int { return 2 },
	}
}

func TestSelect(t *testing.T) {
	noKVM := errors.New("/dev/kvm is missing (no hardware virtualization, or the kvm_intel/kvm_amd module is not loaded)")
	const fc, qm = "firecracker", "qemu-system-x86_64"
	cases := []struct {
		name     string
		opts     Options
		host     probe
		wantName string
		wantKVM  bool     // for qemu
		wantErr  []string // substrings
		badReq   bool
	}{
		{"auto: kvm and firecracker", Options{}, fakeHost(nil, fc, qm), "firecracker", false, nil, false},
		{"auto: kvm, no firecracker", Options{Pref: "auto"}, fakeHost(nil, qm), "qemu", true, nil, false},
		{"auto: no kvm", Options{}, fakeHost(noKVM, fc, qm), "qemu", false, nil, false},
		{"auto: nothing", Options{}, fakeHost(noKVM), "", false,
			[]string{"no usable VMM", "/dev/kvm is missing", "apt-get install qemu-system-x86"}, false},
		{"auto: kvm but no binaries", Options{}, fakeHost(nil), "", false,
			[]string{"firecracker binary \"firecracker\" is not on PATH", "apt-get install qemu-system-x86"}, false},
		{"auto: accel tcg forced", Options{QEMUAccel: "tcg"}, fakeHost(nil, qm), "qemu", false, nil, false},
		{"firecracker", Options{Pref: "firecracker"}, fakeHost(nil, fc), "firecracker", false, nil, false},
		{"firecracker without kvm", Options{Pref: "firecracker"}, fakeHost(noKVM, fc), "", false,
			[]string{`vmm = "firecracker" but /dev/kvm is missing`, `set vmm = "qemu" or "auto"`}, false},
		{"firecracker without binary", Options{Pref: "firecracker", FirecrackerBin: "/opt/fc"}, fakeHost(nil), "", false,
			[]string{`firecracker binary "/opt/fc" was not found`, "install a Firecracker release"}, false},
		{"qemu with kvm", Options{Pref: "qemu"}, fakeHost(nil, qm), "qemu", true, nil, false},
		{"qemu without kvm", Options{Pref: "qemu"}, fakeHost(noKVM, qm), "qemu", false, nil, false},
		{"qemu custom binary", Options{Pref: "qemu", QEMUBin: "qemu-kvm"}, fakeHost(nil, "qemu-kvm"), "qemu", true, nil, false},
		{"qemu missing", Options{Pref: "qemu"}, fakeHost(nil, fc), "", false,
			[]string{`vmm = "qemu" but qemu-system-x86_64 was not found`, "apt-get install qemu-system-x86"}, false},
		{"qemu kvm demanded, none", Options{Pref: "qemu", QEMUAccel: "kvm"}, fakeHost(noKVM, qm), "", false,
			[]string{`"kvm" was asked for but /dev/kvm is missing`}, false},
		{"unknown pref", Options{Pref: "xen"}, fakeHost(nil, fc, qm), "", false, []string{`"xen" is not one of`}, true},
		{"unknown accel", Options{QEMUAccel: "hvf"}, fakeHost(nil, fc, qm), "", false, []string{`"hvf" is not one of`}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := selectDriver(tc.opts, tc.host)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("selected %s, want an error", d.Name())
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if got := api.IsCode(err, api.CodeBadRequest); got != tc.badReq {
					t.Errorf("bad_request = %v, want %v", got, tc.badReq)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Name() != tc.wantName {
				t.Fatalf("selected %s, want %s", d.Name(), tc.wantName)
			}
			if q, ok := d.(*qemu.Driver); ok && q.KVM() != tc.wantKVM {
				t.Errorf("qemu KVM = %v, want %v", q.KVM(), tc.wantKVM)
			}
			wantKind := map[string]string{"qemu": "bzimage", "firecracker": "vmlinux"}[tc.wantName]
			if d.KernelKind() != wantKind {
				t.Errorf("KernelKind = %s, want %s", d.KernelKind(), wantKind)
			}
		})
	}
}

// TestSelectOnThisHost holds Select(auto) to what this host's own probes
// say it must choose: Firecracker with usable KVM and the binary, else
// QEMU (with KVM exactly when KVM works), else an error naming both.
func TestSelectOnThisHost(t *testing.T) {
	kvmErr := CheckKVM()
	_, fcErr := system.LookPath(firecracker.DefaultBinary)
	_, qemuErr := system.LookPath(qemu.DefaultBinary)
	d, err := Select("auto", "", "")
	t.Logf("Select(auto) on this host: %v, %v (CheckKVM: %v)", d, err, kvmErr)
	switch {
	case kvmErr == nil && fcErr == nil:
		if err != nil || d.Name() != "firecracker" {
			t.Fatalf("KVM works and firecracker is installed: Select = %v, %v; want firecracker", d, err)
		}
	case qemuErr == nil:
		if err != nil || d.Name() != "qemu" {
			t.Fatalf("QEMU is installed: Select = %v, %v; want qemu", d, err)
		}
		if got := d.(interface{ KVM() bool }).KVM(); got != (kvmErr == nil) {
			t.Fatalf("QEMU with KVM = %v, but CheckKVM says %v", got, kvmErr)
		}
	default:
		if err == nil || !strings.Contains(err.Error(), "no usable VMM on this host") {
			t.Fatalf("no VMM installed: Select = %v, %v; want the no-usable-VMM error", d, err)
		}
	}
}

func TestForHandleAndDispatch(t *testing.T) {
	for _, name := range []string{"qemu", "firecracker"} {
		d, err := ForHandle(Handle{Driver: name})
		if err != nil || d.Name() != name {
			t.Fatalf("ForHandle(%s) = %v, %v", name, d, err)
		}
	}
	if _, err := ForHandle(Handle{Driver: "bhyve"}); err == nil {
		t.Fatal("ForHandle(bhyve) succeeded")
	}
	if err := WaitExit(context.Background(), Handle{Driver: "bhyve"}, time.Millisecond); err == nil {
		t.Fatal("WaitExit with an unknown driver succeeded")
	}
	if Alive(Handle{Driver: "bhyve", PID: os.Getpid()}) {
		t.Fatal("Alive = true for an unknown driver")
	}

	h := Handle{Driver: "firecracker", APISocket: "/run/banger/vms/a/fc.sock"}
	if got := AgentSocket(h); got != "/run/banger/vms/a/vsock.sock" {
		t.Errorf("AgentSocket(firecracker) = %s", got)
	}
	h = Handle{Driver: "qemu", APISocket: "/run/banger/vms/a/qmp.sock"}
	if got := AgentSocket(h); got != "/run/banger/vms/a/agent.sock" {
		t.Errorf("AgentSocket(qemu) = %s", got)
	}
}

// TestWaitExitFollowsAProcessItDidNotStart waits for a real process through
// its Handle only, as the daemon does after a restart.
func TestWaitExitFollowsAProcessItDidNotStart(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, qemu.QMPSocketName)
	console, err := vmmcore.OpenConsoleLog(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	// A stand-in whose command line names the socket, as QEMU's does, and
	// which exits by itself after a short while.
	// bash stays the process (no exec: an exec briefly empties
	// /proc/PID/cmdline, which Alive counts as "exiting, still ours").
	pid, err := vmmcore.Launch([]string{"bash", "-c", `sleep 0.3; :`, sock}, console)
	if err != nil {
		t.Fatal(err)
	}
	start, err := ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Right after execve returns, the new image's argv is not yet in
	// /proc/PID/cmdline (the kernel sets it up last); wait for it, bounded.
	for i := 0; i < 200; i++ {
		if argv, _ := vmmcore.ProcCmdline(pid); len(argv) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	h := Handle{Driver: qemu.DriverName, PID: pid, StartTime: start, APISocket: sock}
	t.Cleanup(func() { _ = vmmcore.Kill(pid, start, vmmcore.ArgMentions(sock)) })
	if !Alive(h) {
		t.Fatal("Alive = false for the running stand-in")
	}
	if Alive(Handle{Driver: firecracker.DriverName, PID: pid, StartTime: start, APISocket: sock + ".other"}) {
		t.Fatal("Alive = true for a handle naming another socket")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	if err := WaitExit(ctx, h, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(began); waited < 100*time.Millisecond {
		t.Fatalf("WaitExit returned after %v, before the process could have exited", waited)
	}
	if Alive(h) {
		t.Fatal("Alive = true after WaitExit")
	}
	if err := Cleanup(h); err != nil {
		t.Fatal(err)
	}
}

func TestSelectRemembersAStalledKVM(t *testing.T) {
	const qm = "qemu-system-x86_64"
	verdict := filepath.Join(t.TempDir(), "kvm-stalled")
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Skip("no /proc/sys/kernel/osrelease")
	}
	if err := os.WriteFile(verdict, release, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		accel   string
		wantKVM bool
	}{{"auto", false}, {"kvm", true}} {
		d, err := selectDriver(Options{Pref: "qemu", QEMUAccel: tc.accel, KVMVerdictFile: verdict}, fakeHost(nil, qm))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.(*qemu.Driver).KVM(); got != tc.wantKVM {
			t.Errorf("qemu_accel %s with a stalled-KVM verdict: KVM = %v, want %v", tc.accel, got, tc.wantKVM)
		}
	}
}

// TestJailerChoice: Firecracker runs under its jailer by default when it
// can, and "on" says exactly why it cannot.
func TestJailerChoice(t *testing.T) {
	const fcPath = "/usr/bin/firecracker"
	notRoot := fakeHost(nil, "jailer")
	notRoot.root = func() bool { return false }
	cases := []struct {
		name    string
		opts    Options
		host    probe
		fcPath  string
		jailed  bool
		why     string // substring, when not jailed
		wantErr string
	}{
		{"auto jails as root with the jailer", Options{JailBase: "/var/lib/banger/jail"}, fakeHost(nil, "jailer"), fcPath, true, "", ""},
		{"auto: no jailer", Options{Jailer: "auto"}, fakeHost(nil), fcPath, false, `jailer binary "jailer" was not found`, ""},
		{"auto: not root", Options{}, notRoot, fcPath, false, "does not run as root", ""},
		{"auto: binary name", Options{}, fakeHost(nil, "jailer"), "/opt/fc/vmm", false, `contains "firecracker"`, ""},
		{"off", Options{Jailer: "off"}, fakeHost(nil, "jailer"), fcPath, false, `"off"`, ""},
		{"on: no jailer", Options{Jailer: "on", JailerBin: "/opt/jl"}, fakeHost(nil), fcPath, false, "", `firecracker_jailer = "on" but the jailer binary "/opt/jl" was not found`},
		{"on: not root", Options{Jailer: "on"}, notRoot, fcPath, false, "", `firecracker_jailer = "on" but bangerd does not run as root`},
		{"bad value", Options{Jailer: "yes"}, fakeHost(nil, "jailer"), fcPath, false, "", `"yes" is not one of auto, on, off`},
		{"a daemon that is not root, asked of by root", Options{AsRoot: new(bool)}, fakeHost(nil, "jailer"), fcPath, false, "does not run as root", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, why, err := jailerChoice(tc.opts, tc.host, tc.fcPath)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (j != nil) != tc.jailed || (!tc.jailed && !strings.Contains(why, tc.why)) {
				t.Fatalf("jailed %v why %q, want jailed %v why %q", j != nil, why, tc.jailed, tc.why)
			}
			if j != nil && (j.Binary != "/usr/bin/jailer" || j.ChrootBase != "/var/lib/banger/jail" || j.CgroupVersion != 2) {
				t.Errorf("jailer config %+v", *j)
			}
		})
	}
	// A daemon that is not root jails through banger's root helper when
	// it says it can; when it cannot, "auto" says why and "on" fails.
	can := &rootJails{exec: "firecracker", base: "/var/lib/banger-jail"}
	j, _, err := jailerChoice(Options{RootJails: can, JailBase: "/var/lib/banger-jail"}, notRoot, fcPath)
	if err != nil || j == nil || j.Helper != can || j.ExecName != "firecracker" || j.ChrootBase != "/var/lib/banger-jail" {
		t.Errorf("through a helper that can: %+v, %v", j, err)
	}
	cannot := &rootJails{err: errors.New(`jailer_bin "jailer" was not found on the root helper's PATH`)}
	if j, why, err := jailerChoice(Options{RootJails: cannot}, notRoot, fcPath); err != nil || j != nil ||
		why != `banger's root helper cannot run the jailer: jailer_bin "jailer" was not found on the root helper's PATH` {
		t.Errorf("through a helper that cannot: %+v, %q, %v", j, why, err)
	}
	if _, _, err := jailerChoice(Options{Jailer: "on", RootJails: cannot}, notRoot, fcPath); err == nil ||
		!strings.Contains(err.Error(), `firecracker_jailer = "on" but banger's root helper cannot run the jailer`) {
		t.Errorf("on, through a helper that cannot: %v", err)
	}
	if j, _, _ := jailerChoice(Options{Jailer: "off", RootJails: can}, notRoot, fcPath); j != nil {
		t.Error(`firecracker_jailer = "off" jailed through the helper`)
	}
	if j, why, _ := jailerChoice(Options{RootJails: can, JailBase: "/srv/jails"}, notRoot, fcPath); j != nil ||
		!strings.Contains(why, "its jails are in /var/lib/banger-jail, and this daemon looks for them in /srv/jails") {
		t.Errorf("a helper whose jails are elsewhere: %+v, %q", j, why)
	}

	// Select hands the choice to the driver.
	d, err := selectDriver(Options{Pref: "firecracker"}, fakeHost(nil, "firecracker", "jailer"))
	if err != nil {
		t.Fatal(err)
	}
	if !d.(*firecracker.Driver).Jailed() {
		t.Error("Select(firecracker) on a root host with the jailer gave an unjailed driver")
	}
}

// rootJails stands in for banger's root helper as a jail maker.
type rootJails struct {
	exec, base string
	err        error
}

func (r *rootJails) JailAvailable() (string, string, error) { return r.exec, r.base, r.err }
func (r *rootJails) StartJail(firecracker.JailRequest, *os.File) (int, error) {
	return 0, errors.New("not started")
}
func (r *rootJails) RemoveJail(string) error { return nil }
