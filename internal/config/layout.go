package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Layout is every path banger uses in user mode. All of them derive from the
// XDG base-directory variables (falling back to $HOME), so a test or a second
// install isolates itself by setting those variables.
type Layout struct {
	ConfigFile string // $XDG_CONFIG_HOME/banger/config.toml
	StateDir   string // $XDG_STATE_HOME/banger
	DBPath     string // StateDir/banger.db
	VMsDir     string // StateDir/vms
	ImagesDir  string // StateDir/images
	KernelsDir string // StateDir/kernels
	SSHDir     string // StateDir/ssh
	JailDir    string // StateDir/jail: jailed Firecrackers' chroots; SystemJailDir in system mode
	SSHKey     string // SSHDir/id_ed25519 (public half at SSHKey+".pub")
	KnownHosts string // SSHDir/known_hosts
	CacheDir   string // $XDG_CACHE_HOME/banger
	RuntimeDir string // $XDG_RUNTIME_DIR/banger, /run/user/<uid>/banger, /run/banger (root) or $TMPDIR/banger-<uid>
	SocketPath string // RuntimeDir/bangerd.sock, or $BANGER_SOCKET
}

// SocketEnv names the variable that overrides the daemon socket path.
const SocketEnv = "BANGER_SOCKET"

// LayoutFromEnv computes the layout from the environment that getenv reads
// (pass os.Getenv). It touches nothing on disk except to check whether
// /run/user/<uid> exists.
func LayoutFromEnv(getenv func(string) string) (Layout, error) {
	return layoutFrom(getenv, os.Getuid(), dirExists)
}

func dirExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

func layoutFrom(getenv func(string) string, uid int, exists func(string) bool) (Layout, error) {
	configHome, err := xdgDir(getenv, "XDG_CONFIG_HOME", ".config")
	if err != nil {
		return Layout{}, err
	}
	stateHome, err := xdgDir(getenv, "XDG_STATE_HOME", filepath.Join(".local", "state"))
	if err != nil {
		return Layout{}, err
	}
	cacheHome, err := xdgDir(getenv, "XDG_CACHE_HOME", ".cache")
	if err != nil {
		return Layout{}, err
	}

	var runtimeDir string
	if dir := getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(dir) {
		runtimeDir = filepath.Join(dir, "banger")
	} else if userRun := filepath.Join("/run/user", strconv.Itoa(uid)); exists(userRun) {
		runtimeDir = filepath.Join(userRun, "banger")
	} else if uid == 0 {
		// Root never falls back to a world-writable directory, where any
		// local user could make banger-0 first and answer as bangerd.
		runtimeDir = "/run/banger"
	} else {
		tmp := getenv("TMPDIR")
		if !filepath.IsAbs(tmp) {
			tmp = "/tmp"
		}
		runtimeDir = filepath.Join(tmp, "banger-"+strconv.Itoa(uid))
	}

	socket := filepath.Join(runtimeDir, "bangerd.sock")
	if s := getenv(SocketEnv); s != "" {
		if !filepath.IsAbs(s) {
			return Layout{}, fmt.Errorf("%s=%q is not an absolute path; set it to the full path of the bangerd socket", SocketEnv, s)
		}
		socket = filepath.Clean(s)
	}

	state := filepath.Join(stateHome, "banger")
	ssh := filepath.Join(state, "ssh")
	return Layout{
		ConfigFile: filepath.Join(configHome, "banger", "config.toml"),
		StateDir:   state,
		DBPath:     filepath.Join(state, "banger.db"),
		VMsDir:     filepath.Join(state, "vms"),
		ImagesDir:  filepath.Join(state, "images"),
		KernelsDir: filepath.Join(state, "kernels"),
		SSHDir:     ssh,
		JailDir:    filepath.Join(state, "jail"),
		SSHKey:     filepath.Join(ssh, "id_ed25519"),
		KnownHosts: filepath.Join(ssh, "known_hosts"),
		CacheDir:   filepath.Join(cacheHome, "banger"),
		RuntimeDir: runtimeDir,
		SocketPath: socket,
	}, nil
}

// System-mode paths (banger system install): the owner daemon's
// configuration, state, cache and socket.
const (
	SystemConfigDir  = "/etc/banger"
	SystemStateDir   = "/var/lib/banger"
	SystemCacheDir   = "/var/cache/banger"
	SystemRuntimeDir = "/run/banger"
	// SystemJailDir is root's: the root helper makes the jails of the
	// owner's Firecrackers there (the jailer works in it as root, so no
	// directory on its path may be the owner's). Beside the state
	// directory, on its filesystem: the VMs' files are hard-linked in.
	SystemJailDir = "/var/lib/banger-jail"
)

// SystemLayout is the layout of a system install: config in /etc/banger,
// state in /var/lib/banger, cache in /var/cache/banger, the socket in
// /run/banger (what the units' ConfigurationDirectory, StateDirectory,
// CacheDirectory and RuntimeDirectory make). $BANGER_SOCKET still
// overrides the socket.
func SystemLayout(getenv func(string) string) (Layout, error) {
	env := map[string]string{
		"XDG_CONFIG_HOME": filepath.Dir(SystemConfigDir),
		"XDG_STATE_HOME":  filepath.Dir(SystemStateDir),
		"XDG_CACHE_HOME":  filepath.Dir(SystemCacheDir),
		"XDG_RUNTIME_DIR": filepath.Dir(SystemRuntimeDir),
		SocketEnv:         getenv(SocketEnv),
	}
	l, err := layoutFrom(func(k string) string { return env[k] }, os.Getuid(), dirExists)
	l.JailDir = SystemJailDir
	return l, err
}

// xdgDir returns $name when it holds an absolute path (the XDG spec says
// relative values are to be ignored) and $HOME/fallback otherwise.
func xdgDir(getenv func(string) string, name, fallback string) (string, error) {
	if dir := getenv(name); filepath.IsAbs(dir) {
		return filepath.Clean(dir), nil
	}
	home := getenv("HOME")
	if !filepath.IsAbs(home) {
		return "", fmt.Errorf("cannot place banger's files: %s is not set and HOME is %s; set HOME or %s to an absolute path",
			name, describeValue(home), name)
	}
	return filepath.Join(home, fallback), nil
}

func describeValue(v string) string {
	if v == "" {
		return "unset"
	}
	return fmt.Sprintf("%q, not an absolute path", v)
}

// Ensure creates every directory of the layout. The state, SSH and runtime
// directories hold keys, the database and the control socket, so they are
// made (or tightened to) 0700 and must belong to the current user.
func (l Layout) Ensure() error {
	dirs := []struct {
		path    string
		mode    os.FileMode
		private bool
	}{
		{filepath.Dir(l.ConfigFile), 0o755, false},
		{l.StateDir, 0o700, true},
		{l.VMsDir, 0o755, false},
		{l.ImagesDir, 0o755, false},
		{l.KernelsDir, 0o755, false},
		{l.SSHDir, 0o700, true},
		{l.CacheDir, 0o755, false},
		{l.RuntimeDir, 0o700, true},
	}
	if os.Getuid() == 0 {
		// A root daemon deletes and writes under these trees: none of
		// them may pass through a directory another user controls or
		// through a symbolic link (a user's ~/.cache/banger/build linked
		// to /etc would have cache prune empty /etc).
		for _, d := range []string{filepath.Dir(l.ConfigFile), l.StateDir, l.CacheDir, l.RuntimeDir} {
			if err := checkRootChain(d); err != nil {
				return err
			}
		}
	}
	for _, d := range dirs {
		if d.path == "" {
			return errors.New("layout is incomplete: a directory path is empty; build it with LayoutFromEnv")
		}
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("create %s: %w", d.path, err)
		}
		if d.private {
			if err := ensurePrivateDir(d.path); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensurePrivateDir checks that path is a directory owned by the current
// user and no one else can enter. A directory that is ours but too open is
// tightened; one owned by someone else (possible under a shared $TMPDIR) is
// refused, since they could read our socket or keys.
func ensurePrivateDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists but is not a directory; move it away so banger can create its directory there", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%s belongs to uid %d, not to you (uid %d); remove it or point the XDG variables elsewhere", path, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(path, 0o700); err != nil {
			return fmt.Errorf("restrict %s to mode 0700: %w", path, err)
		}
	}
	return nil
}

// checkRootChain checks, for a daemon running as root, every existing
// directory from dir up to /: owned by root, not writable by others
// unless sticky (like /tmp), and no symbolic link anywhere.
func checkRootChain(dir string) error {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Lstat(d)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Made by Ensure, as root, below an existing checked parent.
		case err != nil:
			return fmt.Errorf("check %s: %w", d, err)
		case fi.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("%s is a symbolic link; bangerd running as root keeps its state only on real root-owned directories (set XDG_STATE_HOME, XDG_CACHE_HOME, XDG_CONFIG_HOME and XDG_RUNTIME_DIR to such, or unset them)", d)
		default:
			st, ok := fi.Sys().(*syscall.Stat_t)
			if ok && st.Uid != 0 {
				return fmt.Errorf("%s belongs to uid %d; bangerd running as root keeps its state only under root-owned directories (set the XDG variables elsewhere, or unset them)", d, st.Uid)
			}
			if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
				return fmt.Errorf("%s is writable by others (mode %04o); bangerd running as root keeps its state only under directories others cannot change", d, fi.Mode().Perm())
			}
		}
		if d == "/" {
			return nil
		}
	}
}
