package dns

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

const clientTimeout = 2 * time.Second

// startServer serves opts on a free loopback port and returns its address.
func startServer(t testing.TB, opts Options, forward bool) (*Server, string) {
	t.Helper()
	s := New(opts)
	if err := s.Listen("127.0.0.1:0", forward); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	addrs := s.Addrs()
	if len(addrs) != 1 || addrs[0].Port() == 0 {
		t.Fatalf("Addrs() = %v, want one bound address", addrs)
	}
	return s, addrs[0].String()
}

// send sends m over network ("udp" or "tcp") and fails the test if no
// reply comes.
func send(t testing.TB, network, addr string, m *miekg.Msg) *miekg.Msg {
	t.Helper()
	c := &miekg.Client{Net: network, Timeout: clientTimeout}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %v to %s: %v", network, m.Question, addr, err)
	}
	return resp
}

func query(t testing.TB, network, addr, name string, qtype uint16) *miekg.Msg {
	t.Helper()
	m := new(miekg.Msg)
	m.SetQuestion(name, qtype)
	return send(t, network, addr, m)
}

func wantRcode(t testing.TB, resp *miekg.Msg, rcode int) {
	t.Helper()
	if resp.Rcode != rcode {
		t.Fatalf("rcode = %s, want %s\n%v", miekg.RcodeToString[resp.Rcode], miekg.RcodeToString[rcode], resp)
	}
}

func wantA(t testing.TB, resp *miekg.Msg, owner, ip string) {
	t.Helper()
	wantRcode(t, resp, miekg.RcodeSuccess)
	if len(resp.Answer) != 1 {
		t.Fatalf("want one answer, got %v", resp)
	}
	a, ok := resp.Answer[0].(*miekg.A)
	if !ok || a.A.String() != ip || a.Hdr.Name != owner {
		t.Fatalf("answer = %v, want %s A %s", resp.Answer[0], owner, ip)
	}
}

// wantSOAAuthority checks a negative answer: no records, the zone's SOA in
// the authority section.
func wantSOAAuthority(t testing.TB, resp *miekg.Msg) {
	t.Helper()
	if len(resp.Answer) != 0 {
		t.Fatalf("want no answer, got %v", resp.Answer)
	}
	if len(resp.Ns) != 1 {
		t.Fatalf("want the SOA in the authority section, got %v", resp.Ns)
	}
	if soa, ok := resp.Ns[0].(*miekg.SOA); !ok || soa.Hdr.Name != "vm." || soa.Minttl != recordTTL {
		t.Fatalf("authority = %v, want vm. SOA with minimum %d", resp.Ns[0], recordTTL)
	}
}

func testZone() *Zone {
	z := NewZone()
	z.Set("web", netip.MustParseAddr("172.30.0.2"))
	z.Set("db", netip.MustParseAddr("172.30.0.3"))
	return z
}

func TestAnswersTheZone(t *testing.T) {
	_, addr := startServer(t, Options{Zone: testZone()}, false)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			t.Run("known name", func(t *testing.T) {
				resp := query(t, network, addr, "web.vm.", miekg.TypeA)
				wantA(t, resp, "web.vm.", "172.30.0.2")
				if !resp.Authoritative {
					t.Fatal("AA bit not set")
				}
				if ttl := resp.Answer[0].Header().Ttl; ttl != recordTTL {
					t.Fatalf("TTL = %d, want %d", ttl, recordTTL)
				}
			})
			t.Run("case-insensitive, owner echoes the question", func(t *testing.T) {
				wantA(t, query(t, network, addr, "WeB.Vm.", miekg.TypeA), "WeB.Vm.", "172.30.0.2")
				wantA(t, query(t, network, addr, "DB.VM.", miekg.TypeA), "DB.VM.", "172.30.0.3")
			})
			t.Run("ANY gives the A", func(t *testing.T) {
				wantA(t, query(t, network, addr, "web.vm.", miekg.TypeANY), "web.vm.", "172.30.0.2")
			})
			t.Run("unknown name", func(t *testing.T) {
				resp := query(t, network, addr, "nope.vm.", miekg.TypeA)
				wantRcode(t, resp, miekg.RcodeNameError)
				if !resp.Authoritative {
					t.Fatal("AA bit not set on NXDOMAIN")
				}
				wantSOAAuthority(t, resp)
			})
			t.Run("AAAA of a known name is empty", func(t *testing.T) {
				resp := query(t, network, addr, "web.vm.", miekg.TypeAAAA)
				wantRcode(t, resp, miekg.RcodeSuccess)
				wantSOAAuthority(t, resp)
			})
			t.Run("MX of a known name is empty", func(t *testing.T) {
				resp := query(t, network, addr, "web.vm.", miekg.TypeMX)
				wantRcode(t, resp, miekg.RcodeSuccess)
				wantSOAAuthority(t, resp)
			})
			t.Run("names below a record do not exist", func(t *testing.T) {
				resp := query(t, network, addr, "a.web.vm.", miekg.TypeA)
				wantRcode(t, resp, miekg.RcodeNameError)
				wantSOAAuthority(t, resp)
			})
			t.Run("apex SOA", func(t *testing.T) {
				resp := query(t, network, addr, "vm.", miekg.TypeSOA)
				wantRcode(t, resp, miekg.RcodeSuccess)
				if len(resp.Answer) != 1 {
					t.Fatalf("want the SOA, got %v", resp)
				}
				if _, ok := resp.Answer[0].(*miekg.SOA); !ok || !resp.Authoritative {
					t.Fatalf("want an authoritative SOA, got %v", resp)
				}
			})
			t.Run("apex NS", func(t *testing.T) {
				resp := query(t, network, addr, "VM.", miekg.TypeNS)
				wantRcode(t, resp, miekg.RcodeSuccess)
				if len(resp.Answer) != 1 {
					t.Fatalf("want the NS, got %v", resp)
				}
				if ns, ok := resp.Answer[0].(*miekg.NS); !ok || ns.Hdr.Name != "VM." {
					t.Fatalf("want VM. NS, got %v", resp.Answer[0])
				}
			})
			t.Run("apex A is empty", func(t *testing.T) {
				resp := query(t, network, addr, "vm.", miekg.TypeA)
				wantRcode(t, resp, miekg.RcodeSuccess)
				wantSOAAuthority(t, resp)
			})
			t.Run("zone transfer refused", func(t *testing.T) {
				wantRcode(t, query(t, network, addr, "vm.", miekg.TypeAXFR), miekg.RcodeRefused)
			})
			t.Run("EDNS is echoed", func(t *testing.T) {
				m := new(miekg.Msg)
				m.SetQuestion("web.vm.", miekg.TypeA)
				m.SetEdns0(4096, true)
				resp := send(t, network, addr, m)
				wantA(t, resp, "web.vm.", "172.30.0.2")
				opt := resp.IsEdns0()
				if opt == nil || opt.UDPSize() != ednsUDPSize || !opt.Do() {
					t.Fatalf("want an OPT record with size %d and DO, got %v", ednsUDPSize, resp)
				}
			})
		})
	}
}

func TestZoneChangesSeenByTheNextQuery(t *testing.T) {
	z := NewZone()
	_, addr := startServer(t, Options{Zone: z}, false)

	wantRcode(t, query(t, "udp", addr, "web.vm.", miekg.TypeA), miekg.RcodeNameError)
	z.Set("web", netip.MustParseAddr("172.30.0.2"))
	wantA(t, query(t, "udp", addr, "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")
	z.Set("web", netip.MustParseAddr("172.30.0.7"))
	wantA(t, query(t, "tcp", addr, "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.7")
	z.Delete("web")
	wantRcode(t, query(t, "udp", addr, "web.vm.", miekg.TypeA), miekg.RcodeNameError)

	z.Set("old", netip.MustParseAddr("172.30.0.8"))
	serial := query(t, "udp", addr, "vm.", miekg.TypeSOA).Answer[0].(*miekg.SOA).Serial
	z.Replace(map[string]netip.Addr{"new": netip.MustParseAddr("172.30.0.9")})
	wantRcode(t, query(t, "udp", addr, "old.vm.", miekg.TypeA), miekg.RcodeNameError)
	wantA(t, query(t, "udp", addr, "new.vm.", miekg.TypeA), "new.vm.", "172.30.0.9")
	if got := query(t, "udp", addr, "vm.", miekg.TypeSOA).Answer[0].(*miekg.SOA).Serial; got == serial {
		t.Fatalf("SOA serial stayed %d across Replace", got)
	}
}

func TestNonForwardingListenerRefusesOtherNames(t *testing.T) {
	// An upstream that would answer, to show it is not asked.
	up, stub := startStub(t, answerWith("192.0.2.1"))
	_, addr := startServer(t, Options{Zone: testZone(), Upstreams: staticUpstreams{up}}, false)
	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, addr, "example.com.", miekg.TypeA)
		wantRcode(t, resp, miekg.RcodeRefused)
		if resp.RecursionAvailable {
			t.Fatal("a non-forwarding listener must not claim recursion")
		}
	}
	if n := stub.udp.Load() + stub.tcp.Load(); n != 0 {
		t.Fatalf("the upstream was asked %d times", n)
	}
	wantA(t, query(t, "udp", addr, "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")
}

func TestBadQuestionCountIsFormErr(t *testing.T) {
	_, addr := startServer(t, Options{Zone: testZone()}, true)
	for _, network := range []string{"udp", "tcp"} {
		none := new(miekg.Msg)
		none.Id = miekg.Id()
		wantRcode(t, send(t, network, addr, none), miekg.RcodeFormatError)

		two := new(miekg.Msg)
		two.SetQuestion("web.vm.", miekg.TypeA)
		two.Question = append(two.Question, miekg.Question{Name: "db.vm.", Qtype: miekg.TypeA, Qclass: miekg.ClassINET})
		wantRcode(t, send(t, network, addr, two), miekg.RcodeFormatError)
	}
	// The handler itself, in case the library's checks change.
	s := New(Options{})
	r := new(miekg.Msg)
	r.Id = 7
	if got := s.respond(r, true); got.Rcode != miekg.RcodeFormatError || got.Id != 7 {
		t.Fatalf("respond(no question) = %v, want FORMERR", got)
	}
	r.SetQuestion("vm.", miekg.TypeSOA)
	r.Opcode = miekg.OpcodeNotify
	if got := s.respond(r, true); got.Rcode != miekg.RcodeNotImplemented {
		t.Fatalf("respond(NOTIFY) = %v, want NOTIMP", got)
	}
}

func TestSurvivesGarbage(t *testing.T) {
	_, addr := startServer(t, Options{Zone: testZone()}, true)
	alive := func(what string) {
		t.Helper()
		for _, network := range []string{"udp", "tcp"} {
			c := &miekg.Client{Net: network, Timeout: clientTimeout}
			m := new(miekg.Msg)
			m.SetQuestion("web.vm.", miekg.TypeA)
			resp, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatalf("after %s, %s query failed: %v", what, network, err)
			}
			wantA(t, resp, "web.vm.", "172.30.0.2")
		}
	}

	valid := new(miekg.Msg)
	valid.SetQuestion("web.vm.", miekg.TypeA)
	packed, err := valid.Pack()
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, bad := range []struct {
		name string
		data []byte
	}{
		{"a few bytes", []byte{1, 2, 3}},
		{"an empty datagram", []byte{}},
		{"a truncated query", packed[:len(packed)-3]},
		{"a header claiming more than it has", append(packed[:12:12], 0xff)},
		{"all ones", []byte(strings.Repeat("\xff", 300))},
		{"a response", func() []byte { b := append([]byte(nil), packed...); b[2] |= 0x80; return b }()},
	} {
		if _, err := udp.Write(bad.data); err != nil {
			t.Fatalf("send %s: %v", bad.name, err)
		}
		alive("UDP " + bad.name)
	}

	// A truncated query gets FORMERR (its header was readable).
	if _, err := udp.Write(packed[:len(packed)-3]); err != nil {
		t.Fatal(err)
	}
	udp.SetReadDeadline(time.Now().Add(clientTimeout))
	buf := make([]byte, 512)
	n, err := udp.Read(buf)
	if err != nil {
		t.Fatalf("no reply to a truncated query: %v", err)
	}
	var resp miekg.Msg
	if err := resp.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	wantRcode(t, &resp, miekg.RcodeFormatError)

	// TCP: a length prefix promising more than is sent, then hang up.
	tcp, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tcp.Write([]byte{0xff, 0xff, 1, 2, 3})
	tcp.Close()
	alive("a TCP connection with a bogus length")

	// TCP: garbage framed correctly, then a good query on the same connection.
	tcp, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	frame := func(b []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...) }
	tcp.Write(frame([]byte("junk")))
	tcp.Write(frame(packed))
	tcp.SetReadDeadline(time.Now().Add(clientTimeout))
	co := &miekg.Conn{Conn: tcp}
	got, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("no answer after junk on the same TCP connection: %v", err)
	}
	wantA(t, got, "web.vm.", "172.30.0.2")
	alive("framed junk over TCP")
}

func TestListenAddressInUse(t *testing.T) {
	_, addr := startServer(t, Options{}, false)
	other := New(Options{})
	defer other.Close()
	err := other.Listen(addr, false)
	if err == nil {
		t.Fatalf("second Listen on %s succeeded", addr)
	}
	for _, want := range []string{addr, "in use", "dns_listen"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not mention %q", err, want)
		}
	}
	if len(other.Addrs()) != 0 {
		t.Fatalf("a failed Listen left a listener: %v", other.Addrs())
	}

	// Only the TCP half taken: still an error, and the UDP half is released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcpAddr := ln.Addr().String()
	err = other.Listen(tcpAddr, false)
	if err == nil || !strings.Contains(err.Error(), tcpAddr) || !strings.Contains(err.Error(), "tcp") {
		t.Fatalf("Listen on a taken TCP port: err = %v", err)
	}
	pc, err := net.ListenPacket("udp", tcpAddr)
	if err != nil {
		t.Fatalf("the UDP socket of the failed Listen was not released: %v", err)
	}
	pc.Close()
}

func TestListenReportsEachAddress(t *testing.T) {
	s := New(Options{Zone: testZone()})
	defer s.Close()
	if err := s.Listen("127.0.0.1:0", true); err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	addrs := s.Addrs()
	if len(addrs) != 2 || addrs[0] == addrs[1] {
		t.Fatalf("Addrs() = %v, want two distinct addresses", addrs)
	}
	for _, a := range addrs {
		wantA(t, query(t, "tcp", a.String(), "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")
	}
	// The first forwards (no upstreams: SERVFAIL), the second refuses.
	wantRcode(t, query(t, "udp", addrs[0].String(), "example.com.", miekg.TypeA), miekg.RcodeServerFailure)
	wantRcode(t, query(t, "udp", addrs[1].String(), "example.com.", miekg.TypeA), miekg.RcodeRefused)
	for _, bad := range []string{"not an address", "127.0.0.1", "localhost:0"} {
		if err := s.Listen(bad, false); err == nil {
			t.Fatalf("Listen accepted %q", bad)
		}
	}
	if len(s.Addrs()) != 2 {
		t.Fatalf("failed Listens changed Addrs(): %v", s.Addrs())
	}

	// IPv6 loopback, where the host has it.
	if err := s.Listen("[::1]:0", false); err != nil {
		t.Logf("no IPv6 loopback here: %v", err)
		return
	}
	a6 := s.Addrs()[2]
	if !a6.Addr().Is6() {
		t.Fatalf("Addrs()[2] = %v, want [::1]:port", a6)
	}
	wantA(t, query(t, "udp", a6.String(), "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")
	wantA(t, query(t, "tcp", a6.String(), "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")
}

func TestClose(t *testing.T) {
	s := New(Options{Zone: testZone()})
	if err := s.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0].String()
	// An idle TCP connection must not hold Close up.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	wantA(t, query(t, "udp", addr, "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")

	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Listen("127.0.0.1:0", false); err == nil {
		t.Fatal("Listen after Close succeeded")
	}
	// The address is free again, for UDP and TCP.
	s2 := New(Options{})
	if err := s2.Listen(addr, false); err != nil {
		t.Fatalf("address not released by Close: %v", err)
	}
	s2.Close()
}

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(inner, 1)
	defer l.Close()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted while the first was open")
	case <-time.After(100 * time.Millisecond):
	}
	closeSoon := func(c net.Conn) {
		t.Helper()
		closed := make(chan struct{})
		go func() { c.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(clientTimeout):
			t.Fatal("closing a connection hangs")
		}
	}
	closeSoon(first)
	closeSoon(first) // a second Close must not free a second slot
	select {
	case c, ok := <-accepted:
		if !ok {
			t.Fatal("Accept failed after a slot was freed")
		}
		closeSoon(c)
	case <-time.After(clientTimeout):
		t.Fatal("Accept did not proceed once the first connection closed")
	}
	if len(l.slots) != 0 {
		t.Fatalf("%d slots still held after both connections closed", len(l.slots))
	}
}

func BenchmarkQueryA(b *testing.B) {
	_, addr := startServer(b, Options{Zone: testZone()}, false)
	c := &miekg.Client{Net: "udp", Timeout: clientTimeout}
	conn, err := c.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	m := new(miekg.Msg)
	m.SetQuestion("web.vm.", miekg.TypeA)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		m.Id = miekg.Id()
		resp, _, err := c.ExchangeWithConn(m, conn)
		if err != nil {
			b.Fatal(err)
		}
		if len(resp.Answer) != 1 {
			b.Fatalf("no answer: %v", resp)
		}
	}
}
