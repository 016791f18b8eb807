package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// transports are the ways a test gets a connected pair of streams: host end
// first, agent end second.
var transports = map[string]func(t *testing.T) (net.Conn, net.Conn){
	"pipe":       func(t *testing.T) (net.Conn, net.Conn) { return net.Pipe() },
	"socketpair": socketpair,
	"unix":       unixPair,
}

// socketpair returns both ends of an AF_UNIX socketpair as net.Conns.
func socketpair(t *testing.T) (net.Conn, net.Conn) {
	a, b := socketpairFiles(t)
	ca, err := net.FileConn(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := net.FileConn(b)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	return ca, cb
}

// socketpairFiles returns both ends of an AF_UNIX socketpair as pollable
// *os.Files, the way a virtio-serial port opened with os.OpenFile is one.
func socketpairFiles(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "sp0"), os.NewFile(uintptr(fds[1]), "sp1")
}

// unixPair connects over a real unix socket in a temporary directory.
func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	host, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return host, <-accepted
}

// fakeAgent reads frames from conn and lets handle answer each one with
// whatever bytes it likes; it stops when conn fails.
func fakeAgent(t *testing.T, conn net.Conn, handle func(w io.Writer, f *frame)) {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	go func() {
		fr := newFrameReader(conn)
		for {
			p, err := fr.next()
			if err != nil {
				return
			}
			var f frame
			if json.Unmarshal(p, &f) != nil {
				continue
			}
			handle(conn, &f)
		}
	}()
}

func helloAnswer(t testing.TB, f *frame, version int) []byte {
	return mustFrame(t, &frame{Type: typeHello, Version: version, AgentVersion: "fake-1.0", Nonce: f.Nonce})
}

// answerHello is a handle for fakeAgent that only answers hellos.
func answerHello(t *testing.T) func(io.Writer, *frame) {
	return func(w io.Writer, f *frame) {
		if f.Type == typeHello {
			w.Write(helloAnswer(t, f, ProtocolVersion))
		}
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			host, peer := pair(t)
			var hello atomic.Pointer[frame]
			fakeAgent(t, peer, func(w io.Writer, f *frame) {
				hello.Store(f)
				answerHello(t)(w, f)
			})
			c, err := NewClient(ctxFor(t, 5*time.Second), host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.AgentVersion() != "fake-1.0" || c.Protocol() != ProtocolVersion {
				t.Errorf("agent %q protocol %d", c.AgentVersion(), c.Protocol())
			}
			h := hello.Load()
			if h.Version != ProtocolVersion || h.MinVersion != MinProtocolVersion || len(h.Nonce) < 16 {
				t.Errorf("hello sent: %+v", h)
			}
		})
	}
}

func TestHandshakeVersionRefused(t *testing.T) {
	for _, v := range []int{0, ProtocolVersion + 2} {
		host, peer := transports["socketpair"](t)
		fakeAgent(t, peer, func(w io.Writer, f *frame) {
			w.Write(mustFrame(t, &frame{Type: typeHello, Version: v, AgentVersion: "v3.0.0", Nonce: f.Nonce}))
		})
		_, err := NewClient(ctxFor(t, 5*time.Second), host)
		ve, ok := errors.AsType[*VersionError](err)
		if !ok || ve.Agent != v {
			t.Fatalf("version %d: err = %v, want a VersionError", v, err)
		}
		want := "the guest agent (v3.0.0) speaks protocol " + strconv.Itoa(v) + ", this banger speaks 1: rebuild the image or update banger"
		if err.Error() != want {
			t.Errorf("message:\n got  %s\n want %s", err, want)
		}
	}
	// The range form, for when this package speaks several versions.
	if got := (&VersionError{Agent: 3}).Error(); !strings.HasPrefix(got, "the guest agent speaks protocol 3, this banger speaks ") ||
		!strings.HasSuffix(got, ": rebuild the image or update banger") {
		t.Errorf("message %q", got)
	}
}

// TestHandshakeForeignNonce: a hello answering someone else's nonce (left
// in the stream by an earlier connection) is not accepted; the client sends
// a new hello at once rather than waiting out helloRetry.
func TestHandshakeForeignNonce(t *testing.T) {
	host, peer := transports["socketpair"](t)
	var hellos atomic.Int32
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		if f.Type != typeHello {
			return
		}
		if hellos.Add(1) == 1 {
			// Our answer to the first hello "got lost"; a stale one came.
			w.Write(mustFrame(t, &frame{Type: typeHello, Version: ProtocolVersion, Nonce: "stale-nonce"}))
			return
		}
		w.Write(helloAnswer(t, f, ProtocolVersion))
	})
	start := time.Now()
	c, err := NewClient(ctxFor(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if hellos.Load() < 2 {
		t.Errorf("%d hellos sent, want a retry", hellos.Load())
	}
	if el := time.Since(start); el > helloRetry {
		t.Errorf("handshake took %s: the retry waited for the timer", el)
	}
}

// TestHandshakeLostHello: a hello that gets no answer is sent again.
func TestHandshakeLostHello(t *testing.T) {
	host, peer := transports["socketpair"](t)
	var hellos atomic.Int32
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		if f.Type == typeHello && hellos.Add(1) > 1 {
			w.Write(helloAnswer(t, f, ProtocolVersion))
		}
	})
	c, err := NewClient(ctxFor(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if hellos.Load() != 2 {
		t.Errorf("%d hellos, want 2", hellos.Load())
	}
}

// TestHandshakeGarbage: garbage, an oversized length and stale frames before
// the hello answer are skipped.
func TestHandshakeGarbage(t *testing.T) {
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			host, peer := pair(t)
			fakeAgent(t, peer, func(w io.Writer, f *frame) {
				if f.Type != typeHello {
					return
				}
				w.Write([]byte{0xFF, 0xFF, 0xFF, 0xFF})
				w.Write([]byte("\x00\x00\x10\x00{\"type\":\"respo")) // truncated
				w.Write(mustFrame(t, &frame{Type: typeResponse, ID: 12345, Result: []byte("1")}))
				w.Write([]byte("[    0.000000] Linux version 6.1\r\n"))
				w.Write(helloAnswer(t, f, ProtocolVersion))
			})
			c, err := NewClient(ctxFor(t, 5*time.Second), host)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if c.discarded() == 0 || c.stale.Load() == 0 {
				t.Errorf("discarded %d bytes, %d stale frames: garbage not seen", c.discarded(), c.stale.Load())
			}
		})
	}
}

// TestHandshakeNoAnswer: an agent that never answers fails the dial by its
// context's deadline.
func TestHandshakeNoAnswer(t *testing.T) {
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			host, peer := pair(t)
			fakeAgent(t, peer, func(io.Writer, *frame) {})
			start := time.Now()
			_, err := NewClient(ctxFor(t, 300*time.Millisecond), host)
			el := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer") {
				t.Errorf("err = %v", err)
			}
			if el > 2*time.Second {
				t.Errorf("took %s for a 300ms deadline", el)
			}
		})
	}
}

// TestHandshakeNoReader: a peer that never reads (a net.Pipe write blocks
// until read) fails the dial by its deadline too.
func TestHandshakeNoReader(t *testing.T) {
	host, peer := net.Pipe()
	defer peer.Close()
	start := time.Now()
	_, err := NewClient(ctxFor(t, 300*time.Millisecond), host)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("err = %v after %s", err, time.Since(start))
	}
}

// healthAgent answers hellos and requests like a real agent would, with
// canned results.
func healthAgent(t *testing.T) func(io.Writer, *frame) {
	return func(w io.Writer, f *frame) {
		switch f.Type {
		case typeHello:
			w.Write(helloAnswer(t, f, ProtocolVersion))
		case typeRequest:
			out := &frame{Type: typeResponse, ID: f.ID}
			switch f.Method {
			case MethodHealth:
				out.Result, _ = json.Marshal(Health{AgentVersion: "fake-1.0", Hostname: "h", Disks: []Disk{}})
			case MethodPorts:
				out.Result, _ = json.Marshal([]Port{{Proto: "tcp", Addr: "0.0.0.0", Port: 22}})
			default:
				out.Error = &RemoteError{Code: CodeUnknownMethod, Message: "unknown method " + f.Method}
			}
			w.Write(mustFrame(t, out))
		}
	}
}

func TestCalls(t *testing.T) {
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			host, peer := pair(t)
			fakeAgent(t, peer, healthAgent(t))
			ctx := ctxFor(t, 5*time.Second)
			c, err := NewClient(ctx, host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			h, err := c.Health(ctx)
			if err != nil || h.Hostname != "h" {
				t.Errorf("Health = %+v, %v", h, err)
			}
			p, err := c.Ports(ctx)
			if err != nil || len(p) != 1 || p[0].Port != 22 {
				t.Errorf("Ports = %+v, %v", p, err)
			}
			var x any
			err = c.call(ctx, "reboot", &x)
			re, ok := errors.AsType[*RemoteError](err)
			if !ok || re.Code != CodeUnknownMethod {
				t.Errorf("unknown method: err = %v", err)
			}
		})
	}
}

// TestStaleResponse: responses with ids nobody waits for (an earlier
// connection's, or a call that gave up) are dropped, not delivered.
func TestStaleResponse(t *testing.T) {
	host, peer := transports["socketpair"](t)
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		switch f.Type {
		case typeHello:
			w.Write(helloAnswer(t, f, ProtocolVersion))
		case typeRequest:
			bad, _ := json.Marshal(Health{Hostname: "STALE"})
			w.Write(mustFrame(t, &frame{Type: typeResponse, ID: f.ID - 1, Result: bad}))
			w.Write(mustFrame(t, &frame{Type: typeResponse, ID: 1, Result: bad}))
			w.Write(mustFrame(t, &frame{Type: typeHello, Version: 99, Nonce: "old"}))
			w.Write([]byte("\x00\x00\x00\x05{junk"))
			good, _ := json.Marshal(Health{Hostname: "fresh"})
			w.Write(mustFrame(t, &frame{Type: typeResponse, ID: f.ID, Result: good}))
		}
	})
	ctx := ctxFor(t, 5*time.Second)
	c, err := NewClient(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.Health(ctx)
	if err != nil || h.Hostname != "fresh" {
		t.Fatalf("Health = %+v, %v", h, err)
	}
	if n := c.stale.Load(); n < 3 {
		t.Errorf("%d stale frames counted, want 3", n)
	}
}

// TestCallNoAnswer: an agent that shakes hands and then never answers fails
// the call at its deadline; its late answer is then stale, and the client
// keeps working.
func TestCallNoAnswer(t *testing.T) {
	host, peer := transports["socketpair"](t)
	var hold sync.Mutex
	var held []*frame
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		switch {
		case f.Type == typeHello:
			w.Write(helloAnswer(t, f, ProtocolVersion))
		case f.Type == typeRequest && f.Method == MethodHealth:
			hold.Lock()
			held = append(held, f)
			hold.Unlock()
		case f.Type == typeRequest:
			// Now answer the held health request, late, then this one.
			hold.Lock()
			for _, h := range held {
				w.Write(mustFrame(t, &frame{Type: typeResponse, ID: h.ID, Result: []byte(`{"hostname":"late"}`)}))
			}
			hold.Unlock()
			w.Write(mustFrame(t, &frame{Type: typeResponse, ID: f.ID, Result: []byte(`[]`)}))
		}
	})
	c, err := NewClient(ctxFor(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { _, err := c.Health(ctxFor(t, 200*time.Millisecond)); errc <- err }()
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("Health ignored its 200ms deadline")
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("Health = %v after %s", err, time.Since(start))
	}
	p, err := c.Ports(ctxFor(t, 5*time.Second))
	if err != nil || len(p) != 0 {
		t.Fatalf("Ports after a timeout = %v, %v", p, err)
	}
	if c.stale.Load() != 1 {
		t.Errorf("stale = %d, want the late answer", c.stale.Load())
	}
}

// TestGarbageFlood: an agent that floods garbage makes the client give up
// with a protocol error, quickly and without holding more than a frame.
func TestGarbageFlood(t *testing.T) {
	host, peer := transports["socketpair"](t)
	var flooding atomic.Bool
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		if f.Type == typeHello {
			w.Write(helloAnswer(t, f, ProtocolVersion))
			return
		}
		if flooding.Swap(true) {
			return
		}
		go func() {
			junk := []byte(strings.Repeat("\x00\x0f\xff\xff{AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 2000))
			for {
				if _, err := w.Write(junk); err != nil {
					return
				}
			}
		}()
	})
	ctx := ctxFor(t, 5*time.Second)
	c, err := NewClient(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Health(ctxFor(t, 30*time.Second))
	if err == nil || !strings.Contains(err.Error(), "protocol error") {
		t.Errorf("err = %v, want a protocol error", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("took %s", el)
	}
	if cap(c.fr.buf) > headerSize+MaxFrameSize {
		t.Errorf("buffer %d", cap(c.fr.buf))
	}
	// Later calls fail at once.
	if _, err := c.Ports(ctx); err == nil {
		t.Error("Ports on a failed client succeeded")
	}
}

// TestOversizedLengthAfterHandshake: the agent's answer comes after a
// 0xFFFFFFFF header and still arrives.
func TestOversizedLengthAfterHandshake(t *testing.T) {
	host, peer := transports["socketpair"](t)
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		if f.Type == typeRequest {
			w.Write(binary.BigEndian.AppendUint32(nil, 0xFFFFFFFF))
			w.Write([]byte("{{{{"))
		}
		healthAgent(t)(w, f)
	})
	ctx := ctxFor(t, 5*time.Second)
	c, err := NewClient(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestConnectionLost(t *testing.T) {
	host, peer := transports["socketpair"](t)
	fakeAgent(t, peer, func(w io.Writer, f *frame) {
		if f.Type == typeHello {
			w.Write(helloAnswer(t, f, ProtocolVersion))
			return
		}
		peer.Close()
	})
	ctx := ctxFor(t, 5*time.Second)
	c, err := NewClient(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Errorf("err = %v", err)
	}
}

func TestCloseFailsPendingCall(t *testing.T) {
	host, peer := transports["socketpair"](t)
	fakeAgent(t, peer, answerHello(t))
	c, err := NewClient(ctxFor(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := c.Health(ctxFor(t, 30*time.Second)); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("err = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the call")
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestServerResync: the real server skips garbage and an oversized length
// and answers the request after them, and answers hellos and requests in
// any order.
func TestServerResync(t *testing.T) {
	host, peer := transports["socketpair"](t)
	s := &Server{AgentVersion: "v1-test", ProcRoot: fakeProc(t), Statfs: fakeStatfs, Logger: discardLogger()}
	ctx := ctxFor(t, 10*time.Second)
	go s.ServeConn(ctx, peer)
	defer peer.Close()
	host.Write([]byte{0xFF, 0xFF, 0xFF, 0xFF})
	host.Write([]byte("garbage \x00\x00\x00\x09{\"type\":\"re")) // truncated by the next frame
	host.Write(mustFrame(t, &frame{Type: typeRequest, ID: 77, Method: MethodHealth}))
	host.Write(mustFrame(t, &frame{Type: "future-type", ID: 78}))
	// Valid JSON that is not a message.
	for _, p := range []string{`{"type":5}`, `{"id":"x"}`, `{"type":"request","id":-1}`} {
		host.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(p))), p...))
	}
	host.Write(mustFrame(t, &frame{Type: typeHello, Version: ProtocolVersion, Nonce: "n"}))
	host.SetReadDeadline(time.Now().Add(5 * time.Second))
	fr := newFrameReader(host)
	var got []frame
	for range 2 {
		p, err := fr.next()
		if err != nil {
			t.Fatal(err)
		}
		var f frame
		json.Unmarshal(p, &f)
		got = append(got, f)
	}
	if got[0].Type != typeResponse || got[0].ID != 77 || got[0].Error != nil {
		t.Errorf("first answer %+v", got[0])
	}
	var h Health
	if err := json.Unmarshal(got[0].Result, &h); err != nil || h.Hostname != "dev-vm" {
		t.Errorf("health %+v, %v", h, err)
	}
	if got[1].Type != typeHello || got[1].Nonce != "n" || got[1].Version != ProtocolVersion || got[1].AgentVersion != "v1-test" {
		t.Errorf("hello answer %+v", got[1])
	}
}

func TestNegotiate(t *testing.T) {
	cases := []struct{ min, max, want int }{
		{1, 1, 1},
		{0, 1, 1}, // no min_version: the host speaks only its version
		{1, 5, ProtocolVersion},
		{3, 5, ProtocolVersion}, // nothing shared: answer ours, host refuses
		{0, 0, ProtocolVersion},
	}
	for _, tc := range cases {
		if got := negotiate(tc.min, tc.max); got != tc.want {
			t.Errorf("negotiate(%d, %d) = %d, want %d", tc.min, tc.max, got, tc.want)
		}
	}
}

func TestConcurrentCalls(t *testing.T) {
	host, peer := transports["unix"](t)
	s := &Server{AgentVersion: "v1-test", ProcRoot: fakeProc(t), Statfs: fakeStatfs, Logger: discardLogger()}
	ctx := ctxFor(t, 20*time.Second)
	go s.ServeConn(ctx, peer)
	defer peer.Close()
	c, err := NewClient(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if i%2 == 0 {
				if h, err := c.Health(ctx); err != nil || h.BootID == "" {
					t.Errorf("Health = %+v, %v", h, err)
				}
			} else if p, err := c.Ports(ctx); err != nil || len(p) == 0 {
				t.Errorf("Ports = %v, %v", p, err)
			}
		})
	}
	wg.Wait()
}

func TestWaitHealthy(t *testing.T) {
	var attempts atomic.Int32
	dial := func(ctx context.Context) (*Client, error) {
		if attempts.Add(1) < 3 {
			return nil, errors.New("dial agent.sock: connection refused")
		}
		host, peer := socketpair(t)
		fakeAgent(t, peer, healthAgent(t))
		return NewClient(ctx, host)
	}
	h, err := WaitHealthy(ctxFor(t, 10*time.Second), dial, 10*time.Millisecond)
	if err != nil || h.Hostname != "h" || attempts.Load() != 3 {
		t.Errorf("WaitHealthy = %+v, %v after %d attempts", h, err, attempts.Load())
	}
}

func TestWaitHealthyTimeout(t *testing.T) {
	var attempts atomic.Int32
	dial := func(ctx context.Context) (*Client, error) {
		attempts.Add(1)
		return nil, errors.New("dial agent.sock: connection refused")
	}
	start := time.Now()
	_, err := WaitHealthy(ctxFor(t, 200*time.Millisecond), dial, 20*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last attempt: dial agent.sock: connection refused") {
		t.Errorf("err = %v", err)
	}
	if attempts.Load() < 3 || time.Since(start) > 2*time.Second {
		t.Errorf("%d attempts in %s", attempts.Load(), time.Since(start))
	}
}

func TestWaitHealthyVersionRefused(t *testing.T) {
	var attempts atomic.Int32
	dial := func(ctx context.Context) (*Client, error) {
		attempts.Add(1)
		host, peer := socketpair(t)
		fakeAgent(t, peer, func(w io.Writer, f *frame) { w.Write(helloAnswer(t, f, 7)) })
		return NewClient(ctx, host)
	}
	_, err := WaitHealthy(ctxFor(t, 10*time.Second), dial, 10*time.Millisecond)
	if _, ok := errors.AsType[*VersionError](err); !ok || attempts.Load() != 1 {
		t.Errorf("err = %v after %d attempts, want an immediate VersionError", err, attempts.Load())
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
