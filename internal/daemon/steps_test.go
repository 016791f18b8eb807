package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
)

// recordingSteps returns n steps; step failAt fails, and undo of step
// stuckAt (if >= 0) returns errVMMStillRunning. calls records what ran.
func recordingSteps(n, failAt, stuckAt int, calls *[]string) []step {
	var steps []step
	for i := 0; i < n; i++ {
		i := i
		steps = append(steps, step{name: fmt.Sprintf("s%d", i), do: func(ctx context.Context) (func(context.Context) error, error) {
			*calls = append(*calls, fmt.Sprintf("do%d", i))
			undo := func(context.Context) error {
				*calls = append(*calls, fmt.Sprintf("undo%d", i))
				if i == stuckAt {
					return fmt.Errorf("%w: pid 42", errVMMStillRunning)
				}
				return nil
			}
			if i == failAt {
				return nil, errors.New("boom")
			}
			return undo, nil
		}})
	}
	return steps
}

func TestRunStepsUndoesInReverse(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cases := []struct {
		name            string
		failAt, stuckAt int
		want            string
		errHas          []string
	}{
		{"all succeed", -1, -1, "do0 do1 do2", nil},
		{"last fails", 2, -1, "do0 do1 do2 undo1 undo0", []string{"s2: boom"}},
		{"undo of a live VMM fails: stop there", 2, 1, "do0 do1 do2 undo1", []string{"s2: boom", "cleanup also failed", "could not be stopped"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls []string
			op := &vmCreateOp{opCore: newOpCore("op-1", api.OpKindVMCreate, "vm", func() {}, time.Now)}
			err := runSteps(context.Background(), log, op, nil, recordingSteps(3, tc.failAt, tc.stuckAt, &calls))
			if got := strings.Join(calls, " "); got != tc.want {
				t.Fatalf("calls = %q, want %q", got, tc.want)
			}
			if tc.errHas == nil && err != nil {
				t.Fatalf("err = %v", err)
			}
			for _, s := range tc.errHas {
				if err == nil || !strings.Contains(err.Error(), s) {
					t.Errorf("err %v lacks %q", err, s)
				}
			}
			if tc.stuckAt >= 0 && !errors.Is(err, errVMMStillRunning) {
				t.Errorf("err %v does not carry errVMMStillRunning", err)
			}
			st := op.status()
			if tc.failAt < 0 && (len(st.Stages) != 3 || !st.Stages[2].Done) {
				t.Errorf("stages = %+v", st.Stages)
			}
		})
	}
}

func TestRunStepsCancelledBeforeAnyStep(t *testing.T) {
	var calls []string
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := runSteps(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil, recordingSteps(2, -1, -1, &calls))
	if !errors.Is(err, context.Canceled) || len(calls) != 0 {
		t.Fatalf("err = %v, calls = %v", err, calls)
	}
}
