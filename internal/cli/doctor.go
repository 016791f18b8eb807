package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/doctor"
	"banger/internal/rpc"
	"banger/internal/version"
)

func newDoctorCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what banger needs from this host: PASS, WARN or FAIL with the fix (exit 1 on any FAIL)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := config.LayoutFromEnv(app.Getenv)
			if err != nil {
				return err
			}
			if app.socket != "" {
				layout.SocketPath = app.socket
			}
			cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
			if err != nil {
				return err
			}
			env := doctor.Env{Layout: layout, Config: cfg, ClientVersion: version.Version,
				DaemonVersion: func(ctx context.Context) (string, error) {
					// Asked only of a socket that passes the checks a
					// command would make, and never started for it.
					if err := checkSocketDir(layout.SocketPath); err != nil {
						return "", err
					}
					var res api.PingResult
					err := (&rpc.Client{SocketPath: layout.SocketPath}).Call(ctx, "ping", nil, &res)
					return res.Version, err
				}}
			checks := doctor.Run(cmd.Context(), env)
			if asJSON {
				if err := writeJSON(app, checks); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
				for _, c := range checks {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Status, c.Name, c.Detail)
					if c.Fix != "" && c.Status != doctor.Pass {
						fmt.Fprintf(tw, "\t\t→ %s\n", c.Fix)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if doctor.Failed(checks) {
				return errDoctorFailed
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return cmd
}

// errDoctorFailed makes banger doctor exit non-zero after printing its
// table (the table already says what failed).
var errDoctorFailed = fmt.Errorf("some checks failed (FAIL rows above)")
