package store

import (
	"context"
	"testing"

	"banger/internal/api"
)

func TestJournal(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	add := func(op string, seq int, step string) {
		t.Helper()
		if err := s.JournalAppend(ctx, JournalEntry{OpID: op, Seq: seq, OpKind: "vm.create", Target: "web", Step: step, Action: `{"do":"x"}`}); err != nil {
			t.Fatal(err)
		}
	}
	// Operations come back oldest first, each one's entries in order,
	// whatever their ids sort as.
	add("op-b", 1, "reserve")
	add("op-a", 1, "reserve")
	add("op-b", 2, "prepare root disk")
	add("op-a", 2, "claim tap")
	es, err := s.Journal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		got = append(got, e.OpID+"/"+e.Step)
	}
	want := []string{"op-b/reserve", "op-b/prepare root disk", "op-a/reserve", "op-a/claim tap"}
	if len(got) != len(want) {
		t.Fatalf("journal %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("journal %q, want %q", got, want)
		}
	}
	if err := s.JournalAppend(ctx, JournalEntry{OpID: "op-a", Seq: 2, OpKind: "vm.create", Action: `{}`}); !api.IsCode(err, api.CodeAlreadyExists) {
		t.Errorf("a second entry 2 of op-a: %v, want already_exists", err)
	}
	if err := s.JournalAppend(ctx, JournalEntry{OpID: "op-c", Seq: 1, OpKind: "vm.create", Action: `{`}); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("an action that is not JSON: %v, want bad_request", err)
	}
	if err := s.JournalFinish(ctx, "op-b"); err != nil {
		t.Fatal(err)
	}
	if err := s.JournalFinish(ctx, "op-none"); err != nil {
		t.Errorf("finishing an operation with no entries: %v", err)
	}
	es, _ = s.Journal(ctx)
	if len(es) != 2 || es[0].OpID != "op-a" || es[1].OpID != "op-a" {
		t.Errorf("after finishing op-b the journal holds %+v, want op-a's two entries", es)
	}
}
