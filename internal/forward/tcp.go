package forward

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// tcpRelay accepts on a host listener and splices each connection to a
// fresh connection to the guest.
type tcpRelay struct {
	addr  netip.AddrPort // bound host address
	guest netip.AddrPort
	ln    *net.TCPListener
	lim   limits
	st    *stats
	log   *slog.Logger

	ctx    context.Context // canceled by close: aborts dials and the accept backoff
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	mu     sync.Mutex
	conns  map[*tcpConn]struct{}
	full   bool // connections are being refused for want of room
	closed bool
	once   sync.Once
}

type tcpConn struct {
	client *net.TCPConn
	guest  *net.TCPConn // nil while dialing
}

func startTCP(bind, guest netip.AddrPort, lim limits, st *stats, log *slog.Logger) (*tcpRelay, error) {
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(bind))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &tcpRelay{
		addr:   ln.Addr().(*net.TCPAddr).AddrPort(),
		guest:  guest,
		ln:     ln,
		lim:    lim,
		st:     st,
		log:    log.With("host", ln.Addr().String()),
		ctx:    ctx,
		cancel: cancel,
		conns:  make(map[*tcpConn]struct{}),
	}
	r.addr = netip.AddrPortFrom(r.addr.Addr().Unmap(), r.addr.Port())
	spawn(&r.wg, r.accept)
	return r, nil
}

func (r *tcpRelay) accept() {
	backoff := time.Duration(0)
	for {
		c, err := r.ln.AcceptTCP()
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or similar: back off as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			r.log.Warn("forward accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-r.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		tc := &tcpConn{client: c}
		r.mu.Lock()
		if r.closed || len(r.conns) >= r.lim.maxConns {
			warn := !r.closed && !r.full
			r.full = true
			r.mu.Unlock()
			if warn { // once until there is room again
				r.log.Warn("forward refusing connections: too many live ones", "max", r.lim.maxConns)
			}
			abort(c)
			continue
		}
		r.full = false
		r.conns[tc] = struct{}{}
		r.st.conns.Add(1)
		spawn(&r.wg, func() { r.serve(tc) })
		r.mu.Unlock()
	}
}

// abort closes c with a reset, so the client sees the connection refused
// rather than an empty reply.
func abort(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

func (r *tcpRelay) serve(tc *tcpConn) {
	defer r.forget(tc)

	d := net.Dialer{Timeout: r.lim.dialTimeout}
	gc, err := d.DialContext(r.ctx, "tcp", r.guest.String())
	if err != nil {
		if r.ctx.Err() == nil {
			r.log.Debug("forward could not reach the guest", "err", err)
		}
		abort(tc.client)
		return
	}
	g := gc.(*net.TCPConn)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		_ = g.Close()
		_ = tc.client.Close()
		return
	}
	tc.guest = g
	r.mu.Unlock()

	// One direction in a second goroutine, the other here. A direction that
	// ends at EOF half-closes its destination and lets the other run on;
	// one that ends in an error tears both connections down.
	var inner sync.WaitGroup
	spawn(&inner, func() { splice(g, tc.client, &r.st.in, tc) })
	splice(tc.client, g, &r.st.out, tc)
	inner.Wait()
	_ = tc.client.Close()
	_ = g.Close()
}

// splice copies src to dst until EOF (then half-closes dst) or an error
// (then closes both ends of tc), counting bytes as they go.
func splice(dst, src *net.TCPConn, n *atomic.Uint64, tc *tcpConn) {
	buf := make([]byte, 64<<10)
	var err error
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(uint64(nw))
			if werr != nil {
				err = werr
				break
			}
		}
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			break
		}
	}
	if err == nil {
		if dst.CloseWrite() == nil {
			return
		}
	}
	_ = tc.client.Close()
	_ = tc.guest.Close()
}

func (r *tcpRelay) forget(tc *tcpConn) {
	r.mu.Lock()
	delete(r.conns, tc)
	r.mu.Unlock()
	r.st.conns.Add(-1)
}

func (r *tcpRelay) close() {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed = true
		live := make([]*tcpConn, 0, len(r.conns))
		for tc := range r.conns {
			live = append(live, tc)
		}
		r.mu.Unlock()
		r.cancel()
		_ = r.ln.Close()
		for _, tc := range live {
			_ = tc.client.Close()
			r.mu.Lock()
			g := tc.guest
			r.mu.Unlock()
			if g != nil {
				_ = g.Close()
			}
		}
	})
	r.wg.Wait()
}
