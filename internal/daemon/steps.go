package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// testFault is the unit tests' fault hook (nil unless a _test file sets
// it): faultAfter calls it, e.g. to end the goroutine of an operation as
// a crash would. Nothing outside the tests sets it.
var testFault atomic.Pointer[func(stage string) error]

// step is one named stage of a VM create or boot. do changes the host and
// returns how to undo exactly what it changed (nil when there is nothing).
type step struct {
	name string
	// rec is how the journal undoes the step after a crash, recorded
	// before do runs (nothing when the step makes nothing, or what it
	// makes goes with an earlier step's undo).
	rec []journalAct
	do  func(ctx context.Context) (undo func(context.Context) error, err error)
}

// errVMMStillRunning is wrapped by an undo that could not end a VMM. The
// rollback stops there: the steps before it (tap, disks, the VM's row)
// stay, so the VM remains recorded, running, and can be killed or
// deleted, instead of a VMM nobody knows about holding its disks.
var errVMMStillRunning = errors.New("the VMM could not be stopped")

// undoTimeout bounds the rollback of a failed pipeline.
const undoTimeout = 90 * time.Second

// runSteps runs steps in order, reporting each stage to op (when non-nil)
// and recording each step's undo in the journal j (when non-nil) before it
// acts. When one fails — or ctx is cancelled — the completed steps are
// undone in reverse with a fresh context, so a cancelled create still
// cleans up. The caller finishes j once the outcome is recorded.
func runSteps(ctx context.Context, log *slog.Logger, op *vmCreateOp, j *journalOp, steps []step) error {
	var undos []func(context.Context) error
	var names []string
	var failed error
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			failed = fmt.Errorf("cancelled before %s: %w", s.name, err)
			break
		}
		if err := j.record(ctx, s.name, s.rec...); err != nil {
			failed = err
			break
		}
		if op != nil {
			op.beginStage(s.name)
		}
		start := time.Now()
		undo, err := s.do(ctx)
		if err == nil {
			err = faultAfter(s.name)
		}
		if op != nil {
			op.endStage(s.name)
		}
		if err != nil {
			if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("%w (cancelled)", err)
			}
			failed = fmt.Errorf("%s: %w", s.name, err)
			log.Warn("step failed", "step", s.name, "err", err, "duration", time.Since(start))
			if undo != nil {
				undos = append(undos, undo)
				names = append(names, s.name)
			}
			break
		}
		log.Debug("step done", "step", s.name, "duration", time.Since(start))
		if undo != nil {
			undos = append(undos, undo)
			names = append(names, s.name)
		}
	}
	if failed == nil {
		return nil
	}
	if op != nil {
		op.setStage("rolling back")
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	var undoErrs []error
	for i := len(undos) - 1; i >= 0; i-- {
		if err := undos[i](uctx); err != nil {
			log.Error("undo failed", "step", names[i], "err", err)
			undoErrs = append(undoErrs, fmt.Errorf("undo %s: %w", names[i], err))
			if errors.Is(err, errVMMStillRunning) {
				break
			}
		}
	}
	if len(undoErrs) > 0 {
		return fmt.Errorf("%w; cleanup also failed: %w", failed, errors.Join(undoErrs...))
	}
	return failed
}
