package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/rpc"
)

// pullPoll is how often a pull's progress is asked for.
const pullPoll = 300 * time.Millisecond

// pullSpec configures a pull command.
type pullSpec struct {
	what, arg, short, method string
	params                   func(args []string) any
	// installedIsDone says whether "already exists" for this argument
	// means there is nothing to do (a catalog name), not an error.
	installedIsDone func(arg string) bool
}

// pullCommand begins a kernel.pull or image.pull and follows it until it
// finishes, drawing byte progress as a bar on a terminal and as plain
// lines otherwise.
func pullCommand(app *App, spec pullSpec) *cobra.Command {
	what := spec.what
	return &cobra.Command{
		Use:   "pull " + spec.arg,
		Short: spec.short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := app.client(ctx)
			if err != nil {
				return err
			}
			var res api.PullResult
			if err := c.Call(ctx, spec.method, spec.params(args), &res); err != nil {
				if api.IsCode(err, api.CodeAlreadyExists) && spec.installedIsDone(args[0]) {
					fmt.Fprintf(app.Stdout, "%s\n", userMessage(err))
					return nil
				}
				return err
			}
			verb := "pulling"
			if res.Joined {
				verb = "joining the pull of"
			}
			fmt.Fprintf(app.Stderr, "%s %s %s (operation %s)\n", verb, what, res.Name, res.OpID)
			op, err := followOperation(ctx, c, res.OpID, newProgressView(app.Stderr))
			if err != nil {
				return err
			}
			if op.Error != "" {
				return fmt.Errorf("pull %s %s failed: %s", what, res.Name, op.Error)
			}
			fmt.Fprintf(app.Stdout, "%s %s installed in %s\n", what, res.Name, op.UpdatedAt.Sub(op.StartedAt).Round(time.Second))
			return nil
		},
	}
}

// followOperation polls the operation until it is done, showing it on view.
func followOperation(ctx context.Context, c *rpc.Client, opID string, view progressView) (api.OperationSummary, error) {
	defer view.close()
	for {
		var ops api.OperationsListResult
		if err := c.Call(ctx, "daemon.operations.list", nil, &ops); err != nil {
			return api.OperationSummary{}, err
		}
		op, ok := findOperation(ops.Operations, opID)
		if !ok {
			return api.OperationSummary{}, fmt.Errorf("operation %s disappeared; see banger ops", opID)
		}
		view.update(op)
		if op.Done {
			return op, nil
		}
		select {
		case <-ctx.Done():
			return api.OperationSummary{}, ctx.Err()
		case <-time.After(pullPoll):
		}
	}
}

func findOperation(ops []api.OperationSummary, id string) (api.OperationSummary, bool) {
	for _, op := range ops {
		if op.ID == id {
			return op, true
		}
	}
	return api.OperationSummary{}, false
}

// progressView shows an operation's stages and byte progress.
type progressView interface {
	update(op api.OperationSummary)
	close()
}

// newProgressView draws a bar when w is a terminal, lines otherwise.
func newProgressView(w io.Writer) progressView {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &barView{w: w}
	}
	return &lineView{w: w}
}

// lineView prints each stage once and byte progress at every quarter, so
// a log stays short.
type lineView struct {
	w       io.Writer
	stage   string
	quarter int64
}

func (v *lineView) update(op api.OperationSummary) {
	if op.Stage != v.stage && op.Stage != "" {
		fmt.Fprintf(v.w, "  %s\n", op.Stage)
		v.stage, v.quarter = op.Stage, -1
	}
	if op.ProgressTotal <= 0 {
		return
	}
	q := op.ProgressDone * 4 / op.ProgressTotal
	if q > v.quarter {
		v.quarter = q
		fmt.Fprintf(v.w, "  %s: %s of %s (%d%%)\n", op.Stage, humanBytes(op.ProgressDone), humanBytes(op.ProgressTotal), op.ProgressDone*100/op.ProgressTotal)
	}
}

func (v *lineView) close() {}

// barView draws a progress bar for stages that count bytes.
type barView struct {
	w     io.Writer
	stage string
	bar   *progressbar.ProgressBar
}

func (v *barView) update(op api.OperationSummary) {
	if op.Stage != v.stage && op.Stage != "" {
		v.close()
		v.stage = op.Stage
		if op.ProgressTotal <= 0 {
			fmt.Fprintf(v.w, "  %s\n", op.Stage)
		}
	}
	if op.ProgressTotal <= 0 {
		return
	}
	if v.bar == nil {
		v.bar = progressbar.NewOptions64(op.ProgressTotal,
			progressbar.OptionSetWriter(v.w),
			progressbar.OptionSetDescription("  "+op.Stage),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(v.w) }),
		)
	}
	if v.bar.GetMax64() != op.ProgressTotal {
		v.bar.ChangeMax64(op.ProgressTotal)
	}
	_ = v.bar.Set64(op.ProgressDone)
}

// close ends the current bar where it stands (a stage may end early, or
// fail): only the daemon's own count says a stage is complete.
func (v *barView) close() {
	if v.bar != nil && !v.bar.IsFinished() {
		_ = v.bar.Exit()
	}
	v.bar = nil
}
