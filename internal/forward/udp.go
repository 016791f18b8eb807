package forward

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxDatagram is the largest UDP payload over IPv4.
const maxDatagram = 65535

// udpRelay reads datagrams on one host socket and relays each client's
// through that client's session: a socket connected to the guest, whose
// replies go back to the client from the host socket.
type udpRelay struct {
	addr  netip.AddrPort
	guest netip.AddrPort
	sock  *net.UDPConn
	lim   limits
	st    *stats
	log   *slog.Logger
	epoch time.Time // sessions' activity clock counts from here (monotonic)
	wg    sync.WaitGroup

	mu       sync.Mutex // guards sessions and closed; held while writing to a session
	sessions map[netip.AddrPort]*udpSession
	closed   bool
	once     sync.Once
}

type udpSession struct {
	client netip.AddrPort
	conn   *net.UDPConn // connected to the guest
	last   atomic.Int64 // last traffic either way, in ns since epoch
}

func startUDP(bind, guest netip.AddrPort, lim limits, st *stats, log *slog.Logger) (*udpRelay, error) {
	sock, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(bind))
	if err != nil {
		return nil, err
	}
	a := sock.LocalAddr().(*net.UDPAddr).AddrPort()
	r := &udpRelay{
		addr:     netip.AddrPortFrom(a.Addr().Unmap(), a.Port()),
		guest:    guest,
		sock:     sock,
		lim:      lim,
		st:       st,
		log:      log.With("host", sock.LocalAddr().String()),
		epoch:    time.Now(),
		sessions: make(map[netip.AddrPort]*udpSession),
	}
	spawn(&r.wg, r.serve)
	return r, nil
}

func (r *udpRelay) now() int64 { return int64(time.Since(r.epoch)) }

func (r *udpRelay) serve() {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := r.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Nothing else is expected on an unconnected socket; do not spin.
			r.log.Warn("forward read failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		r.toGuest(from, buf[:n])
	}
}

// toGuest sends one client datagram to the guest through the client's
// session, opening one if there is room.
func (r *udpRelay) toGuest(from netip.AddrPort, pkt []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	s := r.sessions[from]
	if s == nil {
		if len(r.sessions) >= r.lim.maxSessions {
			r.log.Debug("forward dropped a datagram: too many live sessions", "client", from.String(), "max", r.lim.maxSessions)
			return
		}
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.guest))
		if err != nil {
			r.log.Debug("forward could not open a session to the guest", "err", err)
			return
		}
		s = &udpSession{client: from, conn: c}
		s.last.Store(r.now())
		r.sessions[from] = s
		r.st.conns.Add(1)
		spawn(&r.wg, func() { r.fromGuest(s) })
	}
	s.last.Store(r.now())
	_, err := s.conn.Write(pkt)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// The error of an earlier datagram (the guest port was closed);
		// this one was not sent.
		_, err = s.conn.Write(pkt)
	}
	if err == nil {
		r.st.in.Add(uint64(len(pkt)))
	}
}

// fromGuest relays the guest's replies in session s back to its client
// until s has been idle for the idle timeout or the relay closes.
func (r *udpRelay) fromGuest(s *udpSession) {
	buf := make([]byte, maxDatagram)
	for {
		_ = s.conn.SetReadDeadline(r.epoch.Add(time.Duration(s.last.Load()) + r.lim.udpIdle))
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				if r.expire(s, false) {
					return
				}
			case errors.Is(err, syscall.ECONNREFUSED):
				// The guest port is closed; the client will time out.
			default:
				r.expire(s, true)
				return
			}
			continue
		}
		s.last.Store(r.now())
		if _, err := r.sock.WriteToUDPAddrPort(buf[:n], s.client); err == nil {
			r.st.out.Add(uint64(n))
		}
	}
}

// expire ends s if it has been idle long enough (or at once if force) and
// reports whether it did.
func (r *udpRelay) expire(s *udpSession, force bool) bool {
	r.mu.Lock()
	if !force && r.now()-s.last.Load() < int64(r.lim.udpIdle) {
		r.mu.Unlock()
		return false
	}
	if r.sessions[s.client] == s {
		delete(r.sessions, s.client)
		r.st.conns.Add(-1)
	}
	r.mu.Unlock()
	_ = s.conn.Close()
	return true
}

func (r *udpRelay) close() {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed = true
		live := make([]*udpSession, 0, len(r.sessions))
		for _, s := range r.sessions {
			live = append(live, s)
		}
		clear(r.sessions)
		r.st.conns.Add(-int64(len(live)))
		r.mu.Unlock()
		_ = r.sock.Close()
		for _, s := range live {
			_ = s.conn.Close()
		}
	})
	r.wg.Wait()
}
