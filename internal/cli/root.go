package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/rpc"
)

// App carries what every command needs.
type App struct {
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
	Getenv func(string) string

	socket   string
	noStart  bool
	clientFn func(ctx context.Context) (*rpc.Client, error)
}

// NewRootCommand builds the full banger command tree.
func NewRootCommand(app *App) *cobra.Command {
	if app.Getenv == nil {
		app.Getenv = os.Getenv
	}
	root := &cobra.Command{
		Use:   "banger",
		Short: "Persistent Linux development sandboxes on microVMs",
		Long: `banger gives you one-command, persistent Linux sandboxes: small VMs that boot
from a shared base image, keep their own disk, and are reachable by SSH and
by name. The CLI talks to bangerd, which it starts on demand.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(app.Stdout)
	root.SetErr(app.Stderr)
	root.PersistentFlags().StringVar(&app.socket, "socket", "", "bangerd socket (default $BANGER_SOCKET or $XDG_RUNTIME_DIR/banger/bangerd.sock)")
	root.PersistentFlags().BoolVar(&app.noStart, "no-autostart", false, "fail instead of starting bangerd when it is not running")

	root.AddCommand(
		newVersionCommand(app),
		newPingCommand(app),
		newOpsCommand(app),
		newDoctorCommand(app),
		newVMCommand(app),
		newPSCommand(app),
		newKernelCommand(app),
		newImageCommand(app),
		newSnapshotCommand(app),
		newSSHConfigCommand(app),
		newUpdateCommand(app),
		newSystemCommand(app),
	)
	root.CompletionOptions.HiddenDefaultCmd = false
	return root
}

// newPSCommand is `banger ps`, an alias of `banger vm list`.
func newPSCommand(app *App) *cobra.Command {
	cmd := newVMListCommand(app, "ps")
	cmd.Aliases = nil
	cmd.Short = "List VMs (alias of banger vm list)"
	return cmd
}

// Main runs the CLI and returns the process exit code.
func Main(args []string) int {
	app := &App{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin}
	root := NewRootCommand(app)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ex *exitError
	if errors.As(err, &ex) {
		return ex.code
	}
	fmt.Fprintf(app.Stderr, "banger: %s\n", userMessage(err))
	return 1
}

// exitError ends the CLI with a specific status and no further message
// (used by vm exec to pass the guest command's status through).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func userMessage(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Message
	}
	return err.Error()
}
