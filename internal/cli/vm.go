package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/sshx"
	"banger/internal/system"
)

func newVMCommand(app *App) *cobra.Command {
	vm := &cobra.Command{
		Use:   "vm",
		Short: "Create, run and manage VMs",
	}
	vm.AddCommand(
		newVMCreateCommand(app),
		newVMCloneCommand(app),
		newVMRunCommand(app),
		newVMWorkspaceCommand(app),
		newVMListCommand(app, "list"),
		newVMShowCommand(app),
		newVMLifecycleCommand(app, "start", "Start stopped VMs and wait until SSH answers", "vm.start"),
		newVMLifecycleCommand(app, "stop", "Shut VMs down gracefully (killed after a timeout)", "vm.stop"),
		newVMLifecycleCommand(app, "restart", "Stop and start VMs", "vm.restart"),
		newVMLifecycleCommand(app, "kill", "End VMs' VMM processes at once", "vm.kill"),
		newVMLifecycleCommand(app, "delete", "Delete VMs and everything they own (running ones are stopped first)", "vm.delete"),
		newVMSetCommand(app),
		newVMHealthCommand(app),
		newVMForwardCommand(app),
		newVMCpCommand(app),
		newVMPortsCommand(app),
		newVMLogsCommand(app),
		newVMSSHCommand(app),
		newVMExecCommand(app),
		newVMPruneCommand(app),
		newVMSnapshotCommand(app),
	)
	return vm
}

// vmDefaultsHelp shows the resolved defaults in --help.
func vmDefaultsHelp(app *App) (vcpu, mem, disk string) {
	layout, err := config.LayoutFromEnv(app.Getenv)
	if err != nil {
		return "config default", "config default", "config default"
	}
	cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
	if err != nil {
		return "config default", "config default", "config default"
	}
	src := cfg.Sources()
	return fmt.Sprintf("%d, %s", cfg.VMDefaults.VCPU, src["vm_defaults.vcpu"]),
		fmt.Sprintf("%d, %s", cfg.VMDefaults.MemoryMiB, src["vm_defaults.memory_mib"]),
		fmt.Sprintf("%s, %s", cfg.VMDefaults.DiskSize, src["vm_defaults.disk_size"])
}

func newVMCreateCommand(app *App) *cobra.Command {
	var p api.VMCreateParams
	var asJSON bool
	vcpuHelp, memHelp, diskHelp := vmDefaultsHelp(app)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a VM and boot it (returns when SSH answers)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nat, err := natFlag(cmd)
			if err != nil {
				return err
			}
			p.NAT = nat
			vm, err := createVM(cmd.Context(), app, p, !asJSON)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, vm)
			}
			if vm.State == "running" {
				fmt.Fprintf(app.Stdout, "%s is running at %s; connect with: banger vm ssh %s\n", vm.Name, vm.IP, vm.Name)
			} else {
				fmt.Fprintf(app.Stdout, "%s created (%s); start it with: banger vm start %s\n", vm.Name, vm.State, vm.Name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Name, "name", "", "VM name (default: a random readable name)")
	f.StringVar(&p.Image, "image", "", "image to boot (default: the default image)")
	f.IntVar(&p.VCPU, "vcpu", 0, "virtual CPUs (default "+vcpuHelp+")")
	f.IntVar(&p.MemoryMiB, "memory", 0, "memory in MiB (default "+memHelp+")")
	f.StringVar(&p.DiskSize, "disk-size", "", "work disk size, e.g. 8G (default "+diskHelp+")")
	f.BoolVar(&p.NoStart, "no-start", false, "create the disks but do not boot")
	f.BoolVar(&p.Cold, "cold", false, "boot the kernel even when a warm snapshot of the image matches")
	f.StringVar(&p.FromSnapshot, "from-snapshot", "", "restore this snapshot (image warm or vm snapshot) instead of booting")
	f.BoolVar(&p.ForwardPorts, "forward-ports", false, "forward every new guest listener to the same port on 127.0.0.1 (default: forward_ports in config.toml)")
	addNATFlags(cmd, "give the VM a way out through the host (masquerade); default: default_nat in config.toml ("+natDefaultHelp(app)+")")
	f.BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

func newVMCloneCommand(app *App) *cobra.Command {
	var p api.VMCloneParams
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "clone SRC NAME",
		Short: "Create VM NAME from stopped VM SRC's disks (copy-on-write) and boot it",
		Long: "Create VM NAME whose root and work disks start as copy-on-write copies of the stopped VM SRC's\n" +
			"(its installed packages, /root), with its own name, address, MAC, host key and machine-id.\n" +
			"SRC and NAME then diverge; SRC may be deleted later (shared layers stay until the last user goes).",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Source, p.Name = args[0], args[1]
			vm, err := followCreate(cmd.Context(), app, "vm.clone.begin", p, !asJSON)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, vm)
			}
			if vm.State == "running" {
				fmt.Fprintf(app.Stdout, "%s is running at %s; connect with: banger vm ssh %s\n", vm.Name, vm.IP, vm.Name)
			} else {
				fmt.Fprintf(app.Stdout, "%s cloned from %s (%s); start it with: banger vm start %s\n", vm.Name, p.Source, vm.State, vm.Name)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&p.NoStart, "no-start", false, "clone the disks but do not boot")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

// addNATFlags adds --nat and --no-nat.
func addNATFlags(cmd *cobra.Command, help string) {
	cmd.Flags().Bool("nat", false, help)
	cmd.Flags().Bool("no-nat", false, "no way out: the VM reaches the host and other VMs only")
	cmd.MarkFlagsMutuallyExclusive("nat", "no-nat")
}

// natFlag is what --nat / --no-nat asked for: nil when neither was given.
func natFlag(cmd *cobra.Command) (*bool, error) {
	on, err := cmd.Flags().GetBool("nat")
	if err != nil {
		return nil, err
	}
	off, err := cmd.Flags().GetBool("no-nat")
	if err != nil {
		return nil, err
	}
	switch {
	case on:
		return &on, nil
	case off:
		v := false
		return &v, nil
	}
	return nil, nil
}

func natDefaultHelp(app *App) string {
	layout, err := config.LayoutFromEnv(app.Getenv)
	if err != nil {
		return "off"
	}
	cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
	if err != nil {
		return "off"
	}
	if cfg.DefaultNAT {
		return "on"
	}
	return "off"
}

// createVM begins a vm.create, renders its stages until it ends, and
// cancels it (rolling everything back) on Ctrl-C.
func createVM(ctx context.Context, app *App, p api.VMCreateParams, show bool) (api.VM, error) {
	return followCreate(ctx, app, "vm.create.begin", p, show)
}

// followCreate begins a create-like operation (vm.create.begin,
// vm.clone.begin) and follows it as createVM describes.
func followCreate(ctx context.Context, app *App, method string, p any, show bool) (api.VM, error) {
	// Ctrl-C from here on cancels the create: during begin the daemon sees
	// the request go away and cancels what it started.
	sigctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := app.client(sigctx)
	if err != nil {
		return api.VM{}, err
	}
	var begin api.VMCreateBeginResult
	if err := c.Call(sigctx, method, p, &begin); err != nil {
		if sigctx.Err() != nil && ctx.Err() == nil {
			return api.VM{}, fmt.Errorf("create interrupted before it began; anything it started is being rolled back (banger ops shows it)")
		}
		return api.VM{}, err
	}
	r := newStageRenderer(app, show)
	fmt.Fprintf(app.Stderr, "creating %s (operation %s)\n", begin.Name, begin.OpID)
	for i := 0; ; i++ {
		var st api.VMCreateStatus
		err := c.Call(sigctx, "vm.create.status", api.OpRef{OpID: begin.OpID}, &st)
		if sigctx.Err() != nil {
			r.finish()
			fmt.Fprintf(app.Stderr, "cancelling %s: rolling back...\n", begin.Name)
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
			defer cancel()
			var cst api.VMCreateStatus
			if err := c.Call(cctx, "vm.create.cancel", api.OpRef{OpID: begin.OpID}, &cst); err != nil {
				return api.VM{}, fmt.Errorf("cancel create of %s: %w", begin.Name, err)
			}
			switch {
			case !cst.Operation.Done:
				return api.VM{}, fmt.Errorf("create of %s cancelled; its rollback is still running (banger ops shows operation %s)", begin.Name, begin.OpID)
			case cst.Operation.Error == "" && cst.VM != nil:
				return *cst.VM, nil // it finished before the cancel arrived
			case strings.Contains(cst.Operation.Error, "cleanup also failed"):
				return api.VM{}, fmt.Errorf("create of %s cancelled, but its cleanup failed: %s", begin.Name, cst.Operation.Error)
			default:
				return api.VM{}, fmt.Errorf("create of %s cancelled; everything it made was removed", begin.Name)
			}
		}
		if err != nil {
			return api.VM{}, err
		}
		r.update(st.Stages, st.Operation.Stage)
		if st.Operation.Done {
			r.finish()
			for _, w := range st.Warnings {
				fmt.Fprintf(app.Stderr, "warning: %s\n", w)
			}
			if st.Operation.Error != "" {
				return api.VM{}, fmt.Errorf("create %s failed: %s", begin.Name, st.Operation.Error)
			}
			if st.VM == nil {
				return api.VM{}, fmt.Errorf("create %s finished without a VM record", begin.Name)
			}
			return *st.VM, nil
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// stageRenderer prints create stages: a live spinner line on a terminal,
// one line per stage otherwise.
type stageRenderer struct {
	app     *App
	show    bool
	tty     bool
	printed map[string]bool
	current string
	detail  string
	frame   int
}

func newStageRenderer(app *App, show bool) *stageRenderer {
	tty := false
	if f, ok := app.Stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &stageRenderer{app: app, show: show, tty: tty, printed: map[string]bool{}}
}

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// update renders the stages; opStage is the operation's current stage,
// which may carry detail after the stage name ("resolve ...: pulling ...").
func (r *stageRenderer) update(stages []api.StageTiming, opStage string) {
	if !r.show {
		return
	}
	for i, s := range stages {
		key := fmt.Sprintf("%d:%s", i, s.Name)
		switch {
		case s.Done && !r.printed[key]:
			r.printed[key] = true
			if r.tty {
				fmt.Fprintf(r.app.Stderr, "\r\033[K  ✓ %-26s %s\n", s.Name, fmtMS(s.DurationMS))
			} else {
				if r.current != key {
					fmt.Fprintf(r.app.Stderr, "  %s...\n", s.Name)
				}
				fmt.Fprintf(r.app.Stderr, "  %s done in %s\n", s.Name, fmtMS(s.DurationMS))
			}
			r.current = ""
		case !s.Done:
			detail, _ := strings.CutPrefix(opStage, s.Name+": ")
			if detail == opStage {
				detail = ""
			}
			if r.tty {
				r.frame++
				fmt.Fprintf(r.app.Stderr, "\r\033[K  %s %-26s %s %s", spinner[r.frame%len(spinner)], s.Name,
					time.Since(s.StartedAt).Round(100*time.Millisecond), truncate(detail, 60))
			} else {
				if r.current != key {
					fmt.Fprintf(r.app.Stderr, "  %s...\n", s.Name)
				}
				if detail != "" && detail != r.detail {
					fmt.Fprintf(r.app.Stderr, "    %s\n", detail)
				}
			}
			r.current, r.detail = key, detail
		}
	}
}

func (r *stageRenderer) finish() {
	if r.show && r.tty && r.current != "" {
		fmt.Fprint(r.app.Stderr, "\r\033[K")
	}
}

func fmtMS(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(10 * time.Millisecond).String()
}

func newVMListCommand(app *App, use string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     use,
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.VMListResult
			if err := c.Call(cmd.Context(), "vm.list", nil, &res); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, res.VMs)
			}
			if len(res.VMs) == 0 {
				fmt.Fprintln(app.Stdout, "no VMs; create one with: banger vm create")
				return nil
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIP\tVCPU\tMEMORY\tDISK\tDISK USED\tIMAGE\tVMM\tAGE")
			for _, v := range res.VMs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.IP, v.VCPU, v.MemoryMiB,
					humanBytes(v.DiskSizeBytes), humanBytes(v.RootUsedBytes+v.WorkUsedBytes), v.Image, v.VMM, time.Since(v.CreatedAt).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMShowCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var v api.VM
			if err := c.Call(cmd.Context(), "vm.show", api.VMRef{Name: args[0]}, &v); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, v)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			rows := [][2]string{{"name", v.Name}, {"state", v.State}, {"ip", v.IP}, {"dns", v.DNSName}, {"mac", v.MAC},
				{"nat", onOff(v.NAT)}, {"nat note", v.NATNote},
				{"vcpu", fmt.Sprint(v.VCPU)}, {"memory", fmt.Sprintf("%d MiB", v.MemoryMiB)},
				{"root disk", fmt.Sprintf("%s over image %s, %s used", v.RootDisk, v.Image, humanBytes(v.RootUsedBytes))},
				{"work disk", fmt.Sprintf("%s, %s used", humanBytes(v.DiskSizeBytes), humanBytes(v.WorkUsedBytes))},
				{"image", v.Image}, {"kernel", v.Kernel}, {"vmm", v.VMM}, {"tap", v.Tap}, {"pid", fmt.Sprint(v.PID)},
				{"started", startedLine(v)},
				{"dir", v.Dir}, {"created", v.CreatedAt.Format(time.RFC3339)}, {"last error", v.LastError}, {"vmm state", v.VMMState}, {"agent", agentLine(v)}}
			for _, r := range rows {
				if r[1] == "" || r[1] == "0" {
					continue
				}
				fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// startedLine says how the VM last started.
func startedLine(v api.VM) string {
	if v.StartedFrom != "" {
		return "restored from " + v.StartedFrom
	}
	return "booted"
}

func newVMLifecycleCommand(app *App, verb, short, method string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   verb + " NAME...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var failed []string
			var out []api.VM
			for _, name := range args {
				var v api.VM
				if err := c.Call(cmd.Context(), method, api.VMRef{Name: name}, &v); err != nil {
					fmt.Fprintf(app.Stderr, "banger: %s %s: %s\n", verb, name, userMessage(err))
					failed = append(failed, name)
					continue
				}
				out = append(out, v)
				if !asJSON {
					fmt.Fprintf(app.Stdout, "%s: %s\n", v.Name, v.State)
					if v.LastError != "" && verb != "delete" {
						fmt.Fprintf(app.Stdout, "  note: %s\n", v.LastError)
					}
				}
			}
			if asJSON {
				if err := writeJSON(app, out); err != nil {
					return err
				}
			}
			if len(failed) > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMSetCommand(app *App) *cobra.Command {
	var p api.VMSetParams
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a stopped VM's vCPUs, memory or work disk size (grow only), or any VM's NAT",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			nat, err := natFlag(cmd)
			if err != nil {
				return err
			}
			p.NAT = nat
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var v api.VM
			if err := c.Call(cmd.Context(), "vm.set", p, &v); err != nil {
				return err
			}
			fmt.Fprintf(app.Stdout, "%s: vcpu %d, memory %d MiB, work disk %s, nat %s\n", v.Name, v.VCPU, v.MemoryMiB, humanBytes(v.DiskSizeBytes), onOff(v.NAT))
			if v.NATNote != "" {
				fmt.Fprintf(app.Stdout, "  %s\n", v.NATNote)
			}
			return nil
		},
	}
	addNATFlags(cmd, "turn NAT on, live: the VM reaches everything the host reaches")
	cmd.Flags().IntVar(&p.VCPU, "vcpu", 0, "virtual CPUs")
	cmd.Flags().IntVar(&p.MemoryMiB, "memory", 0, "memory in MiB")
	cmd.Flags().StringVar(&p.DiskSize, "disk-size", "", "new work disk size, e.g. 16G (grow only)")
	return cmd
}

func newVMLogsCommand(app *App) *cobra.Command {
	var follow, raw bool
	var tail int64
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's console log (control characters removed on a terminal; --raw keeps them)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			p := api.VMLogsParams{Name: args[0], Tail: tail}
			for {
				var res api.VMLogsResult
				if err := c.Call(ctx, "vm.logs", p, &res); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				if !raw && isTerminal(app.Stdout) {
					// The guest writes what it likes; a terminal would
					// obey its escape sequences.
					res.Data = stripControl(res.Data)
				}
				fmt.Fprint(app.Stdout, res.Data)
				p.Offset, p.Tail = res.NextOffset, 0
				if res.Data != "" {
					continue // more may be buffered
				}
				if !follow {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(300 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().Int64Var(&tail, "tail-bytes", 0, "start this many bytes before the end")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the guest's bytes as they are, control characters included")
	return cmd
}

func sshArgv(ctx context.Context, app *App, name string, interactive bool, command []string) ([]string, error) {
	quoted := make([]string, len(command))
	for i, w := range command {
		quoted[i] = shellQuote(w)
	}
	return sshArgvRaw(ctx, app, name, interactive, quoted)
}

// sshArgvRaw is sshArgv with the remote command already written for the
// guest's shell (each word is passed as it is).
func sshArgvRaw(ctx context.Context, app *App, name string, interactive bool, remote []string) ([]string, error) {
	c, err := app.client(ctx)
	if err != nil {
		return nil, err
	}
	var info api.VMSSHInfo
	if err := c.Call(ctx, "vm.ssh_info", api.VMRef{Name: name}, &info); err != nil {
		return nil, err
	}
	if err := info.Validate(); err != nil {
		return nil, fmt.Errorf("refusing what bangerd answered: %w", err)
	}
	if _, err := system.LookPath("ssh"); err != nil {
		return nil, fmt.Errorf("ssh (OpenSSH client) not found; install it: apt-get install openssh-client")
	}
	return sshx.OpenSSHArgv(sshx.OpenSSHOptions{KeyPath: info.KeyPath, KnownHostsPath: info.KnownHostsPath,
		Host: info.IP, HostKeyAlias: info.HostAlias, User: info.User, Interactive: interactive, Command: remote,
		ControlPath: info.ControlPath}), nil
}

// shellQuote quotes one word for the guest's shell. ssh joins command
// words with spaces and the remote shell re-parses them, so without this
// `banger vm exec web -- sh -c 'exit 7'` would run `sh -c exit 7`.
func shellQuote(w string) string {
	if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-") == "" {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

func newVMSSHCommand(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "ssh NAME [-- CMD...]",
		Short: "Open a shell (or run a command) in a VM over SSH",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tty := false
			if f, ok := app.Stdin.(*os.File); ok {
				tty = term.IsTerminal(int(f.Fd()))
			}
			argv, err := sshArgv(cmd.Context(), app, args[0], tty && len(args) == 1, args[1:])
			if err != nil {
				return err
			}
			if app.Stdin == os.Stdin {
				return system.ExecReplace(argv, os.Environ())
			}
			code, err := system.RunAttached(cmd.Context(), argv, app.Stdin, app.Stdout, app.Stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
}

func newVMExecCommand(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "exec NAME -- CMD...",
		Short: "Run one command in a VM; exits with the command's status",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			argv, err := sshArgv(cmd.Context(), app, args[0], false, args[1:])
			if err != nil {
				return err
			}
			code, err := system.RunAttached(cmd.Context(), argv, app.Stdin, app.Stdout, app.Stderr)
			if err != nil {
				return err
			}
			if code == 255 {
				return fmt.Errorf("ssh to %s failed (exit 255); see the lines above, and banger vm logs %s", args[0], args[0])
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
}

func newVMPruneCommand(app *App) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete every stopped VM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var params api.VMPruneParams
			if !force {
				var res api.VMListResult
				if err := c.Call(cmd.Context(), "vm.list", nil, &res); err != nil {
					return err
				}
				var names []string
				for _, v := range res.VMs {
					if v.State == "stopped" || v.State == "error" {
						names = append(names, v.Name)
					}
				}
				if len(names) == 0 {
					fmt.Fprintln(app.Stdout, "no stopped VMs")
					return nil
				}
				fmt.Fprintf(app.Stderr, "delete %d stopped VM(s): %s? [y/N] ", len(names), strings.Join(names, ", "))
				var answer string
				_, _ = fmt.Fscanln(app.Stdin, &answer)
				if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
					return fmt.Errorf("prune aborted; pass -f to skip this question")
				}
				params.Names = names // exactly what was confirmed
			}
			var res api.VMPruneResult
			if err := c.Call(cmd.Context(), "vm.prune", params, &res); err != nil {
				return err
			}
			for _, n := range res.Deleted {
				fmt.Fprintf(app.Stdout, "deleted %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d%c", int64(v), "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f%c", v, "KMGTPE"[exp])
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func newVMHealthCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "health NAME",
		Short: "Ask a running VM's guest agent how it is (uptime, load, memory, disks)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var h api.AgentHealth
			if err := c.Call(cmd.Context(), "vm.health", api.VMRef{Name: args[0]}, &h); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, h)
			}
			printHealth(app.Stdout, h)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printHealth(w io.Writer, h api.AgentHealth) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "agent:\t%s\n", h.AgentVersion)
	fmt.Fprintf(tw, "hostname:\t%s\n", h.Hostname)
	fmt.Fprintf(tw, "uptime:\t%s\n", (time.Duration(h.UptimeS) * time.Second).String())
	fmt.Fprintf(tw, "load:\t%.2f %.2f %.2f\n", h.Load1, h.Load5, h.Load15)
	fmt.Fprintf(tw, "memory:\t%s available of %s\n", humanBytes(int64(h.MemAvailable)), humanBytes(int64(h.MemTotal)))
	for _, d := range h.Disks {
		fmt.Fprintf(tw, "disk %s:\t%s used, %s free of %s\n", d.Path, humanBytes(int64(d.Used)), humanBytes(int64(d.Avail)), humanBytes(int64(d.Size)))
	}
	for _, warn := range h.Warnings {
		fmt.Fprintf(tw, "warning:\t%s\n", warn)
	}
	tw.Flush()
}

func newVMPortsCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports NAME",
		Short: "List what listens in a running VM (NAME.vm:PORT, protocol, process)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.VMPortsResult
			if err := c.Call(cmd.Context(), "vm.ports", api.VMRef{Name: args[0]}, &res); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, res.Ports)
			}
			if len(res.Ports) == 0 {
				fmt.Fprintf(app.Stdout, "nothing listens in %s\n", res.Name)
				return nil
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ADDRESS\tPROTO\tPROCESS\tURL")
			for _, p := range res.Ports {
				host := res.DNSName
				if p.Addr == "127.0.0.1" || p.Addr == "::1" {
					host = "localhost (in the guest)"
				}
				proc := p.Process
				if p.PID != 0 {
					proc = fmt.Sprintf("%s[%d]", p.Process, p.PID)
				}
				fmt.Fprintf(tw, "%s:%d\t%s\t%s\t%s\n", host, p.Port, p.Proto, proc, p.URL)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// agentLine sums up the guest agent's report for vm show.
func agentLine(v api.VM) string {
	switch {
	case v.AgentError != "":
		return "unreachable: " + v.AgentError
	case v.Agent == nil:
		return ""
	}
	h := v.Agent
	line := fmt.Sprintf("%s, up %s, load %.2f, %s of %s memory available", h.AgentVersion,
		(time.Duration(h.UptimeS) * time.Second).String(), h.Load1, humanBytes(int64(h.MemAvailable)), humanBytes(int64(h.MemTotal)))
	for _, d := range h.Disks {
		line += fmt.Sprintf(", %s %s/%s used", d.Path, humanBytes(int64(d.Used)), humanBytes(int64(d.Size)))
	}
	return line
}

// stripControl removes control characters (C0 but newline and tab, DEL,
// C1) from text a guest wrote, so it cannot drive the user's terminal.
func stripControl(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\t':
			return r
		case r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0):
			return -1
		}
		return r
	}, s)
}
