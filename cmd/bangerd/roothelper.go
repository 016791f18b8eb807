package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"banger/internal/config"
	"banger/internal/privops"
	"banger/internal/vmm"
)

// rootHelperCmd is `bangerd root-helper`: the root half of a system
// install (bangerd-root.service). It does, for the owner's unprivileged
// bangerd, only the typed operations of package privops, on banger's own
// bridge (from the configuration), taps, firewall tables, dm snapshots
// and Firecracker jails (in --jail-dir, of files from --state-dir).
func rootHelperCmd() *cobra.Command {
	var owner, socket, configFile, stateDir, jailDir string
	cmd := &cobra.Command{
		Use:   "root-helper --owner USER",
		Short: "serve the privileged operations of an unprivileged bangerd (system mode)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("the root helper must run as root (it is bangerd-root.service in a system install)")
			}
			uid, gid, err := ownerIDs(owner)
			if err != nil {
				return err
			}
			// The bridge and subnet in it bound what root does for the
			// owner: only root may choose them.
			if err := rootOnly(configFile); err != nil {
				return err
			}
			cfg, err := config.Load(configFile, config.DetectHost())
			if err != nil {
				return err
			}
			policy, err := privops.NewPolicy(cfg.BridgeName, cfg.BridgeCIDR)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: parseLevel(cfg.LogLevel)}))
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var jails *privops.Jails
			if cfg.Jailer != "off" {
				// The jails' directory is root's; the jailer works in it
				// as root.
				if err := os.MkdirAll(jailDir, 0o755); err != nil {
					return err
				}
				// 0755 whatever the umask (the unit's is 0077): the owner
				// reaches its VMMs' sockets in there.
				if err := os.Chmod(jailDir, 0o755); err != nil {
					return err
				}
				jails = &privops.Jails{Base: jailDir, StateDir: stateDir, Jailer: cfg.JailerBin, Firecracker: cfg.FirecrackerBin,
					CgroupVersion: vmm.CgroupVersion()}
			}
			srv := &privops.Server{Ops: privops.Local{}, Policy: policy, Owner: uid, OwnerGID: gid, Log: log, Jails: jails}
			return srv.Serve(ctx, socket)
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the user (name or uid) whose bangerd the helper serves, besides root")
	cmd.Flags().StringVar(&socket, "socket", privops.DefaultSocket, "Unix socket to serve on")
	cmd.Flags().StringVar(&configFile, "config", filepath.Join(config.SystemConfigDir, "config.toml"), "banger's configuration (bridge_name and bridge_cidr bound what the helper touches)")
	cmd.Flags().StringVar(&stateDir, "state-dir", config.SystemStateDir, "the owner daemon's state directory: the only place the files of a jailed VM come from")
	cmd.Flags().StringVar(&jailDir, "jail-dir", config.SystemJailDir, "root's directory for the jails of the owner's Firecrackers, on the state directory's filesystem")
	_ = cmd.MarkFlagRequired("owner")
	return cmd
}

// ownerIDs resolves a user name or a numeric uid to uid and primary gid
// (-1: a uid with no passwd entry, whose taps get no group).
func ownerIDs(owner string) (int, int, error) {
	var u *user.User
	var err error
	if n, aerr := strconv.Atoi(owner); aerr == nil && n >= 0 {
		if u, err = user.LookupId(owner); err != nil {
			return n, -1, nil
		}
	} else if u, err = user.Lookup(owner); err != nil {
		return 0, 0, fmt.Errorf("--owner %q: %w", owner, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		gid = -1
	}
	return uid, gid, nil
}

// rootOnly refuses a configuration file anyone but root could have
// written (a missing one is fine: the defaults).
func rootOnly(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s must belong to root and be writable by root only (it bounds what the root helper does); chown root:root %s && chmod go-w %s", path, path, path)
	}
	return nil
}
