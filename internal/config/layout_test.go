package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestLayoutFromEnv(t *testing.T) {
	never := func(string) bool { return false }
	always := func(string) bool { return true }
	tests := []struct {
		name    string
		env     map[string]string
		exists  func(string) bool
		want    Layout
		wantErr string
	}{
		{
			name:   "XDG unset falls back to HOME and /run/user",
			env:    map[string]string{"HOME": "/home/u"},
			exists: always,
			want: Layout{
				ConfigFile: "/home/u/.config/banger/config.toml",
				StateDir:   "/home/u/.local/state/banger",
				DBPath:     "/home/u/.local/state/banger/banger.db",
				VMsDir:     "/home/u/.local/state/banger/vms",
				ImagesDir:  "/home/u/.local/state/banger/images",
				KernelsDir: "/home/u/.local/state/banger/kernels",
				SSHDir:     "/home/u/.local/state/banger/ssh",
				JailDir:    "/home/u/.local/state/banger/jail",
				SSHKey:     "/home/u/.local/state/banger/ssh/id_ed25519",
				KnownHosts: "/home/u/.local/state/banger/ssh/known_hosts",
				CacheDir:   "/home/u/.cache/banger",
				RuntimeDir: "/run/user/1000/banger",
				SocketPath: "/run/user/1000/banger/bangerd.sock",
			},
		},
		{
			name: "XDG set wins over HOME",
			env: map[string]string{"HOME": "/home/u", "XDG_CONFIG_HOME": "/x/conf", "XDG_STATE_HOME": "/x/state",
				"XDG_CACHE_HOME": "/x/cache", "XDG_RUNTIME_DIR": "/x/run"},
			exists: always,
			want: Layout{
				ConfigFile: "/x/conf/banger/config.toml",
				StateDir:   "/x/state/banger",
				DBPath:     "/x/state/banger/banger.db",
				VMsDir:     "/x/state/banger/vms",
				ImagesDir:  "/x/state/banger/images",
				KernelsDir: "/x/state/banger/kernels",
				SSHDir:     "/x/state/banger/ssh",
				JailDir:    "/x/state/banger/jail",
				SSHKey:     "/x/state/banger/ssh/id_ed25519",
				KnownHosts: "/x/state/banger/ssh/known_hosts",
				CacheDir:   "/x/cache/banger",
				RuntimeDir: "/x/run/banger",
				SocketPath: "/x/run/banger/bangerd.sock",
			},
		},
		{
			name: "all XDG set needs no HOME; BANGER_SOCKET overrides the socket",
			env: map[string]string{"XDG_CONFIG_HOME": "/x/conf", "XDG_STATE_HOME": "/x/state",
				"XDG_CACHE_HOME": "/x/cache", "XDG_RUNTIME_DIR": "/x/run", "BANGER_SOCKET": "/elsewhere/d.sock"},
			exists: never,
			want: Layout{
				ConfigFile: "/x/conf/banger/config.toml",
				StateDir:   "/x/state/banger",
				DBPath:     "/x/state/banger/banger.db",
				VMsDir:     "/x/state/banger/vms",
				ImagesDir:  "/x/state/banger/images",
				KernelsDir: "/x/state/banger/kernels",
				SSHDir:     "/x/state/banger/ssh",
				JailDir:    "/x/state/banger/jail",
				SSHKey:     "/x/state/banger/ssh/id_ed25519",
				KnownHosts: "/x/state/banger/ssh/known_hosts",
				CacheDir:   "/x/cache/banger",
				RuntimeDir: "/x/run/banger",
				SocketPath: "/elsewhere/d.sock",
			},
		},
		{
			name:   "no XDG_RUNTIME_DIR and no /run/user uses TMPDIR",
			env:    map[string]string{"HOME": "/home/u", "TMPDIR": "/var/tmp"},
			exists: never,
			want: Layout{
				ConfigFile: "/home/u/.config/banger/config.toml",
				StateDir:   "/home/u/.local/state/banger",
				DBPath:     "/home/u/.local/state/banger/banger.db",
				VMsDir:     "/home/u/.local/state/banger/vms",
				ImagesDir:  "/home/u/.local/state/banger/images",
				KernelsDir: "/home/u/.local/state/banger/kernels",
				SSHDir:     "/home/u/.local/state/banger/ssh",
				JailDir:    "/home/u/.local/state/banger/jail",
				SSHKey:     "/home/u/.local/state/banger/ssh/id_ed25519",
				KnownHosts: "/home/u/.local/state/banger/ssh/known_hosts",
				CacheDir:   "/home/u/.cache/banger",
				RuntimeDir: "/var/tmp/banger-1000",
				SocketPath: "/var/tmp/banger-1000/bangerd.sock",
			},
		},
		{
			name:    "no HOME and no XDG is an error",
			env:     map[string]string{},
			exists:  always,
			wantErr: "XDG_CONFIG_HOME is not set and HOME is unset",
		},
		{
			name:    "relative HOME is an error",
			env:     map[string]string{"HOME": "home/u"},
			exists:  always,
			wantErr: `HOME is "home/u", not an absolute path`,
		},
		{
			name:    "relative BANGER_SOCKET is an error",
			env:     map[string]string{"HOME": "/home/u", "BANGER_SOCKET": "d.sock"},
			exists:  always,
			wantErr: `BANGER_SOCKET="d.sock" is not an absolute path`,
		},
	}
	// Root without a runtime dir never lands in a world-writable one.
	root, err := layoutFrom(envOf(map[string]string{"HOME": "/root", "TMPDIR": "/tmp"}), 0, never)
	if err != nil || root.RuntimeDir != "/run/banger" || root.SocketPath != "/run/banger/bangerd.sock" {
		t.Errorf("root's layout without XDG_RUNTIME_DIR: %q %q, %v", root.RuntimeDir, root.SocketPath, err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := layoutFrom(envOf(tt.env), 1000, tt.exists)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("layout =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestLayoutFromEnvChecksRunUser(t *testing.T) {
	l, err := LayoutFromEnv(envOf(map[string]string{"HOME": "/home/u", "TMPDIR": "/tmp"}))
	if err != nil {
		t.Fatal(err)
	}
	userRun := filepath.Join("/run/user", strconv.Itoa(os.Getuid()))
	want := filepath.Join("/tmp", "banger-"+strconv.Itoa(os.Getuid()))
	if os.Getuid() == 0 {
		want = "/run/banger"
	}
	if fi, err := os.Stat(userRun); err == nil && fi.IsDir() {
		want = filepath.Join(userRun, "banger")
	}
	if l.RuntimeDir != want {
		t.Fatalf("RuntimeDir = %q, want %q", l.RuntimeDir, want)
	}
}

func TestEnsureCreatesPrivateDirs(t *testing.T) {
	root := t.TempDir()
	l, err := LayoutFromEnv(envOf(map[string]string{
		"XDG_CONFIG_HOME": filepath.Join(root, "config"),
		"XDG_STATE_HOME":  filepath.Join(root, "state"),
		"XDG_CACHE_HOME":  filepath.Join(root, "cache"),
		"XDG_RUNTIME_DIR": filepath.Join(root, "run"),
	}))
	if err != nil {
		t.Fatal(err)
	}
	// A state dir left too open by someone else's tool must be tightened.
	if err := os.MkdirAll(l.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(l.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{l.StateDir, l.SSHDir, l.RuntimeDir, l.VMsDir, l.ImagesDir,
		l.KernelsDir, l.CacheDir, filepath.Dir(l.ConfigFile)} {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			t.Fatalf("Ensure did not create directory %s: %v", dir, err)
		}
	}
	for _, dir := range []string{l.StateDir, l.SSHDir, l.RuntimeDir} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o700 {
			t.Errorf("%s has mode %o, want 700", dir, got)
		}
	}
	// Idempotent.
	if err := l.Ensure(); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
}

func TestEnsureRefusesFileInPlaceOfDir(t *testing.T) {
	root := t.TempDir()
	l, err := LayoutFromEnv(envOf(map[string]string{"HOME": root, "XDG_RUNTIME_DIR": filepath.Join(root, "run")}))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(l.StateDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.StateDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err == nil || !strings.Contains(err.Error(), l.StateDir) {
		t.Fatalf("Ensure over a file = %v, want an error naming %s", err, l.StateDir)
	}
}

// A root daemon refuses state trees another user controls or that pass
// through a symbolic link (a user's cache dir linked to /etc).
func TestEnsureRefusesUntrustedTreesForRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the check is for root daemons")
	}
	layoutIn := func(root string) Layout {
		l, err := LayoutFromEnv(envOf(map[string]string{
			"XDG_CONFIG_HOME": filepath.Join(root, "config"), "XDG_STATE_HOME": filepath.Join(root, "state"),
			"XDG_CACHE_HOME": filepath.Join(root, "cache"), "XDG_RUNTIME_DIR": filepath.Join(root, "run"),
		}))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if err := layoutIn(t.TempDir()).Ensure(); err != nil {
		t.Fatalf("a root-owned tree refused: %v", err)
	}
	// A user's directory on the way.
	user := t.TempDir()
	if err := os.Chown(user, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := layoutIn(user).Ensure(); err == nil || !strings.Contains(err.Error(), user+" belongs to uid 1000") {
		t.Errorf("a user's directory: %v", err)
	}
	// The cache dir a symbolic link (to /etc, say).
	root := t.TempDir()
	target := t.TempDir()
	if err := os.Symlink(target, filepath.Join(root, "cache")); err != nil {
		t.Fatal(err)
	}
	if err := layoutIn(root).Ensure(); err == nil || !strings.Contains(err.Error(), filepath.Join(root, "cache")+" is a symbolic link") {
		t.Errorf("a symlinked cache dir: %v", err)
	}
	// A directory others may write to.
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := layoutIn(open).Ensure(); err == nil || !strings.Contains(err.Error(), "is writable by others") {
		t.Errorf("a world-writable directory: %v", err)
	}
}

func TestSystemLayout(t *testing.T) {
	l, err := SystemLayout(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"config": "/etc/banger/config.toml", "state": "/var/lib/banger", "db": "/var/lib/banger/banger.db",
		"cache": "/var/cache/banger", "runtime": "/run/banger", "socket": "/run/banger/bangerd.sock", "jail": "/var/lib/banger-jail"}
	got := map[string]string{"config": l.ConfigFile, "state": l.StateDir, "db": l.DBPath, "cache": l.CacheDir, "runtime": l.RuntimeDir, "socket": l.SocketPath, "jail": l.JailDir}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("system %s = %q, want %q", k, got[k], w)
		}
	}
}
