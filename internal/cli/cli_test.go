package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/spf13/cobra"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/config"
	"banger/internal/daemon"
)

// startDaemon runs a real daemon in a temporary XDG tree and returns an
// environment pointing at it.
func startTestDaemon(t *testing.T) func(string) string {
	t.Helper()
	root := t.TempDir()
	env := map[string]string{
		"HOME":            root,
		"XDG_RUNTIME_DIR": filepath.Join(root, "run"),
		"XDG_STATE_HOME":  filepath.Join(root, "state"),
		"XDG_CONFIG_HOME": filepath.Join(root, "config"),
		"XDG_CACHE_HOME":  filepath.Join(root, "cache"),
	}
	getenv := func(k string) string { return env[k] }
	layout, err := config.LayoutFromEnv(getenv)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.Open(ctx, daemon.Options{Layout: layout, Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), WithoutNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		d.Close()
	})
	return getenv
}

func runCLI(t *testing.T, getenv func(string) string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	app := &App{Stdout: &out, Stderr: &errb, Getenv: getenv}
	root := NewRootCommand(app)
	root.SetArgs(append([]string{"--no-autostart"}, args...))
	code := 0
	// Retry briefly while the daemon binds its socket.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out.Reset()
		errb.Reset()
		err := root.Execute()
		code = 0
		if err != nil {
			code = 1
			errb.WriteString(userMessage(err))
		}
		if code == 0 || !strings.Contains(errb.String(), "not running") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return out.String(), errb.String(), code
}

func TestOpsJSONOnFreshDaemonIsEmptyList(t *testing.T) {
	getenv := startTestDaemon(t)
	out, stderr, code := runCLI(t, getenv, "ops", "--json")
	if code != 0 {
		t.Fatalf("banger ops --json exited %d: %s", code, stderr)
	}
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("banger ops --json = %q, want []", out)
	}
	var list []any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
}

func TestNoDaemonIsAClearError(t *testing.T) {
	root := t.TempDir()
	getenv := func(k string) string {
		switch k {
		case "HOME":
			return root
		case "XDG_RUNTIME_DIR":
			return filepath.Join(root, "run")
		}
		return ""
	}
	var out, errb bytes.Buffer
	cmd := NewRootCommand(&App{Stdout: &out, Stderr: &errb, Getenv: getenv})
	cmd.SetArgs([]string{"--no-autostart", "ping"})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "bangerd is not running") {
		t.Fatalf("err = %v", err)
	}
}

func TestCommandTreeHasNoStubs(t *testing.T) {
	root := NewRootCommand(&App{Stdout: io.Discard, Stderr: io.Discard})
	// Every command, at every depth, runs something or groups commands
	// that do.
	var walk func(c *cobra.Command) int
	walk = func(c *cobra.Command) int {
		n := 0
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			n++
			if sub.RunE == nil && sub.Run == nil && !sub.HasSubCommands() {
				t.Errorf("command %q does nothing", sub.CommandPath())
			}
			n += walk(sub)
		}
		return n
	}
	if n := walk(root); n < 40 {
		t.Errorf("walked %d commands; the tree has more (is the walk recursive?)", n)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		r := NewRootCommand(&App{Stdout: &out, Stderr: io.Discard})
		r.SetOut(&out)
		r.SetArgs([]string{"completion", shell})
		if err := r.Execute(); err != nil || out.Len() < 100 {
			t.Errorf("completion %s: err=%v, %d bytes", shell, err, out.Len())
		}
	}
}

func TestShellQuote(t *testing.T) {
	cases := map[string]string{
		"uname":        "uname",
		"-r":           "-r",
		"exit 7":       "'exit 7'",
		"":             "''",
		"it's":         `'it'\''s'`,
		"a;b":          "'a;b'",
		"$HOME":        "'$HOME'",
		"/root/marker": "/root/marker",
	}
	for in, want := range cases {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestStripControl(t *testing.T) {
	in := "ok\tline\n\x1b]0;pwned\x07\x1b[2Jclear\r\x7fdel\u009bcsi é\n"
	if got, want := stripControl(in), "ok\tline\n]0;pwned[2Jcleardelcsi é\n"; got != want {
		t.Errorf("stripControl = %q, want %q", got, want)
	}
}
