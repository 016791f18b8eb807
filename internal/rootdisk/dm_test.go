package rootdisk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/system"
)

// fakeDM answers losetup and dmsetup like the real tools and keeps the
// state they would leave in the kernel. For each loop device it keeps
// the os.FileInfo of the file attached, so a test can tell which file
// (inode) a loop really holds, whatever name it was attached by.
type fakeDM struct {
	mu     sync.Mutex
	calls  [][]string
	failOn string // fail the first command whose argv joined contains this
	next   int
	loops  map[string]fakeLoop
	dms    map[string]string
}

type fakeLoop struct {
	name     string
	file     os.FileInfo
	readOnly bool
}

func newFakeDM() *fakeDM {
	return &fakeDM{loops: map[string]fakeLoop{}, dms: map[string]string{}}
}

func (f *fakeDM) Run(ctx context.Context, argv ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, append([]string(nil), argv...))
	fail := func(msg string) ([]byte, error) {
		return nil, &system.CommandError{Argv: argv, ExitCode: 1, Stderr: msg, Err: errors.New("exit status 1")}
	}
	if f.failOn != "" && strings.Contains(strings.Join(argv, " "), f.failOn) {
		f.failOn = ""
		return fail("fake: injected failure")
	}
	switch {
	case len(argv) >= 4 && argv[0] == "losetup" && argv[1] == "--find" && argv[2] == "--show":
		file := argv[len(argv)-1]
		st, err := os.Stat(file)
		if err != nil {
			return fail("losetup: " + file + ": No such file or directory")
		}
		dev := fmt.Sprintf("/dev/loop%d", f.next)
		f.next++
		f.loops[dev] = fakeLoop{name: file, file: st, readOnly: argv[3] == "--read-only"}
		return []byte(dev + "\n"), nil
	case len(argv) == 3 && argv[0] == "losetup" && argv[1] == "-d":
		if _, ok := f.loops[argv[2]]; !ok {
			return fail("losetup: " + argv[2] + ": detach failed: No such device or address")
		}
		for _, tbl := range f.dms {
			if strings.Contains(tbl, " "+argv[2]+" ") {
				return fail("fake: loop in use by a dm table")
			}
		}
		delete(f.loops, argv[2])
		return nil, nil
	case len(argv) == 5 && argv[0] == "dmsetup" && argv[1] == "create" && argv[3] == "--table":
		fields := strings.Fields(argv[4])
		if len(fields) != 7 || fields[2] != "snapshot" {
			return fail("fake: bad table")
		}
		if o, ok := f.loops[fields[3]]; !ok || !o.readOnly {
			return fail("fake: origin is not a read-only loop")
		}
		if c, ok := f.loops[fields[4]]; !ok || c.readOnly {
			return fail("fake: cow is not a writable loop")
		}
		f.dms[argv[2]] = argv[4]
		return nil, nil
	case len(argv) == 3 && argv[0] == "dmsetup" && argv[1] == "remove":
		if _, ok := f.dms[argv[2]]; !ok {
			return fail("device-mapper: remove ioctl on " + argv[2] + " failed: No such device or address")
		}
		delete(f.dms, argv[2])
		return nil, nil
	}
	return fail("fake: unexpected command " + strings.Join(argv, " "))
}

func (f *fakeDM) empty() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.loops) == 0 && len(f.dms) == 0
}

func TestDM(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "rootfs.ext4")
	const size = 64 * mib
	makeBase(t, base, size, region{0, mib})
	baseSum := sha(t, base)

	d, err := Create(ctx, host(), DM, base, filepath.Join(dir, "vm-a.cow"))
	if err != nil {
		t.Fatalf("Create(dm): %v", err)
	}
	if want := (Disk{Strategy: DM, Path: d.Path, Format: FormatRaw, Chain: []string{base}}); !equalDisk(d, want) {
		t.Errorf("Create(dm) = %+v, want %+v", d, want)
	}
	st, err := os.Stat(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < size+size/128 || allocated(t, d.Path) != 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("COW file: size %d, %d bytes allocated, mode %v; want sparse, 0600, > base size", st.Size(), allocated(t, d.Path), st.Mode().Perm())
	}
	// Stand-in for what the snapshot wrote on an earlier boot.
	if err := os.WriteFile(d.Path, []byte("persistent COW header"), 0o600); err != nil {
		t.Fatal(err)
	}
	cowSum := sha(t, d.Path)

	f := newFakeDM()
	var recorded []dmsnap.Handles
	dev, format, err := d.Attach(ctx, f, "banger-vm-a", func(h dmsnap.Handles) error {
		recorded = append(recorded, h)
		return nil
	})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if dev != "/dev/mapper/banger-vm-a" || format != FormatRaw {
		t.Errorf("Attach = %q, %q", dev, format)
	}
	link := d.Path + attachSuffix
	wantCalls := [][]string{
		{"losetup", "--find", "--show", "--read-only", base},
		{"losetup", "--find", "--show", link},
		{"dmsetup", "create", "banger-vm-a", "--table", fmt.Sprintf("0 %d snapshot /dev/loop0 /dev/loop1 P 8", size/512)},
	}
	if !reflect.DeepEqual(f.calls, wantCalls) {
		t.Errorf("Attach ran\n%q\nwant\n%q", f.calls, wantCalls)
	}
	// The COW loop holds the VM's COW file itself (by a link name that
	// is gone now), not a fresh one.
	cowSt, _ := os.Stat(d.Path)
	if l := f.loops["/dev/loop1"]; !os.SameFile(l.file, cowSt) {
		t.Errorf("COW loop holds %s, which is not %s", l.name, d.Path)
	}
	if l := f.loops["/dev/loop0"]; !l.readOnly || l.name != base {
		t.Errorf("origin loop = %+v, want %s read-only", l, base)
	}
	mustNotExist(t, link)
	wantH := dmsnap.Handles{BaseLoop: "/dev/loop0", COWLoop: "/dev/loop1", DMName: "banger-vm-a", DMDev: "/dev/mapper/banger-vm-a"}
	if d.DM == nil || *d.DM != wantH {
		t.Errorf("d.DM = %+v, want %+v", d.DM, wantH)
	}
	if len(recorded) == 0 || recorded[len(recorded)-1] != wantH {
		t.Errorf("last recorded handles = %+v, want %+v", recorded, wantH)
	}
	if _, _, err := d.Attach(ctx, f, "banger-vm-a", nil); err == nil {
		t.Error("attaching an attached disk succeeded")
	}
	if sha(t, d.Path) != cowSum || sha(t, base) != baseSum {
		t.Fatal("Attach changed the COW file or the base")
	}

	// Clone refuses an attached disk; VirtualSize is the base's; no Grow.
	if _, _, err := Clone(ctx, f, d, filepath.Join(dir, "vm-b.cow"), "", VMMFirecracker); err == nil || !strings.Contains(err.Error(), "detach") {
		t.Errorf("Clone of an attached dm disk = %v", err)
	}
	mustNotExist(t, filepath.Join(dir, "vm-b.cow"))
	if vs, err := d.VirtualSize(ctx, f); err != nil || vs != size {
		t.Errorf("VirtualSize = %d, %v; want %d", vs, err, size)
	}
	if err := d.Grow(ctx, f, 2*size); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("Grow of a dm disk = %v, want a bad_request refusal", err)
	}

	// Detach tears the devices down and keeps the COW file.
	f.calls = nil
	if err := d.Detach(ctx, f); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	wantCalls = [][]string{
		{"dmsetup", "remove", "banger-vm-a"},
		{"losetup", "-d", "/dev/loop1"},
		{"losetup", "-d", "/dev/loop0"},
	}
	if !reflect.DeepEqual(f.calls, wantCalls) {
		t.Errorf("Detach ran\n%q\nwant\n%q", f.calls, wantCalls)
	}
	if !f.empty() || d.DM != nil {
		t.Errorf("after Detach: loops %v, dms %v, d.DM %+v", f.loops, f.dms, d.DM)
	}
	if sha(t, d.Path) != cowSum {
		t.Fatal("Detach changed or removed the COW file")
	}
	if err := d.Detach(ctx, f); err != nil {
		t.Errorf("Detach of a detached disk: %v", err)
	}

	// Clone copies the COW file over the same base.
	src, dst, err := Clone(ctx, f, d, filepath.Join(dir, "vm-b.cow"), "", VMMFirecracker)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Disk{Strategy: DM, Path: filepath.Join(dir, "vm-b.cow"), Format: FormatRaw, Chain: []string{base}}); !equalDisk(dst, want) || !equalDisk(src, d) {
		t.Errorf("Clone(dm) = %+v, %+v; want src unchanged and %+v", src, dst, want)
	}
	if sha(t, dst.Path) != cowSum {
		t.Error("the clone's COW file is not a copy of the source's")
	}

	// A failed Attach leaves the COW file and tears down what it made.
	f = newFakeDM()
	f.failOn = "dmsetup create"
	var failed []dmsnap.Handles
	if _, _, err := dst.Attach(ctx, f, "banger-vm-b", func(h dmsnap.Handles) error {
		failed = append(failed, h)
		return nil
	}); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("Attach with dmsetup failing = %v", err)
	}
	// The loops were recorded as made; the last record says none is left.
	if len(failed) < 2 || failed[len(failed)-2].COWLoop == "" || failed[len(failed)-1] != (dmsnap.Handles{}) {
		t.Errorf("records of a failed attach: %+v, want the loops then the zero handles", failed)
	}
	if !f.empty() || dst.DM != nil {
		t.Errorf("failed Attach left loops %v, dms %v, DM %+v", f.loops, f.dms, dst.DM)
	}
	mustNotExist(t, dst.Path+attachSuffix)
	if sha(t, dst.Path) != cowSum {
		t.Fatal("a failed Attach removed or changed the COW file")
	}
	// ... and so does a record callback that fails.
	f = newFakeDM()
	_, _, err = dst.Attach(ctx, f, "banger-vm-b", func(h dmsnap.Handles) error {
		if h.DMDev != "" {
			return errors.New("db is gone")
		}
		return nil
	})
	if err == nil || !f.empty() || dst.DM != nil {
		t.Errorf("Attach with a failing record = %v; loops %v, dms %v", err, f.loops, f.dms)
	}
	if sha(t, dst.Path) != cowSum {
		t.Fatal("a failed Attach removed or changed the COW file")
	}

	// A stale link from a daemon that died mid-attach is cleared.
	if err := os.Link(dst.Path, dst.Path+attachSuffix); err != nil {
		t.Fatal(err)
	}
	f = newFakeDM()
	if _, _, err := dst.Attach(ctx, f, "banger-vm-b", nil); err != nil {
		t.Fatalf("Attach over a stale link: %v", err)
	}
	mustNotExist(t, dst.Path+attachSuffix)

	// Remove of an attached disk detaches it, then deletes the COW file
	// and nothing else.
	if err := Remove(ctx, f, dst); err != nil {
		t.Fatal(err)
	}
	if !f.empty() {
		t.Errorf("Remove left loops %v, dms %v", f.loops, f.dms)
	}
	mustNotExist(t, dst.Path)
	if sha(t, base) != baseSum || sha(t, d.Path) != cowSum {
		t.Fatal("Remove touched the base or another disk")
	}
}

func TestChooseDMUnavailable(t *testing.T) {
	why := dmsnap.Available()
	if why == nil {
		t.Skip("device-mapper works on this host; this test checks the refusal")
	}
	_, err := Choose("dm", VMMFirecracker, t.TempDir(), "", host())
	if err == nil || !strings.Contains(err.Error(), why.Error()) || !strings.HasPrefix(err.Error(), `root_disk = "dm": `) {
		t.Errorf("Choose(dm) = %v; want dmsnap.Available's reason: %v", err, why)
	}
}

// helperDM stands in for banger's root helper behind a Runner: it runs no
// command and makes snapshots from the files it is handed.
type helperDM struct {
	calls     []string
	avail     error
	attachErr error
}

func (h *helperDM) Run(ctx context.Context, argv ...string) ([]byte, error) {
	h.calls = append(h.calls, "run "+strings.Join(argv, " "))
	return nil, errors.New("the helper's runner runs nothing")
}

func (h *helperDM) SnapshotsAvailable() error { return h.avail }

func (h *helperDM) AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error) {
	mode := func(f *os.File) string {
		fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		return map[bool]string{true: "rw", false: "ro"}[fl&unix.O_ACCMODE == unix.O_RDWR]
	}
	h.calls = append(h.calls, fmt.Sprintf("attach %s %s(%s) %s(%s)", name, filepath.Base(base.Name()), mode(base), filepath.Base(cow.Name()), mode(cow)))
	if h.attachErr != nil {
		return dmsnap.Handles{}, h.attachErr
	}
	return dmsnap.Handles{BaseLoop: "/dev/loop4", COWLoop: "/dev/loop5", DMName: name, DMDev: "/dev/mapper/" + name, AutoClear: true}, nil
}

func (h *helperDM) DetachSnapshot(hd dmsnap.Handles) error {
	h.calls = append(h.calls, "detach "+hd.DMName)
	return nil
}

// TestDMThroughASnapshotter: a Runner that is a Snapshotter (the root
// helper's client, in system mode) gets the base open read-only and the
// COW file read-write instead of running losetup/dmsetup; the name is
// recorded before the device exists; Check asks it; Detach hands it the
// handles; a snapshot that cannot be recorded is taken down again.
func TestDMThroughASnapshotter(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "rootfs.ext4")
	makeBase(t, base, 4*mib, region{0, mib})
	d, err := Create(ctx, host(), DM, base, filepath.Join(dir, "vm-a.cow"))
	if err != nil {
		t.Fatal(err)
	}
	sn := &helperDM{avail: errors.New("no dm here")}
	if err := Check(DM, VMMFirecracker, dir, base, sn); err == nil || err.Error() != "no dm here" {
		t.Errorf("Check(dm) = %v, want the snapshotter's answer", err)
	}
	sn.avail = nil
	if err := Check(DM, VMMFirecracker, dir, base, sn); err != nil {
		t.Errorf("Check(dm) = %v, want the snapshotter's nil", err)
	}

	var recorded []dmsnap.Handles
	dev, format, err := d.Attach(ctx, sn, "banger-vm-a", func(h dmsnap.Handles) error {
		recorded = append(recorded, h)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	made := dmsnap.Handles{BaseLoop: "/dev/loop4", COWLoop: "/dev/loop5", DMName: "banger-vm-a", DMDev: "/dev/mapper/banger-vm-a", AutoClear: true}
	if dev != made.DMDev || format != FormatRaw || d.DM == nil || *d.DM != made {
		t.Errorf("Attach = %s %s, DM %+v; want %s raw %+v", dev, format, d.DM, made.DMDev, made)
	}
	if want := []dmsnap.Handles{{DMName: "banger-vm-a", AutoClear: true}, made}; !slices.Equal(recorded, want) {
		t.Errorf("recorded %+v, want %+v", recorded, want)
	}
	if err := d.Detach(ctx, sn); err != nil || d.DM != nil {
		t.Errorf("Detach: %v, DM %+v", err, d.DM)
	}
	want := []string{"attach banger-vm-a rootfs.ext4(ro) vm-a.cow(rw)", "detach banger-vm-a"}
	if !slices.Equal(sn.calls, want) {
		t.Errorf("calls %q, want %q", sn.calls, want)
	}

	// Recording fails once the snapshot exists: it goes again.
	sn.calls = nil
	n := 0
	if _, _, err := d.Attach(ctx, sn, "banger-vm-a", func(h dmsnap.Handles) error {
		if n++; n == 2 {
			return errors.New("database is locked")
		}
		return nil
	}); err == nil || !strings.Contains(err.Error(), "database is locked") || d.DM != nil {
		t.Errorf("Attach whose handles cannot be recorded: %v, DM %+v", err, d.DM)
	}
	if !slices.Equal(sn.calls, want) {
		t.Errorf("calls %q, want %q", sn.calls, want)
	}
	// And the helper refusing leaves nothing attached.
	sn.calls, sn.attachErr = nil, errors.New("root helper refuses: no")
	recorded = nil
	if _, _, err := d.Attach(ctx, sn, "banger-vm-a", func(h dmsnap.Handles) error {
		recorded = append(recorded, h)
		return nil
	}); err == nil || d.DM != nil {
		t.Errorf("Attach the helper refused: %v, DM %+v", err, d.DM)
	}
	// The name recorded first is withdrawn: the next start finds no
	// snapshot recorded.
	if want := []dmsnap.Handles{{DMName: "banger-vm-a", AutoClear: true}, {}}; !slices.Equal(recorded, want) {
		t.Errorf("recorded %+v, want %+v", recorded, want)
	}
}
