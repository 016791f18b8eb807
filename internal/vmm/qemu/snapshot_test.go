package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/vmm/vmmcore"
)

// recordingQMP serves any number of QMP connections, records every
// command with its arguments, and answers from answer (ok by default).
type recordingQMP struct {
	mu     sync.Mutex
	calls  []string
	answer func(cmd string, n int) string // n: how many times cmd was seen before
	seen   map[string]int
}

func (r *recordingQMP) serve(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r.seen = map[string]int{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				c.Write([]byte(greeting + "\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var req struct {
						Execute   string          `json:"execute"`
						Arguments json.RawMessage `json:"arguments"`
					}
					_ = json.Unmarshal(sc.Bytes(), &req)
					r.mu.Lock()
					n := r.seen[req.Execute]
					r.seen[req.Execute]++
					if req.Execute != "qmp_capabilities" {
						r.calls = append(r.calls, strings.TrimSpace(req.Execute+" "+string(req.Arguments)))
					}
					r.mu.Unlock()
					out := `{"return": {}}`
					if r.answer != nil {
						if a := r.answer(req.Execute, n); a != "" {
							out = a
						}
					}
					c.Write([]byte(out + "\n"))
				}
			}()
		}
	}()
	return path
}

func (r *recordingQMP) log() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func TestCommandIncoming(t *testing.T) {
	spec := testSpec(t, []byte("kernel"))
	spec.IncomingState = "/state/it's/state.bin"
	argv, err := New(Config{}).Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := valueAfter(argv, "-incoming"); len(got) != 1 || got[0] != "defer" {
		t.Errorf("-incoming = %q, want defer (the file is handed over by descriptor)", got)
	}
	if got := valueAfter(argv, "-sandbox"); len(got) != 1 || got[0] != "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" {
		t.Errorf("-sandbox = %q", got)
	}
	spec.IncomingState = ""
	argv, _ = New(Config{}).Command(spec)
	if got := valueAfter(argv, "-incoming"); len(got) != 0 {
		t.Errorf("a boot has -incoming %q", got)
	}
}

func TestSaveState(t *testing.T) {
	q := &recordingQMP{answer: func(cmd string, n int) string {
		if cmd == "query-migrate" && n < 2 {
			return `{"return": {"status": "active"}}`
		}
		if cmd == "query-migrate" {
			return `{"return": {"status": "completed", "total-time": 9}}`
		}
		if cmd == "add-fd" {
			return `{"return": {"fdset-id": 3, "fd": 27}}`
		}
		return ""
	}}
	h := vmmcore.Handle{Driver: DriverName, APISocket: q.serve(t)}
	d := New(Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(t.TempDir(), "root-s.qcow2")
	if err := os.WriteFile(overlay, []byte("QFI\xfb"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.SnapshotDisk(ctx, h, "root", overlay); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state.bin")
	if err := d.SaveState(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if err := d.ResizeDisk(ctx, h, "work", 2<<30); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"stop",
		"add-fd",
		`add-fd {"fdset-id":3}`,
		`blockdev-add {"backing":null,"driver":"qcow2","file":{"driver":"file","filename":"/dev/fdset/3","locking":"off"},"node-name":"root-layer-3"}`,
		`blockdev-snapshot {"node":"root","overlay":"root-layer-3"}`,
		`migrate-set-parameters {"max-bandwidth":1099511627776}`,
		`getfd {"fdname":"banger-save"}`,
		`migrate {"uri":"fd:banger-save"}`,
		"query-migrate", "query-migrate", "query-migrate",
		`block_resize {"device":"work","size":2147483648}`,
		"cont",
	}
	if got := q.log(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("QMP calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSaveStateFailure(t *testing.T) {
	q := &recordingQMP{answer: func(cmd string, n int) string {
		if cmd == "query-migrate" {
			return `{"return": {"status": "failed", "error-desc": "disk full"}}`
		}
		return ""
	}}
	h := vmmcore.Handle{Driver: DriverName, APISocket: q.serve(t)}
	err := New(Config{}).SaveState(context.Background(), h, filepath.Join(t.TempDir(), "state.bin"))
	if err == nil || !strings.Contains(err.Error(), "migration failed: disk full") {
		t.Fatalf("SaveState = %v", err)
	}
}

// With RunAs, QEMU drops to that identity; its seccomp filter then has to
// let the drop happen (7.2 installs it first).
func TestCommandRunAs(t *testing.T) {
	spec := testSpec(t, []byte("kernel"))
	spec.RunAs = "1879048194:1879048194"
	argv, err := New(Config{}).Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := valueAfter(argv, "-runas"); len(got) != 1 || got[0] != "1879048194:1879048194" {
		t.Errorf("-runas = %q", got)
	}
	if got := valueAfter(argv, "-sandbox"); len(got) != 1 || got[0] != "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny" {
		t.Errorf("-sandbox = %q", got)
	}
}

// With RunAs the writable disks come from fd sets filled by inherited
// descriptors; the read-only config disk stays a path.
func TestCommandFDSets(t *testing.T) {
	spec := testSpec(t, []byte("kernel"))
	spec.RunAs = "1879048194:1879048194"
	spec.ConfigDisk = filepath.Join(t.TempDir(), "config.img")
	argv, err := New(Config{}).command(spec, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"fd=3,set=1,opaque=root-rw", "fd=4,set=1,opaque=root-ro", "fd=5,set=2,opaque=work-rw", "fd=6,set=2,opaque=work-ro"}
	if got := valueAfter(argv, "-add-fd"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("-add-fd = %q, want %q", got, want)
	}
	drives := strings.Join(valueAfter(argv, "-drive"), " ")
	for _, w := range []string{"id=root,file=/dev/fdset/1,", "id=work,file=/dev/fdset/2,", "id=config,file=" + spec.ConfigDisk + ","} {
		if !strings.Contains(drives, w) {
			t.Errorf("drives %q lack %q", drives, w)
		}
	}
	files, err := diskFiles(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(files)
	if len(files) != 4 {
		t.Fatalf("diskFiles opened %d files, want 4", len(files))
	}
}

// A tap handed over as a descriptor is inherited after the disks'.
func TestCommandTapFile(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	spec := testSpec(t, []byte("kernel"))
	spec.Tap, spec.TapFile = "bg-x", f
	for _, tc := range []struct {
		fdSets bool
		want   string
	}{{false, "tap,id=net0,fd=3"}, {true, "tap,id=net0,fd=7"}} {
		argv, err := New(Config{}).command(spec, tc.fdSets)
		if err != nil {
			t.Fatal(err)
		}
		if got := valueAfter(argv, "-netdev"); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("fd sets %v: -netdev %q, want %q", tc.fdSets, got, tc.want)
		}
	}
}
