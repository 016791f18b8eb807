package main

import (
	"context"
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
)

// rootHelperCmd is `bangerd root-helper`: the root half of a system
// install (bangerd-root.service). It does, for the owner's unprivileged
// bangerd, only the typed operations of package privops, on banger's own
// bridge (from the configuration), taps and firewall tables.
func rootHelperCmd() *cobra.Command {
	var owner, socket, configFile string
	cmd := &cobra.Command{
		Use:   "root-helper --owner USER",
		Short: "serve the privileged operations of an unprivileged bangerd (system mode)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("the root helper must run as root (it is bangerd-root.service in a system install)")
			}
			uid, err := ownerUID(owner)
			if err != nil {
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
			srv := &privops.Server{Ops: privops.Local{}, Policy: policy, Owner: uid, Log: log}
			return srv.Serve(ctx, socket)
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the user (name or uid) whose bangerd the helper serves, besides root")
	cmd.Flags().StringVar(&socket, "socket", privops.DefaultSocket, "Unix socket to serve on")
	cmd.Flags().StringVar(&configFile, "config", filepath.Join(config.SystemConfigDir, "config.toml"), "banger's configuration (bridge_name and bridge_cidr bound what the helper touches)")
	_ = cmd.MarkFlagRequired("owner")
	return cmd
}

// ownerUID resolves a user name or a numeric uid.
func ownerUID(owner string) (int, error) {
	if n, err := strconv.Atoi(owner); err == nil && n >= 0 {
		return n, nil
	}
	u, err := user.Lookup(owner)
	if err != nil {
		return 0, fmt.Errorf("--owner %q: %w", owner, err)
	}
	return strconv.Atoi(u.Uid)
}
