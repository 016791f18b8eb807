package forward

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

func addTCP(t *testing.T, m *Manager, vm string, guest netip.AddrPort, hostPort uint16) Forward {
	t.Helper()
	f, err := m.Add(Spec{VM: vm, GuestAddr: guest, Proto: TCP, HostPort: hostPort})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// dialOrReset dials a, returning nil if the forward reset the connection
// before the connect returned (a reset can beat it on loopback).
func dialOrReset(t *testing.T, a netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(a))
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestTCPEchoBothWays(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	f := addTCP(t, m, "web", srv.addr(), 0)
	if f.HostAddr.Addr() != netip.MustParseAddr("127.0.0.1") || f.HostAddr.Port() == 0 {
		t.Fatalf("HostAddr = %v, want 127.0.0.1 and the port the kernel picked", f.HostAddr)
	}
	c := dialTCP(t, f.HostAddr)
	roundTrip(t, c, []byte("hello"))
	big := make([]byte, 5<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	roundTrip(t, c, big)
	roundTrip(t, c, []byte("bye"))
}

// The client half-closes: the guest must see EOF and still be able to
// answer; then the guest's close must reach the client as EOF.
func TestTCPClientHalfClose(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, func(c *net.TCPConn) {
		b, err := io.ReadAll(c) // until the client's FIN
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes: %s", len(b), b)
	})
	f := addTCP(t, m, "web", srv.addr(), 0)
	c := dialTCP(t, f.HostAddr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the reply after half-close: %v", err)
	}
	if string(got) != "got 4 bytes: ping" {
		t.Fatalf("reply %q", got)
	}
}

// The guest half-closes first: the client must see EOF and still be able
// to send.
func TestTCPGuestHalfClose(t *testing.T) {
	m := newManager(t, nil)
	received := make(chan string, 1)
	srv := newServer(t, func(c *net.TCPConn) {
		_, _ = c.Write([]byte("hi"))
		_ = c.CloseWrite()
		b, _ := io.ReadAll(c)
		// The write side is closed; report what arrived on a side channel.
		received <- string(b)
	})
	f := addTCP(t, m, "web", srv.addr(), 0)
	c := dialTCP(t, f.HostAddr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hi" {
		t.Fatalf("read %q, %v; want \"hi\" then EOF", got, err)
	}
	if _, err := c.Write([]byte("still here")); err != nil {
		t.Fatalf("write after the guest half-closed: %v", err)
	}
	_ = c.CloseWrite()
	select {
	case s := <-received:
		if s != "still here" {
			t.Fatalf("guest received %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the guest never saw the client's data and EOF")
	}
}

func TestTCPHTTPGet(t *testing.T) {
	m := newManager(t, nil)
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(guestIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the guest, path %s", r.URL.Path)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { _ = hs.Close() })
	f := addTCP(t, m, "web", ln.Addr().(*net.TCPAddr).AddrPort(), 0)

	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Get(fmt.Sprintf("http://%s/x/y", f.HostAddr))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != "hello from the guest, path /x/y" {
		t.Fatalf("GET: %d %q %v", resp.StatusCode, body, err)
	}
}

func TestTCPByteCounters(t *testing.T) {
	m := newManager(t, nil)
	// The guest answers every byte with two, so the directions differ.
	srv := newServer(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append(b, b...))
	})
	f := addTCP(t, m, "web", srv.addr(), 0)
	c := dialTCP(t, f.HostAddr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := bytes.Repeat([]byte("x"), 100_000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != 2*len(msg) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	eventually(t, 5*time.Second, "the connection to end", func() bool { return m.List("web")[0].Conns == 0 })
	l := m.List("web")[0]
	if l.BytesIn != uint64(len(msg)) || l.BytesOut != uint64(2*len(msg)) {
		t.Fatalf("BytesIn %d BytesOut %d, want %d and %d", l.BytesIn, l.BytesOut, len(msg), 2*len(msg))
	}
}

func TestTCPConnsCount(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	f := addTCP(t, m, "web", srv.addr(), 0)
	c1, c2 := dialTCP(t, f.HostAddr), dialTCP(t, f.HostAddr)
	roundTrip(t, c1, []byte("a"))
	roundTrip(t, c2, []byte("b"))
	if n := m.List("")[0].Conns; n != 2 {
		t.Fatalf("Conns = %d, want 2", n)
	}
	c1.Close()
	eventually(t, 5*time.Second, "Conns to drop to 1", func() bool { return m.List("")[0].Conns == 1 })
}

// With nothing listening on the guest port, a client connection must end
// at once, not hang.
func TestTCPGuestRefuses(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	guest := srv.addr()
	srv.close()
	f := addTCP(t, m, "web", guest, 0)
	start := time.Now()
	c := dialOrReset(t, f.HostAddr)
	if c != nil && !closedWithin(t, c, 2*time.Second) {
		t.Fatal("client connection still open 2s after the guest refused")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v to close", d)
	}
	eventually(t, 2*time.Second, "Conns to drop to 0", func() bool { return m.List("")[0].Conns == 0 })
}

// The guest server closing its end must reach the client.
func TestTCPGuestCloses(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, func(c *net.TCPConn) { _, _ = c.Write([]byte("bye")) })
	f := addTCP(t, m, "web", srv.addr(), 0)
	c := dialTCP(t, f.HostAddr)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\" then EOF", got, err)
	}
}

// blackhole returns a guest address whose SYNs go unanswered: a listener
// with backlog 0 whose queue is already full and that never accepts.
func blackhole(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: guestIP.As4()}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.AddrPortFrom(guestIP, uint16(sa.(*syscall.SockaddrInet4).Port))
	// Fill the accept queue; later SYNs are dropped.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp4", a.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Skip("cannot fill a listen queue here")
		}
	}
	return a
}

// A guest that does not answer at all: the client connection ends once
// the dial timeout passes.
func TestTCPDialTimeout(t *testing.T) {
	m := newManager(t, func(l *limits) { l.dialTimeout = 300 * time.Millisecond })
	f := addTCP(t, m, "web", blackhole(t), 0)
	c := dialTCP(t, f.HostAddr)
	start := time.Now()
	if !closedWithin(t, c, 3*time.Second) {
		t.Fatal("client connection still open 3s after a 300ms dial timeout")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("closed after %v, before the dial could have timed out: is the black hole one?", d)
	}
}

// Removing a forward while a dial to the guest hangs must not wait for the
// dial timeout.
func TestTCPRemoveDuringDial(t *testing.T) {
	m := newManager(t, func(l *limits) { l.dialTimeout = time.Minute })
	f := addTCP(t, m, "web", blackhole(t), 0)
	c := dialTCP(t, f.HostAddr)
	eventually(t, 2*time.Second, "the connection to be taken", func() bool { return m.List("")[0].Conns == 1 })
	start := time.Now()
	if err := bounded(t, 5*time.Second, "Remove", func() error { return m.Remove("web", TCP, f.HostAddr.Port()) }); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Remove took %v", d)
	}
	if !closedWithin(t, c, time.Second) {
		t.Fatal("client connection still open after Remove")
	}
}

func TestTCPRemoveClosesLiveConnections(t *testing.T) {
	m := newManager(t, nil)
	guestSaw := make(chan error, 1)
	srv := newServer(t, func(c *net.TCPConn) {
		_, _ = io.Copy(c, c)
		guestSaw <- nil
	})
	f := addTCP(t, m, "web", srv.addr(), 0)
	c := dialTCP(t, f.HostAddr)
	roundTrip(t, c, []byte("hello"))
	if err := bounded(t, 5*time.Second, "Remove", func() error { return m.Remove("web", TCP, f.HostAddr.Port()) }); err != nil {
		t.Fatal(err)
	}
	checkNoLeaks(t)
	if !closedWithin(t, c, time.Second) {
		t.Fatal("client connection still open after Remove")
	}
	select {
	case <-guestSaw:
	case <-time.After(time.Second):
		t.Fatal("guest connection still open after Remove")
	}
	if _, err := net.DialTimeout("tcp4", f.HostAddr.String(), time.Second); err == nil {
		t.Fatal("host port still accepts after Remove")
	}
	if got := m.List(""); len(got) != 0 {
		t.Fatalf("List after Remove: %v", got)
	}
}

func TestTCPMaxConns(t *testing.T) {
	m := newManager(t, func(l *limits) { l.maxConns = 2 })
	srv := newServer(t, echo)
	f := addTCP(t, m, "web", srv.addr(), 0)
	c1, c2 := dialTCP(t, f.HostAddr), dialTCP(t, f.HostAddr)
	roundTrip(t, c1, []byte("1"))
	roundTrip(t, c2, []byte("2"))
	c3 := dialOrReset(t, f.HostAddr)
	if c3 != nil && !closedWithin(t, c3, time.Second) {
		t.Fatal("a third connection over a limit of 2 was kept open")
	}
	roundTrip(t, c1, []byte("1 still works"))
	c1.Close()
	eventually(t, 5*time.Second, "Conns to drop to 1", func() bool { return m.List("")[0].Conns == 1 })
	roundTrip(t, dialTCP(t, f.HostAddr), []byte("room again"))
}

func TestAddHostPortTaken(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := uint16(busy.Addr().(*net.TCPAddr).Port)
	_, err = m.Add(Spec{VM: "web", GuestAddr: srv.addr(), Proto: TCP, HostPort: port})
	want := fmt.Sprintf("host port %d is already in use; pick another with GUEST:HOST or GUEST:0", port)
	if err == nil || err.Error() != want {
		t.Fatalf("Add on a taken port: %v\nwant: %s", err, want)
	}
	if n := len(m.List("")); n != 0 {
		t.Fatalf("%d forwards after a failed Add", n)
	}

	// Taken by another forward: the error names it.
	f := addTCP(t, m, "web", srv.addr(), 0)
	_, err = m.Add(Spec{VM: "db", GuestAddr: srv.addr(), Proto: TCP, HostPort: f.HostAddr.Port()})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("host port %d is already in use by the forward of VM \"web\" tcp guest port %d", f.HostAddr.Port(), srv.addr().Port())) {
		t.Fatalf("Add on a port another forward holds: %v", err)
	}
}

func TestAddFixedHostPort(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	// Find a free port, free it, and ask for it.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	f := addTCP(t, m, "web", srv.addr(), port)
	if f.HostAddr != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) {
		t.Fatalf("HostAddr %v, want 127.0.0.1:%d", f.HostAddr, port)
	}
	roundTrip(t, dialTCP(t, f.HostAddr), []byte("fixed"))
}

func TestAddDuplicate(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	f := addTCP(t, m, "web", srv.addr(), 0)
	_, err := m.Add(Spec{VM: "web", GuestAddr: srv.addr(), Proto: TCP})
	want := fmt.Sprintf("VM \"web\" already forwards tcp guest port %d to %s", srv.addr().Port(), f.HostAddr)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("duplicate Add: %v\nwant it to say: %s", err, want)
	}
	// The same guest port over UDP, or of another VM, is another forward.
	if _, err := m.Add(Spec{VM: "web", GuestAddr: srv.addr(), Proto: UDP}); err != nil {
		t.Fatal(err)
	}
	addTCP(t, m, "db", srv.addr(), 0)
	if n := len(m.List("")); n != 3 {
		t.Fatalf("%d forwards, want 3", n)
	}
}

func TestAddInvalid(t *testing.T) {
	m := newManager(t, nil)
	g := netip.MustParseAddrPort("127.0.0.2:80")
	for _, c := range []struct {
		spec Spec
		want string
	}{
		{Spec{GuestAddr: g, Proto: TCP}, "VM name is empty"},
		{Spec{VM: "a", Proto: TCP}, "is not an IP address"},
		{Spec{VM: "a", GuestAddr: netip.MustParseAddrPort("0.0.0.0:80"), Proto: TCP}, "is not an IP address"},
		{Spec{VM: "a", GuestAddr: netip.MustParseAddrPort("127.0.0.2:0"), Proto: TCP}, "guest port must be 1..65535"},
		{Spec{VM: "a", GuestAddr: g, Proto: "sctp"}, `protocol "sctp": want tcp or udp`},
		{Spec{VM: "a", GuestAddr: g}, `protocol "": want tcp or udp`},
	} {
		if _, err := m.Add(c.spec); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Add(%+v) = %v, want an error containing %q", c.spec, err, c.want)
		}
	}
}

func TestRemoveNotFound(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	f := addTCP(t, m, "web", srv.addr(), 0)
	for _, c := range []struct {
		vm    string
		proto Proto
		port  uint16
	}{
		{"db", TCP, f.HostAddr.Port()},
		{"web", UDP, f.HostAddr.Port()},
		{"web", TCP, f.HostAddr.Port() + 1},
	} {
		err := m.Remove(c.vm, c.proto, c.port)
		want := fmt.Sprintf("VM %q has no %s forward on host port %d", c.vm, c.proto, c.port)
		if err == nil || err.Error() != want {
			t.Errorf("Remove(%q, %s, %d) = %v, want %q", c.vm, c.proto, c.port, err, want)
		}
	}
	if len(m.List("")) != 1 {
		t.Fatal("a failed Remove removed something")
	}
}

func TestListSorted(t *testing.T) {
	m := newManager(t, nil)
	a, b := newServer(t, echo), newServer(t, echo)
	lo, hi := a.addr(), b.addr()
	if lo.Port() > hi.Port() {
		lo, hi = hi, lo
	}
	addTCP(t, m, "web", hi, 0)
	if _, err := m.Add(Spec{VM: "web", GuestAddr: lo, Proto: UDP, Auto: true}); err != nil {
		t.Fatal(err)
	}
	addTCP(t, m, "web", lo, 0)
	addTCP(t, m, "db", hi, 0)
	var got []string
	for _, f := range m.List("") {
		got = append(got, fmt.Sprintf("%s/%s/%d/%v", f.VM, f.Proto, f.GuestAddr.Port(), f.Auto))
	}
	want := []string{
		fmt.Sprintf("db/tcp/%d/false", hi.Port()),
		fmt.Sprintf("web/tcp/%d/false", lo.Port()),
		fmt.Sprintf("web/tcp/%d/false", hi.Port()),
		fmt.Sprintf("web/udp/%d/true", lo.Port()),
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("List:\n got %v\nwant %v", got, want)
	}
	if n := len(m.List("web")); n != 3 {
		t.Fatalf("List(web) has %d, want 3", n)
	}
	if n := len(m.List("nope")); n != 0 {
		t.Fatalf("List(nope) has %d, want 0", n)
	}
	for _, f := range m.List("") {
		if f.Started.IsZero() || time.Since(f.Started) > time.Minute {
			t.Fatalf("Started = %v", f.Started)
		}
	}
}

func TestStopVM(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	usrv := newUDPServer(t)
	fa := addTCP(t, m, "a", srv.addr(), 0)
	if _, err := m.Add(Spec{VM: "a", GuestAddr: usrv.addr(), Proto: UDP}); err != nil {
		t.Fatal(err)
	}
	fb := addTCP(t, m, "b", srv.addr(), 0)
	ca, cb := dialTCP(t, fa.HostAddr), dialTCP(t, fb.HostAddr)
	roundTrip(t, ca, []byte("a"))
	roundTrip(t, cb, []byte("b"))

	if n := bounded(t, 5*time.Second, "StopVM", func() int { return m.StopVM("a") }); n != 2 {
		t.Fatalf("StopVM(a) = %d, want 2", n)
	}
	if n := len(m.List("a")); n != 0 {
		t.Fatalf("VM a still has %d forwards", n)
	}
	if !closedWithin(t, ca, time.Second) {
		t.Fatal("VM a's connection still open")
	}
	if _, err := net.DialTimeout("tcp4", fa.HostAddr.String(), time.Second); err == nil {
		t.Fatal("VM a's host port still accepts")
	}
	if n := len(m.List("b")); n != 1 {
		t.Fatalf("VM b has %d forwards, want 1", n)
	}
	roundTrip(t, cb, []byte("b still works"))
	roundTrip(t, dialTCP(t, fb.HostAddr), []byte("and takes new connections"))
	if n := m.StopVM("a"); n != 0 {
		t.Fatalf("second StopVM(a) = %d", n)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	m := NewManager(nil)
	srv := newServer(t, echo)
	usrv := newUDPServer(t)
	var conns []net.Conn
	for _, vm := range []string{"a", "b"} {
		f, err := m.Add(Spec{VM: vm, GuestAddr: srv.addr(), Proto: TCP})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			c := dialTCP(t, f.HostAddr)
			roundTrip(t, c, []byte(vm))
			conns = append(conns, c)
		}
		u, err := m.Add(Spec{VM: vm, GuestAddr: usrv.addr(), Proto: UDP})
		if err != nil {
			t.Fatal(err)
		}
		udpAsk(t, dialUDP(t, u.HostAddr), "x")
	}
	if len(leakedGoroutines()) == 0 || running.Load() == 0 {
		t.Fatal("no forward goroutines seen while forwards run: is the leak check blind?")
	}
	bounded(t, 5*time.Second, "Close", func() struct{} { m.Close(); return struct{}{} })
	checkNoLeaks(t)
	for _, c := range conns {
		if !closedWithin(t, c, time.Second) {
			t.Fatal("a connection is still open after Close")
		}
	}
	if _, err := m.Add(Spec{VM: "a", GuestAddr: srv.addr(), Proto: TCP}); err == nil {
		t.Fatal("Add after Close succeeded")
	}
	m.Close() // idempotent
}

// Remove, StopVM and Close return only once every goroutine of what they
// end has ended, however slowly it goes.
func TestEndingWaitsForGoroutines(t *testing.T) {
	slow := func() { time.Sleep(20 * time.Millisecond) }
	testHookExit.Store(&slow)
	t.Cleanup(func() { testHookExit.Store(nil) })
	srv, usrv := newServer(t, echo), newUDPServer(t)
	m := NewManager(nil)
	start := func(vm string) {
		f, err := m.Add(Spec{VM: vm, GuestAddr: srv.addr(), Proto: TCP})
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, dialTCP(t, f.HostAddr), []byte("x"))
		u, err := m.Add(Spec{VM: vm, GuestAddr: usrv.addr(), Proto: UDP})
		if err != nil {
			t.Fatal(err)
		}
		udpAsk(t, dialUDP(t, u.HostAddr), "x")
	}
	for _, end := range []struct {
		name string
		fn   func()
	}{
		{"Remove", func() {
			for _, f := range m.List("") {
				if err := m.Remove(f.VM, f.Proto, f.HostAddr.Port()); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"StopVM", func() { m.StopVM("a") }},
		{"Close", m.Close},
	} {
		start("a")
		if running.Load() == 0 {
			t.Fatal("nothing running")
		}
		end.fn()
		if n := running.Load(); n != 0 {
			t.Fatalf("%s returned with %d goroutine(s) still running", end.name, n)
		}
	}
	checkNoLeaks(t)
}

// Many clients and manager calls at once, for -race.
func TestConcurrentUse(t *testing.T) {
	m := newManager(t, nil)
	srv := newServer(t, echo)
	done := make(chan struct{})
	errs := make(chan error, 64)
	for i := range 8 {
		vm := fmt.Sprintf("vm%d", i%3)
		go func() {
			defer func() { done <- struct{}{} }()
			for range 5 {
				f, err := m.Add(Spec{VM: vm, GuestAddr: srv.addr(), Proto: TCP})
				if err != nil {
					continue // another goroutine holds this VM's forward
				}
				c, err := net.Dial("tcp4", f.HostAddr.String())
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					_, _ = c.Write([]byte("x"))
					_, _ = c.Read(make([]byte, 1))
					c.Close()
				}
				_ = m.List("")
				if err := m.Remove(vm, TCP, f.HostAddr.Port()); err != nil {
					errs <- err
				}
				m.StopVM("nobody")
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
