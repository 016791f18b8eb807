package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/version"
)

func newVersionCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's and the daemon's versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := struct {
				Client api.VersionResult  `json:"client"`
				Daemon *api.VersionResult `json:"daemon,omitempty"`
				Error  string             `json:"daemon_error,omitempty"`
			}{Client: api.VersionResult{Version: version.Version, Commit: version.Commit, ProtocolVersion: api.ProtocolVersion}}
			c, err := app.client(cmd.Context())
			if err == nil {
				var dv api.VersionResult
				if err = c.Call(cmd.Context(), "daemon.version", nil, &dv); err == nil {
					out.Daemon = &dv
				}
			}
			if err != nil {
				out.Error = userMessage(err)
			}
			if asJSON {
				return writeJSON(app, out)
			}
			fmt.Fprintf(app.Stdout, "banger  %s (%s, protocol %d)\n", out.Client.Version, out.Client.Commit, out.Client.ProtocolVersion)
			if out.Daemon != nil {
				fmt.Fprintf(app.Stdout, "bangerd %s (%s, protocol %d, schema %d)\n", out.Daemon.Version, out.Daemon.Commit, out.Daemon.ProtocolVersion, out.Daemon.SchemaVersion)
			} else {
				fmt.Fprintf(app.Stdout, "bangerd unavailable: %s\n", out.Error)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newPingCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "Check that bangerd answers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			start := time.Now()
			var res api.PingResult
			if err := c.Call(cmd.Context(), "ping", nil, &res); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, res)
			}
			fmt.Fprintf(app.Stdout, "bangerd %s (pid %d) answered in %s\n", res.Version, res.PID, time.Since(start).Round(time.Microsecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newOpsCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ops",
		Short: "List in-flight and recent async operations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			var res api.OperationsListResult
			if err := c.Call(cmd.Context(), "daemon.operations.list", nil, &res); err != nil {
				return err
			}
			if asJSON {
				if res.Operations == nil {
					res.Operations = []api.OperationSummary{}
				}
				return writeJSON(app, res.Operations)
			}
			if len(res.Operations) == 0 {
				fmt.Fprintln(app.Stdout, "no operations")
				return nil
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTAGE\tSTATE\tAGE")
			for _, op := range res.Operations {
				state := "running"
				if op.Done {
					state = "done"
					if op.Error != "" {
						state = "failed: " + truncate(op.Error, 60)
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", op.ID, op.Kind, op.Target, op.Stage, state, time.Since(op.StartedAt).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(&cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel an operation; what it made is removed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			op, err := rpcCall[api.OperationSummary](cmd.Context(), app, "daemon.operations.cancel", api.OpRef{OpID: args[0]})
			if err != nil {
				return err
			}
			switch {
			case !op.Done:
				fmt.Fprintf(app.Stdout, "%s %s: cancelled; its rollback is still running\n", op.Kind, op.Target)
			case op.Error == "":
				fmt.Fprintf(app.Stdout, "%s %s had already finished\n", op.Kind, op.Target)
			default:
				fmt.Fprintf(app.Stdout, "%s %s: %s\n", op.Kind, op.Target, op.Error)
			}
			return nil
		},
	})
	return cmd
}

func writeJSON(app *App, v any) error {
	enc := json.NewEncoder(app.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
