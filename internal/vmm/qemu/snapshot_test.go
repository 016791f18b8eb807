package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
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
		return ""
	}}
	h := vmmcore.Handle{Driver: DriverName, APISocket: q.serve(t)}
	d := New(Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := d.SnapshotDisk(ctx, h, "root", "/vm/root-s.qcow2"); err != nil {
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
		`blockdev-snapshot-sync {"device":"root","format":"qcow2","mode":"existing","snapshot-file":"/vm/root-s.qcow2"}`,
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
