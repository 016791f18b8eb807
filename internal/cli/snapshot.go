package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func newSnapshotCommand(app *App) *cobra.Command {
	sn := &cobra.Command{Use: "snapshot", Short: "Saved running guests that VMs are restored from (image warm, vm snapshot)"}
	sn.AddCommand(
		readCommand(app, "list", "List snapshots with their size, and which are stale", cobra.NoArgs,
			func(cmd *cobra.Command, _ []string) ([]api.Snapshot, error) {
				res, err := rpcCall[api.SnapshotListResult](cmd.Context(), app, "snapshot.list", nil)
				return res.Snapshots, err
			}, printSnapshots),
		readCommand(app, "rm NAME", "Remove a snapshot (VMs restored from it keep working)", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (api.Snapshot, error) {
				return rpcCall[api.Snapshot](cmd.Context(), app, "snapshot.rm", api.ArtifactRef{Name: args[0]})
			}, func(w io.Writer, s api.Snapshot) error {
				_, err := fmt.Fprintf(w, "snapshot %s removed (%s)\n", s.Name, humanBytes(s.SizeBytes))
				return err
			}),
	)
	return sn
}

func printSnapshots(w io.Writer, snaps []api.Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tIMAGE\tMACHINE\tSIZE\tCREATED\tSTATE")
	for _, s := range snaps {
		state := "ok"
		if s.Stale != "" {
			state = "stale: " + s.Stale
		}
		kind := s.Kind
		if s.SourceVM != "" {
			kind += " of " + s.SourceVM
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%dc/%dMiB %s/%s\t%s\t%s\t%s\n", s.Name, kind, s.Image, s.VCPU, s.MemoryMiB, s.VMM, s.Accel,
			humanBytes(s.SizeBytes), s.CreatedAt.Local().Format(time.DateTime), state)
	}
	return tw.Flush()
}

func newImageWarmCommand(app *App) *cobra.Command {
	var p api.ImageWarmParams
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm IMAGE",
		Short: "Boot a template VM of IMAGE and save it: later creates of that size restore it in about a second",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Image = args[0]
			start := time.Now()
			fmt.Fprintf(app.Stderr, "warming %s: booting a template VM and saving it...\n", p.Image)
			s, err := rpcCall[api.Snapshot](cmd.Context(), app, "image.warm", p)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, s)
			}
			fmt.Fprintf(app.Stdout, "image %s is warm: snapshot %s (%d vCPUs, %d MiB; %s state saved in %s) in %s\n", s.Image, s.Name, s.VCPU, s.MemoryMiB,
				humanBytes(s.StateBytes), (time.Duration(s.SaveMS) * time.Millisecond).Round(10*time.Millisecond), time.Since(start).Round(time.Second))
			return nil
		},
	}
	cmd.Flags().IntVar(&p.VCPU, "vcpu", 0, "vCPUs of the VMs it serves (default: vm_defaults)")
	cmd.Flags().IntVar(&p.MemoryMiB, "memory", 0, "memory in MiB of the VMs it serves (default: vm_defaults)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the snapshot as JSON")
	return cmd
}

func newVMSnapshotCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshot NAME SNAPSHOT",
		Short: "Save running VM NAME (memory and disks) as SNAPSHOT; it keeps running. Fork it with vm create --from-snapshot",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := rpcCall[api.Snapshot](cmd.Context(), app, "vm.snapshot", api.VMSnapshotParams{Name: args[0], Snapshot: args[1]})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, s)
			}
			fmt.Fprintf(app.Stdout, "snapshot %s of %s saved (%s state in %s); fork it with: banger vm create --from-snapshot %s\n",
				s.Name, args[0], humanBytes(s.StateBytes), (time.Duration(s.SaveMS) * time.Millisecond).Round(10*time.Millisecond), s.Name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the snapshot as JSON")
	return cmd
}
