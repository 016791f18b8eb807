package forward

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Proto is the transport a forward carries.
type Proto string

const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// ParseProto accepts "tcp" or "udp" (any case); "" means tcp.
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "", "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return "", fmt.Errorf("protocol %q: want tcp or udp", s)
}

// Spec says what to forward: GuestAddr (the VM's IP and a port in it) to
// 127.0.0.1:HostPort on the host.
type Spec struct {
	VM        string         // the VM's name; forwards are grouped and ended by it
	GuestAddr netip.AddrPort // the VM's IP and the guest port
	Proto     Proto          // TCP or UDP
	HostPort  uint16         // 0: the kernel picks a free port
	Auto      bool           // made by auto-forward, not asked for by a user
}

// Forward is a snapshot of one live forward.
type Forward struct {
	Spec
	HostAddr netip.AddrPort // 127.0.0.1 and the port actually bound
	Started  time.Time
	BytesIn  uint64 // carried from host clients into the guest
	BytesOut uint64 // carried from the guest back out to host clients
	Conns    int    // live TCP connections, or live UDP sessions
}

// hostIP is the only address forwards listen on.
var hostIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// limits bounds what one forward may hold. Tests shrink them.
type limits struct {
	dialTimeout time.Duration // TCP: connecting to the guest
	maxConns    int           // TCP: live connections per forward
	udpIdle     time.Duration // UDP: a session with no traffic either way for this long ends
	maxSessions int           // UDP: live sessions (distinct clients) per forward
}

var defaultLimits = limits{
	dialTimeout: 3 * time.Second,
	maxConns:    256,
	udpIdle:     60 * time.Second,
	maxSessions: 256,
}

// stats is the part of a forward both transports update.
type stats struct {
	in, out atomic.Uint64
	conns   atomic.Int64
}

// running counts the package's live goroutines. Each is started by spawn
// and counted out before it signals its WaitGroup, so it is zero whenever
// no relay is running; the tests hold Close to that.
var running atomic.Int64

// testHookExit, when set, runs as each goroutine of the package ends;
// tests slow the ends down with it to see that closing waits for them.
var testHookExit atomic.Pointer[func()]

// spawn runs f in a goroutine that wg waits for.
func spawn(wg *sync.WaitGroup, f func()) {
	running.Add(1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer running.Add(-1)
		defer func() {
			if h := testHookExit.Load(); h != nil {
				(*h)()
			}
		}()
		f()
	}()
}

// relay is a running TCP or UDP forward.
type relay interface {
	// close stops accepting, ends every connection or session and waits
	// for all of the relay's goroutines. Idempotent.
	close()
}

type entry struct {
	spec    Spec
	host    netip.AddrPort
	started time.Time
	stats   *stats
	relay   relay
}

func (e *entry) snapshot() Forward {
	return Forward{
		Spec:     e.spec,
		HostAddr: e.host,
		Started:  e.started,
		BytesIn:  e.stats.in.Load(),
		BytesOut: e.stats.out.Load(),
		Conns:    int(e.stats.conns.Load()),
	}
}

// Manager owns every forward of the daemon. It is safe for concurrent use.
type Manager struct {
	log *slog.Logger
	lim limits

	mu     sync.Mutex
	fwds   []*entry
	closed bool
}

// NewManager returns an empty manager; log may be nil.
func NewManager(log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{log: log, lim: defaultLimits}
}

func (s Spec) validate() error {
	if s.VM == "" {
		return errors.New("forward: VM name is empty")
	}
	if !s.GuestAddr.IsValid() || !s.GuestAddr.Addr().IsValid() || s.GuestAddr.Addr().IsUnspecified() {
		return fmt.Errorf("forward for VM %q: guest address %q is not an IP address", s.VM, s.GuestAddr.Addr())
	}
	if s.GuestAddr.Port() == 0 {
		return fmt.Errorf("forward for VM %q: guest port must be 1..65535", s.VM)
	}
	if s.Proto != TCP && s.Proto != UDP {
		return fmt.Errorf("forward for VM %q: protocol %q: want tcp or udp", s.VM, s.Proto)
	}
	return nil
}

// Add binds 127.0.0.1:spec.HostPort (a free port when 0) and starts
// forwarding it to spec.GuestAddr. A VM forwards a given guest port and
// protocol at most once.
func (m *Manager) Add(spec Spec) (Forward, error) {
	spec.GuestAddr = netip.AddrPortFrom(spec.GuestAddr.Addr().Unmap(), spec.GuestAddr.Port())
	if err := spec.validate(); err != nil {
		return Forward{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Forward{}, errors.New("forward: manager is closed")
	}
	for _, e := range m.fwds {
		if e.spec.VM == spec.VM && e.spec.Proto == spec.Proto && e.spec.GuestAddr.Port() == spec.GuestAddr.Port() {
			return Forward{}, fmt.Errorf("VM %q already forwards %s guest port %d to %s; remove that forward first",
				spec.VM, spec.Proto, spec.GuestAddr.Port(), e.host)
		}
		if spec.HostPort != 0 && e.spec.Proto == spec.Proto && e.host.Port() == spec.HostPort {
			return Forward{}, fmt.Errorf("host port %d is already in use by the forward of VM %q %s guest port %d; pick another with GUEST:HOST or GUEST:0",
				spec.HostPort, e.spec.VM, e.spec.Proto, e.spec.GuestAddr.Port())
		}
	}
	e := &entry{spec: spec, stats: new(stats)}
	log := m.log.With("vm", spec.VM, "proto", string(spec.Proto), "guest", spec.GuestAddr.String())
	bind := netip.AddrPortFrom(hostIP, spec.HostPort)
	var err error
	switch spec.Proto {
	case TCP:
		var t *tcpRelay
		t, err = startTCP(bind, spec.GuestAddr, m.lim, e.stats, log)
		if err == nil {
			e.relay, e.host = t, t.addr
		}
	case UDP:
		var u *udpRelay
		u, err = startUDP(bind, spec.GuestAddr, m.lim, e.stats, log)
		if err == nil {
			e.relay, e.host = u, u.addr
		}
	}
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return Forward{}, fmt.Errorf("host port %d is already in use; pick another with GUEST:HOST or GUEST:0", spec.HostPort)
		}
		if errors.Is(err, syscall.EACCES) {
			return Forward{}, fmt.Errorf("host port %d needs privileges to bind; pick one above 1023 with GUEST:HOST or GUEST:0", spec.HostPort)
		}
		return Forward{}, fmt.Errorf("forward %s guest port %d of VM %q: %w", spec.Proto, spec.GuestAddr.Port(), spec.VM, err)
	}
	e.started = time.Now()
	m.fwds = append(m.fwds, e)
	log.Info("forward started", "host", e.host.String(), "auto", spec.Auto)
	return e.snapshot(), nil
}

// Remove ends the forward of vm on proto and hostPort, closing its
// listener and every live connection or session.
func (m *Manager) Remove(vm string, proto Proto, hostPort uint16) error {
	m.mu.Lock()
	i := slices.IndexFunc(m.fwds, func(e *entry) bool {
		return e.spec.VM == vm && e.spec.Proto == proto && e.host.Port() == hostPort
	})
	if i < 0 {
		m.mu.Unlock()
		return fmt.Errorf("VM %q has no %s forward on host port %d", vm, proto, hostPort)
	}
	e := m.fwds[i]
	m.fwds = slices.Delete(m.fwds, i, i+1)
	m.mu.Unlock()
	m.end(e, "removed")
	return nil
}

// List returns the forwards of vm ("" for every VM), sorted by VM,
// protocol, guest port and host port.
func (m *Manager) List(vm string) []Forward {
	m.mu.Lock()
	out := make([]Forward, 0, len(m.fwds))
	for _, e := range m.fwds {
		if vm == "" || e.spec.VM == vm {
			out = append(out, e.snapshot())
		}
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Forward) int {
		if c := strings.Compare(a.VM, b.VM); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Proto), string(b.Proto)); c != 0 {
			return c
		}
		if c := int(a.GuestAddr.Port()) - int(b.GuestAddr.Port()); c != 0 {
			return c
		}
		return int(a.HostAddr.Port()) - int(b.HostAddr.Port())
	})
	return out
}

// StopVM ends every forward of vm (it stopped or was deleted) and returns
// how many there were.
func (m *Manager) StopVM(vm string) int {
	m.mu.Lock()
	var gone []*entry
	m.fwds = slices.DeleteFunc(m.fwds, func(e *entry) bool {
		if e.spec.VM == vm {
			gone = append(gone, e)
			return true
		}
		return false
	})
	m.mu.Unlock()
	m.endAll(gone, "VM stopped")
	return len(gone)
}

// Close ends every forward and waits for all their goroutines. Add fails
// afterwards.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	gone := m.fwds
	m.fwds = nil
	m.mu.Unlock()
	m.endAll(gone, "daemon closing")
}

func (m *Manager) endAll(es []*entry, why string) {
	var wg sync.WaitGroup
	for _, e := range es {
		wg.Go(func() { m.end(e, why) })
	}
	wg.Wait()
}

func (m *Manager) end(e *entry, why string) {
	e.relay.close()
	m.log.Info("forward ended", "vm", e.spec.VM, "proto", string(e.spec.Proto),
		"guest", e.spec.GuestAddr.String(), "host", e.host.String(), "why", why,
		"bytes_in", e.stats.in.Load(), "bytes_out", e.stats.out.Load())
}

// ParseSpec parses a command-line forward: "GUEST" (the same port on the
// host), "GUEST:HOST", or "GUEST:0" (the daemon picks a free host port).
func ParseSpec(arg string) (guestPort, hostPort uint16, err error) {
	if arg == "" {
		return 0, 0, errors.New("empty port forward; want GUEST, GUEST:HOST or GUEST:0")
	}
	g, h, pair := strings.Cut(arg, ":")
	if strings.Contains(h, ":") {
		return 0, 0, fmt.Errorf("port forward %q: want GUEST, GUEST:HOST or GUEST:0", arg)
	}
	guestPort, err = parsePort(g, "guest", false)
	if err != nil {
		return 0, 0, fmt.Errorf("port forward %q: %w", arg, err)
	}
	if !pair {
		return guestPort, guestPort, nil
	}
	hostPort, err = parsePort(h, "host", true)
	if err != nil {
		return 0, 0, fmt.Errorf("port forward %q: %w", arg, err)
	}
	return guestPort, hostPort, nil
}

func parsePort(s, what string, zeroOK bool) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("%s port is empty", what)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%s port %q is not a number", what, s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || (n == 0 && !zeroOK) {
		if zeroOK {
			return 0, fmt.Errorf("%s port %s: port must be 1..65535 (or 0 to pick a free one)", what, s)
		}
		return 0, fmt.Errorf("%s port %s: port must be 1..65535", what, s)
	}
	return uint16(n), nil
}
