package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/workspace"
)

// runOptions are `banger vm run`'s flags.
type runOptions struct {
	name, image              string
	rm, detach               bool
	includeUntracked, dryRun bool
}

func newVMRunCommand(app *App) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [PATH] [-- CMD...]",
		Short: "Create a VM (or reuse --name), copy a repository into /root/repo, then open a shell or run CMD",
		Long: "With no PATH and no CMD: create a VM from the default image and open a shell in it.\n" +
			"With PATH in a git repository: copy its tracked files (and, with --include-untracked, the untracked\n" +
			"ones git does not ignore) to /root/repo with the repository's HEAD as a real commit there, so\n" +
			"`git diff` in the guest shows your uncommitted changes; a PATH outside a repository is copied as it is.\n" +
			"With -- CMD: run CMD in /root/repo, stream its output and exit with its status.\n" +
			"--rm deletes the VM when the shell or command ends (also on Ctrl-C); -d leaves it running.\n" +
			"Re-running with --name N of an existing VM syncs the repository again instead of creating.",
		RunE: func(cmd *cobra.Command, args []string) error {
			path, command := "", []string(nil)
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				command = args[n:]
				args = args[:n]
			}
			if len(args) > 1 {
				return fmt.Errorf("vm run takes at most one PATH before --, got %q", args)
			}
			if len(args) == 1 {
				path = args[0]
			}
			nat, err := natFlag(cmd)
			if err != nil {
				return err
			}
			return runVM(cmd.Context(), app, o, nat, path, command)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "VM name (an existing VM is reused and its workspace synced)")
	f.StringVar(&o.image, "image", "", "image to boot (default: the default image)")
	f.BoolVar(&o.rm, "rm", false, "delete the VM when the shell or command ends")
	f.BoolVarP(&o.detach, "detach", "d", false, "leave the VM running and print how to reach it")
	f.BoolVar(&o.includeUntracked, "include-untracked", false, "also copy untracked files git does not ignore")
	f.BoolVar(&o.dryRun, "dry-run", false, "list what would be copied and its size, then stop")
	addNATFlags(cmd, "give the VM a way out through the host")
	return cmd
}

func runVM(ctx context.Context, app *App, o runOptions, nat *bool, path string, command []string) error {
	switch {
	case o.detach && o.rm:
		return errors.New("-d and --rm contradict each other: -d leaves the VM running, --rm deletes it")
	case o.detach && len(command) > 0:
		return errors.New("-d runs no command: drop -d to run it and see its output, or drop the command")
	}
	var plan *workspace.Plan
	if path != "" {
		var err error
		if plan, err = workspace.NewPlan(ctx, &system.Exec{}, path, o.includeUntracked); err != nil {
			return err
		}
		for _, n := range plan.Notes {
			fmt.Fprintln(app.Stderr, n)
		}
		if o.dryRun {
			return plan.PrintList(app.Stdout)
		}
		if err := plan.CheckSize(); err != nil {
			return err
		}
	} else if o.dryRun {
		return errors.New("--dry-run lists what a PATH would copy: give a PATH")
	}

	// Ctrl-C from here on ends the run (and, with --rm, deletes the VM).
	sigctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := app.client(sigctx)
	if err != nil {
		return err
	}
	name := o.name
	var existing api.VM
	reuse := name != "" && c.Call(sigctx, "vm.show", api.VMRef{Name: name}, &existing) == nil
	if reuse {
		if existing.State != "running" {
			if err := c.Call(sigctx, "vm.start", api.VMRef{Name: name}, &existing); err != nil {
				return err
			}
		}
	} else {
		vm, err := createVM(sigctx, app, api.VMCreateParams{Name: name, Image: o.image, NAT: nat}, true)
		if err != nil {
			return err
		}
		name = vm.Name
	}
	if o.rm {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			var v api.VM
			if err := c.Call(dctx, "vm.delete", api.VMRef{Name: name}, &v); err != nil {
				fmt.Fprintf(app.Stderr, "banger: --rm: delete %s: %s\n", name, userMessage(err))
			} else {
				fmt.Fprintf(app.Stderr, "%s deleted (--rm)\n", name)
			}
		}()
	}
	dir := "/root"
	if plan != nil {
		if err := syncWorkspace(sigctx, app, name, plan); err != nil {
			return err
		}
		dir = workspace.DefaultDest
		if plan.Subdir != "" {
			dir += "/" + plan.Subdir
		}
	}
	if o.detach {
		fmt.Fprintf(app.Stdout, "%s is running; reach it with: banger vm ssh %s (or ssh %s.vm after banger ssh-config --install)\n", name, name, name)
		return nil
	}
	interactive := len(command) == 0
	remote := []string{"cd " + shellQuote(dir) + " && exec \"${SHELL:-/bin/sh}\" -l"}
	if !interactive {
		words := make([]string, len(command))
		for i, w := range command {
			words[i] = shellQuote(w)
		}
		remote = []string{"cd " + shellQuote(dir) + " && " + joinWords(words)}
	}
	tty := false
	if f, ok := app.Stdin.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	argv, err := sshArgvRaw(sigctx, app, name, interactive && tty, remote)
	if err != nil {
		return err
	}
	code, err := system.RunAttached(sigctx, argv, app.Stdin, app.Stdout, app.Stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		return &exitError{code: code}
	}
	return nil
}

func joinWords(words []string) string {
	out := ""
	for i, w := range words {
		if i > 0 {
			out += " "
		}
		out += w
	}
	return out
}

// syncWorkspace streams plan's archive into the guest's workspace script.
func syncWorkspace(ctx context.Context, app *App, name string, plan *workspace.Plan) error {
	argv, err := sshArgvRaw(ctx, app, name, false, []string{"sh -c " + shellQuote(workspace.GuestScript(workspace.DefaultDest))})
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(workspace.WriteArchive(ctx, plan, pw)) }()
	code, err := system.RunAttached(ctx, argv, pr, app.Stderr, app.Stderr)
	pr.Close()
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("copying %s into %s failed (exit %d); see the lines above", plan.Root, name, code)
	}
	return nil
}

func newVMWorkspaceCommand(app *App) *cobra.Command {
	ws := &cobra.Command{Use: "workspace", Short: "Copy a repository into a VM, or get the guest's changes back as a patch"}
	var includeUntracked bool
	prepare := &cobra.Command{
		Use:   "prepare NAME [PATH]",
		Short: "Copy PATH's repository (default: the current directory) into NAME's /root/repo",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "."
			if len(args) == 2 {
				path = args[1]
			}
			plan, err := workspace.NewPlan(cmd.Context(), &system.Exec{}, path, includeUntracked)
			if err != nil {
				return err
			}
			for _, n := range plan.Notes {
				fmt.Fprintln(app.Stderr, n)
			}
			if err := plan.CheckSize(); err != nil {
				return err
			}
			return syncWorkspace(cmd.Context(), app, args[0], plan)
		},
	}
	prepare.Flags().BoolVar(&includeUntracked, "include-untracked", false, "also copy untracked files git does not ignore")
	var base string
	export := &cobra.Command{
		Use:   "export NAME [--base-commit C] > changes.patch",
		Short: "Print the guest's changes in /root/repo (committed and not, new files too) as a patch git apply takes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			argv, err := sshArgvRaw(cmd.Context(), app, args[0], false, []string{"sh -c " + shellQuote(workspace.ExportScript(base))})
			if err != nil {
				return err
			}
			code, err := system.RunAttached(cmd.Context(), argv, nil, app.Stdout, app.Stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	export.Flags().StringVar(&base, "base-commit", "", "diff against this commit (default: the one the workspace was prepared from)")
	ws.AddCommand(prepare, export)
	return ws
}
