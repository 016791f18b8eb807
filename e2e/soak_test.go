//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// daemonStats is what ping says of the daemon's own goroutines and fds.
func (e *env) daemonStats() (goroutines, fds int) {
	e.t.Helper()
	var p struct {
		Goroutines int `json:"goroutines"`
		OpenFDs    int `json:"open_fds"`
	}
	if err := json.Unmarshal([]byte(e.must("ping", "--json")), &p); err != nil {
		e.t.Fatal(err)
	}
	return p.Goroutines, p.OpenFDs
}

// steadyStats samples the daemon's goroutines (from ping) and its open
// descriptors (read from /proc by the test, so no request is in flight
// in them) five times, 500 ms apart, and keeps the least of each.
func (e *env) steadyStats() (goroutines, fds int, list []string) {
	e.t.Helper()
	goroutines, fds = -1, -1
	for i := range 5 {
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		g, _ := e.daemonStats()
		l := e.daemonFDs()
		if goroutines < 0 || g < goroutines {
			goroutines = g
		}
		if fds < 0 || len(l) < fds {
			fds, list = len(l), l
		}
	}
	return goroutines, fds, list
}

// daemonFDs lists what the daemon's descriptors point at (sorted).
func (e *env) daemonFDs() []string {
	e.t.Helper()
	pid := e.daemonPID()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, x := range ents {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, x.Name()))
		out = append(out, target)
	}
	slices.Sort(out)
	return out
}

// parallel runs one banger command per VM at once and fails on any error.
func (e *env) parallel(names []string, args func(name string) []string) {
	e.t.Helper()
	var wg sync.WaitGroup
	errs := make([]string, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, errOut, code := e.banger(args(n)...); code != 0 {
				errs[i] = fmt.Sprintf("banger %s: exit %d: %s %s", strings.Join(args(n), " "), code, out, errOut)
			}
		}()
	}
	wg.Wait()
	for _, msg := range errs {
		if msg != "" {
			e.t.Error(msg)
		}
	}
}

// TestSoak: create, exec, stop, start, exec, delete with three VMs at once,
// cycle after cycle (BANGER_SOAK_CYCLES, default 30, bounded by
// BANGER_SOAK_MINUTES, default 7): every exec answers, the leak checker
// finds nothing after each cycle, and the daemon's goroutines and open
// file descriptors do not grow past what it had after the first cycle.
func TestSoak(t *testing.T) {
	cycles, minutes := 30, 7
	if n, err := strconv.Atoi(os.Getenv("BANGER_SOAK_CYCLES")); err == nil && n > 0 {
		cycles = n
	}
	if n, err := strconv.Atoi(os.Getenv("BANGER_SOAK_MINUTES")); err == nil && n > 0 {
		minutes = n
	}
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	names := []string{"s1", "s2", "s3"}
	deadline := time.Now().Add(time.Duration(minutes) * time.Minute)
	var baseG, baseF int
	var baseFDs []string
	var durations []time.Duration
	execs := 0
	for c := 1; c <= cycles && !t.Failed(); c++ {
		if c > 2 && time.Now().Add(durations[len(durations)-1]).After(deadline) {
			break // the next cycle would not fit
		}
		start := time.Now()
		e.parallel(names, func(n string) []string { return []string{"vm", "create", "--name", n, "--memory", "512"} })
		e.parallel(names, func(n string) []string { return []string{"vm", "exec", n, "--", "true"} })
		e.parallel(names, func(n string) []string { return []string{"vm", "stop", n} })
		e.parallel(names, func(n string) []string { return []string{"vm", "start", n} })
		e.parallel(names, func(n string) []string { return []string{"vm", "exec", n, "--", "true"} })
		e.parallel(names, func(n string) []string { return []string{"vm", "delete", n} })
		execs += 2 * len(names)
		durations = append(durations, time.Since(start))
		e.assertNoLeaks(fmt.Sprintf("after soak cycle %d", c))
		// Database connections a burst opened close after 5 s idle; then
		// the least of a few samples, since the daemon's own work (the
		// watch loop's netlink sockets, the ping's connection) comes and
		// goes: a leak stays in every sample.
		time.Sleep(7 * time.Second)
		g, f, fds := e.steadyStats()
		t.Logf("cycle %d: %s, daemon goroutines %d, open fds %d", c, time.Since(start).Round(time.Second), g, f)
		if c == 1 {
			baseG, baseF, baseFDs = g, f, fds
			continue
		}
		if g > baseG || f > baseF {
			t.Errorf("cycle %d: the daemon grew: goroutines %d → %d, open fds %d → %d\nfds after cycle 1: %v\nfds now: %v", c, baseG, g, baseF, f, baseFDs, fds)
		}
	}
	if len(durations) < 2 {
		t.Fatalf("only %d cycles fit in %d minutes", len(durations), minutes)
	}
	g, f, _ := e.steadyStats()
	t.Logf("soak: %d cycles × %d VMs, %d execs answered; daemon goroutines %d (after cycle 1: %d), open fds %d (after cycle 1: %d)",
		len(durations), len(names), execs, g, baseG, f, baseF)
}
