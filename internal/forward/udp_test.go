package forward

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// udpServer is a UDP "guest" on guestIP that calls handle for every
// datagram, with the source address it came from.
type udpServer struct {
	conn *net.UDPConn
	wg   sync.WaitGroup
}

// newUDPServer answers each datagram with "SOURCE says DATA".
func newUDPServer(t testing.TB) *udpServer {
	return newUDPGuest(t, func(c *net.UDPConn, from netip.AddrPort, data []byte) {
		_, _ = c.WriteToUDPAddrPort(fmt.Appendf(nil, "%s says %s", from, data), from)
	})
}

func newUDPGuest(t testing.TB, handle func(c *net.UDPConn, from netip.AddrPort, data []byte)) *udpServer {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(guestIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{conn: c}
	s.wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			handle(c, from, buf[:n])
		}
	})
	t.Cleanup(func() { c.Close(); s.wg.Wait() })
	return s
}

func (s *udpServer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func dialUDP(t testing.TB, a netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(a))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpTry sends msg and returns the reply, or "" if none comes within d.
func udpTry(t testing.TB, c *net.UDPConn, msg string, d time.Duration) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return "" // nothing listens on the host port
		}
		t.Fatal(err)
	}
	return string(buf[:n])
}

// udpAsk sends msg and returns the guest's reply split into the source
// the guest saw and the data it echoed.
func udpAsk(t testing.TB, c *net.UDPConn, msg string) (src, data string) {
	t.Helper()
	r := udpTry(t, c, msg, 5*time.Second)
	src, data, ok := strings.Cut(r, " says ")
	if !ok {
		t.Fatalf("no reply to %q (got %q)", msg, r)
	}
	return src, data
}

func addUDP(t *testing.T, m *Manager, vm string, guest netip.AddrPort) Forward {
	t.Helper()
	f, err := m.Add(Spec{VM: vm, GuestAddr: guest, Proto: UDP})
	if err != nil {
		t.Fatal(err)
	}
	if f.HostAddr.Addr() != netip.MustParseAddr("127.0.0.1") || f.HostAddr.Port() == 0 {
		t.Fatalf("HostAddr = %v", f.HostAddr)
	}
	return f
}

func TestUDPTwoClients(t *testing.T) {
	m := newManager(t, nil)
	srv := newUDPServer(t)
	f := addUDP(t, m, "dns", srv.addr())
	a, b := dialUDP(t, f.HostAddr), dialUDP(t, f.HostAddr)
	srcA, dataA := udpAsk(t, a, "from a")
	srcB, dataB := udpAsk(t, b, "from b")
	if dataA != "from a" || dataB != "from b" {
		t.Fatalf("replies crossed: a got %q, b got %q", dataA, dataB)
	}
	if srcA == srcB {
		t.Fatalf("both clients reached the guest from %s; want a session each", srcA)
	}
	// Each client keeps its session.
	if src, data := udpAsk(t, a, "again a"); src != srcA || data != "again a" {
		t.Fatalf("a's second request came from %s (was %s), reply %q", src, srcA, data)
	}
	if src, data := udpAsk(t, b, "again b"); src != srcB || data != "again b" {
		t.Fatalf("b's second request came from %s (was %s), reply %q", src, srcB, data)
	}
	l := m.List("dns")[0]
	if l.Conns != 2 {
		t.Fatalf("Conns = %d, want 2 sessions", l.Conns)
	}
	wantIn := uint64(len("from a") + len("from b") + len("again a") + len("again b"))
	wantOut := wantIn + uint64(2*(len(srcA)+len(" says "))+2*(len(srcB)+len(" says ")))
	eventually(t, time.Second, "counters to settle", func() bool { return m.List("dns")[0].BytesOut == wantOut })
	if l := m.List("dns")[0]; l.BytesIn != wantIn {
		t.Fatalf("BytesIn %d, want %d", l.BytesIn, wantIn)
	}
}

// Both clients send before either reply comes, and the replies come back
// in the other order: each must still reach the client whose session it
// came back on.
func TestUDPRepliesInterleaved(t *testing.T) {
	m := newManager(t, nil)
	var held []netip.AddrPort // touched by the server goroutine only
	var heldData []string
	srv := newUDPGuest(t, func(c *net.UDPConn, from netip.AddrPort, data []byte) {
		held, heldData = append(held, from), append(heldData, string(data))
		if len(held) < 2 {
			return
		}
		for i := len(held) - 1; i >= 0; i-- {
			_, _ = c.WriteToUDPAddrPort([]byte("re: "+heldData[i]), held[i])
		}
		held, heldData = nil, nil
	})
	f := addUDP(t, m, "dns", srv.addr())
	a, b := dialUDP(t, f.HostAddr), dialUDP(t, f.HostAddr)
	if _, err := a.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if r := udpTry(t, b, "b", 5*time.Second); r != "re: b" {
		t.Fatalf("b got %q", r)
	}
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, err := a.Read(buf)
	if err != nil || string(buf[:n]) != "re: a" {
		t.Fatalf("a got %q, %v", buf[:n], err)
	}
}

// Traffic one way only, either way, keeps a session alive.
func TestUDPOneWayTrafficKeepsSession(t *testing.T) {
	const idle = 200 * time.Millisecond
	m := newManager(t, func(l *limits) { l.udpIdle = idle })
	sources := make(chan netip.AddrPort, 100)
	var talking sync.WaitGroup
	t.Cleanup(talking.Wait)
	srv := newUDPGuest(t, func(c *net.UDPConn, from netip.AddrPort, data []byte) {
		sources <- from
		if string(data) == "stream" { // the guest talks for a while, unprompted
			talking.Go(func() {
				for i := range 8 {
					time.Sleep(idle / 4)
					_, _ = c.WriteToUDPAddrPort(fmt.Appendf(nil, "tick %d", i), from)
				}
			})
		}
	})
	f := addUDP(t, m, "dns", srv.addr())
	c := dialUDP(t, f.HostAddr)

	// Client to guest only, for twice the idle timeout.
	for range 8 {
		if _, err := c.Write([]byte("fire and forget")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 4)
	}
	// Then guest to client only.
	if _, err := c.Write([]byte("stream")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	for i := range 8 {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if want := fmt.Sprintf("tick %d", i); err != nil || string(buf[:n]) != want {
			t.Fatalf("got %q, %v; want %q (did the session expire under the guest's traffic?)", buf[:n], err, want)
		}
	}
	if _, err := c.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	var seen []netip.AddrPort
	for len(seen) < 10 {
		select {
		case a := <-sources:
			seen = append(seen, a)
		case <-time.After(5 * time.Second):
			t.Fatalf("the guest got %d datagrams, want 10", len(seen))
		}
	}
	for _, a := range seen {
		if a != seen[0] {
			t.Fatalf("the guest saw the client from %v: the session was replaced", seen)
		}
	}
	if n := m.List("")[0].Conns; n != 1 {
		t.Fatalf("Conns = %d, want 1", n)
	}
}

// A datagram sent after the guest port refused an earlier one is not lost
// to the refusal the kernel reports on the next send.
func TestUDPSendRetriesAfterRefusal(t *testing.T) {
	srv := newUDPServer(t)
	guest := srv.addr()
	srv.conn.Close()
	srv.wg.Wait()
	r, err := startUDP(netip.AddrPortFrom(hostIP, 0), guest, defaultLimits, new(stats), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	// A session whose reader is not running, so that nothing but the next
	// send collects the refusal.
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(guest))
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.0.0.1:9")
	r.mu.Lock()
	r.sessions[client] = &udpSession{client: client, conn: conn}
	r.mu.Unlock()
	r.toGuest(client, []byte("into the void"))
	time.Sleep(100 * time.Millisecond) // for the ICMP port unreachable

	up, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(guest))
	if err != nil {
		t.Skipf("cannot rebind %s: %v", guest, err)
	}
	defer up.Close()
	r.toGuest(client, []byte("now"))
	_ = up.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	n, _, err := up.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "now" {
		t.Fatalf("guest got %q, %v; want the datagram sent after the refusal", buf[:n], err)
	}
}

func TestUDPIdleExpiry(t *testing.T) {
	const idle = 200 * time.Millisecond
	m := newManager(t, func(l *limits) { l.udpIdle = idle })
	srv := newUDPServer(t)
	f := addUDP(t, m, "dns", srv.addr())
	c := dialUDP(t, f.HostAddr)
	src1, _ := udpAsk(t, c, "one")

	// Traffic keeps a session alive well past the idle timeout.
	for range 8 {
		time.Sleep(idle / 4)
		if src, _ := udpAsk(t, c, "keep"); src != src1 {
			t.Fatalf("session replaced while in use: %s then %s", src1, src)
		}
	}
	start := time.Now()
	eventually(t, 10*idle, "the idle session to expire", func() bool { return m.List("")[0].Conns == 0 })
	if d := time.Since(start); d < idle/2 {
		t.Fatalf("session expired %v after its last traffic, before the idle timeout %v", d, idle)
	}
	waitGoroutines(t, 1) // the relay's read loop only: the session's goroutine is gone
	src2, data := udpAsk(t, c, "two")
	if data != "two" {
		t.Fatalf("reply %q after expiry", data)
	}
	if src2 == src1 {
		t.Logf("new session reused source %s (the kernel may hand the port out again)", src2)
	}
	if n := m.List("")[0].Conns; n != 1 {
		t.Fatalf("Conns = %d after a new request, want 1", n)
	}
}

func TestUDPMaxSessions(t *testing.T) {
	m := newManager(t, func(l *limits) { l.maxSessions = 2 })
	srv := newUDPServer(t)
	f := addUDP(t, m, "dns", srv.addr())
	a, b, c := dialUDP(t, f.HostAddr), dialUDP(t, f.HostAddr), dialUDP(t, f.HostAddr)
	udpAsk(t, a, "a")
	udpAsk(t, b, "b")
	if r := udpTry(t, c, "c", 300*time.Millisecond); r != "" {
		t.Fatalf("a third client over a limit of 2 sessions got %q", r)
	}
	if n := m.List("")[0].Conns; n != 2 {
		t.Fatalf("Conns = %d, want 2", n)
	}
	if _, data := udpAsk(t, a, "a again"); data != "a again" {
		t.Fatalf("a got %q", data)
	}
}

// Sessions expire, making room for new clients.
func TestUDPMaxSessionsFreedByExpiry(t *testing.T) {
	m := newManager(t, func(l *limits) { l.maxSessions = 1; l.udpIdle = 100 * time.Millisecond })
	srv := newUDPServer(t)
	f := addUDP(t, m, "dns", srv.addr())
	a, b := dialUDP(t, f.HostAddr), dialUDP(t, f.HostAddr)
	udpAsk(t, a, "a")
	if r := udpTry(t, b, "b", 50*time.Millisecond); r != "" {
		t.Fatalf("b got %q while a held the only session", r)
	}
	eventually(t, 2*time.Second, "a's session to expire", func() bool { return m.List("")[0].Conns == 0 })
	if _, data := udpAsk(t, b, "b"); data != "b" {
		t.Fatalf("b got %q", data)
	}
}

// A guest port with nothing behind it: no reply, no error loop, and the
// forward carries on once the guest listens.
func TestUDPGuestRefuses(t *testing.T) {
	m := newManager(t, nil)
	srv := newUDPServer(t)
	guest := srv.addr()
	srv.conn.Close()
	srv.wg.Wait()
	f := addUDP(t, m, "dns", guest)
	c := dialUDP(t, f.HostAddr)
	for range 3 {
		if r := udpTry(t, c, "anyone?", 100*time.Millisecond); r != "" {
			t.Fatalf("reply %q from a closed port", r)
		}
	}
	if n := m.List("")[0].Conns; n != 1 {
		t.Fatalf("Conns = %d, want the session kept", n)
	}
	// The guest comes up on that port.
	again, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(guest))
	if err != nil {
		t.Skipf("cannot rebind %s: %v", guest, err)
	}
	defer again.Close()
	go func() {
		buf := make([]byte, 100)
		n, from, err := again.ReadFromUDPAddrPort(buf)
		if err == nil {
			_, _ = again.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	if r := udpTry(t, c, "now?", 2*time.Second); r != "now?" {
		t.Fatalf("reply %q once the guest listens", r)
	}
}

func TestUDPRemove(t *testing.T) {
	m := newManager(t, nil)
	srv := newUDPServer(t)
	f := addUDP(t, m, "dns", srv.addr())
	for range 3 {
		udpAsk(t, dialUDP(t, f.HostAddr), "x")
	}
	if err := bounded(t, 5*time.Second, "Remove", func() error { return m.Remove("dns", UDP, f.HostAddr.Port()) }); err != nil {
		t.Fatal(err)
	}
	checkNoLeaks(t)
	if r := udpTry(t, dialUDP(t, f.HostAddr), "x", 200*time.Millisecond); r != "" {
		t.Fatalf("reply %q after Remove", r)
	}
	// The port is free again.
	if _, err := m.Add(Spec{VM: "dns", GuestAddr: srv.addr(), Proto: UDP, HostPort: f.HostAddr.Port()}); err != nil {
		t.Fatal(err)
	}
}

func TestUDPHostPortTaken(t *testing.T) {
	m := newManager(t, nil)
	busy, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := uint16(busy.LocalAddr().(*net.UDPAddr).Port)
	_, err = m.Add(Spec{VM: "dns", GuestAddr: netip.AddrPortFrom(guestIP, 53), Proto: UDP, HostPort: port})
	if want := fmt.Sprintf("host port %d is already in use", port); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Add on a taken UDP port: %v", err)
	}
}

func TestUDPLargeDatagram(t *testing.T) {
	m := newManager(t, nil)
	srv := newUDPServer(t)
	f := addUDP(t, m, "dns", srv.addr())
	msg := strings.Repeat("z", 60000)
	if _, data := udpAsk(t, dialUDP(t, f.HostAddr), msg); data != msg {
		t.Fatalf("a %d-byte datagram came back as %d bytes", len(msg), len(data))
	}
}
