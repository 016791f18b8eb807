package forward

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// guestIP stands in for a VM's address: a loopback address other than the
// one forwards bind, so a mix-up between the two shows.
var guestIP = netip.MustParseAddr("127.0.0.2")

// newManager returns a manager with short limits whose Close, and a check
// that none of the package's goroutines outlive it, run at cleanup.
func newManager(t *testing.T, edit func(*limits)) *Manager {
	t.Helper()
	var log *slog.Logger
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m := NewManager(log)
	m.lim.dialTimeout = 500 * time.Millisecond
	if edit != nil {
		edit(&m.lim)
	}
	t.Cleanup(func() {
		bounded(t, 5*time.Second, "Close", func() struct{} { m.Close(); return struct{}{} })
		checkNoLeaks(t)
	})
	return m
}

// leakedGoroutines returns the stacks of live goroutines that run code from
// this package's non-test files.
func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var leaks []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for line := range strings.SplitSeq(g, "\n") {
			line = strings.TrimSpace(line)
			i := strings.Index(line, "/internal/forward/")
			if i < 0 {
				continue
			}
			file, _, _ := strings.Cut(line[i+len("/internal/forward/"):], ":")
			if strings.HasSuffix(file, ".go") && !strings.HasSuffix(file, "_test.go") {
				leaks = append(leaks, g)
				break
			}
		}
	}
	return leaks
}

// checkNoLeaks fails t if any goroutine of the package is still running.
// Everything a relay starts has finished its work when close returns, but a
// goroutine that has just run its deferred wg.Done may still be on its way
// out, so the check polls briefly; a real leak does not go away.
// A relay that returned from close without waiting shows up at once in
// the running count, which spawn keeps exactly.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	if n := running.Load(); n != 0 {
		t.Errorf("%d goroutine(s) of package forward not finished when Close returned", n)
	}
	waitGoroutines(t, 0)
}

// waitGoroutines fails t unless, within a second, exactly want goroutines
// of the package are running.
func waitGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		leaks := leakedGoroutines()
		if len(leaks) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d goroutine(s) of package forward running, want %d:\n%s", len(leaks), want, strings.Join(leaks, "\n\n"))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bounded runs fn, failing t at once if it has not returned within d
// (a close that waits on something it failed to end would otherwise hang
// the test binary).
func bounded[T any](t testing.TB, d time.Duration, what string, fn func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s still running after %v:\n%s", what, d, strings.Join(leakedGoroutines(), "\n\n"))
		panic("unreachable")
	}
}

// eventually polls cond every 5 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// server is a TCP "guest" on guestIP that runs handle for every
// connection and closes everything at cleanup.
type server struct {
	ln    *net.TCPListener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[*net.TCPConn]bool
}

func newServer(t testing.TB, handle func(*net.TCPConn)) *server {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(guestIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, conns: make(map[*net.TCPConn]bool)}
	s.wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(s.close)
	return s
}

func (s *server) addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

func (s *server) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echo writes back everything it reads, then half-closes.
func echo(c *net.TCPConn) {
	_, _ = io.Copy(c, c)
	_ = c.CloseWrite()
}

func dialTCP(t testing.TB, a netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(a))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// closedWithin reports whether c's peer ends the connection (EOF or reset)
// within d, failing if data arrives instead.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 {
		t.Fatalf("read %q, want the connection closed", b[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true
}

// roundTrip writes msg on c and reads len(msg) bytes back.
func roundTrip(t testing.TB, c net.Conn, msg []byte) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo differs from what was sent (%d bytes)", len(msg))
	}
	_ = c.SetDeadline(time.Time{})
}
