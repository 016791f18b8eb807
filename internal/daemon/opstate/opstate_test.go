package opstate

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

type fakeOp struct {
	mu       sync.Mutex
	id       string
	done     bool
	updated  time.Time
	canceled bool
}

func (f *fakeOp) ID() string { return f.id }
func (f *fakeOp) IsDone() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done
}
func (f *fakeOp) UpdatedAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updated
}
func (f *fakeOp) Cancel() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.canceled = true
}

func TestListEmptyIsNonNilEmpty(t *testing.T) {
	r := NewRegistry[*fakeOp]()
	got := r.List()
	if got == nil || len(got) != 0 {
		t.Fatalf("List() on empty registry = %#v, want empty non-nil slice", got)
	}
	var zero Registry[*fakeOp]
	if l := zero.List(); len(l) != 0 {
		t.Fatalf("zero registry List() = %v", l)
	}
}

func TestListIsSnapshot(t *testing.T) {
	r := NewRegistry[*fakeOp]()
	a, b := &fakeOp{id: "a"}, &fakeOp{id: "b"}
	r.Insert(a)
	r.Insert(b)

	snap := r.List()
	if len(snap) != 2 || snap[0].ID() != "a" || snap[1].ID() != "b" {
		t.Fatalf("List() = %v, want [a b] in insertion order", ids(snap))
	}
	// Mutating the snapshot must not touch the registry.
	snap[0] = &fakeOp{id: "intruder"}
	snap = append(snap[:1], snap[2:]...)
	_ = snap
	again := r.List()
	if len(again) != 2 || again[0] != a || again[1] != b {
		t.Fatalf("registry changed after mutating a snapshot: %v", ids(again))
	}
	// Later inserts do not appear in an earlier snapshot.
	old := r.List()
	r.Insert(&fakeOp{id: "c"})
	if len(old) != 2 {
		t.Fatalf("old snapshot grew to %d", len(old))
	}
	if r.Len() != 3 {
		t.Fatalf("Len = %d, want 3", r.Len())
	}
}

func TestInsertSameIDReplaces(t *testing.T) {
	r := NewRegistry[*fakeOp]()
	r.Insert(&fakeOp{id: "a"})
	second := &fakeOp{id: "a", done: true}
	r.Insert(second)
	if got := r.List(); len(got) != 1 || got[0] != second {
		t.Fatalf("List() = %v, want just the replacement", ids(got))
	}
	if got, ok := r.Get("a"); !ok || got != second {
		t.Fatalf("Get(a) = %v, %v", got, ok)
	}
	if _, ok := r.Get("missing"); ok {
		t.Fatal("Get(missing) found something")
	}
}

func TestPruneOnlyOldDoneOps(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r := NewRegistry[*fakeOp]()
	r.Insert(&fakeOp{id: "old-done", done: true, updated: now.Add(-2 * time.Hour)})
	r.Insert(&fakeOp{id: "old-running", updated: now.Add(-2 * time.Hour)})
	r.Insert(&fakeOp{id: "new-done", done: true, updated: now.Add(-time.Minute)})

	if n := r.Prune(now.Add(-time.Hour)); n != 1 {
		t.Fatalf("Prune removed %d, want 1", n)
	}
	got := ids(r.List())
	if fmt.Sprint(got) != "[old-running new-done]" {
		t.Fatalf("after prune: %v", got)
	}
	if _, ok := r.Get("old-done"); ok {
		t.Fatal("pruned op still reachable through Get")
	}
}

func TestConcurrentInsertListPrune(t *testing.T) {
	r := NewRegistry[*fakeOp]()
	const writers, perWriter = 4, 200
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				r.Insert(&fakeOp{id: fmt.Sprintf("%d-%d", w, i), done: i%2 == 0, updated: time.Unix(0, 0)})
			}
		}(w)
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for k := 0; k < 2; k++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; i < 500; i++ {
				select {
				case <-stop:
					return
				default:
				}
				for _, op := range r.List() {
					_ = op.ID()
				}
				r.Prune(time.Unix(1, 0))
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	r.Prune(time.Unix(1, 0))
	// Every running (odd) op survives; every done one is pruned.
	if got := r.Len(); got != writers*perWriter/2 {
		t.Fatalf("Len after prune = %d, want %d", got, writers*perWriter/2)
	}
	for _, op := range r.List() {
		if op.IsDone() {
			t.Fatalf("done op %s survived prune", op.ID())
		}
	}
}

func ids(ops []*fakeOp) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = op.ID()
	}
	return out
}
