//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// daemonStats is what ping says of the daemon's own goroutines and
// database connections (open, and checked out).
func (e *env) daemonStats() (goroutines, dbOpen, dbInUse int) {
	e.t.Helper()
	var p struct {
		Goroutines    int `json:"goroutines"`
		DBConnections int `json:"db_connections"`
		DBInUse       int `json:"db_in_use"`
	}
	if err := json.Unmarshal([]byte(e.must("ping", "--json")), &p); err != nil {
		e.t.Fatal(err)
	}
	return p.Goroutines, p.DBConnections, p.DBInUse
}

// steadyStats samples the daemon five times, 500 ms apart, and keeps the
// least of each figure: its goroutines and database connections (from
// ping) and its open descriptors (read from /proc by the test, so no
// request is in flight in them) other than the database file's own.
//
// Those SQLite keeps: a connection closed while another holds a lock on
// the file cannot close its descriptor (POSIX locks belong to the process
// and would go with it), so SQLite parks it to reuse at the next open.
// Their number is the most connections ever open at once, not a leak; a
// connection a caller never gave back shows in db_in_use instead.
func (e *env) steadyStats() (s steady) {
	e.t.Helper()
	s = steady{goroutines: -1, fds: -1, dbOpen: -1, dbInUse: -1}
	least := func(cur *int, v int) {
		if *cur < 0 || v < *cur {
			*cur = v
		}
	}
	for i := range 5 {
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		g, open, inUse := e.daemonStats()
		least(&s.goroutines, g)
		least(&s.dbOpen, open)
		least(&s.dbInUse, inUse)
		l := slices.DeleteFunc(e.daemonFDs(), func(p string) bool { return p == e.dbPath() })
		if s.fds < 0 || len(l) < s.fds {
			s.fds, s.fdList = len(l), l
		}
	}
	return s
}

type steady struct {
	goroutines, fds, dbOpen, dbInUse int
	fdList                           []string
}

func (s steady) String() string {
	return fmt.Sprintf("daemon goroutines %d, open fds %d, database connections %d (%d in use)", s.goroutines, s.fds, s.dbOpen, s.dbInUse)
}

// dbPath is the daemon's database file.
func (e *env) dbPath() string {
	return filepath.Join(e.root, "state", "banger", "banger.db")
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
	var base steady
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
		now := e.steadyStats()
		t.Logf("cycle %d: %s, %s", c, time.Since(start).Round(time.Second), now)
		if now.dbInUse != 0 {
			t.Errorf("cycle %d: %d database connections still in use with nothing running", c, now.dbInUse)
		}
		if c == 1 {
			base = now
			continue
		}
		if now.goroutines > base.goroutines || now.fds > base.fds || now.dbOpen > base.dbOpen {
			t.Errorf("cycle %d: the daemon grew: %s → %s\nfds after cycle 1: %v\nfds now: %v", c, base, now, base.fdList, now.fdList)
		}
	}
	if len(durations) < 2 && !t.Failed() {
		t.Fatalf("only %d cycles fit in %d minutes", len(durations), minutes)
	}
	t.Logf("soak: %d cycles × %d VMs, %d execs answered; %s (after cycle 1: %s)",
		len(durations), len(names), execs, e.steadyStats(), base)
}
