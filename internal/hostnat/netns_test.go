package hostnat

import (
	"banger/internal/netnstest"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// requireRoot skips a test that needs CAP_NET_ADMIN to create network
// namespaces and nftables tables.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) to create network namespaces and nftables tables")
	}
}

// inFreshNetns runs the rest of the test in a network namespace of its
// own (netnstest.Fresh): Sync, State, Remove and EnableIPForward then act
// on it, never on the host's.
func inFreshNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	requireRoot(t)
	return netnstest.Fresh(t)
}

// newNetns creates a network namespace without entering it: a throwaway
// goroutine locks its thread, unshares, and exits, which ends the thread.
// The handle is closed in t.Cleanup; the namespace goes away with the last
// handle, socket and thread in it.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		ns, err := netns.New()
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create netns: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

// inNetns runs fn on a throwaway OS thread inside ns and returns its
// error. Sockets fn opens stay in ns after it returns, whichever thread
// later uses them. fn must not block without a bound.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}
