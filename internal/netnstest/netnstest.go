// Package netnstest gives a root test a network namespace of its own, so
// the bridges, taps, addresses and nftables tables it makes never reach
// the host's. It is for tests only; nothing in a banger binary imports it.
package netnstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Fresh moves the calling test goroutine's OS thread into a new, empty
// network namespace for the rest of the test and restores the original in
// t.Cleanup. Closing the last handle destroys the namespace with
// everything in it, so nothing reaches the host even if the test fails
// halfway. It skips (saying why) when not root. The returned handle is
// valid until the test ends. Work that runs on other goroutines must enter
// the namespace itself (netns.Set on a locked thread).
func Fresh(t testing.TB) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) to create network namespaces, links and nftables tables")
	}
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
