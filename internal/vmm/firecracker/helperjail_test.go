package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/vmm/vmmcore"
)

// helperStandin plays banger's root helper for a driver whose jails it
// makes (system mode): it records what it is asked, makes the jail
// and links the files in as the real helper does, and launches the stand-in VMM with the
// jailer's command line (fakeVMM), as the real jailer would become it.
type helperStandin struct {
	fv   *fakeVMM
	base string
	fail error

	mu      sync.Mutex
	reqs    []JailRequest
	removed []string
}

func (h *helperStandin) StartJail(req JailRequest, console *os.File) (int, error) {
	h.mu.Lock()
	h.reqs = append(h.reqs, req)
	h.mu.Unlock()
	if h.fail != nil {
		return 0, h.fail
	}
	root := filepath.Join(h.base, "firecracker", req.ID, "root")
	if err := os.MkdirAll(filepath.Join(root, "run"), 0o755); err != nil {
		return 0, err
	}
	for _, f := range req.Files {
		if err := os.Link(f.Src, filepath.Join(root, f.Dst)); err != nil {
			return 0, err
		}
	}
	argv := JailerArgv(JailerConfig{Binary: "jailer", ChrootBase: h.base}, "/usr/local/bin/firecracker", req.ID, 4242, 4343, req.MemoryMiB)
	return h.fv.launch(argv, console, nil)
}

func (h *helperStandin) RemoveJail(id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removed = append(h.removed, id)
	return os.RemoveAll(filepath.Join(h.base, "firecracker", id))
}

// TestJailedThroughAHelper: a driver whose jails the root helper makes
// asks it for the jail with every file at the jail's path (the snapshot's
// too, on a restore), never makes or removes the jail itself, and has the
// helper remove it at Cleanup; a helper's refusal is the start's error.
func TestJailedThroughAHelper(t *testing.T) {
	spec := testSpec(t)
	base := filepath.Join(t.TempDir(), "jail")
	hs := &helperStandin{base: base}
	d := New(Config{Binary: "firecracker", Jailer: &JailerConfig{Helper: hs, ExecName: "firecracker", ChrootBase: base}})
	hs.fv = &fakeVMM{t: t, serve: true, script: `read -t 60 <>"$1"`}
	d.launch = func([]string, *os.File, []*os.File) (int, error) {
		t.Fatal("the driver launched a process itself")
		return 0, nil
	}
	ctx := context.Background()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill(h) })
	root := filepath.Join(base, "firecracker", "fctest", "root")
	if h.APISocket != filepath.Join(root, "run", "firecracker.socket") || !d.Alive(h) {
		t.Fatalf("handle %+v (alive %v), want the jail's socket", h, d.Alive(h))
	}
	want := JailRequest{ID: "fctest", MemoryMiB: 256, Files: []JailFile{
		{spec.KernelPath, "/kernel"}, {spec.InitrdPath, "/initrd"}, {spec.RootDisk, "/root.img"},
		{spec.WorkDisk, "/work.img"}, {spec.ConfigDisk, "/config.img"}}}
	if len(hs.reqs) != 1 || hs.reqs[0].ID != want.ID || hs.reqs[0].MemoryMiB != want.MemoryMiB || !slices.Equal(hs.reqs[0].Files, want.Files) {
		t.Errorf("asked %+v\nwant %+v", hs.reqs, want)
	}
	for _, f := range hs.reqs[0].Files {
		if !slices.Contains(JailPaths(), f.Dst) {
			t.Errorf("%s is not among JailPaths", f.Dst)
		}
	}
	if b, _ := os.ReadFile(spec.ConsoleLog); !strings.Contains(string(b), "launched by banger's root helper") {
		t.Errorf("console log does not say who launched the jailer:\n%s", b)
	}
	if err := d.Kill(h); err != nil {
		t.Fatal(err)
	}
	if err := vmmcore.WaitGone(ctx, func() bool { return d.Alive(h) }, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(h); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(hs.removed, []string{"fctest"}) {
		t.Errorf("helper removed %q, want the jail fctest", hs.removed)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", "fctest")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left: %v", err)
	}

	// A restore's snapshot goes into the jail too.
	if got := d.jailRequest(layout{id: "r1", guestPaths: vmPaths{state: jailIncoming, mem: jailIncoming + MemFileSuffix}},
		vmmcore.Spec{MemoryMiB: 512, IncomingState: "/s/snap.state"}); !slices.Equal(got.Files,
		[]JailFile{{"/s/snap.state", "/incoming.state"}, {"/s/snap.state.mem", "/incoming.state.mem"}}) {
		t.Errorf("restore asks %+v", got.Files)
	}

	hs.fail = errors.New("jail fctest: /x is not in banger's state directory")
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "is not in banger's state directory") {
		t.Errorf("start the helper refuses: %v", err)
	}
}
