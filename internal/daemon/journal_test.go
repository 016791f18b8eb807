package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/rootdisk"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/store"
)

// crashAt makes the operation that finishes stage end right there, as a
// daemon killed at that point would: its goroutine ends (deferred unlocks
// run), no undo runs and the journal keeps its entries. The returned
// channel is closed when it happened.
func crashAt(t *testing.T, stage string) <-chan struct{} {
	t.Helper()
	crashed := make(chan struct{})
	var once sync.Once
	f := func(s string) error {
		if s == stage {
			once.Do(func() { close(crashed) })
			runtime.Goexit()
		}
		return nil
	}
	testFault.Store(&f)
	t.Cleanup(func() { testFault.Store(nil) })
	return crashed
}

func waitCrash(t *testing.T, crashed <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-crashed:
		testFault.Store(nil)
	case <-time.After(60 * time.Second):
		t.Fatalf("%s never reached its crash point", what)
	}
}

// journalOf is what the journal holds for target: "step:action" in order.
func journalOf(t *testing.T, d *Daemon, target string) []string {
	t.Helper()
	es, err := d.store.Journal(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if e.Target != target {
			continue
		}
		var a journalAct
		if err := json.Unmarshal([]byte(e.Action), &a); err != nil {
			t.Fatal(err)
		}
		out = append(out, e.OpKind+" "+e.Step+": "+a.Do)
	}
	return out
}

// lockedBuffer is a log sink the daemon's goroutines may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// replayedBy lists the actions a restarted daemon's log says it replayed
// from the journal for target.
func replayedBy(log string, target string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "journal: replayed" || rec["target"] != target {
			continue
		}
		out = append(out, rec["do"].(string))
	}
	return out
}

// TestJournalReplaysWhatACrashLeft kills operations (as a crash would:
// nothing after the step runs, no undo) in the middle of a create, a
// start and a delete, then starts a new daemon on the same state: it
// replays each one's journal — undoing the create, stopping the start,
// finishing the delete — and nothing is left on the host.
func TestJournalReplaysWhatACrashLeft(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	l := newLifecycle(t)
	if _, errMsg := l.create(api.VMCreateParams{Name: "keep"}, ""); errMsg != "" {
		t.Fatalf("create keep: %s", errMsg)
	}
	keep := l.running("keep")

	for _, tc := range []struct {
		stage   string
		journal []string
		replay  []string
	}{
		{stageTap, []string{"vm.create reserve: drop_row", "vm.create prepare root disk: remove_path", "vm.create make identity: unpin_hosts",
			"vm.create claim tap: release_runtime"}, []string{"release_runtime", "unpin_hosts", "remove_path", "drop_row"}},
		{stageWaitSSH, []string{"vm.create reserve: drop_row", "vm.create prepare root disk: remove_path", "vm.create make identity: unpin_hosts",
			"vm.create claim tap: release_runtime", "vm.create start VMM: kill_vmm"},
			[]string{"kill_vmm", "release_runtime", "unpin_hosts", "remove_path", "drop_row"}},
	} {
		name := "c-" + strings.ToLower(strings.ReplaceAll(tc.stage, " ", "-"))
		crashed := crashAt(t, tc.stage)
		var begin api.VMCreateBeginResult
		l.must("vm.create.begin", api.VMCreateParams{Name: name, Image: "base", DiskSize: "64M"}, &begin)
		waitCrash(t, crashed, "create "+name)
		if got := journalOf(t, l.d, name); !slices.Equal(got, tc.journal) {
			t.Errorf("create crashed after %q: journal\n%q\nwant\n%q", tc.stage, got, tc.journal)
		}
		row := l.row(name)
		if row.State != store.StateCreating {
			t.Fatalf("%s is %s after the crash, want creating", name, row.State)
		}
		var logs lockedBuffer
		l = l.restartLogging(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if got := replayedBy(logs.String(), name); !slices.Equal(got, tc.replay) {
			t.Errorf("create crashed after %q: the new daemon replayed %q, want %q", tc.stage, got, tc.replay)
		}
		if err := l.call("vm.show", api.VMRef{Name: name}, nil); !api.IsCode(err, api.CodeNotFound) {
			t.Errorf("create crashed after %q: vm.show says %v, want not found", tc.stage, err)
		}
		if _, err := os.Stat(l.d.pathsFor(row.ID).dir); !os.IsNotExist(err) {
			t.Errorf("create crashed after %q: its VM dir is still there", tc.stage)
		}
		if got := journalOf(t, l.d, name); len(got) != 0 {
			t.Errorf("create crashed after %q: the journal still holds %q", tc.stage, got)
		}
		if row.PID != 0 && slices.Contains(l.standins(), row.PID) {
			t.Errorf("create crashed after %q: its VMM (pid %d) still runs", tc.stage, row.PID)
		}
		l.noLeaks("after a create crashed after " + tc.stage)
		if v := l.running("keep"); v.PID != keep.PID {
			t.Errorf("keep's VMM changed across the crash: pid %d, was %d", v.PID, keep.PID)
		}
	}

	// A start that dies once its VMM runs: the next daemon kills that VMM
	// and records the VM stopped, with the reason; it starts again.
	if _, errMsg := l.create(api.VMCreateParams{Name: "s", NoStart: true}, ""); errMsg != "" {
		t.Fatalf("create s: %s", errMsg)
	}
	crashed := crashAt(t, stageStartVMM)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = (&rpc.Client{SocketPath: l.d.layout.SocketPath}).Call(ctx, "vm.start", api.VMRef{Name: "s"}, nil)
	}()
	waitCrash(t, crashed, "start s")
	wantJournal := []string{"vm.start begin: mark_stopped", "vm.start claim tap: release_runtime", "vm.start start VMM: kill_vmm"}
	if got := journalOf(t, l.d, "s"); !slices.Equal(got, wantJournal) {
		t.Errorf("start crashed: journal %q, want %q", got, wantJournal)
	}
	s := l.row("s")
	if s.State != store.StateStarting || s.PID == 0 {
		t.Fatalf("s after the crash: state %s pid %d, want starting with its VMM recorded", s.State, s.PID)
	}
	var logs lockedBuffer
	l = l.restartLogging(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if got, want := replayedBy(logs.String(), "s"), []string{"kill_vmm", "release_runtime", "mark_stopped"}; !slices.Equal(got, want) {
		t.Errorf("start crashed: the new daemon replayed %q, want %q", got, want)
	}
	// (Not l.stopped: the new daemon's pool may have made a new idle tap
	// of the name; the leak checker tells a tap nothing accounts for.)
	stopped := l.row("s")
	if stopped.State != store.StateStopped || stopped.Tap != "" || stopped.PID != 0 {
		t.Errorf("s after the replay: state %s tap %q pid %d, want stopped with neither", stopped.State, stopped.Tap, stopped.PID)
	}
	if slices.Contains(l.standins(), s.PID) {
		t.Errorf("the VMM of the start that crashed (pid %d) still runs", s.PID)
	}
	if _, err := os.Stat(l.d.pathsFor(s.ID).run); !os.IsNotExist(err) {
		t.Errorf("the runtime dir of the start that crashed is still there")
	}
	if !strings.Contains(stopped.LastError, "bangerd stopped while the VM was starting") {
		t.Errorf("s's last error %q does not say its start was interrupted", stopped.LastError)
	}
	l.noLeaks("after a start crashed")
	l.must("vm.start", api.VMRef{Name: "s"}, nil)
	s = l.running("s")

	// A delete that dies once the VM's files are gone: the next daemon
	// finishes it (before the journal, the VM stayed, its files lost).
	crashed = crashAt(t, stageDeleteFiles)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = (&rpc.Client{SocketPath: l.d.layout.SocketPath}).Call(ctx, "vm.delete", api.VMRef{Name: "s"}, nil)
	}()
	waitCrash(t, crashed, "delete s")
	if got, want := journalOf(t, l.d, "s"), []string{"vm.delete begin: finish_delete"}; !slices.Equal(got, want) {
		t.Errorf("delete crashed: journal %q, want %q", got, want)
	}
	logs = lockedBuffer{}
	l = l.restartLogging(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if got, want := replayedBy(logs.String(), "s"), []string{"finish_delete"}; !slices.Equal(got, want) {
		t.Errorf("delete crashed: the new daemon replayed %q, want %q", got, want)
	}
	if err := l.call("vm.show", api.VMRef{Name: "s"}, nil); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("a delete that crashed was not finished: vm.show says %v", err)
	}
	l.noLeaks("after a delete crashed")
	if v := l.running("keep"); v.PID != keep.PID {
		t.Errorf("keep's VMM changed across the crashes: pid %d, was %d", v.PID, keep.PID)
	}
	l.must("vm.delete", api.VMRef{Name: "keep"}, nil)
	l.noLeaks("at the end")
}

// TestJournalRemovesOnlyBangersPaths: a journal entry is never a way to
// delete a file outside banger's own directories.
func TestJournalRemovesOnlyBangersPaths(t *testing.T) {
	d := openArtifactDaemon(t)
	outside := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{outside, d.layout.StateDir, d.layout.StateDir + "/../escape", "/"} {
		if err := d.replayAct(t.Context(), journalAct{Do: actRemovePath, Path: p}); err == nil || !strings.Contains(err.Error(), "refusing to touch") {
			t.Errorf("remove_path %s: %v, want a refusal", p, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the file outside banger's directories went: %v", err)
	}
	// Inside: a tree, and entries by prefix (never a sibling that only
	// shares a longer name).
	mk := func(p string) string {
		p = filepath.Join(d.layout.CacheDir, "build", p)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tree, s1, s2, other := mk("kernel-k"), mk(".k.1234"), mk(".k.5678"), mk(".kk.1")
	if err := d.replayAct(t.Context(), journalAct{Do: actRemovePath, Path: tree}); err != nil {
		t.Fatal(err)
	}
	if err := d.replayAct(t.Context(), journalAct{Do: actRemovePath, Path: filepath.Join(d.layout.CacheDir, "build", ".k."), Prefix: true}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tree, s1, s2} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived its removal", p)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("%s (another name) went with the prefix .k.: %v", other, err)
	}
	if err := d.replayAct(t.Context(), journalAct{Do: "format_disk"}); err == nil {
		t.Error("an unknown action was accepted")
	}
}

// TestJournalUnfreeze: a clone that froze its source's disk into a layer
// and died before the source's row said so has the disk put back; one
// whose row records the layer is left alone.
func TestJournalUnfreeze(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skipf("needs qemu-img: %v", err)
	}
	d := openArtifactDaemon(t)
	ctx := context.Background()
	base := filepath.Join(d.layout.ImagesDir, "img", "rootfs.ext4")
	if err := os.MkdirAll(filepath.Dir(base), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base, bytes.Repeat([]byte{0x5a}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	src := store.VM{Name: "src", Image: "img", Kernel: "k", State: store.StateStopped, VCPU: 1, MemoryMiB: 256, DiskSizeBytes: 64 << 20, VMM: "qemu"}
	if err := d.store.CreateVM(ctx, &src); err != nil {
		t.Fatal(err)
	}
	dir := d.pathsFor(src.ID).dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := rootdisk.Create(ctx, d.runner, rootdisk.QCOW2, base, filepath.Join(dir, "root.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	src.RootDisk = encodeDisk(root)
	if err := d.store.UpdateVM(ctx, src); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(root.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d.layersDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(d.layersDir(), "clone1-root")
	act := journalAct{Do: actUnfreeze, VM: "src", Path: root.Path, Layer: layer}
	clone := func(dst string) rootdisk.Disk {
		t.Helper()
		newSrc, _, err := rootdisk.Clone(ctx, d.runner, root, filepath.Join(t.TempDir(), dst), layer, "qemu")
		if err != nil {
			t.Fatal(err)
		}
		return newSrc
	}

	clone("a.qcow2") // the row never learns of it
	if err := d.replayAct(ctx, act); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(root.Path); !bytes.Equal(after, before) {
		t.Error("the source's disk was not put back")
	}
	if _, err := os.Lstat(layer); !os.IsNotExist(err) {
		t.Errorf("the layer is still there: %v", err)
	}

	newSrc := clone("b.qcow2") // this time the row records it
	src.RootDisk = encodeDisk(newSrc)
	if err := d.store.UpdateVM(ctx, src); err != nil {
		t.Fatal(err)
	}
	if err := d.replayAct(ctx, act); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(layer); err != nil {
		t.Errorf("a layer the source's row records was removed: %v", err)
	}
	if after, _ := os.ReadFile(root.Path); bytes.Equal(after, before) {
		t.Error("a recorded freeze was undone")
	}
	// A layer nothing records, under a disk that is not an overlay on
	// it: neither is touched.
	stray := filepath.Join(d.layersDir(), "stray")
	if err := os.WriteFile(stray, []byte("not the source's"), 0o600); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(root.Path)
	if err := d.replayAct(ctx, journalAct{Do: actUnfreeze, VM: "src", Path: root.Path, Layer: stray}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(root.Path); !bytes.Equal(after, cur) {
		t.Error("unfreeze replaced a disk that does not stand on the layer")
	}
	if _, err := os.Stat(stray); err != nil {
		t.Errorf("unfreeze moved a layer the disk does not stand on: %v", err)
	}
	// Never a path outside banger's trees.
	if err := d.replayAct(ctx, journalAct{Do: actUnfreeze, VM: "src", Path: "/etc/passwd", Layer: layer}); err == nil {
		t.Error("unfreeze accepted a path outside banger's directories")
	}
}

// TestJournalKeepsWhatFailed: an operation one of whose actions failed
// stays in the journal for the next start; one that replayed goes.
func TestJournalKeepsWhatFailed(t *testing.T) {
	d := openArtifactDaemon(t)
	ctx := context.Background()
	scratch := filepath.Join(d.layout.CacheDir, "build", "scratch")
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	add := func(op string, a journalAct) {
		b, _ := json.Marshal(a)
		if err := d.store.JournalAppend(ctx, store.JournalEntry{OpID: op, Seq: 1, OpKind: journalVMSet, Target: "v", Step: "s", Action: string(b)}); err != nil {
			t.Fatal(err)
		}
	}
	add("op-bad", journalAct{Do: actRemovePath, Path: "/etc/banger-journal-test"})
	add("op-good", journalAct{Do: actRemovePath, Path: scratch})
	d.replayJournal(ctx)
	es, err := d.store.Journal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].OpID != "op-bad" {
		t.Errorf("after the replay the journal holds %+v, want only op-bad", es)
	}
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Errorf("op-good's path is still there: %v", err)
	}
}

// TestJournalSparesVMsMadeSince: an operation replayed late (kept after a
// failed action) never touches a VM made since: not one that took the
// name (another id), not the host keys of one that took the address.
func TestJournalSparesVMsMadeSince(t *testing.T) {
	d := openArtifactDaemon(t)
	ctx := context.Background()
	v := store.VM{Name: "web", Image: "img", Kernel: "k", State: store.StateStopped, VCPU: 1, MemoryMiB: 256, DiskSizeBytes: 64 << 20,
		VMM: "qemu", IP: "10.9.0.7", MAC: "02:bb:0a:09:00:07"}
	if err := d.store.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	_, pub, err := sshx.NewHostKey("web")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(d.layout.KnownHosts), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := sshx.PinHostKey(d.layout.KnownHosts, pub, "10.9.0.7", "web.vm"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []journalAct{
		{Do: actFinishDelete, VM: "web", ID: "an-older-web"},
		{Do: actUnpinHosts, Hosts: []string{"10.9.0.7", "web.vm"}},
	} {
		if err := d.replayAct(ctx, a); err != nil {
			t.Fatalf("%+v: %v", a, err)
		}
	}
	if _, err := d.store.GetVM(ctx, "web"); err != nil {
		t.Errorf("a delete of an older VM called web removed the new one: %v", err)
	}
	b, _ := os.ReadFile(d.layout.KnownHosts)
	if !strings.Contains(string(b), "10.9.0.7") || !strings.Contains(string(b), "web.vm") {
		t.Errorf("the host keys of a VM on record were unpinned:\n%s", b)
	}
	// The same delete with the VM's own id finishes it.
	if err := d.replayAct(ctx, journalAct{Do: actFinishDelete, VM: "web", ID: v.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.GetVM(ctx, "web"); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("finish_delete with the VM's id: %v, want it gone", err)
	}
}
