package cli

import (
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func newKernelCommand(app *App) *cobra.Command {
	k := &cobra.Command{Use: "kernel", Short: "Manage guest kernels"}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List installed kernels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.KernelListResult
			if err := c.Call(cmd.Context(), "kernel.list", nil, &res); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, res.Kernels)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tARCH\tSOURCE")
			for _, k := range res.Kernels {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Name, k.Version, k.Arch, k.Source)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var from string
	imp := &cobra.Command{
		Use:   "import NAME --from DIR",
		Short: "Import a kernel directory (vmlinuz, vmlinux, initrd, modules and manifest.json)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(from)
			if err != nil {
				return err
			}
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.Kernel
			if err := c.Call(cmd.Context(), "kernel.import", api.KernelImportParams{Name: args[0], From: abs}, &res); err != nil {
				return err
			}
			fmt.Fprintf(app.Stdout, "kernel %s (%s) imported\n", res.Name, res.Version)
			return nil
		},
	}
	imp.Flags().StringVar(&from, "from", "", "directory to import")
	_ = imp.MarkFlagRequired("from")
	k.AddCommand(list, imp, pullCommand(app, "kernel", "kernel.pull"))
	return k
}

func newImageCommand(app *App) *cobra.Command {
	im := &cobra.Command{Use: "image", Short: "Manage root filesystem images"}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.ImageListResult
			if err := c.Call(cmd.Context(), "image.list", nil, &res); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, res.Images)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKERNEL\tSIZE\tDEFAULT\tSOURCE")
			for _, i := range res.Images {
				def := ""
				if i.Default {
					def = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.Name, i.Kernel, humanBytes(i.SizeBytes), def, i.Source)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var p api.ImageRegisterParams
	reg := &cobra.Command{
		Use:   "register --name N --rootfs FILE --kernel K",
		Short: "Register an ext4 root filesystem file as an image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := filepath.Abs(p.Rootfs)
			if err != nil {
				return err
			}
			p.Rootfs = abs
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.Image
			if err := c.Call(cmd.Context(), "image.register", p, &res); err != nil {
				return err
			}
			fmt.Fprintf(app.Stdout, "image %s registered (%s, kernel %s)\n", res.Name, humanBytes(res.SizeBytes), res.Kernel)
			return nil
		},
	}
	reg.Flags().StringVar(&p.Name, "name", "", "image name")
	reg.Flags().StringVar(&p.Rootfs, "rootfs", "", "ext4 root filesystem file")
	reg.Flags().StringVar(&p.Kernel, "kernel", "", "kernel the image boots")
	for _, f := range []string{"name", "rootfs", "kernel"} {
		_ = reg.MarkFlagRequired(f)
	}
	im.AddCommand(list, reg, pullCommand(app, "image", "image.pull"))
	return im
}

// pullCommand begins a kernel.pull or image.pull and follows its stages
// until it finishes.
func pullCommand(app *App, what, method string) *cobra.Command {
	return &cobra.Command{
		Use:   "pull NAME",
		Short: "Build or fetch a " + what + " from the catalog (skipped when installed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := app.client(ctx)
			if err != nil {
				return err
			}
			var res api.PullResult
			if err := c.Call(ctx, method, api.PullParams{Name: args[0]}, &res); err != nil {
				if api.IsCode(err, api.CodeAlreadyExists) {
					fmt.Fprintf(app.Stdout, "%s %s is already installed\n", what, args[0])
					return nil
				}
				return err
			}
			verb := "pulling"
			if res.Joined {
				verb = "joining the pull of"
			}
			fmt.Fprintf(app.Stderr, "%s %s %s (operation %s)\n", verb, what, res.Name, res.OpID)
			last := ""
			for {
				var ops api.OperationsListResult
				if err := c.Call(ctx, "daemon.operations.list", nil, &ops); err != nil {
					return err
				}
				var op *api.OperationSummary
				for i := range ops.Operations {
					if ops.Operations[i].ID == res.OpID {
						op = &ops.Operations[i]
					}
				}
				if op == nil {
					return fmt.Errorf("operation %s disappeared; see banger ops", res.OpID)
				}
				if op.Stage != last && op.Stage != "" {
					fmt.Fprintf(app.Stderr, "  %s\n", op.Stage)
					last = op.Stage
				}
				if op.Done {
					if op.Error != "" {
						return fmt.Errorf("pull %s %s failed: %s", what, res.Name, op.Error)
					}
					fmt.Fprintf(app.Stdout, "%s %s installed in %s\n", what, res.Name, op.UpdatedAt.Sub(op.StartedAt).Round(time.Second))
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
}
