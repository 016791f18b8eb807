package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"banger/internal/config"
)

func newSSHConfigCommand(app *App) *cobra.Command {
	var install, uninstall bool
	cmd := &cobra.Command{
		Use:   "ssh-config",
		Short: "Make `ssh NAME.vm` work from any terminal (one Include line in ~/.ssh/config)",
		Long: "bangerd keeps an OpenSSH client configuration current with every VM's address, banger's key\n" +
			"and banger's known_hosts. --install adds one Include line for it at the top of ~/.ssh/config;\n" +
			"--uninstall removes exactly that line. Without a flag, the file is printed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := config.LayoutFromEnv(app.Getenv)
			if err != nil {
				return err
			}
			file := filepath.Join(layout.StateDir, "ssh_config")
			home := app.Getenv("HOME")
			if home == "" {
				return errors.New("HOME is not set: cannot find ~/.ssh/config")
			}
			userConfig := filepath.Join(home, ".ssh", "config")
			line := includeLine(file)
			switch {
			case install && uninstall:
				return errors.New("give --install or --uninstall, not both")
			case install:
				changed, err := addInclude(userConfig, line)
				if err != nil {
					return err
				}
				if changed {
					fmt.Fprintf(app.Stdout, "added to %s: %s\nssh NAME.vm, scp and rsync -e ssh now reach banger's VMs\n", userConfig, line)
				} else {
					fmt.Fprintf(app.Stdout, "%s already includes %s\n", userConfig, file)
				}
				return nil
			case uninstall:
				changed, err := removeInclude(userConfig, line)
				if err != nil {
					return err
				}
				if changed {
					fmt.Fprintf(app.Stdout, "removed from %s: %s\n", userConfig, line)
				} else {
					fmt.Fprintf(app.Stdout, "%s has no banger Include line\n", userConfig)
				}
				return nil
			}
			data, err := os.ReadFile(file)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%s does not exist yet: bangerd writes it when it starts", file)
			}
			if err != nil {
				return err
			}
			_, err = app.Stdout.Write(data)
			return err
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "add the Include line to ~/.ssh/config")
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "remove the Include line from ~/.ssh/config")
	return cmd
}

func includeLine(file string) string {
	if strings.ContainsAny(file, " \t") {
		return `Include "` + file + `"`
	}
	return "Include " + file
}

// addInclude puts line first in the user's ssh config (an Include after a
// Host block would apply only inside it), unless it is there already.
func addInclude(path, line string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) == line {
			return false, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, err
	}
	out := append([]byte(line+"\n"), data...)
	return true, writeKeepingMode(path, out, 0o600)
}

// removeInclude drops exactly the lines equal to line.
func removeInclude(path, line string) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var kept bytes.Buffer
	removed := false
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if strings.TrimSpace(l) == line {
			removed = true
			continue
		}
		kept.WriteString(l)
	}
	if !removed {
		return false, nil
	}
	return true, writeKeepingMode(path, kept.Bytes(), 0o600)
}

func writeKeepingMode(path string, data []byte, mode os.FileMode) error {
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp := path + ".banger.tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
