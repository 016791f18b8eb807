package daemon

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/privops"
	"banger/internal/rootdisk"
)

// helperSnapshots stands in for the root helper's snapshots; the rest is
// Local's. Its "device" is the COW file it was handed, which the stand-in
// Firecracker opens as it would the dm node.
type helperSnapshots struct {
	privops.Local
	mu    sync.Mutex
	fail  int // attaches still to fail
	calls []string
}

func (h *helperSnapshots) SnapshotsAvailable() error { return nil }

func (h *helperSnapshots) AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, "attach "+name)
	if h.fail > 0 {
		h.fail--
		return dmsnap.Handles{}, errors.New("root helper: dmsetup create: device or resource busy")
	}
	dev, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", cow.Fd()))
	if err != nil {
		return dmsnap.Handles{}, err
	}
	return dmsnap.Handles{BaseLoop: "/dev/loop8", COWLoop: "/dev/loop9", DMName: name, DMDev: dev, AutoClear: true}, nil
}

func (h *helperSnapshots) DetachSnapshot(hd dmsnap.Handles) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, "detach "+hd.DMName)
	return nil
}

func (h *helperSnapshots) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// TestDMRootsThroughTheHelper: in system mode a dm root is attached and
// detached through the helper, and a start whose attach fails leaves the
// VM startable — not "already attached" to a snapshot that never was.
func TestDMRootsThroughTheHelper(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	l := newLifecycle(t)
	sn := &helperSnapshots{}
	l.d.priv, l.d.viaHelper = sn, true
	l.d.cfg.RootDisk = string(rootdisk.DM)
	// A dm origin is whole sectors.
	img, ierr := l.d.store.GetImage(t.Context(), "base")
	if ierr != nil {
		t.Fatal(ierr)
	}
	if err := os.Truncate(img.RootfsPath, 64<<10); err != nil {
		t.Fatal(err)
	}

	if _, errMsg := l.create(api.VMCreateParams{Name: "a", VCPU: 1, MemoryMiB: 256}, ""); errMsg != "" {
		t.Fatalf("create a: %s", errMsg)
	}
	a := l.running("a")
	rd, _, err := l.d.disksOf(a)
	if err != nil || rd.Strategy != rootdisk.DM || rd.DM == nil || !rd.DM.AutoClear {
		t.Fatalf("root disk %+v (%v), want a dm snapshot the helper made", rd, err)
	}
	name := "banger-" + a.ID
	l.must("vm.stop", api.VMRef{Name: "a"}, nil)
	l.stopped("a", a)

	sn.mu.Lock()
	sn.fail = 1
	sn.mu.Unlock()
	if err := l.call("vm.start", api.VMRef{Name: "a"}, nil); err == nil || !strings.Contains(err.Error(), "device or resource busy") {
		t.Fatalf("a start whose attach fails: %v", err)
	}
	if rd, _, _ := l.d.disksOf(l.row("a")); rd.DM != nil {
		t.Errorf("after the failed attach the row still names a snapshot: %+v", rd.DM)
	}
	l.must("vm.start", api.VMRef{Name: "a"}, nil)
	l.running("a")
	l.must("vm.delete", api.VMRef{Name: "a"}, nil)
	l.noLeaks("after delete")
	// The failed attach made nothing, so nothing is detached after it.
	want := []string{"attach " + name, "detach " + name, "attach " + name, "attach " + name, "detach " + name}
	if got := sn.seen(); !slices.Equal(got, want) {
		t.Errorf("helper calls\n%q\nwant\n%q", got, want)
	}
}
