package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/doctor"
	"banger/internal/privops"
	"banger/internal/rpc"
	"banger/internal/sysinstall"
	"banger/internal/version"
	"banger/internal/vmm"
)

func newDoctorCommand(app *App) *cobra.Command {
	var asJSON, leaks bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what banger needs from this host: PASS, WARN or FAIL with the fix (exit 1 on any FAIL)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := config.LayoutFromEnv(app.Getenv)
			if err != nil {
				return err
			}
			var helper func(context.Context) error
			var dmSnapshots func() error
			var rootJails vmm.RootJails
			var owner *int
			var also []int // uids trusted besides root and the caller
			trust := func(uid int) bool { return uid == 0 || uid == os.Getuid() }
			if usesSystemInstall(app) {
				// A system install: its paths, its daemon (its owner's),
				// its helper.
				o, err := sysinstall.InstalledOwner("")
				if err != nil {
					return err
				}
				if layout, err = config.SystemLayout(app.Getenv); err != nil {
					return err
				}
				owner = &o.UID
				also = []int{o.UID}
				trust = func(uid int) bool { return uid == 0 || uid == o.UID }
				hc := &privops.Client{SocketPath: privops.DefaultSocket, Timeout: 5 * time.Second, DialWait: -1}
				helper = func(context.Context) error { return hc.Ping() }
				dmSnapshots = hc.SnapshotsAvailable
				rootJails = hc
			}
			if app.socket != "" {
				layout.SocketPath = app.socket
			}
			client := func() *rpc.Client { return &rpc.Client{SocketPath: layout.SocketPath, TrustUID: trust} }
			checkSock := func() error { return checkSocketDir(layout.SocketPath, also...) }
			if leaks {
				return runLeaks(cmd.Context(), app, layout, client(), checkSock, asJSON)
			}
			cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
			if err != nil {
				return err
			}
			env := doctor.Env{Layout: layout, Config: cfg, ClientVersion: version.Version, RootHelper: helper, DMSnapshots: dmSnapshots, RootJails: rootJails, Owner: owner,
				DaemonVersion: func(ctx context.Context) (string, error) {
					// Asked only of a socket that passes the checks a
					// command would make, and never started for it.
					if err := checkSock(); err != nil {
						return "", err
					}
					var res api.PingResult
					err := client().Call(ctx, "ping", nil, &res)
					return res.Version, err
				},
				Snapshots: func(ctx context.Context) ([]api.Snapshot, error) {
					if err := checkSock(); err != nil {
						return nil, err
					}
					var res api.SnapshotListResult
					err := client().Call(ctx, "snapshot.list", nil, &res)
					return res.Snapshots, err
				},
				DaemonUID: func(ctx context.Context) (int, error) {
					if err := checkSock(); err != nil {
						return 0, err
					}
					return client().PeerUID(ctx)
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
	cmd.Flags().BoolVar(&leaks, "leaks", false, "list host resources banger made that no VM, image or operation accounts for (exit 1 if any)")
	return cmd
}

// runLeaks asks the running daemon (never started for it: a starting
// daemon sweeps what it finds) for daemon.leaks.
func runLeaks(ctx context.Context, app *App, layout config.Layout, c *rpc.Client, checkSock func() error, asJSON bool) error {
	if err := checkSock(); err != nil {
		return err
	}
	var res api.LeaksResult
	if err := c.Call(ctx, "daemon.leaks", nil, &res); err != nil {
		if errors.Is(err, rpc.ErrDaemonUnreachable) {
			return fmt.Errorf("bangerd is not running on %s: the leak check needs its records (any banger command starts it)", layout.SocketPath)
		}
		return err
	}
	if asJSON {
		if err := writeJSON(app, res); err != nil {
			return err
		}
	} else {
		if res.InFlight > 0 {
			fmt.Fprintf(app.Stdout, "note: %d operations in flight; what they are making may show below\n", res.InFlight)
		}
		if len(res.Leaks) == 0 {
			fmt.Fprintln(app.Stdout, "no leaks: every process, tap, rule, device, file and key banger made is accounted for")
		}
		tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
		for _, l := range res.Leaks {
			fmt.Fprintf(tw, "LEAK\t%s\t%s\t%s\n", l.Kind, l.Name, l.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(res.Leaks) > 0 {
		return &exitError{code: 1}
	}
	return nil
}

// errDoctorFailed makes banger doctor exit non-zero after printing its
// table (the table already says what failed).
var errDoctorFailed = fmt.Errorf("some checks failed (FAIL rows above)")
