package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/sysinstall"
	"banger/internal/system"
)

func newSystemCommand(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Install banger as a system service: the daemon as its owner, unprivileged, and a root helper",
		Long: `banger system install runs bangerd as a systemd service under an ordinary
user (its owner), with no privileges, beside bangerd-root.service: a small
root helper that does only what needs root — banger's bridge, taps, firewall
rules and the guests' DNS port — and answers only root and the owner.
Without it, bangerd runs as root in user mode, started on demand.`,
	}
	cmd.AddCommand(newSystemInstallCommand(app), newSystemStatusCommand(app), newSystemRestartCommand(app), newSystemUninstallCommand(app))
	return cmd
}

func needRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("banger system %s changes the host's services: run it as root (sudo banger system %s ...)", what, what)
	}
	return nil
}

func newSystemInstallCommand(app *App) *cobra.Command {
	var owner, prefix string
	cmd := &cobra.Command{
		Use:   "install --owner USER",
		Short: "Install the binaries and both units, enable and start them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needRoot("install"); err != nil {
				return err
			}
			o, err := sysinstall.LookupOwner(owner)
			if err != nil {
				return err
			}
			src, err := installDir()
			if err != nil {
				return err
			}
			in := &sysinstall.Installer{Prefix: prefix, Sources: src, Owner: o, Runner: &system.Exec{}, Out: app.Stdout}
			return in.Install(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the user the daemon runs as (its CLI talks to it); required")
	cmd.Flags().StringVar(&prefix, "prefix", "/usr/local", "install the binaries into PREFIX/bin")
	return cmd
}

func newSystemStatusCommand(app *App) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether both units run and the daemon answers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := sysinstall.InstalledOwner("")
			if err != nil {
				return err
			}
			st := sysinstall.GetStatus(cmd.Context(), &system.Exec{}, sysinstall.SystemSocket, o.UID)
			if asJSON {
				b, _ := json.MarshalIndent(st, "", "  ")
				fmt.Fprintln(app.Stdout, string(b))
			} else {
				for _, u := range st.Units {
					fmt.Fprintf(app.Stdout, "%-22s %s\n", u.Unit, u.Active)
				}
				if st.Daemon != nil {
					fmt.Fprintf(app.Stdout, "%-22s bangerd %s (pid %d) as %s, on %s\n", "daemon", st.Daemon.Version, st.Daemon.PID, o.Name, st.Socket)
				} else {
					fmt.Fprintf(app.Stdout, "%-22s not answering: %s\n", "daemon", st.Error)
				}
			}
			if !st.OK() {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newSystemRestartCommand(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "restart",
		Short: "Restart the root helper and the daemon (VMs keep running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needRoot("restart"); err != nil {
				return err
			}
			o, err := sysinstall.InstalledOwner("")
			if err != nil {
				return err
			}
			if err := sysinstall.Restart(cmd.Context(), &system.Exec{}, sysinstall.SystemSocket, o.UID); err != nil {
				return err
			}
			fmt.Fprintln(app.Stdout, "restarted; bangerd answers on "+sysinstall.SystemSocket)
			return nil
		},
	}
}

func newSystemUninstallCommand(app *App) *cobra.Command {
	var purge bool
	var prefix string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and remove both units and the binaries (VMs and images stay unless --purge)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needRoot("uninstall"); err != nil {
				return err
			}
			o, err := sysinstall.InstalledOwner("")
			if err != nil {
				return err
			}
			in := &sysinstall.Installer{Prefix: prefix, Owner: o, Runner: &system.Exec{}, Out: app.Stdout}
			return in.Uninstall(cmd.Context(), purge, func(ctx context.Context) error { return deleteAllVMs(ctx, app, o.UID) })
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also delete every VM and remove "+filepath.Join("/var/lib", "banger")+", /var/cache/banger and /etc/banger")
	cmd.Flags().StringVar(&prefix, "prefix", "/usr/local", "where install put the binaries (PREFIX/bin)")
	return cmd
}

// deleteAllVMs deletes every VM through the system daemon, so a purge
// leaves no VMM behind.
func deleteAllVMs(ctx context.Context, app *App, owner int) error {
	c := sysinstall.Client(sysinstall.SystemSocket, owner)
	var list api.VMListResult
	if err := c.Call(ctx, "vm.list", nil, &list); err != nil {
		return err
	}
	for _, v := range list.VMs {
		if err := c.Call(ctx, "vm.delete", api.VMRef{Name: v.Name}, nil); err != nil {
			return fmt.Errorf("delete %s: %w", v.Name, err)
		}
		fmt.Fprintf(app.Stdout, "deleted VM %s\n", v.Name)
	}
	return nil
}
