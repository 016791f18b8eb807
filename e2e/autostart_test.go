//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAutostart: the CLI starts bangerd when nothing answers (user mode),
// detached, logging to the state dir, and the daemon it started serves
// later calls; --no-autostart never starts one.
func TestAutostart(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("e2e needs root (network namespaces)")
	}
	root := t.TempDir()
	ns := fmt.Sprintf("banger-e2e-%d-auto", os.Getpid())
	_ = exec.Command("ip", "netns", "delete", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	_ = exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	cfgDir := filepath.Join(root, "config", "banger")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "config.toml"), []byte("bridge_name = \"bge2e0\"\nbridge_cidr = \"172.31.251.1/24\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(repoRoot(t), "bin", "banger")
	env := []string{"HOME=" + root, "XDG_RUNTIME_DIR=" + filepath.Join(root, "run"), "XDG_STATE_HOME=" + filepath.Join(root, "state"),
		"XDG_CONFIG_HOME=" + filepath.Join(root, "config"), "XDG_CACHE_HOME=" + filepath.Join(root, "cache"), "PATH=" + os.Getenv("PATH")}
	banger := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := banger("--no-autostart", "ping"); err == nil || !strings.Contains(out, "bangerd is not running") {
		t.Fatalf("--no-autostart with no daemon: %v: %s", err, out)
	}
	out, err := banger("ping", "--json")
	if err != nil {
		t.Fatalf("ping with autostart: %v: %s", err, out)
	}
	var p struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.PID <= 0 {
		t.Fatalf("ping --json: %q: %v", out, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(p.PID, syscall.SIGTERM)
		for i := 0; i < 200 && pidAlive(p.PID); i++ {
			time.Sleep(50 * time.Millisecond)
		}
	})
	if out, err := banger("--no-autostart", "ping", "--json"); err != nil || !strings.Contains(out, fmt.Sprintf(`"pid": %d`, p.PID)) {
		t.Fatalf("the autostarted daemon does not serve later calls: %v: %s", err, out)
	}
	if log, err := os.ReadFile(filepath.Join(root, "state", "banger", "bangerd.log")); err != nil || !strings.Contains(string(log), "bangerd serving") {
		t.Errorf("the autostarted daemon's log: %v\n%s", err, log)
	}
	// Detached: in its own session, not the CLI's.
	if sid, err := exec.Command("ps", "-o", "sid=", "-p", fmt.Sprint(p.PID)).Output(); err != nil || strings.TrimSpace(string(sid)) != fmt.Sprint(p.PID) {
		t.Errorf("the daemon is not in a session of its own: sid %q, %v", sid, err)
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400 && pidAlive(p.PID); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if pidAlive(p.PID) {
		t.Fatalf("the autostarted daemon outlived SIGTERM")
	}
}
