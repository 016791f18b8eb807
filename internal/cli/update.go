package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/rpc"
	"banger/internal/sysinstall"
	"banger/internal/system"
	"banger/internal/update"
	"banger/internal/version"
)

// exitUpdateAvailable is banger update --check's status when there is one.
const exitUpdateAvailable = 10

func newUpdateCommand(app *App) *cobra.Command {
	var (
		check, dryRun, force, rollback bool
		to, manifestURL                string
		stall                          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Replace banger, bangerd and banger-agent with a signed release, restarting the daemon (VMs keep running)",
		Long: `Installs a release from the manifest at --manifest-url (config update_manifest_url).

Refuses while bangerd has operations in flight (--force skips only that check).
Downloads are size-capped; SHA256SUMS must be signed by the key this build
embeds and the tarball must match it. The new binaries are run before they
are swapped in by rename, the old ones kept as NAME.previous; bangerd is
restarted (running VMs are re-adopted) and banger doctor must pass, or
everything is rolled back. --rollback swaps the .previous binaries back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := config.LayoutFromEnv(app.Getenv)
			if err != nil {
				return err
			}
			systemMode := usesSystemInstall(app)
			doctorArgs := []string{"--socket", layout.SocketPath}
			if systemMode {
				// The service's config and socket; the new banger doctor
				// finds the system install by itself.
				if layout, err = config.SystemLayout(app.Getenv); err != nil {
					return err
				}
				doctorArgs = nil
			}
			if app.socket != "" {
				layout.SocketPath = app.socket
				doctorArgs = []string{"--socket", layout.SocketPath}
			}
			if manifestURL == "" && !rollback {
				cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
				if err != nil {
					return err
				}
				manifestURL = cfg.UpdateManifest
			}
			dir, err := installDir()
			if err != nil {
				return err
			}
			opts := update.Options{
				ManifestURL: manifestURL, To: to, DryRun: dryRun, Force: force,
				InstallDir: dir, CurrentVersion: version.Version, PublicKey: version.UpdateKey,
				StallTimeout: stall, Daemon: pickDaemon(app, layout),
				DoctorArgs: doctorArgs, Log: app.Stdout,
			}
			ctx := cmd.Context()
			switch {
			case rollback:
				if check || dryRun || to != "" {
					return errors.New("--rollback takes no other flag")
				}
				v, err := update.Rollback(ctx, opts)
				if err != nil {
					return err
				}
				fmt.Fprintf(app.Stdout, "rolled back to %s\n", v)
				return nil
			case check:
				p, err := update.Check(ctx, opts)
				if err != nil {
					return err
				}
				if !p.Available {
					fmt.Fprintf(app.Stdout, "up to date (%s)\n", p.Current)
					return nil
				}
				fmt.Fprintf(app.Stdout, "update available: %s → %s\n", p.Current, p.Target)
				return &exitError{code: exitUpdateAvailable}
			}
			res, err := update.Run(ctx, opts)
			if err != nil {
				return err
			}
			switch {
			case res.UpToDate:
				fmt.Fprintf(app.Stdout, "up to date (%s)\n", res.From)
			case res.DryRun:
			default:
				fmt.Fprintf(app.Stdout, "updated %s → %s\n", res.From, res.To)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&check, "check", false, "only say whether an update is available (exit 10 when one is)")
	f.StringVar(&to, "to", "", "install this version (vX.Y.Z) instead of the latest stable one")
	f.BoolVar(&dryRun, "dry-run", false, "download, verify and run the new binaries, then stop before swapping them in")
	f.BoolVar(&force, "force", false, "update even while bangerd has operations in flight")
	f.StringVar(&manifestURL, "manifest-url", "", "release manifest (default: config update_manifest_url)")
	f.BoolVar(&rollback, "rollback", false, "swap the .previous binaries back in and restart bangerd")
	f.DurationVar(&stall, "stall-timeout", 30*time.Second, "give up on a download that receives nothing for this long")
	return cmd
}

// installDir is where the running banger lives, symlinks resolved:
// bangerd and banger-agent are beside it (make install, system install).
func installDir() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		return "", err
	}
	return filepath.Dir(exe), nil
}

// userDaemon is a bangerd the CLI started (user mode): restarted by
// SIGTERM to the pid that answers, then started again from beside banger.
type userDaemon struct {
	layout config.Layout
}

func (u *userDaemon) client() (*rpc.Client, error) {
	if err := checkSocketDir(u.layout.SocketPath); err != nil {
		return nil, err
	}
	return &rpc.Client{SocketPath: u.layout.SocketPath}, nil
}

func (u *userDaemon) ping(ctx context.Context) (api.PingResult, bool, error) {
	var res api.PingResult
	c, err := u.client()
	if err != nil {
		return res, false, err
	}
	err = c.Call(ctx, "ping", nil, &res)
	if errors.Is(err, rpc.ErrDaemonUnreachable) {
		return res, false, nil
	}
	return res, err == nil, err
}

func (u *userDaemon) Running(ctx context.Context) (string, bool, error) {
	res, ok, err := u.ping(ctx)
	return res.Version, ok, err
}

func (u *userDaemon) Operations(ctx context.Context) ([]api.OperationSummary, error) {
	c, err := u.client()
	if err != nil {
		return nil, err
	}
	var res api.OperationsListResult
	if err := c.Call(ctx, "daemon.operations.list", nil, &res); err != nil {
		return nil, err
	}
	return res.Operations, nil
}

// Restart stops the answering daemon (SIGTERM: it leaves VMs running),
// waits for it to exit, starts the installed bangerd, and waits until it
// answers as want.
func (u *userDaemon) Restart(ctx context.Context, want string) error {
	res, ok, err := u.ping(ctx)
	if err != nil {
		return err
	}
	if ok {
		if res.PID <= 1 {
			return fmt.Errorf("bangerd reports pid %d; cannot restart it", res.PID)
		}
		if err := syscall.Kill(res.PID, syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop bangerd (pid %d): %w", res.PID, err)
		}
		if err := waitExit(ctx, res.PID, 30*time.Second); err != nil {
			return err
		}
	}
	if err := startDaemon(u.layout, u.layout.SocketPath); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, ok, _ := u.ping(ctx)
		if ok {
			if res.Version != want {
				return fmt.Errorf("bangerd answers as %s, not %s", res.Version, want)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bangerd %s did not answer on %s within 30s (see %s)", want, u.layout.SocketPath,
				filepath.Join(u.layout.StateDir, "bangerd.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitExit waits until pid has exited (a zombie its parent has not reaped
// yet counts: it holds no socket and no lock).
func waitExit(ctx context.Context, pid int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return nil
		}
		// state is the field after the parenthesised command name.
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bangerd (pid %d) did not exit within %s of SIGTERM", pid, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pickDaemon is the daemon an update restarts: the system service when
// banger is installed as one (and no socket was named), else the user
// daemon.
func pickDaemon(app *App, layout config.Layout) update.Daemon {
	if usesSystemInstall(app) {
		if o, err := sysinstall.InstalledOwner(""); err == nil {
			return &systemDaemon{owner: o.UID}
		}
	}
	return &userDaemon{layout: layout}
}

// systemDaemon is bangerd.service: restarted by systemctl, with its
// root helper (whose binary the update replaced too).
type systemDaemon struct{ owner int }

func (s *systemDaemon) client() *rpc.Client {
	return sysinstall.Client(sysinstall.SystemSocket, s.owner)
}

func (s *systemDaemon) Running(ctx context.Context) (string, bool, error) {
	var res api.PingResult
	err := s.client().Call(ctx, "ping", nil, &res)
	if errors.Is(err, rpc.ErrDaemonUnreachable) {
		return "", false, nil
	}
	return res.Version, err == nil, err
}

func (s *systemDaemon) Operations(ctx context.Context) ([]api.OperationSummary, error) {
	var res api.OperationsListResult
	if err := s.client().Call(ctx, "daemon.operations.list", nil, &res); err != nil {
		return nil, err
	}
	return res.Operations, nil
}

func (s *systemDaemon) Restart(ctx context.Context, want string) error {
	if err := sysinstall.Restart(ctx, &system.Exec{}, sysinstall.SystemSocket, s.owner); err != nil {
		return err
	}
	v, ok, err := s.Running(ctx)
	if err != nil || !ok {
		return fmt.Errorf("bangerd.service does not answer after its restart: %v", err)
	}
	if v != want {
		return fmt.Errorf("bangerd.service answers as %s, not %s", v, want)
	}
	return nil
}

// usesSystemInstall says whether this CLI talks to a system install's
// daemon: one is installed and no socket was named.
func usesSystemInstall(app *App) bool {
	return app.socket == "" && app.Getenv(config.SocketEnv) == "" && sysinstall.Installed("")
}
