package dmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/system"
)

var _ Runner = (*system.Exec)(nil)

// fakeRunner answers losetup and dmsetup like the real tools and keeps the
// state they would leave in the kernel, so a test can check that nothing
// leaked. It is strict where the kernel would bite: it refuses to detach a
// loop device a live dm table uses, and to build a snapshot over loop
// devices that are not attached (or an origin that is writable).
type fakeRunner struct {
	mu       sync.Mutex
	calls    [][]string
	failAt   int         // 1-based call to fail with failErr (0: none)
	failErr  string      // stderr of the injected failure
	busy     int         // dmsetup remove answers busy this many times (-1: forever)
	onCall   func(n int) // called before each call is answered
	nextLoop int         // next free /dev/loopN
	loops    map[string]loopInfo
	dms      map[string]string // name → table
}

type loopInfo struct {
	file     string
	readOnly bool
}

func newFake() *fakeRunner {
	return &fakeRunner{loops: map[string]loopInfo{}, dms: map[string]string{}}
}

func cmdErr(argv []string, stderr string) error {
	return &system.CommandError{Argv: argv, ExitCode: 1, Stderr: stderr, Err: errors.New("exit status 1")}
}

func (f *fakeRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, append([]string(nil), argv...))
	n := len(f.calls)
	hook := f.onCall
	f.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		// What exec.CommandContext does with a dead context: nothing runs.
		return nil, &system.CommandError{Argv: argv, ExitCode: -1, Err: err}
	}
	if n == f.failAt {
		msg := f.failErr
		if msg == "" {
			msg = "fake: injected failure"
		}
		return nil, cmdErr(argv, msg)
	}
	switch {
	case len(argv) >= 4 && argv[0] == "losetup" && argv[1] == "--find" && argv[2] == "--show":
		ro := len(argv) == 5 && argv[3] == "--read-only"
		if len(argv) != 4 && !ro {
			return nil, cmdErr(argv, "fake losetup: bad usage")
		}
		file := argv[len(argv)-1]
		if _, err := os.Stat(file); err != nil {
			return nil, cmdErr(argv, fmt.Sprintf("losetup: %s: failed to set up loop device: No such file or directory", file))
		}
		dev := fmt.Sprintf("/dev/loop%d", f.nextLoop)
		f.nextLoop++
		f.loops[dev] = loopInfo{file: file, readOnly: ro}
		return []byte(dev + "\n"), nil
	case len(argv) == 3 && argv[0] == "losetup" && argv[1] == "-d":
		dev := argv[2]
		if _, ok := f.loops[dev]; !ok {
			return nil, cmdErr(argv, fmt.Sprintf("losetup: %s: detach failed: No such device or address", dev))
		}
		for name, t := range f.dms {
			if strings.Contains(t, " "+dev+" ") {
				return nil, cmdErr(argv, fmt.Sprintf("fake losetup: %s is held by dm device %s", dev, name))
			}
		}
		delete(f.loops, dev)
		return nil, nil
	case len(argv) == 5 && argv[0] == "dmsetup" && argv[1] == "create" && argv[3] == "--table":
		name, tbl := argv[2], argv[4]
		if _, ok := f.dms[name]; ok {
			return nil, cmdErr(argv, "device-mapper: create ioctl on "+name+" failed: Device or resource busy")
		}
		fields := strings.Fields(tbl)
		if len(fields) != 7 || fields[0] != "0" || fields[2] != "snapshot" || fields[5] != "P" || fields[6] != "8" {
			return nil, cmdErr(argv, "fake dmsetup: bad table "+tbl)
		}
		base, ok := f.loops[fields[3]]
		if !ok || !base.readOnly {
			return nil, cmdErr(argv, "fake dmsetup: origin "+fields[3]+" is not an attached read-only loop")
		}
		if cow, ok := f.loops[fields[4]]; !ok || cow.readOnly {
			return nil, cmdErr(argv, "fake dmsetup: cow "+fields[4]+" is not an attached writable loop")
		}
		f.dms[name] = tbl
		return nil, nil
	case len(argv) == 3 && argv[0] == "dmsetup" && argv[1] == "remove":
		name := argv[2]
		if _, ok := f.dms[name]; !ok {
			return nil, cmdErr(argv, "device-mapper: remove ioctl on "+name+"  failed: No such device or address\nCommand failed.")
		}
		if f.busy != 0 {
			if f.busy > 0 {
				f.busy--
			}
			return nil, cmdErr(argv, "device-mapper: remove ioctl on "+name+"  failed: Device or resource busy\nCommand failed.")
		}
		delete(f.dms, name)
		return nil, nil
	}
	return nil, cmdErr(argv, "fake: unknown command")
}

func (f *fakeRunner) callsSince(i int) [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.calls[i:]...)
}

// assertNothingLeft checks that the fake holds no loop device or dm device
// and that the COW file is gone.
func (f *fakeRunner) assertNothingLeft(t *testing.T, cowPath string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.loops) != 0 {
		t.Errorf("loop devices left attached: %v", f.loops)
	}
	if len(f.dms) != 0 {
		t.Errorf("dm devices left: %v", f.dms)
	}
	if _, err := os.Lstat(cowPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("COW file %s left behind (lstat: %v)", cowPath, err)
	}
}

func assertCalls(t *testing.T, got, want [][]string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		var b strings.Builder
		fmt.Fprintf(&b, "runner calls:\n")
		for _, c := range got {
			fmt.Fprintf(&b, "  got  %q\n", c)
		}
		for _, c := range want {
			fmt.Fprintf(&b, "  want %q\n", c)
		}
		t.Fatal(b.String())
	}
}

// makeBase creates a sparse base image of size bytes.
func makeBase(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "base.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

const testName = "banger-abc123"

func testSpec(t *testing.T) Spec {
	dir := t.TempDir()
	return Spec{
		Name:     testName,
		BasePath: makeBase(t, dir, 1<<30),
		COWPath:  filepath.Join(dir, "vm", "root.cow"),
	}
}

func mkdirCOWDir(t *testing.T, spec Spec) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(spec.COWPath), 0o755); err != nil {
		t.Fatal(err)
	}
}

func createArgv(spec Spec) [][]string {
	return [][]string{
		{"losetup", "--find", "--show", "--read-only", spec.BasePath},
		{"losetup", "--find", "--show", spec.COWPath},
		{"dmsetup", "create", spec.Name, "--table", "0 2097152 snapshot /dev/loop0 /dev/loop1 P 8"},
	}
}

var (
	rmDM      = []string{"dmsetup", "remove", testName}
	detachCOW = []string{"losetup", "-d", "/dev/loop1"}
	detachBas = []string{"losetup", "-d", "/dev/loop0"}
)

func TestCreateAndRemove(t *testing.T) {
	ctx := context.Background()
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	f := newFake()
	var recorded []Handles
	h, err := Create(ctx, f, spec, func(h Handles) error {
		recorded = append(recorded, h)
		return nil
	})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := Handles{BaseLoop: "/dev/loop0", COWLoop: "/dev/loop1", DMName: testName, DMDev: "/dev/mapper/" + testName, COWPath: spec.COWPath}
	if h != want {
		t.Fatalf("Create = %+v, want %+v", h, want)
	}
	assertCalls(t, f.callsSince(0), createArgv(spec))

	// The record: one call per resource, each extending the last.
	wantRec := []Handles{
		{COWPath: spec.COWPath},
		{COWPath: spec.COWPath, BaseLoop: "/dev/loop0"},
		{COWPath: spec.COWPath, BaseLoop: "/dev/loop0", COWLoop: "/dev/loop1"},
		want,
	}
	if !reflect.DeepEqual(recorded, wantRec) {
		t.Fatalf("recorded %+v, want %+v", recorded, wantRec)
	}

	// The COW file: sparse, the base's size.
	st, err := os.Stat(spec.COWPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 1<<30 {
		t.Errorf("COW file is %d bytes, want the base's %d", st.Size(), 1<<30)
	}
	if blocks := st.Sys().(*syscall.Stat_t).Blocks; blocks != 0 {
		t.Errorf("COW file has %d blocks allocated, want a sparse file", blocks)
	}

	if err := Remove(ctx, f, h); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	assertCalls(t, f.callsSince(3), [][]string{rmDM, detachCOW, detachBas})
	f.assertNothingLeft(t, spec.COWPath)

	// Remove again (a daemon that crashed mid-remove retries it): every
	// resource is already gone, which is not an error.
	if err := Remove(ctx, f, h); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestCreateCOWSize(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	spec.COWSize = 64 << 20
	f := newFake()
	if _, err := Create(context.Background(), f, spec, nil); err != nil {
		t.Fatalf("Create: %v", err)
	}
	st, err := os.Stat(spec.COWPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 64<<20 {
		t.Fatalf("COW file is %d bytes, want %d", st.Size(), 64<<20)
	}
	// The snapshot's size is the base's, whatever the COW's.
	if got := f.callsSince(2)[0][4]; got != "0 2097152 snapshot /dev/loop0 /dev/loop1 P 8" {
		t.Fatalf("table %q", got)
	}
}

func TestTable(t *testing.T) {
	const want = "0 2097152 snapshot /dev/loop3 /dev/loop7 P 8"
	if got := table((1<<30)/512, "/dev/loop3", "/dev/loop7"); got != want {
		t.Fatalf("table = %q, want %q", got, want)
	}
}

// TestCreateFailsAtEachRunnerCall fails each of Create's runner calls in
// turn and checks that everything made before it is torn down, in
// reverse, and that the error names the step.
func TestCreateFailsAtEachRunnerCall(t *testing.T) {
	cases := []struct {
		failAt   int
		step     string
		teardown [][]string
	}{
		{1, "dmsnap: attach base loop device: ", nil},
		{2, "dmsnap: attach COW loop device: ", [][]string{detachBas}},
		{3, "dmsnap: create device-mapper device " + testName + ": ", [][]string{detachCOW, detachBas}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("call%d", tc.failAt), func(t *testing.T) {
			spec := testSpec(t)
			mkdirCOWDir(t, spec)
			f := newFake()
			f.failAt = tc.failAt
			h, err := Create(context.Background(), f, spec, nil)
			if err == nil {
				t.Fatal("Create succeeded")
			}
			if !strings.HasPrefix(err.Error(), tc.step) {
				t.Errorf("error %q does not start with %q", err, tc.step)
			}
			if !strings.Contains(err.Error(), "fake: injected failure") {
				t.Errorf("error %q lacks the command's stderr", err)
			}
			var ce *system.CommandError
			if !errors.As(err, &ce) {
				t.Errorf("error %q does not wrap the *system.CommandError", err)
			}
			if h != (Handles{}) {
				t.Errorf("Create returned handles %+v after a clean teardown", h)
			}
			want := append(createArgv(spec)[:tc.failAt:tc.failAt], tc.teardown...)
			assertCalls(t, f.callsSince(0), want)
			f.assertNothingLeft(t, spec.COWPath)
		})
	}
}

func TestCreateCOWFileFails(t *testing.T) {
	// No directory for the COW file: creating it fails before any
	// command runs, and nothing is made.
	spec := testSpec(t)
	f := newFake()
	_, err := Create(context.Background(), f, spec, func(Handles) error {
		t.Error("record called")
		return nil
	})
	if err == nil || !strings.HasPrefix(err.Error(), "dmsnap: create COW file: ") {
		t.Fatalf("err = %v, want a create COW file error", err)
	}
	assertCalls(t, f.callsSince(0), nil)
	f.assertNothingLeft(t, spec.COWPath)
}

func TestCreateCOWFileCannotBeSized(t *testing.T) {
	// Made, then sizing fails (beyond ext4's and tmpfs's file size
	// limit): the half-made file is removed.
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	spec.COWSize = 1 << 62
	if err := os.Truncate(spec.BasePath, 512); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(filepath.Dir(spec.COWPath), "probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(probe, spec.COWSize); err == nil {
		t.Skipf("the file system under %s allows %d-byte files; cannot make truncate fail", probe, spec.COWSize)
	}
	f := newFake()
	_, err := Create(context.Background(), f, spec, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "dmsnap: create COW file ") {
		t.Fatalf("err = %v, want a create COW file error", err)
	}
	assertCalls(t, f.callsSince(0), nil)
	f.assertNothingLeft(t, spec.COWPath)
}

// TestCreateRecordFails fails each of the four record calls in turn.
func TestCreateRecordFails(t *testing.T) {
	cases := []struct {
		step     string
		calls    int // runner calls Create made before the failing record
		teardown [][]string
	}{
		{"creating the COW file", 0, nil},
		{"attaching the base loop device", 1, [][]string{detachBas}},
		{"attaching the COW loop device", 2, [][]string{detachCOW, detachBas}},
		{"creating the device-mapper device", 3, [][]string{rmDM, detachCOW, detachBas}},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("record%d", i+1), func(t *testing.T) {
			spec := testSpec(t)
			mkdirCOWDir(t, spec)
			f := newFake()
			n := 0
			_, err := Create(context.Background(), f, spec, func(Handles) error {
				n++
				if n == i+1 {
					return errors.New("disk full")
				}
				return nil
			})
			want := "dmsnap: record handles after " + tc.step + ": disk full"
			if err == nil || err.Error() != want {
				t.Fatalf("err = %v, want %q", err, want)
			}
			if n != i+1 {
				t.Errorf("record called %d times after it failed on call %d", n, i+1)
			}
			assertCalls(t, f.callsSince(0), append(createArgv(spec)[:tc.calls:tc.calls], tc.teardown...))
			f.assertNothingLeft(t, spec.COWPath)
		})
	}
}

// TestCreateCleansUpAfterCancel: the caller's context dies mid-create;
// the teardown still runs.
func TestCreateCleansUpAfterCancel(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFake()
	f.onCall = func(n int) {
		if n == 3 {
			cancel()
		}
	}
	_, err := Create(ctx, f, spec, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	assertCalls(t, f.callsSince(0), append(createArgv(spec), detachCOW, detachBas))
	f.assertNothingLeft(t, spec.COWPath)
}

// TestCreateCleanupFails: the step's error and the teardown's are both
// reported, and the handles that could not be torn down are returned.
func TestCreateCleanupFails(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	f := newFake()
	calls := 0
	f.onCall = func(n int) {
		// Fail dmsetup create (call 3), then the COW loop's detach (4).
		calls = n
		f.mu.Lock()
		defer f.mu.Unlock()
		f.failAt = 0
		if n == 3 || n == 4 {
			f.failAt = n
		}
	}
	h, err := Create(context.Background(), f, spec, nil)
	if err == nil {
		t.Fatal("Create succeeded")
	}
	for _, want := range []string{
		"dmsnap: create device-mapper device " + testName + ": ",
		"dmsnap: cleanup after failed create: dmsnap: detach COW loop device /dev/loop1: ",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if calls != 5 {
		t.Errorf("%d runner calls, want 5", calls)
	}
	if want := (Handles{COWLoop: "/dev/loop1"}); h != want {
		t.Errorf("Create returned %+v, want the handles left over, %+v", h, want)
	}
}

func TestCleanup(t *testing.T) {
	t.Run("empty", func(t *testing.T) {
		f := newFake()
		if err := Cleanup(context.Background(), f, Handles{}); err != nil {
			t.Fatal(err)
		}
		assertCalls(t, f.callsSince(0), nil)
	})

	t.Run("carries on past failures", func(t *testing.T) {
		spec := testSpec(t)
		mkdirCOWDir(t, spec)
		f := newFake()
		h, err := Create(context.Background(), f, spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		f.failAt = 5 // losetup -d of the COW loop
		err = Cleanup(context.Background(), f, h)
		if err == nil || !strings.HasPrefix(err.Error(), "dmsnap: detach COW loop device /dev/loop1: ") {
			t.Fatalf("err = %v, want a detach COW loop error", err)
		}
		assertCalls(t, f.callsSince(3), [][]string{rmDM, detachCOW, detachBas})
		f.mu.Lock()
		left := fmt.Sprint(f.loops)
		f.mu.Unlock()
		if left != "map[/dev/loop1:{"+spec.COWPath+" false}]" {
			t.Errorf("loops left %s, want only /dev/loop1", left)
		}
		if _, err := os.Stat(spec.COWPath); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("COW file not removed: %v", err)
		}
	})

	t.Run("refuses handles that are not its own", func(t *testing.T) {
		f := newFake()
		err := Cleanup(context.Background(), f, Handles{
			BaseLoop: "/dev/sda", COWLoop: "/dev/loop1 --all", DMName: "../x", COWPath: "rel/cow",
		})
		for _, want := range []string{"remove device-mapper device", "detach COW loop device", "detach base loop device", "remove COW file"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v lacks %q", err, want)
			}
		}
		assertCalls(t, f.callsSince(0), nil)
	})
}

func TestRemoveRetriesWhileBusy(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	f := newFake()
	h, err := Create(context.Background(), f, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.busy = 2
	start := time.Now()
	if err := Remove(context.Background(), f, h); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if d := time.Since(start); d < 2*removeRetryDelay {
		t.Errorf("Remove took %v; want it to wait %v between tries", d, removeRetryDelay)
	}
	assertCalls(t, f.callsSince(3), [][]string{rmDM, rmDM, rmDM, detachCOW, detachBas})
	f.assertNothingLeft(t, spec.COWPath)
}

func TestRemoveGivesUpWhenStillBusy(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	f := newFake()
	h, err := Create(context.Background(), f, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.busy = -1
	err = remove(context.Background(), f, h, retryPolicy{tries: removeTries, delay: time.Millisecond})
	want := "dmsnap: remove device-mapper device " + testName + ": still busy after 10 tries (is a VMM still holding /dev/mapper/" + testName + " open?): "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v, want prefix %q", err, want)
	}
	var ce *system.CommandError
	if !errors.As(err, &ce) {
		t.Errorf("error does not wrap the *system.CommandError")
	}
	// Ten tries, then nothing else: the loops and the COW file stay with
	// the live dm device, so the same handles can be removed later.
	var wantCalls [][]string
	for range removeTries {
		wantCalls = append(wantCalls, rmDM)
	}
	assertCalls(t, f.callsSince(3), wantCalls)
	if _, err := os.Stat(spec.COWPath); err != nil {
		t.Errorf("COW file of a live device removed: %v", err)
	}

	f.busy = 0
	if err := Remove(context.Background(), f, h); err != nil {
		t.Fatalf("Remove once no longer busy: %v", err)
	}
	f.assertNothingLeft(t, spec.COWPath)
}

func TestRemoveStopsOnOtherErrors(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	f := newFake()
	h, err := Create(context.Background(), f, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.failAt = 4
	err = Remove(context.Background(), f, h)
	if err == nil || !strings.HasPrefix(err.Error(), "dmsnap: remove device-mapper device "+testName+": ") {
		t.Fatalf("err = %v", err)
	}
	assertCalls(t, f.callsSince(3), [][]string{rmDM})
}

func TestRemoveHonoursContextWhileWaiting(t *testing.T) {
	spec := testSpec(t)
	mkdirCOWDir(t, spec)
	f := newFake()
	h, err := Create(context.Background(), f, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.busy = -1
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = remove(ctx, f, h, retryPolicy{tries: 1000, delay: 10 * time.Second})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Remove took %v after its context ended", d)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	base := makeBase(t, dir, 1<<20)
	odd := filepath.Join(dir, "odd.img")
	if err := os.WriteFile(odd, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := makeBase(t, t.TempDir(), 0)
	existing := filepath.Join(dir, "existing.cow")
	if err := os.WriteFile(existing, []byte("someone else's"), 0o600); err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(dir, "new.cow")
	ok := Spec{Name: testName, BasePath: base, COWPath: cow}

	cases := []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"empty name", func(s *Spec) { s.Name = "" }, "empty device-mapper name"},
		{"space", func(s *Spec) { s.Name = "banger vm" }, "may only hold"},
		{"slash", func(s *Spec) { s.Name = "banger/vm" }, "may only hold"},
		{"dot", func(s *Spec) { s.Name = ".." }, "may only hold"},
		{"leading dash", func(s *Spec) { s.Name = "--help" }, "must not start with '-'"},
		{"too long", func(s *Spec) { s.Name = strings.Repeat("a", 101) }, "at most 100"},
		{"missing base", func(s *Spec) { s.BasePath = filepath.Join(dir, "nope.img") }, "no such file"},
		{"relative base", func(s *Spec) { s.BasePath = "base.img" }, "not absolute"},
		{"base is a directory", func(s *Spec) { s.BasePath = dir }, "not a regular file"},
		{"empty base", func(s *Spec) { s.BasePath = empty }, "non-zero multiple of 512"},
		{"odd-sized base", func(s *Spec) { s.BasePath = odd }, "non-zero multiple of 512"},
		{"COW exists", func(s *Spec) { s.COWPath = existing }, "already exists"},
		{"relative COW", func(s *Spec) { s.COWPath = "x.cow" }, "not absolute"},
		{"negative COW size", func(s *Spec) { s.COWSize = -1 }, "negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := ok
			tc.edit(&spec)
			f := newFake()
			_, err := Create(context.Background(), f, spec, func(Handles) error {
				t.Error("record called")
				return nil
			})
			if err == nil || !strings.HasPrefix(err.Error(), "dmsnap: invalid spec: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want an invalid spec error containing %q", err, tc.want)
			}
			assertCalls(t, f.callsSince(0), nil)
			if _, err := os.Lstat(cow); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("COW file made for an invalid spec")
			}
		})
	}
	if b, err := os.ReadFile(existing); err != nil || string(b) != "someone else's" {
		t.Fatalf("an existing file at the COW path was touched: %q, %v", b, err)
	}

	for _, name := range []string{"banger-0123abcd", "a", "A_b-9", strings.Repeat("z", 100)} {
		s := ok
		s.Name = name
		if _, err := validate(s); err != nil {
			t.Errorf("validate(%q): %v", name, err)
		}
	}
}

func TestHandlesJSON(t *testing.T) {
	// The daemon persists Handles as JSON and a restarted daemon tears
	// down what it reads back.
	h := Handles{BaseLoop: "/dev/loop0", COWLoop: "/dev/loop1", DMName: testName, DMDev: "/dev/mapper/" + testName, COWPath: "/var/lib/banger/vms/x/root.cow", AutoClear: true}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var back Handles
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != h {
		t.Fatalf("round trip through %s gave %+v, want %+v", b, back, h)
	}
}
