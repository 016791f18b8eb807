package dns

import (
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
)

type staticUpstreams []string

func (u staticUpstreams) Upstreams() []string { return u }

// stubCounts counts the queries a stub upstream got.
type stubCounts struct {
	udp, tcp atomic.Int32
	lastID   atomic.Uint32 // the message id of the last query
}

// startStub runs an upstream resolver on a free loopback port, UDP and TCP.
// reply builds its answer to r; nil means stay silent.
func startStub(t *testing.T, reply func(r *miekg.Msg, tcp bool) *miekg.Msg) (string, *stubCounts) {
	t.Helper()
	pc, ln, err := BindPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counts := new(stubCounts)
	for _, srv := range []*miekg.Server{{PacketConn: pc}, {Listener: ln}} {
		tcp := srv.Listener != nil
		srv.Handler = miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) {
			counts.lastID.Store(uint32(r.Id))
			if tcp {
				counts.tcp.Add(1)
			} else {
				counts.udp.Add(1)
			}
			if m := reply(r, tcp); m != nil {
				w.WriteMsg(m)
			}
		})
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String(), counts
}

// answerWith answers every question with one A record, TTL 42.
func answerWith(ip string) func(*miekg.Msg, bool) *miekg.Msg {
	return func(r *miekg.Msg, _ bool) *miekg.Msg {
		m := new(miekg.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		rr, err := miekg.NewRR(fmt.Sprintf("%s 42 IN A %s", r.Question[0].Name, ip))
		if err != nil {
			panic(err)
		}
		m.Answer = []miekg.RR{rr}
		return m
	}
}

func rcodeOnly(rcode int) func(*miekg.Msg, bool) *miekg.Msg {
	return func(r *miekg.Msg, _ bool) *miekg.Msg { return new(miekg.Msg).SetRcode(r, rcode) }
}

// closedPort returns a loopback address nobody listens on: queries to it
// fail at once with "connection refused".
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// blackHole returns a loopback UDP socket that reads queries and never
// answers.
func blackHole(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func TestForwardsOtherNames(t *testing.T) {
	up, counts := startStub(t, answerWith("192.0.2.1"))
	_, addr := startServer(t, Options{Zone: testZone(), Upstreams: staticUpstreams{up}}, true)
	ownIDs := 0 // queries the upstream saw with the client's id
	for _, network := range []string{"udp", "tcp", "udp", "tcp"} {
		m := new(miekg.Msg)
		m.SetQuestion("Example.COM.", miekg.TypeA)
		m.Id = 4242
		resp := send(t, network, addr, m)
		if resp.Id != 4242 {
			t.Fatalf("reply id %d, want the query's 4242", resp.Id)
		}
		if counts.lastID.Load() == 4242 {
			ownIDs++
		}
		wantA(t, resp, "Example.COM.", "192.0.2.1")
		if ttl := resp.Answer[0].Header().Ttl; ttl != 42 {
			t.Fatalf("TTL %d: not the upstream's answer", ttl)
		}
		if resp.Authoritative {
			t.Fatal("a forwarded answer must not be authoritative")
		}
	}
	if ownIDs == 4 {
		t.Fatal("the upstream always saw the client's message id; forwards should use their own")
	}
	if got := counts.udp.Load(); got != 4 {
		t.Fatalf("upstream got %d UDP queries, want 4 (forwarding is always UDP first)", got)
	}
	// The zone is still answered locally.
	wantA(t, query(t, "udp", addr, "web.vm.", miekg.TypeA), "web.vm.", "172.30.0.2")
	if got := counts.udp.Load(); got != 4 {
		t.Fatal("a zone query reached the upstream")
	}
}

func TestForwardRetriesTruncatedOverTCP(t *testing.T) {
	// Over UDP the upstream only says "truncated"; over TCP it answers 40
	// records, more than fits a plain 512-byte UDP reply.
	up, counts := startStub(t, func(r *miekg.Msg, tcp bool) *miekg.Msg {
		m := new(miekg.Msg)
		m.SetReply(r)
		if !tcp {
			m.Truncated = true
			return m
		}
		for i := range 40 {
			rr, _ := miekg.NewRR(fmt.Sprintf("%s 42 IN A 192.0.2.%d", r.Question[0].Name, i+1))
			m.Answer = append(m.Answer, rr)
		}
		return m
	})
	_, addr := startServer(t, Options{Upstreams: staticUpstreams{up}}, true)

	resp := query(t, "tcp", addr, "big.example.", miekg.TypeA)
	wantRcode(t, resp, miekg.RcodeSuccess)
	if len(resp.Answer) != 40 || resp.Truncated {
		t.Fatalf("over TCP want all 40 records, got %d (TC=%v)", len(resp.Answer), resp.Truncated)
	}
	if counts.udp.Load() != 1 || counts.tcp.Load() != 1 {
		t.Fatalf("upstream got %d UDP and %d TCP queries, want 1 and 1", counts.udp.Load(), counts.tcp.Load())
	}

	// A plain UDP client gets what fits, marked truncated, so it retries over TCP.
	resp = query(t, "udp", addr, "big.example.", miekg.TypeA)
	if !resp.Truncated || len(resp.Answer) >= 40 {
		t.Fatalf("over UDP want a truncated reply, got TC=%v with %d records", resp.Truncated, len(resp.Answer))
	}
	resp.Compress = true // as it was sent
	if resp.Len() > miekg.MinMsgSize {
		t.Fatalf("UDP reply of %d bytes to a client without EDNS", resp.Len())
	}
}

func TestForwardTriesUpstreamsInOrder(t *testing.T) {
	failing, failCounts := startStub(t, rcodeOnly(miekg.RcodeServerFailure))
	good, goodCounts := startStub(t, answerWith("192.0.2.5"))
	_, addr := startServer(t, Options{
		Upstreams:      staticUpstreams{closedPort(t), failing, good},
		ForwardTimeout: time.Second,
	}, true)
	wantA(t, query(t, "udp", addr, "example.org.", miekg.TypeA), "example.org.", "192.0.2.5")
	if failCounts.udp.Load() != 1 || goodCounts.udp.Load() != 1 {
		t.Fatalf("want each live upstream asked once, got failing=%d good=%d",
			failCounts.udp.Load(), goodCounts.udp.Load())
	}

	// The first that answers well is the last asked.
	_, addr = startServer(t, Options{Upstreams: staticUpstreams{good, failing}}, true)
	wantA(t, query(t, "udp", addr, "example.org.", miekg.TypeA), "example.org.", "192.0.2.5")
	if failCounts.udp.Load() != 1 {
		t.Fatal("an upstream after a good answer was asked")
	}

	// A silent upstream does not use up the time of the ones after it.
	hole := blackHole(t)
	_, addr = startServer(t, Options{
		Upstreams:      staticUpstreams{hole.LocalAddr().String(), good},
		ForwardTimeout: 300 * time.Millisecond,
	}, true)
	wantA(t, query(t, "udp", addr, "example.org.", miekg.TypeA), "example.org.", "192.0.2.5")

	// When all answer badly, the client gets an upstream's answer.
	refusing, _ := startStub(t, rcodeOnly(miekg.RcodeRefused))
	_, addr = startServer(t, Options{Upstreams: staticUpstreams{failing, refusing}}, true)
	wantRcode(t, query(t, "udp", addr, "example.org.", miekg.TypeA), miekg.RcodeRefused)
}

func TestForwardFailsWithinTheTimeout(t *testing.T) {
	const timeout = time.Second
	hole := blackHole(t)
	for _, tc := range []struct {
		name     string
		ups      UpstreamSource
		min, max time.Duration
	}{
		{"no upstream source", nil, 0, 250 * time.Millisecond},
		{"no upstreams", staticUpstreams{}, 0, 250 * time.Millisecond},
		{"upstreams down", staticUpstreams{closedPort(t), closedPort(t)}, 0, timeout},
		{"upstream silent", staticUpstreams{hole.LocalAddr().String()}, timeout * 9 / 10, timeout + 1500*time.Millisecond},
		{"silent then down", staticUpstreams{hole.LocalAddr().String(), closedPort(t)}, timeout * 4 / 10, timeout + 1500*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, Options{Upstreams: tc.ups, ForwardTimeout: timeout}, true)
			start := time.Now()
			resp := query(t, "udp", addr, "example.net.", miekg.TypeA)
			elapsed := time.Since(start)
			wantRcode(t, resp, miekg.RcodeServerFailure)
			if !resp.RecursionAvailable {
				t.Fatal("a forwarding listener's SERVFAIL should set RA")
			}
			if elapsed < tc.min || elapsed > tc.max {
				t.Fatalf("SERVFAIL after %v, want between %v and %v", elapsed, tc.min, tc.max)
			}
		})
	}
}

func TestForwardSkipsOwnListeners(t *testing.T) {
	good, _ := startStub(t, answerWith("192.0.2.8"))
	ups := &selfAndOthers{others: []string{good, "192.0.2.50:53", "192.0.2.51:53", "192.0.2.52:53"}}
	s, addr := startServer(t, Options{Upstreams: ups}, true)
	ups.self.Store(&addr)

	if got, want := s.upstreamList(), []string{good, "192.0.2.50:53", "192.0.2.51:53"}; !slices.Equal(got, want) {
		t.Fatalf("upstreamList() = %v, want %v (without %s, at most %d)", got, want, addr, maxUpstreams)
	}
	wantA(t, query(t, "udp", addr, "example.org.", miekg.TypeA), "example.org.", "192.0.2.8")
}

// selfAndOthers lists the server's own address first; the test sets it
// once the server is up.
type selfAndOthers struct {
	self   atomic.Pointer[string]
	others []string
}

func (u *selfAndOthers) Upstreams() []string {
	var self []string
	if p := u.self.Load(); p != nil {
		self = []string{*p}
	}
	return append(self, u.others...)
}

func TestCloseAbortsForwards(t *testing.T) {
	hole := blackHole(t)
	s := New(Options{Upstreams: staticUpstreams{hole.LocalAddr().String()}, ForwardTimeout: 10 * time.Second})
	if err := s.Listen("127.0.0.1:0", true); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0].String()
	go func() {
		c := &miekg.Client{Timeout: 10 * time.Second}
		m := new(miekg.Msg)
		m.SetQuestion("example.net.", miekg.TypeA)
		c.Exchange(m, addr) // fails once the server is gone
	}()
	// Wait until the forward is in flight.
	hole.SetReadDeadline(time.Now().Add(clientTimeout))
	if _, _, err := hole.ReadFrom(make([]byte, 512)); err != nil {
		t.Fatalf("the query was not forwarded: %v", err)
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v with a forward in flight", d)
	}
}
