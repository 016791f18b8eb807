package vmmcore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/system"
)

// procDir is where process information is read from; a variable so tests
// can point it at a fabricated tree.
var procDir = "/proc"

// procStat is the part of /proc/PID/stat that identity checks need.
type procStat struct {
	state     byte
	flags     uint64
	threads   int
	startTime uint64
}

// pfExiting is the kernel's PF_EXITING task flag: set as a killed
// process starts to exit, before it tears down its memory.
const pfExiting = 0x4

// readStat parses /proc/PID/stat. The second field (comm) is in parentheses
// and may itself contain spaces and parentheses, so fields are counted from
// the last ')'.
func readStat(pid int) (procStat, error) {
	if pid <= 0 {
		return procStat{}, fmt.Errorf("invalid pid %d", pid)
	}
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", procDir, pid))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	// After ")" come fields 3 (state) onwards: num_threads is field 20,
	// starttime field 22.
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %d fields after comm", pid, len(fields))
	}
	flags, err := strconv.ParseUint(fields[6], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat flags: %w", pid, err)
	}
	threads, err := strconv.Atoi(fields[17])
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat thread count: %w", pid, err)
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	return procStat{state: fields[0][0], flags: flags, threads: threads, startTime: start}, nil
}

// ProcStartTime returns field 22 of /proc/PID/stat: when the process
// started, in clock ticks after boot. With the pid it names one process for
// the life of the host, which a pid alone does not.
func ProcStartTime(pid int) (uint64, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	return st.startTime, nil
}

// ProcCmdline returns the argv of pid.
func ProcCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/cmdline", procDir, pid))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// exited reports whether the process has finished exiting: a zombie (or
// dead) leader with no other thread left. A VMM killed with SIGKILL shows
// its main thread as a zombie while its other threads are still exiting and
// still hold its sockets and disk files open; it is not gone until they are.
func (st procStat) exited() bool {
	return (st.state == 'Z' || st.state == 'X') && st.threads <= 1
}

// Matches reports whether pid is a live process (not a zombie whose threads
// have all exited) that started at startTime and whose argv satisfies match.
// This is how banger tells its own VMM from an unrelated process that reused
// the pid.
func Matches(pid int, startTime uint64, match func(argv []string) bool) bool {
	st, err := readStat(pid)
	if err != nil || st.exited() || st.startTime != startTime {
		return false
	}
	if st.flags&pfExiting != 0 {
		// Exiting, and still holding its files: alive until it has
		// finished. Its command line is not evidence now: reading it
		// fails now and then while the process runs its exit (seen in
		// 13 of ~2,000 reads across 30 SIGKILLed QEMUs), which once let
		// a wait for a killed QEMU end while it still ran ("clean up
		// after qemu pid N: it is still running", CI). pid and start time
		// already name it.
		return true
	}
	argv, err := ProcCmdline(pid)
	if err != nil {
		return false
	}
	if len(argv) == 0 {
		// An exiting process loses its memory, and with it its command
		// line, before it closes its files. pid and start time still name
		// it, so it counts as alive until it has finished exiting.
		return true
	}
	return match(argv)
}

// ArgMentions returns a matcher that accepts an argv where some argument
// contains any of subs (non-empty ones only).
func ArgMentions(subs ...string) func([]string) bool {
	return func(argv []string) bool {
		for _, a := range argv {
			for _, s := range subs {
				if s != "" && strings.Contains(a, s) {
					return true
				}
			}
		}
		return false
	}
}

// Kill sends SIGKILL to pid if it is still the process that Matches
// describes. It opens a pidfd first and checks identity after, so a pid
// recycled between check and signal is never hit. A process that is already
// gone is not an error.
func Kill(pid int, startTime uint64, match func([]string) bool) error {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil
	case errors.Is(err, unix.ENOSYS):
		// Kernels before 5.3: fall back to a plain kill after the check.
		if !Matches(pid, startTime, match) {
			return nil
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill pid %d: %w", pid, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("open pidfd for pid %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if !Matches(pid, startTime, match) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", pid, err)
	}
	return nil
}

// WaitGone polls alive every poll until it reports false or ctx is done. It
// does not rely on being the process's parent: after a daemon restart the
// VMM is init's child.
func WaitGone(ctx context.Context, alive func() bool, poll time.Duration) error {
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for alive() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the VMM to exit: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Launch starts argv detached from the caller (own session, so it survives
// the daemon), with stdout and stderr appended to console, and returns its
// pid. While the caller lives, a goroutine reaps the process when it exits,
// so it does not linger as a zombie; after the caller exits init reaps it.
func Launch(argv []string, console *os.File) (int, error) {
	return LaunchWith(argv, console, nil)
}

// LaunchWith is Launch with extra files inherited as fds 3, 4, ...
func LaunchWith(argv []string, console *os.File, extra []*os.File) (int, error) {
	proc, err := system.StartDetached(system.DetachedSpec{
		Argv:       argv,
		Stdout:     console,
		Stderr:     console,
		ExtraFiles: extra,
	})
	if err != nil {
		return 0, err
	}
	pid := proc.Pid
	go func() { _, _ = proc.Wait() }()
	return pid, nil
}
