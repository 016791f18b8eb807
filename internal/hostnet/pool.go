package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"banger/internal/api"
)

// MaxPoolSize is the largest tap_pool_size a Pool accepts.
const MaxPoolSize = 64

// PoolTapPrefix starts the name of every pool tap: "bg-pool-" and a
// number. A pool tap keeps its name for life: idle in the pool, then,
// once claimed, as the tap of one VM until that VM lets it go. TapName
// never yields a second dash, so a pool name is never a VM's cold tap
// name. A restarted daemon recognises its predecessor's pool taps by name
// (IsPoolTap) and tells the claimed ones, which its VM rows record, from
// the idle ones (Start's inUse).
const PoolTapPrefix = TapPrefix + "pool-"

const (
	poolNameDigits = 4     // bg-pool-0000 … bg-pool-9999
	poolNameSpace  = 10000 // 10^poolNameDigits

	// maxRefillFailures bounds how many taps in a row one refill pass may
	// fail to create before it gives up; the next Claim starts a new pass.
	maxRefillFailures = 3
	refillBackoff     = 100 * time.Millisecond

	// netlinkTimeout bounds a request on the pool's netlink socket, as the
	// netlink package bounds its own per-request sockets.
	netlinkTimeout = time.Minute
)

// errPoolClosed is returned by Start and Claim after Close.
var errPoolClosed = errors.New("tap pool is closed (the daemon is shutting down)")

// errVanished means an idle pool tap no longer exists.
var errVanished = errors.New("the idle pool tap has vanished")

// IsPoolTap reports whether name is the name of a pool tap, idle or
// claimed by a VM: the PoolTapPrefix followed by decimal digits only.
func IsPoolTap(name string) bool {
	num, ok := strings.CutPrefix(name, PoolTapPrefix)
	if !ok || num == "" || len(name) > maxIfName {
		return false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return false
		}
	}
	return true
}

func poolTapName(i int) string { return fmt.Sprintf("%s%0*d", PoolTapPrefix, poolNameDigits, i) }

// Pool keeps up to size idle TAP devices created, enslaved to the bridge and
// up, so that starting a VM only has to take one (Claim) instead of
// creating it. A claimed tap keeps its pool name (bg-pool-NNNN) for the
// VM's life: the caller records the name Claim returns. See the package
// documentation for the life of a pool tap.
//
// A Pool does all its netlink work in the network namespace of the thread
// that called NewPool, whichever goroutine or thread calls its methods: a
// warm Claim over a netlink socket the pool opened in that namespace (no
// thread has to enter it, and no socket is opened per request), tap
// creation (which needs /dev/net/tun in the namespace) on a thread that is
// in it.
// The pool does not create the bridge: the daemon calls EnsureBridge before
// Start, and Start, Claim and the background refill fail (refill: log) when
// the bridge does not exist.
type Pool struct {
	bridge string
	size   int
	log    *slog.Logger
	ns     netns.NsHandle  // closed by Close once nothing uses it
	nl     *netlink.Handle // a socket in ns for the warm claim; closed with ns

	mu        sync.Mutex
	idle      []string          // idle pool taps, ready to claim
	owned     map[string]bool   // pool names the pool is using: idle, being claimed or being created
	inUse     func(string) bool // Start's: pool names the VMs on record hold
	brIndex   int               // the bridge's ifindex as last seen (0: unknown)
	next      int               // next pool name number to try
	started   bool              // Start was called
	ready     bool              // Start finished reclaiming: refills may run
	closed    bool              // Close was called
	refilling bool              // a refill goroutine is running (single flight)
	done      chan struct{}     // closed by Close: wakes a refill that backs off
	refills   sync.WaitGroup    // the refill goroutine in flight
	ops       sync.WaitGroup    // Start and Claim calls in flight
	links     LinkOps           // how taps are made and removed
}

// LinkOps make and remove taps: this process (HostLinks) or, for a daemon
// without CAP_NET_ADMIN, banger's root helper.
type LinkOps interface {
	CreateTap(name, bridge string) error
	DeleteTap(name string) error
}

// HostLinks are CreateTap and DeleteTap in this process.
type HostLinks struct{}

func (HostLinks) CreateTap(name, bridge string) error { return CreateTap(name, bridge) }
func (HostLinks) DeleteTap(name string) error         { return DeleteTap(name) }

// UseLinks makes the pool create and delete its taps through l; call it
// before Start.
func (p *Pool) UseLinks(l LinkOps) { p.links = l }

// NewPool returns a pool that will keep size idle taps attached to bridge.
// size must be 0 (no pool: every Claim creates its tap cold) to
// MaxPoolSize. Nothing is created until Start; Close releases the pool,
// started or not. A nil log discards.
func NewPool(bridge string, size int, log *slog.Logger) (*Pool, error) {
	if size < 0 || size > MaxPoolSize {
		return nil, api.Errorf(api.CodeBadRequest, "tap_pool_size is %d; use a number from 0 to %d", size, MaxPoolSize)
	}
	if err := validIfName("bridge", bridge); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The namespace and the socket are this thread's: a handle opened
	// "at" a namespace would enter it first, which a daemon without
	// CAP_SYS_ADMIN (system mode) may not do even for its own.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("tap pool: get the current network namespace: %w", err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err == nil {
		if err = h.SetSocketTimeout(netlinkTimeout); err != nil {
			h.Close()
		}
	}
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("tap pool: open a netlink socket: %w", err)
	}
	return &Pool{
		bridge: bridge,
		size:   size,
		log:    log.With("bridge", bridge),
		ns:     ns,
		nl:     h,
		owned:  make(map[string]bool),
		done:   make(chan struct{}),
		links:  HostLinks{},
	}, nil
}

// Start reclaims the pool taps a previous daemon left behind (IsPoolTap
// names). Taps whose names inUse reports are claimed taps of VMs that still
// exist (recorded by the daemon); they are never adopted or deleted. Of the
// other leftover pool taps, up to size are adopted as idle taps
// (re-enslaved and set up if needed) and the rest deleted. It then starts
// filling the pool up to size in the background and returns without
// waiting for that. ctx bounds only the reclaim; the background refill runs
// until Close. The bridge must exist. A failed Start may be retried.
//
// The pool keeps inUse and never creates a tap under a name it reports, nor
// under the name of any existing link. inUse (nil: none) must be safe to
// call from any goroutine and must not call the pool.
func (p *Pool) Start(ctx context.Context, inUse func(name string) bool) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.ops.Done()
	if inUse == nil {
		inUse = func(string) bool { return false }
	}
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return errors.New("tap pool: Start called twice")
	}
	p.started = true
	p.inUse = inUse
	p.mu.Unlock()

	if err := p.inNetns(func() error { return p.reclaim(ctx) }); err != nil {
		p.mu.Lock()
		p.started = false // Start may be retried; reclaim is idempotent
		p.mu.Unlock()
		return err
	}
	p.mu.Lock()
	p.ready = true
	p.mu.Unlock()
	p.kick()
	return nil
}

// reclaim adopts or deletes the pool taps that exist already, leaving
// alone those the VMs hold (inUse).
func (p *Pool) reclaim(ctx context.Context) error {
	if err := p.checkBridge(); err != nil {
		return err
	}
	taps, err := ListTaps(PoolTapPrefix)
	if err != nil {
		return fmt.Errorf("tap pool: %w", err)
	}
	p.mu.Lock()
	adopted := len(p.idle) // by an earlier, failed Start
	inUse := p.inUse
	p.mu.Unlock()
	held := 0
	for _, name := range taps {
		p.mu.Lock()
		mine := p.owned[name]
		p.mu.Unlock()
		if !IsPoolTap(name) || mine {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("tap pool: reclaim: %w", err)
		}
		// Refills start numbering after every pool tap there is.
		if n, err := strconv.Atoi(strings.TrimPrefix(name, PoolTapPrefix)); err == nil {
			p.mu.Lock()
			p.next = max(p.next, (n+1)%poolNameSpace)
			p.mu.Unlock()
		}
		if inUse(name) {
			held++ // a VM's tap: not the pool's to adopt or delete
			continue
		}
		if adopted < p.size {
			if err := p.links.CreateTap(name, p.bridge); err != nil { // repairs master and up
				p.log.Warn("tap pool: cannot reuse a leftover pool tap; deleting it", "tap", name, "err", err)
			} else {
				adopted++
				p.mu.Lock()
				p.idle = append(p.idle, name)
				p.owned[name] = true
				p.mu.Unlock()
				continue
			}
		}
		if err := p.links.DeleteTap(name); err != nil {
			p.log.Warn("tap pool: cannot delete a leftover pool tap", "tap", name, "err", err)
		}
	}
	if adopted > 0 || held > 0 {
		p.log.Info("tap pool: reclaimed pool taps left by a previous daemon", "adopted", adopted, "held_by_vms", held)
	}
	return nil
}

// checkBridge fails unless p.bridge exists and is a bridge.
func (p *Pool) checkBridge() error {
	br, err := lookupLink(p.bridge)
	if err != nil {
		return fmt.Errorf("tap pool: %w", err)
	}
	if br == nil {
		return fmt.Errorf("tap pool: bridge %s does not exist; the daemon must create it (EnsureBridge) before starting the pool", p.bridge)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("tap pool: %s is a %s, not a bridge", p.bridge, br.Type())
	}
	p.mu.Lock()
	p.brIndex = br.Attrs().Index
	p.mu.Unlock()
	return nil
}

// Claim gives a VM a tap that is enslaved to the bridge and up, and
// returns its name: an idle pool tap (its bg-pool-NNNN name is kept; no
// rename), checked to still exist as a tap on the bridge and up (repaired if
// not, skipped if it vanished), or, when the pool is empty or size 0, a tap
// created cold under the name fallback (a TapName). An existing tap called
// fallback (a retried create) is reused as CreateTap does; a warm claim
// does not look for one, so a caller that may have left a tap called
// fallback behind deletes it when the VM goes away, as it does the claimed
// tap. Claim never waits for a refill; either way it starts one. The tap
// belongs to the caller, which records the returned name and deletes the
// tap with DeleteTap when the VM goes away.
func (p *Pool) Claim(fallback string) (name string, err error) {
	if err := validIfName("tap", fallback); err != nil {
		return "", err
	}
	if IsPoolTap(fallback) {
		return "", api.Errorf(api.CodeBadRequest, "tap name %q is reserved for the tap pool", fallback)
	}
	if err := p.enter(); err != nil {
		return "", err
	}
	defer p.ops.Done()
	defer p.kick()
	if name, ok := p.claimIdle(fallback); ok {
		return name, nil
	}
	if err := p.inNetns(func() error { return p.links.CreateTap(fallback, p.bridge) }); err != nil {
		return "", err
	}
	return fallback, nil
}

// claimIdle hands out an idle pool tap, checked and if need be repaired, as
// it is. It skips taps that vanished and reports false when the pool is
// empty or the tap it took was broken (deleted): the claim is then cold.
// It works over p.nl, so it needs no thread in the pool's namespace.
func (p *Pool) claimIdle(fallback string) (string, bool) {
	for {
		poolTap, ok := p.take()
		if !ok {
			return "", false
		}
		idx, err := p.check(poolTap)
		vanished := errors.Is(err, errVanished)
		if err != nil && !vanished {
			// Leave nothing half done: the broken pool tap goes and the tap
			// is created cold instead.
			p.log.Warn("tap pool: an idle pool tap is broken; deleting it and creating the tap cold", "pool_tap", poolTap, "tap", fallback, "err", err)
			p.discard(poolTap, idx)
		}
		p.mu.Lock()
		// The pool lets go of the name. A claimed tap still exists under it,
		// so refill skips it (it never creates over an existing link);
		// a vanished or discarded one leaves it free.
		delete(p.owned, poolTap)
		p.mu.Unlock()
		switch {
		case err == nil:
			p.log.Debug("tap pool: claimed", "pool_tap", poolTap)
			return poolTap, true
		case vanished:
			// Someone deleted it behind the pool's back; try the next one.
			p.log.Warn("tap pool: an idle pool tap has vanished", "pool_tap", poolTap)
		default:
			return "", false
		}
	}
}

// discard deletes the pool tap with ifindex idx (0: unknown or not a tap).
func (p *Pool) discard(poolTap string, idx int) {
	if idx <= 0 {
		return
	}
	l, err := p.nl.LinkByIndex(idx)
	if err != nil || l.Type() != "tuntap" {
		return
	}
	// By the name the index has now, through the pool's LinkOps (a
	// daemon without CAP_NET_ADMIN asks its root helper).
	if err := p.inNetns(func() error { return p.links.DeleteTap(l.Attrs().Name) }); err != nil {
		p.log.Warn("tap pool: cannot delete a pool tap", "pool_tap", poolTap, "ifindex", idx, "err", err)
	}
}

// take removes an idle pool tap from the pool; it stays in owned until the
// claim is over so a refill does not reuse its name meanwhile.
func (p *Pool) take() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return "", false
	}
	name := p.idle[len(p.idle)-1]
	p.idle = p.idle[:len(p.idle)-1]
	return name, true
}

// check makes sure the idle pool tap poolTap is still a tap, enslaved to the
// bridge and up, repairing master and up if needed. The usual case costs one
// lookup on p.nl: the bridge is looked up only when the tap's master is not
// the bridge as last seen. It returns the tap's ifindex, 0 when there is no
// tap of that name (errVanished, or another kind of link).
func (p *Pool) check(poolTap string) (int, error) {
	link, err := p.lookup(poolTap)
	if err != nil {
		return 0, err
	}
	if link == nil {
		return 0, fmt.Errorf("pool tap %s: %w", poolTap, errVanished)
	}
	if link.Type() != "tuntap" {
		return 0, fmt.Errorf("pool tap %s is a %s, not a tap", poolTap, link.Type())
	}
	idx := link.Attrs().Index
	p.mu.Lock()
	brIndex := p.brIndex
	p.mu.Unlock()
	if brIndex == 0 || link.Attrs().MasterIndex != brIndex {
		br, err := p.lookup(p.bridge)
		if err != nil {
			return idx, err
		}
		if br == nil || br.Type() != "bridge" {
			return idx, fmt.Errorf("bridge %s does not exist", p.bridge)
		}
		p.mu.Lock()
		p.brIndex = br.Attrs().Index
		p.mu.Unlock()
		if link.Attrs().MasterIndex != br.Attrs().Index {
			return idx, p.repair(poolTap)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return idx, p.repair(poolTap)
	}
	return idx, nil
}

// repair re-enslaves poolTap to the bridge and sets it up: CreateTap of an
// existing tap does both, through the pool's LinkOps.
func (p *Pool) repair(poolTap string) error {
	if err := p.inNetns(func() error { return p.links.CreateTap(poolTap, p.bridge) }); err != nil {
		return fmt.Errorf("repair pool tap %s (bridge %s, up): %w", poolTap, p.bridge, err)
	}
	return nil
}

// lookup is lookupLink over p.nl: the link called name in the pool's
// namespace, or (nil, nil) when there is none.
func (p *Pool) lookup(name string) (netlink.Link, error) {
	link, err := p.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	return link, nil
}

// kick starts a refill unless one is running already or the pool is not
// running. A running refill re-reads the idle count under the lock before it
// stops, so a Claim during a refill is always followed by another pass.
func (p *Pool) kick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready || p.closed || p.refilling || len(p.idle) >= p.size {
		return
	}
	p.refilling = true
	p.refills.Add(1)
	go p.refill()
}

// refill creates pool taps until the pool holds size idle taps, the pool is
// closed, or maxRefillFailures creates in a row failed.
func (p *Pool) refill() {
	defer p.refills.Done()
	// Never unlocked: the thread exits with this goroutine, so its network
	// namespace change cannot leak to other goroutines.
	runtime.LockOSThread()
	if err := netns.Set(p.ns); err != nil {
		p.log.Error("tap pool: refill cannot enter the network namespace", "err", err)
		p.mu.Lock()
		p.refilling = false
		p.mu.Unlock()
		return
	}
	failures, skipped := 0, 0
	for {
		p.mu.Lock()
		if p.closed || len(p.idle) >= p.size || failures >= maxRefillFailures || skipped >= poolNameSpace {
			p.refilling = false
			p.mu.Unlock()
			if failures >= maxRefillFailures {
				p.log.Error("tap pool: refill gave up; the next claim retries", "failures", failures)
			}
			if skipped >= poolNameSpace {
				p.log.Error("tap pool: refill gave up: every pool tap name is in use")
			}
			return
		}
		name := p.reserveNameLocked()
		inUse := p.inUse
		p.mu.Unlock()

		// A claimed tap keeps its pool name: never create over a name a VM
		// holds, nor over any link that exists. Only the pool creates pool
		// names, and it holds this one (owned), so nothing can take it
		// between the lookup and the create.
		existing, err := lookupLink(name)
		if err == nil && (existing != nil || inUse(name)) {
			p.mu.Lock()
			delete(p.owned, name)
			p.mu.Unlock()
			skipped++
			continue // the rotation moves past it; not a failure
		}
		tried := err == nil
		if tried {
			err = p.links.CreateTap(name, p.bridge)
		}
		p.mu.Lock()
		keep := err == nil && !p.closed
		if keep {
			p.idle = append(p.idle, name)
		}
		p.mu.Unlock()
		if keep {
			failures = 0
			continue
		}
		if tried {
			// The name was free before the create, so what is there now
			// is a half-made (or, closed meanwhile, unwanted) pool tap.
			if derr := p.links.DeleteTap(name); derr != nil {
				p.log.Warn("tap pool: cannot delete a pool tap", "tap", name, "err", derr)
			}
		}
		p.mu.Lock()
		delete(p.owned, name) // only now: the name is free again
		p.mu.Unlock()
		if err == nil { // closed meanwhile
			continue
		}
		failures++
		p.log.Warn("tap pool: refill failed to create a tap", "tap", name, "err", err, "failures", failures)
		select {
		case <-p.done:
		case <-time.After(time.Duration(failures) * refillBackoff):
		}
	}
}

// reserveNameLocked picks the next pool name that the pool is not using and
// marks it owned. Names rotate so that one a failed create left behind is
// not retried at once, and so that a name a claimed tap holds is passed
// over (refill checks the link) rather than tried again and again. p.mu
// must be held.
func (p *Pool) reserveNameLocked() string {
	for range poolNameSpace {
		name := poolTapName(p.next)
		p.next = (p.next + 1) % poolNameSpace
		if !p.owned[name] {
			p.owned[name] = true
			return name
		}
	}
	panic("tap pool: no free pool tap name") // owned holds at most MaxPoolSize+claims in flight
}

// Idle returns the names of the idle pool taps, sorted.
func (p *Pool) Idle() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(p.idle)
	slices.Sort(out)
	return out
}

// Owned returns, sorted, every pool name the pool accounts for now: idle
// taps, and the ones it is creating or handing to a claim (which exist
// on the host before they are idle or recorded by a VM).
func (p *Pool) Owned() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.owned))
	for n := range p.owned {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Close stops refilling, waits for a refill and for Start and Claim calls in
// flight, and deletes every idle pool tap. Claimed taps are left alone.
// Start and Claim fail after Close; a second Close does nothing.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.refills.Wait()
	p.ops.Wait()

	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	for _, name := range idle {
		delete(p.owned, name)
	}
	p.mu.Unlock()
	err := p.inNetns(func() error {
		var errs []error
		for _, name := range idle {
			if err := p.links.DeleteTap(name); err != nil {
				errs = append(errs, fmt.Errorf("tap pool: %w", err))
			}
		}
		return errors.Join(errs...)
	})
	p.nl.Close()
	p.ns.Close()
	return err
}

// enter registers a Start or Claim in flight, or fails after Close.
func (p *Pool) enter() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errPoolClosed
	}
	p.ops.Add(1)
	return nil
}

// inNetns runs fn in the pool's network namespace: on the calling thread
// when it is there already (the usual case), else on a fresh thread that
// enters it and is thrown away afterwards.
func (p *Pool) inNetns(fn func() error) error {
	runtime.LockOSThread()
	cur, err := netns.Get()
	if err == nil {
		same := cur.Equal(p.ns)
		cur.Close()
		if same {
			defer runtime.UnlockOSThread()
			return fn()
		}
	}
	runtime.UnlockOSThread()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := netns.Set(p.ns); err != nil {
			errc <- fmt.Errorf("tap pool: enter the network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
