// Package sysinstall installs banger as a system service: the binaries,
// and two systemd units — bangerd.service, the daemon running as its owner
// with no privileges, and bangerd-root.service, the root helper that does
// the few privileged operations it needs (package privops). It is what
// `banger system install | status | restart | uninstall` runs.
package sysinstall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"banger/internal/config"
	"banger/internal/privops"
)

// Unit names.
const (
	DaemonUnit = "bangerd.service"
	HelperUnit = "bangerd-root.service"
)

// Binaries are what an install copies, from beside the running banger.
var Binaries = []string{"banger", "bangerd", "banger-agent"}

// SystemSocket is the system daemon's socket (its RuntimeDirectory).
var SystemSocket = filepath.Join(config.SystemRuntimeDir, "bangerd.sock")

// Runner runs a command (systemctl); the real one is system.Exec.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Owner is the user the daemon runs as.
type Owner struct {
	Name string
	UID  int
	GID  int
	// KVM: the host has a kvm group for the daemon to join (its VMMs
	// open /dev/kvm).
	KVM bool
}

// LookupOwner resolves name (a user name or uid) to an Owner; root is
// refused: a daemon running as root needs no install (user mode).
func LookupOwner(name string) (Owner, error) {
	if name == "" {
		return Owner{}, fmt.Errorf("--owner is required: the user the daemon runs as (and whose CLI talks to it)")
	}
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return Owner{}, fmt.Errorf("--owner %q: no such user; create it first (adduser %s)", name, name)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 {
		return Owner{}, fmt.Errorf("--owner %s: the daemon would run as root; a system install runs it as an ordinary user (root needs no install: bangerd runs as root in user mode)", name)
	}
	_, kerr := user.LookupGroup("kvm")
	return Owner{Name: u.Username, UID: uid, GID: gid, KVM: kerr == nil}, nil
}

// Installer installs into Root (empty: "/") with binaries in
// Prefix/bin.
type Installer struct {
	Root   string
	Prefix string // default /usr/local
	// Sources is the directory holding the binaries to install.
	Sources string
	Owner   Owner
	Runner  Runner
	Out     io.Writer
	// SystemdRunning says why systemd cannot manage units here (nil: it
	// can); default: it runs as PID 1 (/run/systemd/system exists).
	SystemdRunning func() error
	// Ready waits until the installed daemon answers (default: ping on
	// its socket).
	Ready func(ctx context.Context) error
}

func (in *Installer) path(p string) string { return filepath.Join(in.Root, p) }

func (in *Installer) prefix() string {
	if in.Prefix == "" {
		return "/usr/local"
	}
	return in.Prefix
}

// BinDir is where the binaries go (not under Root: what the units name).
func (in *Installer) BinDir() string { return filepath.Join(in.prefix(), "bin") }

// UnitDir is where the units go.
func (in *Installer) UnitDir() string { return in.path("/etc/systemd/system") }

func (in *Installer) logf(format string, args ...any) {
	if in.Out != nil {
		fmt.Fprintf(in.Out, format+"\n", args...)
	}
}

// SystemdRunning is the default check: systemd manages units only where
// it is PID 1.
func SystemdRunning() error {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return fmt.Errorf("systemd is not running as PID 1 on this host (no /run/systemd/system), so it cannot run banger's units; run bangerd as root in user mode instead (banger starts it on demand)")
	}
	return nil
}

func (in *Installer) checkSystemd() error {
	check := in.SystemdRunning
	if check == nil {
		check = SystemdRunning
	}
	return check()
}

// Install copies the binaries, writes both units, and enables and starts
// them, then waits until the daemon answers. A failure after the units
// were written stops and removes what it installed.
func (in *Installer) Install(ctx context.Context) error {
	if err := in.checkSystemd(); err != nil {
		return err
	}
	if in.Owner.UID == 0 {
		return fmt.Errorf("no owner: pass --owner USER")
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(in.Sources, b)); err != nil {
			return fmt.Errorf("install needs %s beside banger (in %s): %w", b, in.Sources, err)
		}
	}
	binDir := in.path(in.BinDir())
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	for _, b := range Binaries {
		if err := copyExecutable(filepath.Join(in.Sources, b), filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("install %s: %w", b, err)
		}
	}
	in.logf("installed %s into %s", strings.Join(Binaries, ", "), in.BinDir())
	// Root's directory for the jails, there before either unit starts:
	// the daemon's unit may write it (ReadWritePaths), and an entry
	// missing when its namespace is set up would be dropped.
	jails := in.path(config.SystemJailDir)
	if err := os.MkdirAll(jails, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(jails, 0o755); err != nil {
		return err
	}
	// Installed before: the units are replaced and restarted (new
	// binaries, a new owner), and a failure leaves them, not nothing.
	reinstall := Installed(in.Root)
	daemon, helper, err := RenderUnits(UnitOptions{BinDir: in.BinDir(), Owner: in.Owner})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(in.UnitDir(), 0o755); err != nil {
		return err
	}
	for name, text := range map[string]string{DaemonUnit: daemon, HelperUnit: helper} {
		if err := writeFileAtomic(filepath.Join(in.UnitDir(), name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	in.logf("wrote %s and %s to %s", DaemonUnit, HelperUnit, in.UnitDir())
	undo := func(cause error) error {
		if reinstall {
			return fmt.Errorf("%w (the units were rewritten; banger system status shows their state)", cause)
		}
		_, _ = in.Runner.Run(context.WithoutCancel(ctx), "systemctl", "disable", "--now", DaemonUnit, HelperUnit)
		_ = os.Remove(filepath.Join(in.UnitDir(), DaemonUnit))
		_ = os.Remove(filepath.Join(in.UnitDir(), HelperUnit))
		_, _ = in.Runner.Run(context.WithoutCancel(ctx), "systemctl", "daemon-reload")
		return fmt.Errorf("%w (the units were removed again; the binaries stay in %s)", cause, in.BinDir())
	}
	if _, err := in.Runner.Run(ctx, "systemctl", "daemon-reload"); err != nil {
		return undo(err)
	}
	if _, err := in.Runner.Run(ctx, "systemctl", "enable", HelperUnit, DaemonUnit); err != nil {
		return undo(err)
	}
	// restart starts them, or restarts them on the new binaries.
	if _, err := in.Runner.Run(ctx, "systemctl", "restart", HelperUnit, DaemonUnit); err != nil {
		return undo(err)
	}
	if err := in.ready(ctx); err != nil {
		return undo(fmt.Errorf("bangerd did not answer after starting: %w; see journalctl -u %s", err, DaemonUnit))
	}
	in.logf("bangerd runs as %s (uid %d), its root helper as root; the socket is %s", in.Owner.Name, in.Owner.UID, SystemSocket)
	return nil
}

func (in *Installer) ready(ctx context.Context) error {
	if in.Ready != nil {
		return in.Ready(ctx)
	}
	return WaitAnswer(ctx, SystemSocket, in.Owner.UID, 30*time.Second)
}

// Uninstall stops, disables and removes both units and the binaries.
// VMs, images and the configuration stay for a later install, unless
// purge: then every VM is deleted first (deleteVMs, called while the
// daemon still runs) and banger's system directories go.
func (in *Installer) Uninstall(ctx context.Context, purge bool, deleteVMs func(context.Context) error) error {
	if purge && deleteVMs != nil {
		if err := deleteVMs(ctx); err != nil {
			return fmt.Errorf("purge: delete the VMs first: %w (nothing was uninstalled)", err)
		}
	}
	var errs []error
	if err := in.checkSystemd(); err == nil {
		if _, err := in.Runner.Run(ctx, "systemctl", "disable", "--now", DaemonUnit, HelperUnit); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range []string{DaemonUnit, HelperUnit} {
		if err := os.Remove(filepath.Join(in.UnitDir(), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := in.checkSystemd(); err == nil {
		if _, err := in.Runner.Run(ctx, "systemctl", "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
	}
	for _, b := range Binaries {
		for _, p := range []string{b, b + ".previous"} {
			if err := os.Remove(filepath.Join(in.path(in.BinDir()), p)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	in.logf("removed %s, %s and the binaries in %s", DaemonUnit, HelperUnit, in.BinDir())
	if purge {
		for _, d := range []string{config.SystemStateDir, config.SystemJailDir, config.SystemCacheDir, config.SystemConfigDir, config.SystemRuntimeDir, filepath.Dir(privops.DefaultSocket)} {
			if err := os.RemoveAll(in.path(d)); err != nil {
				errs = append(errs, err)
			}
		}
		in.logf("purged %s, %s and %s", config.SystemStateDir, config.SystemCacheDir, config.SystemConfigDir)
	} else {
		in.logf("kept %s (VMs, images, kernels) and %s; banger system uninstall --purge removes them", config.SystemStateDir, config.SystemConfigDir)
	}
	return errors.Join(errs...)
}

// Installed says whether the units are installed under root ("" = /).
func Installed(root string) bool {
	_, err := os.Stat(filepath.Join(root, "/etc/systemd/system", DaemonUnit))
	return err == nil
}

// UnitOptions are what the units are rendered from.
type UnitOptions struct {
	BinDir string
	Owner  Owner
}

// RenderUnits returns bangerd.service and bangerd-root.service.
func RenderUnits(o UnitOptions) (daemon, helper string, err error) {
	if !filepath.IsAbs(o.BinDir) || strings.ContainsAny(o.BinDir, " \t\n\"'\\%$") {
		return "", "", fmt.Errorf("binaries directory %q must be an absolute path without spaces, quotes or %%", o.BinDir)
	}
	if o.Owner.Name == "" || strings.ContainsAny(o.Owner.Name, " \t\n\"'\\%$") {
		return "", "", fmt.Errorf("owner %q is not a user name systemd accepts", o.Owner.Name)
	}
	data := map[string]any{"Bin": o.BinDir, "Owner": o.Owner.Name, "KVM": o.Owner.KVM, "Socket": privops.DefaultSocket,
		"RuntimeHelper": filepath.Base(filepath.Dir(privops.DefaultSocket)), "Config": filepath.Join(config.SystemConfigDir, "config.toml"), "JailDir": config.SystemJailDir}
	var d, h strings.Builder
	if err := daemonUnit.Execute(&d, data); err != nil {
		return "", "", err
	}
	if err := helperUnit.Execute(&h, data); err != nil {
		return "", "", err
	}
	return d.String(), h.String(), nil
}

// The daemon runs as its owner with no capabilities at all: what needs
// root is asked of the helper. KillMode=process: the VMMs it starts are
// not the service's to kill (they keep running through a restart or an
// update and are adopted, as in user mode), and RuntimeDirectoryPreserve
// keeps their sockets. No MemoryDenyWriteExecute: QEMU's TCG writes the
// code it runs. No PrivateTmp: users hand it paths (image register
// --rootfs /tmp/x, kernel import --from) it must see as they do. No
// ProtectClock: before systemd 252 it implied a device allow-list that
// would hide /dev/kvm.
var daemonUnit = template.Must(template.New("daemon").Parse(`# Installed by banger system install; banger system uninstall removes it.
[Unit]
Description=banger daemon (VMs, images, the .vm DNS zone), running as {{.Owner}}
Requires=bangerd-root.service
After=bangerd-root.service network.target

[Service]
Type=simple
User={{.Owner}}
{{- if .KVM}}
SupplementaryGroups=kvm
{{- end}}
ExecStart={{.Bin}}/bangerd --system --foreground --root-helper {{.Socket}}
Restart=on-failure
KillMode=process
ConfigurationDirectory=banger
StateDirectory=banger
StateDirectoryMode=0700
CacheDirectory=banger
CacheDirectoryMode=0700
RuntimeDirectory=banger
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
# The jails of its Firecrackers are root's; it reaches their sockets and
# moves a jailed VM's saved snapshot out of its jail (a copy: its state
# directory is another bind mount).
ReadWritePaths=-{{.JailDir}}
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_VSOCK
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
`))

// The helper keeps only the capabilities its operations use: links,
// taps and nftables (CAP_NET_ADMIN), port 53 (CAP_NET_BIND_SERVICE),
// giving its socket and the dm devices it makes to the owner (CAP_CHOWN),
// and dm roots: device-mapper's ioctls admit only CAP_SYS_ADMIN, and
// dmsetup makes /dev/mapper nodes where udev does not (CAP_MKNOD, and
// "m" on the device-mapper devices). Its devices are only those: tun,
// loop and device-mapper, and /dev/kvm for jailed Firecrackers.
//
// Jailed Firecrackers (privops.Jails): the helper reaches the owner's
// files in its 0700 state directory (CAP_DAC_READ_SEARCH), hard-links
// files it does not own (CAP_FOWNER, fs.protected_hardlinks) and removes
// jails whose root the owner's VMM has had (CAP_DAC_OVERRIDE, which the
// jailer needs too: it makes /dev in the chroot after giving it to the
// owner); the jailer
// it launches needs a mount namespace (RestrictNamespaces=mnt,
// CAP_SYS_ADMIN), chroot (CAP_SYS_CHROOT), the owner's uid and gid
// (CAP_SETUID, CAP_SETGID), device nodes in the jail (CAP_MKNOD, "m" on
// kvm and tun) and the VM's cgroups (no ProtectControlGroups).
// ReadWritePaths=/var/lib, not the two directories: a hard link cannot
// cross from one bind mount to another even on one filesystem (EXDEV),
// and each ReadWritePaths entry is a bind mount of its own. KillMode=
// process: the VMMs it launches are not the service's to kill.
// No SystemCallFilter yet: what dmsetup,
// resolvectl and the netlink work need has not been measured under
// systemd (these machines have none), and a filter that kills the helper
// on some host's first dmsetup is worse than none. /proc/sys stays writable
// for net.ipv4.ip_forward, and the kernel may still load the bridge, tun
// and nf_tables modules its requests need (no ProtectKernelModules; the
// helper itself cannot: CAP_SYS_MODULE is not in its bounding set).
var helperUnit = template.Must(template.New("helper").Parse(`# Installed by banger system install; banger system uninstall removes it.
[Unit]
Description=banger root helper: the privileged operations of {{.Owner}}'s bangerd
Before=bangerd.service
# The device allow-list below names loop and device-mapper devices by
# their major numbers, which exist only once the modules are loaded.
Wants=modprobe@loop.service modprobe@dm_mod.service
After=modprobe@loop.service modprobe@dm_mod.service

[Service]
Type=simple
ExecStart={{.Bin}}/bangerd root-helper --owner {{.Owner}} --socket {{.Socket}} --config {{.Config}}
Restart=on-failure
KillMode=process
RuntimeDirectory={{.RuntimeHelper}}
RuntimeDirectoryMode=0755
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_CHOWN CAP_SYS_ADMIN CAP_MKNOD CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_SYS_CHROOT CAP_SETUID CAP_SETGID
ProtectSystem=strict
ReadWritePaths=/var/lib
ProtectHome=yes
PrivateTmp=yes
ProtectClock=yes
ProtectHostname=yes
DevicePolicy=closed
DeviceAllow=/dev/net/tun rwm
DeviceAllow=/dev/kvm rwm
DeviceAllow=/dev/loop-control rw
DeviceAllow=block-loop rw
DeviceAllow=/dev/mapper/control rw
DeviceAllow=block-device-mapper rwm
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
RestrictNamespaces=mnt
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
`))

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, b, 0o755)
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it over path.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// InstalledOwner reads the owner from the installed daemon unit.
func InstalledOwner(root string) (Owner, error) {
	b, err := os.ReadFile(filepath.Join(root, "/etc/systemd/system", DaemonUnit))
	if err != nil {
		return Owner{}, fmt.Errorf("banger is not installed as a system service (%w); banger system install --owner USER", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "User="); ok {
			return LookupOwner(strings.TrimSpace(name))
		}
	}
	return Owner{}, fmt.Errorf("%s names no User=", DaemonUnit)
}
