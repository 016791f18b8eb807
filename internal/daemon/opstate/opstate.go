// Package opstate keeps the daemon's in-flight and recently finished async
// operations (vm.create, image.pull, kernel.pull) in memory.
//
// It owns only the registry: it knows nothing of VMs, images or the RPC layer,
// and it never blocks on an operation's work. Operations are values that
// implement AsyncOp; the registry stores, finds, lists and prunes them.
//
// Invariant: List returns a freshly allocated snapshot, so a caller (the
// update preflight, `banger ops`) may keep or mutate it without touching the
// registry or racing with Insert and Prune.
package opstate

import (
	"sort"
	"sync"
	"time"
)

// AsyncOp is one long-running operation.
type AsyncOp interface {
	ID() string
	IsDone() bool
	UpdatedAt() time.Time
	Cancel()
}

// Registry holds operations of one type, keyed by ID.
type Registry[T AsyncOp] struct {
	mu    sync.Mutex
	ops   map[string]T
	order []string // insertion order, so List is stable
}

// NewRegistry returns an empty registry.
func NewRegistry[T AsyncOp]() *Registry[T] {
	return &Registry[T]{ops: make(map[string]T)}
}

// Insert adds op, replacing any operation with the same ID.
func (r *Registry[T]) Insert(op T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops == nil {
		r.ops = make(map[string]T)
	}
	if _, ok := r.ops[op.ID()]; !ok {
		r.order = append(r.order, op.ID())
	}
	r.ops[op.ID()] = op
}

// Get returns the operation with id.
func (r *Registry[T]) Get(id string) (T, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	return op, ok
}

// List returns a snapshot of every operation, done ones included, in
// insertion order. The slice is freshly allocated on every call.
func (r *Registry[T]) List() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]T, 0, len(r.order))
	for _, id := range r.order {
		out = append(out, r.ops[id])
	}
	return out
}

// Prune removes operations that are done and were last updated before
// olderThan, and returns how many it removed. Operations still running are
// never pruned, however old.
func (r *Registry[T]) Prune(olderThan time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.order[:0]
	removed := 0
	for _, id := range r.order {
		op := r.ops[id]
		if op.IsDone() && op.UpdatedAt().Before(olderThan) {
			delete(r.ops, id)
			removed++
			continue
		}
		kept = append(kept, id)
	}
	// Clear the tail so pruned ids are not retained by the backing array.
	for i := len(kept); i < len(r.order); i++ {
		r.order[i] = ""
	}
	r.order = kept
	return removed
}

// Len reports how many operations are held.
func (r *Registry[T]) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// SortByStart is a helper for callers that merge several registries'
// snapshots: it orders by the given start-time accessor, oldest first.
func SortByStart[T any](ops []T, started func(T) time.Time) {
	sort.SliceStable(ops, func(i, j int) bool { return started(ops[i]).Before(started(ops[j])) })
}
