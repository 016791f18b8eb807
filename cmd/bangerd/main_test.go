package main

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"banger/internal/store"
)

// TestMain lets a test run this binary's main as a separate process (a
// daemon that can be signalled and killed on its own).
func TestMain(m *testing.M) {
	if os.Getenv("BANGERD_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// stateEnv points the XDG directories into a fresh temporary tree.
func stateEnv(t *testing.T) (root string, env []string) {
	t.Helper()
	root = t.TempDir()
	env = []string{"HOME=" + root, "XDG_STATE_HOME=" + filepath.Join(root, "state"), "XDG_CONFIG_HOME=" + filepath.Join(root, "config"),
		"XDG_CACHE_HOME=" + filepath.Join(root, "cache"), "XDG_RUNTIME_DIR=" + filepath.Join(root, "run"), "BANGER_SOCKET="}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return root, env
}

// bangerd runs this binary as bangerd with args in env.
func bangerd(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), env...), "BANGERD_TEST_MAIN=1")
	return cmd
}

func TestCheckMigrationsExitCodes(t *testing.T) {
	root, env := stateEnv(t)
	check := func() (int, string) {
		out, err := bangerd(env, "--check-migrations").CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return code, string(out)
	}
	if code, out := check(); code != 1 || !strings.Contains(out, "does not exist yet") {
		t.Errorf("fresh state: exit %d, %s", code, out)
	}
	db := filepath.Join(root, "state", "banger", "banger.db")
	s, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if code, out := check(); code != 0 || !strings.Contains(out, "up to date") {
		t.Errorf("migrated state: exit %d, %s", code, out)
	}
	raw, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`INSERT INTO schema_migrations (id, name, applied_at) VALUES (999, 'from the future', '2030-01-01T00:00:00Z')`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if code, out := check(); code != 2 || !strings.Contains(out, "999") {
		t.Errorf("a newer database: exit %d, %s", code, out)
	}
}

func TestBadConfigIsRefused(t *testing.T) {
	root, env := stateEnv(t)
	cfg := filepath.Join(root, "config", "banger", "config.toml")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte("vmm = \"bhyve\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := bangerd(env, "--foreground", "--no-network").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "bangerd: ") || !strings.Contains(string(out), "vmm") {
		t.Fatalf("a bad config: %v\n%s", err, out)
	}
}

// TestSecondDaemonAndSIGTERM: a second bangerd on the same state is
// refused naming the first; SIGTERM stops the first cleanly, its socket
// gone.
func TestSecondDaemonAndSIGTERM(t *testing.T) {
	root, env := stateEnv(t)
	sock := filepath.Join(root, "run", "banger", "bangerd.sock")
	first := bangerd(env, "--foreground", "--no-network")
	var firstOut bytes.Buffer
	first.Stdout, first.Stderr = &firstOut, &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if first.ProcessState == nil {
			_ = first.Process.Kill()
			_ = first.Wait()
		}
	}()
	for i := 0; i < 200; i++ {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := bangerd(env, "--foreground", "--no-network").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "bangerd: ") {
		t.Fatalf("a second daemon: %v\n%s", err, out)
	}
	t.Logf("second daemon: %s", strings.TrimSpace(string(out)))
	if err := first.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("bangerd after SIGTERM: %v\n%s", err, firstOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("bangerd did not stop within 20s of SIGTERM\n%s", firstOut.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket is still there after a clean stop: %v", err)
	}
}
