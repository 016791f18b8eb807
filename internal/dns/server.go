package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	miekg "github.com/miekg/dns"
)

const (
	zoneApex  = "vm."
	recordTTL = 5 // seconds, for records and for negative answers

	defaultForwardTimeout = 2 * time.Second
	maxForwards           = 128 // forwarded queries in flight, per Server
	maxUpstreams          = 3   // upstreams tried per query, as glibc's MAXNS

	maxTCPConns    = 64 // open TCP connections, per listener
	maxTCPQueries  = 64 // queries on one TCP connection before it is closed
	tcpReadTimeout = 2 * time.Second
	tcpIdleTimeout = 5 * time.Second
	writeTimeout   = 2 * time.Second
	ednsUDPSize    = 1232 // the EDNS buffer size we advertise (DNS flag day 2020)
)

// UpstreamSource gives the resolvers that names outside the zone are
// forwarded to, as "ip:port" strings, most preferred first. It is asked on
// every forwarded query, so it must be cheap.
type UpstreamSource interface {
	Upstreams() []string
}

// Options configure a Server.
type Options struct {
	// Zone holds the records served; nil serves an empty zone.
	Zone *Zone
	// Upstreams gives the resolvers to forward to; nil means none, so
	// forwarded queries fail with SERVFAIL.
	Upstreams UpstreamSource
	// Logger gets listeners starting and failing, and per-query failures
	// at debug level only (clients must not be able to flood it); nil
	// discards it all.
	Logger *slog.Logger
	// ForwardTimeout bounds one forwarded query over all upstreams;
	// zero or less means 2 s.
	ForwardTimeout time.Duration
}

// Server answers the "vm." zone on the listeners opened with Listen.
type Server struct {
	zone       *Zone
	upstreams  UpstreamSource
	log        *slog.Logger
	fwdTimeout time.Duration
	fwdSlots   chan struct{}   // semaphore: forwarded queries in flight
	ctx        context.Context // cancelled by Close, aborts forwards
	cancel     context.CancelFunc
	self       atomic.Pointer[[]netip.AddrPort]

	mu        sync.Mutex // guards closed and listeners
	closed    bool
	listeners []*listener
}

// New returns a Server with no listeners; call Listen to serve.
func New(opts Options) *Server {
	s := &Server{
		zone:       opts.Zone,
		upstreams:  opts.Upstreams,
		log:        opts.Logger,
		fwdTimeout: opts.ForwardTimeout,
		fwdSlots:   make(chan struct{}, maxForwards),
	}
	if s.zone == nil {
		s.zone = NewZone()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.fwdTimeout <= 0 {
		s.fwdTimeout = defaultForwardTimeout
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.self.Store(new([]netip.AddrPort))
	return s
}

// Listen starts serving UDP and TCP on addr, "ip:port" (an empty ip means
// every address). It returns once both sockets are bound and served, so an
// address in use is reported at once. Port 0 picks a free port, the same
// for UDP and TCP; Addrs tells which. With forward, names outside the zone
// are forwarded to the upstreams; without, they are REFUSED.
func (s *Server) Listen(addr string, forward bool) error {
	pc, ln, err := BindPair(addr)
	if err != nil {
		return err
	}
	if err := s.ListenOn(pc, ln, forward); err != nil {
		pc.Close()
		ln.Close()
		return err
	}
	return nil
}

// ListenOn serves UDP on pc and TCP on ln, both bound to the same address
// by someone else (banger's root helper binds port 53 for a daemon that
// may not). With forward, as Listen.
func (s *Server) ListenOn(pc net.PacketConn, ln net.Listener, forward bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dns: server is closed")
	}
	addr := pc.LocalAddr().String()
	h := handler{s: s, forward: forward}
	l := &listener{
		addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(),
		udp: &miekg.Server{
			PacketConn:   pc,
			Handler:      h,
			UDPSize:      miekg.DefaultMsgSize,
			WriteTimeout: writeTimeout,
		},
		tcp: &miekg.Server{
			Listener:      newLimitListener(ln, maxTCPConns),
			Handler:       h,
			ReadTimeout:   tcpReadTimeout,
			WriteTimeout:  writeTimeout,
			IdleTimeout:   func() time.Duration { return tcpIdleTimeout },
			MaxTCPQueries: maxTCPQueries,
		},
	}
	l.addr = netip.AddrPortFrom(l.addr.Addr().Unmap(), l.addr.Port())
	if err := l.start(s.log); err != nil {
		return fmt.Errorf("dns: serve %s: %w", addr, err)
	}
	s.listeners = append(s.listeners, l)
	self := append(append([]netip.AddrPort(nil), *s.self.Load()...), l.addr)
	s.self.Store(&self)
	s.log.Info("dns listening", "addr", l.addr.String(), "forward", forward)
	return nil
}

// Addrs returns the bound address of each open listener, in Listen order.
// UDP and TCP share it.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	addrs := make([]netip.AddrPort, len(s.listeners))
	for i, l := range s.listeners {
		addrs[i] = l.addr
	}
	return addrs
}

// Close stops every listener, aborts forwarded queries in flight and waits
// for all of it to finish. Closing twice is harmless.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ls := s.listeners
	s.listeners = nil
	s.mu.Unlock()

	s.cancel()
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.stop())
	}
	return errors.Join(errs...)
}

// listener is one address served over UDP and TCP.
type listener struct {
	addr     netip.AddrPort
	udp, tcp *miekg.Server
	done     [2]chan struct{} // closed when each server's loop returns
}

func (l *listener) start(log *slog.Logger) error {
	for i, srv := range []*miekg.Server{l.udp, l.tcp} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		done := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() {
			defer close(done)
			if err := srv.ActivateAndServe(); err != nil {
				log.Error("dns listener stopped", "addr", l.addr.String(), "err", err)
				failed <- err
			}
		}()
		select {
		case <-started:
			l.done[i] = done
		case err := <-failed:
			if i == 1 {
				l.udp.Shutdown()
				<-l.done[0]
			}
			l.udp.PacketConn.Close()
			l.tcp.Listener.Close()
			return err
		}
	}
	return nil
}

func (l *listener) stop() error {
	var errs []error
	for i, srv := range []*miekg.Server{l.udp, l.tcp} {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("dns: stop %s: %w", l.addr, err))
		}
		<-l.done[i]
	}
	return errors.Join(errs...)
}

// BindPair binds UDP and TCP on addr. With port 0 the TCP socket takes the
// port the kernel chose for UDP, retrying a few times should it be taken.
func BindPair(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host != "" {
		_, err = netip.ParseAddr(host) // a name could resolve differently for UDP and TCP
	}
	if err != nil {
		return nil, nil, fmt.Errorf("dns: bad listen address %q, want ip:port: %w", addr, err)
	}
	tries := 1
	if p, err := strconv.Atoi(port); err == nil && p == 0 {
		tries = 8
	}
	for try := 1; ; try++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, listenError(addr, "udp", err)
		}
		udpPort := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(udpPort)))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if try >= tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, listenError(addr, "tcp", err)
		}
	}
}

func listenError(addr, network string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("dns: %s (%s) is already in use, probably by another DNS server; "+
			"choose a free address (for the host listener, set dns_listen in the config): %w", addr, network, err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("dns: may not listen on %s (%s); ports below 1024 need CAP_NET_BIND_SERVICE: %w",
			addr, network, err)
	default:
		return fmt.Errorf("dns: listen on %s (%s): %w", addr, network, err)
	}
}

// limitListener accepts at most n connections open at once; Accept waits
// for one to close.
type limitListener struct {
	net.Listener
	slots  chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
