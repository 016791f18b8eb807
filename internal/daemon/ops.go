package daemon

import (
	"context"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/daemon/opstate"
)

// opCore is the state every async operation shares: identity, current
// stage, completion and cancellation. Kind-specific operations embed it.
type opCore struct {
	id      string
	kind    string
	target  string
	started time.Time
	cancel  context.CancelFunc
	now     func() time.Time

	mu      sync.Mutex
	stage   string
	done    bool
	err     string
	updated time.Time
	doneCh  chan struct{}

	progressDone, progressTotal int64
}

func newOpCore(id, kind, target string, cancel context.CancelFunc, now func() time.Time) opCore {
	t := now()
	return opCore{id: id, kind: kind, target: target, started: t, updated: t, cancel: cancel, now: now, doneCh: make(chan struct{})}
}

func (o *opCore) ID() string { return o.id }

func (o *opCore) IsDone() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done
}

func (o *opCore) UpdatedAt() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.updated
}

func (o *opCore) Cancel() {
	if o.cancel != nil {
		o.cancel()
	}
}

func (o *opCore) setStage(stage string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stage = stage
	o.progressDone, o.progressTotal = 0, 0
	o.updated = o.now()
}

// setProgress sets the stage and how many of its total bytes are done.
func (o *opCore) setProgress(stage string, done, total int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stage = stage
	o.progressDone, o.progressTotal = done, total
	o.updated = o.now()
}

func (o *opCore) finish(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return
	}
	o.done = true
	if err != nil {
		o.err = err.Error()
	}
	o.updated = o.now()
	close(o.doneCh)
}

// wait is closed when the operation has finished.
func (o *opCore) wait() <-chan struct{} { return o.doneCh }

func (o *opCore) summary() api.OperationSummary {
	o.mu.Lock()
	defer o.mu.Unlock()
	return api.OperationSummary{ID: o.id, Kind: o.kind, Target: o.target, Stage: o.stage,
		Done: o.done, Error: o.err, StartedAt: o.started, UpdatedAt: o.updated,
		ProgressDone: o.progressDone, ProgressTotal: o.progressTotal}
}

// operations holds one registry per async kind.
type operations struct {
	vmCreate   *opstate.Registry[*vmCreateOp]
	imagePull  *opstate.Registry[*pullOp]
	kernelPull *opstate.Registry[*pullOp]
	imageBuild *opstate.Registry[*imageBuildOp]
}

func newOperations() *operations {
	return &operations{
		vmCreate:   opstate.NewRegistry[*vmCreateOp](),
		imagePull:  opstate.NewRegistry[*pullOp](),
		kernelPull: opstate.NewRegistry[*pullOp](),
		imageBuild: opstate.NewRegistry[*imageBuildOp](),
	}
}

// ListOperations returns a summary of every registered operation, done ones
// included, oldest first.
func (d *Daemon) ListOperations(ctx context.Context) api.OperationsListResult {
	out := []api.OperationSummary{}
	for _, op := range d.ops.vmCreate.List() {
		out = append(out, op.summary())
	}
	for _, op := range d.ops.imagePull.List() {
		out = append(out, op.summary())
	}
	for _, op := range d.ops.kernelPull.List() {
		out = append(out, op.summary())
	}
	for _, op := range d.ops.imageBuild.List() {
		out = append(out, op.summary())
	}
	opstate.SortByStart(out, func(s api.OperationSummary) time.Time { return s.StartedAt })
	return api.OperationsListResult{Operations: out}
}

// pruneOperations forgets finished operations older than the retention.
func (d *Daemon) pruneOperations() int {
	cutoff := d.now().Add(-time.Duration(d.cfg.OpsRetention))
	return d.ops.vmCreate.Prune(cutoff) + d.ops.imagePull.Prune(cutoff) + d.ops.kernelPull.Prune(cutoff) + d.ops.imageBuild.Prune(cutoff)
}

// cancelOperation cancels the operation opID, whatever its kind, and
// waits (bounded by ctx) for its rollback to finish.
func (d *Daemon) cancelOperation(ctx context.Context, p api.OpRef) (api.OperationSummary, error) {
	type cancellable interface {
		Cancel()
		summary() api.OperationSummary
		wait() <-chan struct{}
	}
	var op cancellable
	if o, ok := d.ops.vmCreate.Get(p.OpID); ok {
		op = o
	} else if o, ok := d.ops.imagePull.Get(p.OpID); ok {
		op = o
	} else if o, ok := d.ops.kernelPull.Get(p.OpID); ok {
		op = o
	} else if o, ok := d.ops.imageBuild.Get(p.OpID); ok {
		op = o
	}
	if op == nil {
		return api.OperationSummary{}, api.Errorf(api.CodeNotFound, "operation %q not found; banger ops lists them", p.OpID)
	}
	op.Cancel()
	select {
	case <-op.wait():
	case <-ctx.Done():
	}
	return op.summary(), nil
}

func (d *Daemon) pruneLoop(ctx context.Context) {
	every := time.Duration(d.cfg.OpsRetention) / 4
	if every <= 0 || every > time.Minute {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := d.pruneOperations(); n > 0 {
				d.log.Debug("pruned finished operations", "count", n)
			}
		}
	}
}
