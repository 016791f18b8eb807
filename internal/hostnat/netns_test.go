package hostnat

import (
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

// inFreshNetns moves the calling test goroutine's OS thread into a new,
// empty network namespace for the rest of the test and restores the
// original namespace in t.Cleanup. Everything the package does (Sync,
// State, Remove, EnableIPForward) then acts on that namespace; closing the
// last handle destroys it with its tables, links and sysctls, so nothing
// reaches the host namespace even if the test fails halfway. It returns a
// handle of the fresh namespace, valid until the test ends.
func inFreshNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	requireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	fresh, err := netns.New() // also switches this thread into it
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with the goroutine instead
			// of running other code in the test namespace.
			t.Errorf("restore netns: %v", err)
			return
		}
		fresh.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
	return fresh
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
