package vmmcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/system"
)

// statLine builds a /proc/PID/stat line with the given comm, state and
// start time (field 22).
func statLine(pid int, comm string, state byte, start uint64) string {
	return statLineThreads(pid, comm, state, 1, start)
}

// statLineThreads also sets num_threads (field 20).
func statLineThreads(pid int, comm string, state byte, threads int, start uint64) string {
	f := []string{fmt.Sprint(pid), "(" + comm + ")", string(state)}
	for i := 4; i <= 21; i++ {
		if i == 20 {
			f = append(f, fmt.Sprint(threads))
			continue
		}
		f = append(f, "0")
	}
	f = append(f, fmt.Sprint(start))
	for i := 23; i <= 52; i++ {
		f = append(f, "0")
	}
	return strings.Join(f, " ") + "\n"
}

func TestReadStat(t *testing.T) {
	dir := t.TempDir()
	old := procDir
	procDir = dir
	t.Cleanup(func() { procDir = old })

	cases := []struct {
		name      string
		content   string
		wantState byte
		wantStart uint64
		wantGone  bool
		wantErr   bool
	}{
		{"plain", statLineThreads(10, "qemu-system-x86", 'S', 9, 4242), 'S', 4242, false, false},
		{"comm with spaces and parens", statLine(11, "a) b (c) Z 9", 'R', 77), 'R', 77, false, false},
		{"zombie", statLine(12, "fc", 'Z', 5), 'Z', 5, true, false},
		{"zombie leader, threads still exiting", statLineThreads(13, "qemu", 'Z', 3, 5), 'Z', 5, false, false},
		{"truncated", "14 (x) S 1 2 3\n", 0, 0, false, true},
		{"no paren", "15 x S 1\n", 0, 0, false, true},
		{"bad start", strings.Replace(statLine(16, "x", 'S', 7), " 7 0", " z 0", 1), 0, 0, false, true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pid := 10 + i
			if err := os.MkdirAll(filepath.Join(dir, fmt.Sprint(pid)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(pid), "stat"), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			st, err := readStat(pid)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("readStat = %+v, want error", st)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.state != tc.wantState || st.startTime != tc.wantStart {
				t.Fatalf("readStat = %c/%d, want %c/%d", st.state, st.startTime, tc.wantState, tc.wantStart)
			}
			if st.exited() != tc.wantGone {
				t.Fatalf("exited = %v, want %v", st.exited(), tc.wantGone)
			}
		})
	}
}

// launchSleep starts a real detached process whose command line carries
// marker, and makes sure it is gone when the test ends.
func launchSleep(t *testing.T, marker string) (int, uint64) {
	t.Helper()
	console, err := OpenConsoleLog(filepath.Join(t.TempDir(), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	// exec -a puts marker in argv[0] of sleep itself, so there is one
	// process to kill and nothing left behind.
	pid, err := Launch([]string{"bash", "-c", `exec -a "$0" sleep 30`, marker}, console)
	if err != nil {
		t.Fatal(err)
	}
	start, err := ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Kill(pid, start, ArgMentions(marker)) })
	// Wait until exec has replaced bash, so the marker is argv[0]. Read
	// the command line itself: Matches counts a process whose command line
	// reads empty as alive (one that is exiting; also one in the middle of
	// execve), so it cannot tell that exec has finished.
	deadline := time.Now().Add(5 * time.Second)
	for argv, err := ProcCmdline(pid); err != nil || len(argv) == 0 || argv[0] != marker; argv, err = ProcCmdline(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d never showed marker %q", pid, marker)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return pid, start
}

func TestMatchesAndKill(t *testing.T) {
	marker := "vmmcore-test-" + fmt.Sprint(time.Now().UnixNano())
	pid, start := launchSleep(t, marker)

	if !Matches(pid, start, ArgMentions(marker)) {
		t.Fatal("Matches = false for the process just started")
	}
	if Matches(pid, start+1, ArgMentions(marker)) {
		t.Fatal("Matches = true with a different start time (a recycled pid would pass)")
	}
	if Matches(pid, start, ArgMentions("some-other-socket")) {
		t.Fatal("Matches = true for a command line that does not name the socket")
	}
	if err := Kill(pid, start+1, ArgMentions(marker)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !Matches(pid, start, ArgMentions(marker)) {
		t.Fatal("Kill with the wrong start time killed the process")
	}

	if err := Kill(pid, start, ArgMentions(marker)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitGone(ctx, func() bool { return Matches(pid, start, ArgMentions(marker)) }, 10*time.Millisecond); err != nil {
		t.Fatalf("process still alive after Kill: %v", err)
	}
	if err := Kill(pid, start, ArgMentions(marker)); err != nil {
		t.Fatalf("Kill of a gone process = %v, want nil", err)
	}
}

func TestZombieIsNotAlive(t *testing.T) {
	// Started without a reaper, "true" stays a zombie until Wait.
	proc, err := system.StartDetached(system.DetachedSpec{Argv: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_, _ = proc.Wait()
		}
	})
	start, err := ProcStartTime(proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := readStat(proc.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.state == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process never became a zombie (state %c)", st.state)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if Matches(proc.Pid, start, func([]string) bool { return true }) {
		t.Fatal("Matches = true for a zombie")
	}
	_, _ = proc.Wait()
	reaped = true
}

func TestWaitGoneHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := WaitGone(ctx, func() bool { return true }, 10*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitGone = %v, want deadline exceeded", err)
	}
}

func TestConsoleTail(t *testing.T) {
	dir := t.TempDir()
	var many strings.Builder
	for i := 1; i <= 50; i++ {
		fmt.Fprintf(&many, "line %d\r\n", i)
	}
	big := strings.Repeat("x", 100<<10) + "\nlast words\n"
	cases := []struct {
		name    string
		content *string // nil: no file
		want    []string
		notWant []string
	}{
		{"missing file", nil, []string{"console log unreadable"}, nil},
		{"empty", ptr(""), []string{"console log is empty"}, nil},
		{"last 20 of 50", ptr(many.String()), []string{"line 31", "line 50"}, []string{"line 30\n", "\r"}},
		{"escape codes dropped", ptr("\x1b[0mboot failed\x07\n"), []string{"[0mboot failed"}, []string{"\x1b", "\x07"}},
		{"large file reads the end", &big, []string{"last words"}, nil},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("c%d.log", i))
			if tc.content != nil {
				if err := os.WriteFile(path, []byte(*tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := ConsoleTail(path, TailLines)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("tail %q does not contain %q", got, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("tail %q contains %q", got, w)
				}
			}
			if n := strings.Count(got, "\n") + 1; n > TailLines {
				t.Errorf("tail has %d lines, want at most %d", n, TailLines)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestRemoveStaleSocket(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if err := RemoveStaleSocket(stale); err != nil {
		t.Fatalf("RemoveStaleSocket(stale) = %v", err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale socket still there: %v", err)
	}

	live := filepath.Join(dir, "live.sock")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ll.Close() })
	if err := RemoveStaleSocket(live); err == nil || !strings.Contains(err.Error(), "still listening") {
		t.Fatalf("RemoveStaleSocket(live) = %v, want a refusal", err)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Fatalf("live socket was removed: %v", err)
	}

	if err := RemoveStaleSocket(filepath.Join(dir, "none.sock")); err != nil {
		t.Fatalf("RemoveStaleSocket(missing) = %v", err)
	}
}

func TestWaitSocketStopsWhenProcessExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := WaitSocket(ctx, filepath.Join(t.TempDir(), "never.sock"), func() bool { return false })
	if !errors.Is(err, ErrExited) {
		t.Fatalf("WaitSocket = %v, want ErrExited", err)
	}
}

func TestWaitSocketSeesListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	go func() {
		time.Sleep(50 * time.Millisecond)
		l, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		t.Cleanup(func() { l.Close() })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitSocket(ctx, path, func() bool { return true }); err != nil {
		t.Fatalf("WaitSocket = %v", err)
	}
}

func TestSpecValidate(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := Spec{Name: "dev", VCPU: 2, MemoryMiB: 512, KernelPath: file("vmlinuz"),
		RootDisk: file("root.img"), WorkDisk: file("work.img"), RuntimeDir: dir,
		ConsoleLog: filepath.Join(dir, "console.log"), MAC: "02:fc:00:00:00:01"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*Spec)
		want   string
	}{
		{"no name", func(s *Spec) { s.Name = "" }, "name is empty"},
		{"zero vcpu", func(s *Spec) { s.VCPU = 0 }, "vcpu"},
		{"zero memory", func(s *Spec) { s.MemoryMiB = 0 }, "memory"},
		{"relative runtime dir", func(s *Spec) { s.RuntimeDir = "run" }, "absolute"},
		{"no console", func(s *Spec) { s.ConsoleLog = "" }, "console log"},
		{"no kernel", func(s *Spec) { s.KernelPath = "" }, "kernel path is empty"},
		{"missing kernel", func(s *Spec) { s.KernelPath = filepath.Join(dir, "nope") }, "kernel"},
		{"kernel is a dir", func(s *Spec) { s.KernelPath = dir }, "is a directory"},
		{"missing initrd", func(s *Spec) { s.InitrdPath = filepath.Join(dir, "nope") }, "initrd"},
		{"no root disk", func(s *Spec) { s.RootDisk = "" }, "root disk"},
		{"missing work disk", func(s *Spec) { s.WorkDisk = filepath.Join(dir, "nope") }, "work disk"},
		{"bad mac", func(s *Spec) { s.MAC = "02:fc" }, "MAC"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.mutate(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want error mentioning %q", err, tc.want)
			}
			if !api.IsCode(err, api.CodeBadRequest) {
				t.Fatalf("Validate error %v is not bad_request", err)
			}
		})
	}
}

func TestSocketPathTooLong(t *testing.T) {
	if _, err := SocketPath("/run/banger", "qmp.sock"); err != nil {
		t.Fatal(err)
	}
	_, err := SocketPath("/"+strings.Repeat("d", 120), "qmp.sock")
	if err == nil || !strings.Contains(err.Error(), "shorter runtime directory") {
		t.Fatalf("SocketPath(long) = %v", err)
	}
}

func TestCheckKVM(t *testing.T) {
	dir := t.TempDir()
	notKVM := filepath.Join(dir, "kvm")
	if err := os.WriteFile(notKVM, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old, oldMods := kvmDevice, sysModules
	t.Cleanup(func() { kvmDevice, sysModules = old, oldMods })
	sysModules = filepath.Join(dir, "modules")
	for _, m := range []string{"kvm", "kvm_pvm"} {
		if err := os.MkdirAll(filepath.Join(sysModules, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("pvm only", func(t *testing.T) {
		kvmDevice = notKVM
		if err := CheckKVM(); err == nil || !strings.Contains(err.Error(), "PVM-only") {
			t.Fatalf("CheckKVM with kvm_pvm alone = %v, want PVM-only", err)
		}
		if err := os.Mkdir(filepath.Join(sysModules, "kvm_intel"), 0o755); err != nil {
			t.Fatal(err)
		}
		// With kvm_intel too, the device itself is probed.
		if err := CheckKVM(); err == nil || !strings.Contains(err.Error(), "not a usable KVM device") {
			t.Fatalf("CheckKVM with kvm_intel = %v", err)
		}
	})

	cases := []struct {
		name, dev, want string
	}{
		{"missing", filepath.Join(dir, "none"), "is missing"},
		{"not a kvm device", notKVM, "not a usable KVM device"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kvmDevice = tc.dev
			err := CheckKVM()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckKVM = %v, want %q", err, tc.want)
			}
		})
	}
	kvmDevice, sysModules = old, oldMods
	t.Logf("this host: CheckKVM() = %v", CheckKVM())
}

// TestMatchesWhileExiting: a killed VMM that has started to exit
// (PF_EXITING) is alive until it has finished, whatever its command line
// reads as meanwhile (the read fails now and then during exit); the same
// reading from a process that is not exiting is another program's.
func TestMatchesWhileExiting(t *testing.T) {
	dir := t.TempDir()
	old := procDir
	procDir = dir
	t.Cleanup(func() { procDir = old })
	const pid, start = 4321, 99
	write := func(flags uint64) {
		t.Helper()
		f := strings.Fields(statLineThreads(pid, "qemu-system-x86", 'S', 7, start))
		f[8] = fmt.Sprint(flags) // field 9: flags
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprint(pid)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(pid), "stat"), []byte(strings.Join(f, " ")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// The first page of a long command line, without the socket.
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(pid), "cmdline"), []byte("qemu-system-x86_64\x00-machine\x00q35\x00"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	match := ArgMentions("/run/banger/vms/x/qmp.sock")
	write(0x400000 | pfExiting)
	if !Matches(pid, start, match) {
		t.Error("an exiting VMM whose command line reads cut short counts as gone")
	}
	// Or does not read at all.
	if err := os.Chmod(filepath.Join(dir, fmt.Sprint(pid), "cmdline"), 0); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 && !Matches(pid, start, match) {
		t.Error("an exiting VMM whose command line cannot be read counts as gone")
	}
	if err := os.Chmod(filepath.Join(dir, fmt.Sprint(pid), "cmdline"), 0o644); err != nil {
		t.Fatal(err)
	}
	write(0x400000)
	if Matches(pid, start, match) {
		t.Error("a process that is not exiting and does not mention the socket counts as the VMM")
	}
}
