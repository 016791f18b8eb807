package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/privops"
	"banger/internal/rootdisk"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/vmmcore"
)

// helperJails stands in for the root helper's jails (privops.Jails, whose
// own checks its tests cover): it makes the jail, links the VM's files in
// and launches the stand-in jailer, and removes jail and cgroup once the
// VMM has exited, recording each call. The rest is Local's.
type helperJails struct {
	privops.Local
	base, jailer, fc string

	mu    sync.Mutex
	calls []string
}

func (h *helperJails) rec(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, s)
}

func (h *helperJails) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// SnapshotsAvailable: dm roots would work (were the VMM not jailed).
func (h *helperJails) SnapshotsAvailable() error { return nil }

func (h *helperJails) JailAvailable() (string, string, error) { return "firecracker", h.base, nil }

func (h *helperJails) StartJail(req firecracker.JailRequest, console *os.File) (int, error) {
	h.rec("start " + req.ID)
	root := filepath.Join(h.base, "firecracker", req.ID, "root")
	if err := os.MkdirAll(filepath.Join(root, "run"), 0o755); err != nil {
		return 0, err
	}
	for _, f := range req.Files {
		if err := os.Link(f.Src, filepath.Join(root, f.Dst)); err != nil {
			_ = os.RemoveAll(filepath.Dir(root))
			return 0, err
		}
	}
	argv := firecracker.JailerArgv(firecracker.JailerConfig{Binary: h.jailer, ChrootBase: h.base, CgroupVersion: 2},
		h.fc, req.ID, os.Getuid(), os.Getgid(), req.MemoryMiB)
	return vmmcore.LaunchWith(argv, console, nil)
}

func (h *helperJails) RemoveJail(id string) error {
	h.rec("remove " + id)
	if firecracker.JailedVMMRuns(id) {
		return errors.New("the VMM of jail " + id + " still runs")
	}
	if err := os.RemoveAll(filepath.Join(h.base, "firecracker", id)); err != nil {
		return err
	}
	return firecracker.RemoveCgroups("", "", id)
}

// TestJailsThroughTheHelper: in system mode the root helper makes and
// removes each jailed VM's jail: the daemon asks it at every start and
// after every stop, a failed create and a delete, never touches the jail
// itself, leaves nothing, and at start-up has it remove the jail a VMM
// that died with the daemon left.
func TestJailsThroughTheHelper(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	standInCgroupfs(t)
	l := newLifecycleWith(t, true)
	hj := &helperJails{base: l.d.jailBase(), jailer: filepath.Join(filepath.Dir(l.fc), "jailer"), fc: l.fc}
	l.d.priv, l.d.viaHelper = hj, true
	if l.d.rootJails() != hj {
		t.Fatal("a daemon through the helper does not jail through it")
	}
	l.d.driverOverride = firecracker.New(firecracker.Config{Binary: l.fc, StartTimeout: 10 * time.Second,
		Jailer: &firecracker.JailerConfig{Helper: hj, ExecName: "firecracker", ChrootBase: l.d.jailBase()}})

	// Files only: a dm root's node in the jail would outlive its device.
	l.d.cfg.RootDisk = string(rootdisk.DM)
	if _, errMsg := l.create(api.VMCreateParams{Name: "d", VCPU: 1, MemoryMiB: 256}, ""); !strings.Contains(errMsg,
		`root_disk = "dm": a Firecracker jailed by banger's root helper is given files only, not a device`) {
		t.Errorf("a dm root for a VMM the helper jails: %q", errMsg)
	}
	l.d.cfg.RootDisk = rootdisk.Auto
	if _, errMsg := l.create(api.VMCreateParams{Name: "j", VCPU: 1, MemoryMiB: 256}, ""); errMsg != "" {
		t.Fatalf("create j: %s", errMsg)
	}
	v := l.running("j")
	if rd, _, err := l.d.disksOf(v); err != nil || rd.Strategy == rootdisk.DM {
		t.Errorf("root disk %+v (%v), want a file", rd, err)
	}
	id := shortID(v.ID)
	jail := filepath.Join(l.d.jailBase(), "firecracker", id)
	if v.APISocket != filepath.Join(jail, "root", "run", "firecracker.socket") {
		t.Errorf("the VMM's socket %s is not in the helper's jail %s", v.APISocket, jail)
	}
	l.noLeaks("jailed by the helper, running")
	l.must("vm.stop", api.VMRef{Name: "j"}, nil)
	l.stopped("j", v)
	if _, err := os.Lstat(jail); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left after the stop: %v", err)
	}
	l.noLeaks("jailed by the helper, stopped")

	if _, errMsg := l.create(api.VMCreateParams{Name: "f", VCPU: 1, MemoryMiB: 256}, modeDieAtBoot); errMsg == "" {
		t.Error("a create whose guest dies at boot succeeded")
	}
	l.t.Setenv(fakeModeEnv, "")
	l.noLeaks("after a failed create")

	// A daemon that starts finds the jail of a VMM that died with its
	// predecessor, and has the helper remove it.
	ghost := filepath.Join(l.d.jailBase(), "firecracker", "0123456789ab", "root")
	if err := os.MkdirAll(ghost, 0o755); err != nil {
		t.Fatal(err)
	}
	l.d.sweepJails(t.Context())
	if _, err := os.Lstat(filepath.Dir(ghost)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead VMM's jail is still there: %v", err)
	}

	l.must("vm.start", api.VMRef{Name: "j"}, nil)
	l.running("j")
	l.must("vm.delete", api.VMRef{Name: "j"}, nil)
	l.noLeaks("after delete")
	calls := hj.seen()
	fid := ""
	for _, c := range calls {
		if c != "start "+id && c != "remove "+id && c != "remove 0123456789ab" {
			fid = c[len("start "):]
			break
		}
	}
	want := []string{"start " + id, "remove " + id, "start " + fid, "remove " + fid, "remove 0123456789ab", "start " + id, "remove " + id}
	if !slices.Equal(calls, want) {
		t.Errorf("helper calls\n%q\nwant\n%q", calls, want)
	}
}

// TestJailsRefuseRoot: a dm root (made before the helper could jail)
// starts unjailed, or with firecracker_jailer = "on" fails saying what to
// do; anything else keeps its jail.
func TestJailsRefuseRoot(t *testing.T) {
	cases := []struct {
		s            rootdisk.Strategy
		helperJailed bool
		jailer       string
		unjail       bool
		err          string
	}{
		{rootdisk.DM, true, "auto", true, ""},
		{rootdisk.DM, true, "on", false, `vm v has a dm root disk, which a Firecracker jailed by banger's root helper cannot hold`},
		{rootdisk.DM, false, "auto", false, ""},
		{rootdisk.Copy, true, "on", false, ""},
	}
	for _, c := range cases {
		unjail, err := jailsRefuseRoot("v", c.s, c.helperJailed, c.jailer)
		if unjail != c.unjail || (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("jailsRefuseRoot(%s, %v, %s) = %v, %v; want %v, %q", c.s, c.helperJailed, c.jailer, unjail, err, c.unjail, c.err)
		}
	}
}
