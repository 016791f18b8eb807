package cli

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSSHConfigInstallUninstallTouchOnlyItsLine(t *testing.T) {
	home := t.TempDir()
	state := filepath.Join(home, "state")
	env := map[string]string{"HOME": home, "XDG_STATE_HOME": state, "XDG_RUNTIME_DIR": filepath.Join(home, "run"),
		"XDG_CONFIG_HOME": filepath.Join(home, "config"), "XDG_CACHE_HOME": filepath.Join(home, "cache")}
	userConfig := filepath.Join(home, ".ssh", "config")
	if err := os.MkdirAll(filepath.Dir(userConfig), 0o700); err != nil {
		t.Fatal(err)
	}
	mine := "Host work\n  HostName work.example\n  User me\n"
	if err := os.WriteFile(userConfig, []byte(mine), 0o640); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCLI(t, func(k string) string { return env[k] }, args...)
		if code != 0 {
			t.Fatalf("banger %v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	line := "Include " + filepath.Join(state, "banger", "ssh_config")
	run("ssh-config", "--install")
	run("ssh-config", "--install") // twice: still one line
	data, _ := os.ReadFile(userConfig)
	if want := line + "\n" + mine; string(data) != want {
		t.Fatalf("after install:\n%s\nwant:\n%s", data, want)
	}
	if fi, _ := os.Stat(userConfig); fi.Mode().Perm() != 0o640 {
		t.Errorf("install changed the file's mode to %v", fi.Mode().Perm())
	}
	run("ssh-config", "--uninstall")
	if data, _ := os.ReadFile(userConfig); string(data) != mine {
		t.Fatalf("after uninstall:\n%q\nwant:\n%q", data, mine)
	}
}
