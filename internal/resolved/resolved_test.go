package resolved

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type fakeRunner struct {
	calls  [][]string
	failAt int // 1-based call that fails; 0: none
}

func (f *fakeRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	f.calls = append(f.calls, argv)
	if len(f.calls) == f.failAt {
		return nil, errors.New("resolvectl: Failed to set DNS configuration: link not found")
	}
	return nil, nil
}

func TestRouteRunsResolvectlInOrder(t *testing.T) {
	r := &fakeRunner{}
	if err := Route(context.Background(), r, "banger0", "172.30.0.1", "vm"); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"resolvectl", "dns", "banger0", "172.30.0.1"},
		{"resolvectl", "domain", "banger0", "~vm"},
		{"resolvectl", "default-route", "banger0", "false"},
	}
	if !reflect.DeepEqual(r.calls, want) {
		t.Fatalf("calls = %q, want %q", r.calls, want)
	}
}

func TestRouteFailureRevertsTheLink(t *testing.T) {
	for failAt := 1; failAt <= 3; failAt++ {
		r := &fakeRunner{failAt: failAt}
		err := Route(context.Background(), r, "banger0", "172.30.0.1", "vm")
		if err == nil || !strings.Contains(err.Error(), "link not found") {
			t.Fatalf("failAt %d: err = %v", failAt, err)
		}
		last := r.calls[len(r.calls)-1]
		if !reflect.DeepEqual(last, []string{"resolvectl", "revert", "banger0"}) {
			t.Fatalf("failAt %d: last call %q, want a revert", failAt, last)
		}
		if len(r.calls) != failAt+1 {
			t.Fatalf("failAt %d: %d calls, want %d (no step after the failure)", failAt, len(r.calls), failAt+1)
		}
	}
}

func TestRouteRefusesMalformedArguments(t *testing.T) {
	for _, args := range [][3]string{{"", "1.2.3.4", "vm"}, {"br0", "", "vm"}, {"br0", "1.2.3.4 5.6.7.8", "vm"}} {
		r := &fakeRunner{}
		if err := Route(context.Background(), r, args[0], args[1], args[2]); err == nil || len(r.calls) != 0 {
			t.Fatalf("Route%q: err %v, calls %q", args, err, r.calls)
		}
	}
}

// TestCheck: resolved counts as managing DNS here only when its runtime
// directory exists and its stub answers from this network namespace.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "resolve")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stub := ln.Addr().String()
	if err := (Host{RuntimeDir: run, Stub: stub}).Check(); !errors.Is(err, ErrNotManaged) {
		t.Fatalf("no runtime dir: %v", err)
	}
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (Host{RuntimeDir: run, Stub: stub}).Check(); err != nil {
		t.Fatalf("resolved running, its stub answering: %v", err)
	}
	ln.Close()
	err = (Host{RuntimeDir: run, Stub: stub}).Check()
	if !errors.Is(err, ErrNotManaged) || !strings.Contains(err.Error(), stub) {
		t.Fatalf("stub not answering here (another namespace): %v", err)
	}
}
