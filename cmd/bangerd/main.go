// Command bangerd is banger's daemon. See package banger/internal/daemon.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"banger/internal/config"
	"banger/internal/daemon"
	"banger/internal/privops"
	"banger/internal/store"
	"banger/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var (
		foreground      bool
		socket          string
		checkMigrations bool
		showVersion     bool
		noNetwork       bool
		system          bool
		rootHelper      string
		code            int
	)
	cmd := &cobra.Command{
		Use:           "bangerd",
		Short:         "banger's daemon: owns VM state and all host work",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if showVersion {
				fmt.Printf("bangerd %s (%s)\n", version.Version, version.Commit)
				return nil
			}
			layout, err := config.LayoutFromEnv(os.Getenv)
			if system {
				layout, err = config.SystemLayout(os.Getenv)
				if rootHelper == "" && os.Geteuid() != 0 {
					rootHelper = privops.DefaultSocket
				}
			}
			if err != nil {
				return err
			}
			if socket != "" {
				layout.SocketPath = socket
			}
			if checkMigrations {
				c, msg := store.CheckMigrations(layout.DBPath)
				fmt.Println(msg)
				code = c
				return nil
			}
			cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
			if err != nil {
				return err
			}
			logOut := io.Writer(os.Stderr)
			if !foreground {
				if err := os.MkdirAll(layout.StateDir, 0o700); err != nil {
					return err
				}
				f, err := os.OpenFile(filepath.Join(layout.StateDir, "bangerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
				if err != nil {
					return fmt.Errorf("open daemon log: %w", err)
				}
				defer f.Close()
				logOut = f
			}
			logger := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: parseLevel(cfg.LogLevel)}))
			slog.SetDefault(logger)

			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			d, err := daemon.Open(ctx, daemon.Options{Layout: layout, Config: cfg, Logger: logger, WithoutNetwork: noNetwork, RootHelper: rootHelper})
			if err != nil {
				return err
			}
			defer d.Close()
			return d.Serve(ctx)
		},
	}
	cmd.Flags().BoolVar(&foreground, "foreground", false, "log to stderr instead of the state directory's bangerd.log")
	cmd.Flags().StringVar(&socket, "socket", os.Getenv("BANGER_SOCKET"), "Unix socket to listen on (default $XDG_RUNTIME_DIR/banger/bangerd.sock)")
	cmd.Flags().BoolVar(&checkMigrations, "check-migrations", false, "exit 0 if the database is up to date, 1 if migrations are pending, 2 if it is newer than this binary")
	cmd.Flags().BoolVar(&showVersion, "version", false, "print the version and exit")
	cmd.Flags().BoolVar(&noNetwork, "no-network", false, "serve without the bridge, tap pool, rules and DNS server (pulls and artifacts only; VMs started this way get a tap the slow way and no DNS)")
	cmd.Flags().BoolVar(&system, "system", false, "system mode (banger system install): config in /etc/banger, state in /var/lib/banger, cache in /var/cache/banger, socket in /run/banger; unprivileged, through the root helper")
	cmd.Flags().StringVar(&rootHelper, "root-helper", "", "socket of banger's root helper (bangerd root-helper), which does what needs root for this unprivileged daemon (default with --system when not root: "+privops.DefaultSocket+")")
	cmd.AddCommand(rootHelperCmd())
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		return 1
	}
	return code
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
