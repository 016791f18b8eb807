package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func newImageBuildCommand(app *App) *cobra.Command {
	var (
		p        api.ImageBuildParams
		packages []string
		copies   []string
		noNAT    bool
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "build NAME (--from IMAGE | --from-vm VM)",
		Short: "Build an image: packages, files and scripts on a base image, or a stopped VM's root",
		Long: `Build a new image NAME.

--from IMAGE boots a temporary VM of IMAGE (with NAT unless --no-nat),
installs --packages with the image's package manager, copies each --copy
SRC:DST in, runs each --script as root in /root (output shown as it comes;
a non-zero exit fails the build), cleans the package caches, removes the
VM's identity (host keys, machine-id, shell history), powers it off and
saves its root as NAME: flat (independent of IMAGE), checked and sparse.

--from-vm VM does the same from a stopped VM's root (its /root too with
--with-work-disk: VMs of the image then start with a copy of it).

Ctrl-C cancels the build and removes everything it made.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			for _, pk := range packages {
				for _, s := range strings.Split(pk, ",") {
					if s = strings.TrimSpace(s); s != "" {
						p.Packages = append(p.Packages, s)
					}
				}
			}
			for i, s := range p.Scripts {
				abs, err := filepath.Abs(s)
				if err != nil {
					return err
				}
				p.Scripts[i] = abs
			}
			for _, c := range copies {
				src, dst, ok := strings.Cut(c, ":")
				if !ok || src == "" || dst == "" {
					return fmt.Errorf("--copy %q: use SRC:DST (a host path, then an absolute path in the guest)", c)
				}
				abs, err := filepath.Abs(src)
				if err != nil {
					return err
				}
				p.Copies = append(p.Copies, api.ImageBuildCopy{Src: abs, Dst: dst})
			}
			if noNAT {
				off := false
				p.NAT = &off
			}
			st, err := followBuild(cmd.Context(), app, p)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, st.Image)
			}
			fmt.Fprintf(app.Stdout, "image %s built in %s (%s, from %s)\n", st.Image.Name,
				st.Operation.UpdatedAt.Sub(st.Operation.StartedAt).Round(time.Second), humanBytes(st.Image.SizeBytes), strings.TrimPrefix(st.Image.Source, "built from "))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.From, "from", "", "base image")
	f.StringVar(&p.FromVM, "from-vm", "", "a stopped VM whose root becomes the image")
	f.StringSliceVar(&packages, "packages", nil, "packages to install (a,b,c; repeatable)")
	f.StringArrayVar(&p.Scripts, "script", nil, "a script to run as root in the guest (repeatable, in order)")
	f.StringArrayVar(&copies, "copy", nil, "SRC:DST, a host file or directory to copy into the guest (repeatable)")
	f.StringVar(&p.Size, "size", "", "the image's root filesystem size (default: the base's)")
	f.BoolVar(&noNAT, "no-nat", false, "no way out for the build VM (packages then need a mirror it can reach)")
	f.BoolVar(&p.WithWorkDisk, "with-work-disk", false, "keep /root: VMs of the image start with a copy of it")
	f.IntVar(&p.VCPU, "vcpu", 0, "vCPUs of the build VM")
	f.IntVar(&p.MemoryMiB, "memory", 0, "memory of the build VM in MiB")
	f.BoolVar(&asJSON, "json", false, "print the new image as JSON")
	return cmd
}

// followBuild begins an image build, shows its stages and the guest's
// output as they come, and cancels it (everything it made removed) on
// Ctrl-C.
func followBuild(ctx context.Context, app *App, p api.ImageBuildParams) (api.ImageBuildStatus, error) {
	sigctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := app.client(sigctx)
	if err != nil {
		return api.ImageBuildStatus{}, err
	}
	var begin api.ImageBuildBeginResult
	if err := c.Call(sigctx, "image.build.begin", p, &begin); err != nil {
		if sigctx.Err() != nil && ctx.Err() == nil {
			return api.ImageBuildStatus{}, fmt.Errorf("build interrupted before it began; anything it started is being removed (banger ops shows it)")
		}
		return api.ImageBuildStatus{}, err
	}
	fmt.Fprintf(app.Stderr, "building image %s (operation %s)\n", begin.Name, begin.OpID)
	stage, next := "", 0
	for {
		var st api.ImageBuildStatus
		err := c.Call(sigctx, "image.build.status", api.ImageBuildStatusParams{OpID: begin.OpID, Since: next}, &st)
		if sigctx.Err() != nil {
			fmt.Fprintf(app.Stderr, "cancelling the build of %s: removing what it made...\n", begin.Name)
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			var op api.OperationSummary
			if err := c.Call(cctx, "daemon.operations.cancel", api.OpRef{OpID: begin.OpID}, &op); err != nil {
				return st, fmt.Errorf("cancel the build of %s: %w", begin.Name, err)
			}
			switch {
			case !op.Done:
				return st, fmt.Errorf("build of %s cancelled; its cleanup is still running (banger ops shows operation %s)", begin.Name, begin.OpID)
			case op.Error == "":
				return st, fmt.Errorf("build of %s finished before the cancel arrived; delete it with banger image delete %s", begin.Name, begin.Name)
			case strings.Contains(op.Error, "cleanup also failed"):
				return st, fmt.Errorf("build of %s cancelled, but its cleanup failed: %s", begin.Name, op.Error)
			default:
				return st, fmt.Errorf("build of %s cancelled; everything it made was removed", begin.Name)
			}
		}
		if err != nil {
			return st, err
		}
		if st.Dropped > 0 {
			fmt.Fprintf(app.Stderr, "  | (%d lines of output not shown)\n", st.Dropped)
		}
		for _, line := range st.Output {
			fmt.Fprintf(app.Stderr, "  | %s\n", line)
		}
		next = st.Next
		if s := st.Operation.Stage; s != stage && !st.Operation.Done {
			fmt.Fprintf(app.Stderr, "» %s\n", s)
			stage = s
		}
		if st.Operation.Done {
			if st.Operation.Error != "" {
				return st, fmt.Errorf("build of image %s failed: %s", begin.Name, st.Operation.Error)
			}
			if st.Image == nil {
				return st, fmt.Errorf("build of image %s finished without an image record", begin.Name)
			}
			return st, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
}
