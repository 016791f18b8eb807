// Package doctor checks what banger needs from its host and says, for
// each requirement, PASS, WARN or FAIL with what to do about it. It runs in
// the CLI (banger doctor), so it works whether or not bangerd runs.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/hostnat"
	"banger/internal/rootdisk"
	"banger/internal/system"
	"banger/internal/vmm"
)

// Statuses of a check.
const (
	Pass = "PASS"
	Warn = "WARN"
	Fail = "FAIL"
)

// Check is one requirement's verdict.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	// Fix says what to do when the status is not PASS.
	Fix string `json:"fix,omitempty"`
}

// Env is what the checks look at. The zero value of each function field
// uses the real host.
type Env struct {
	Layout config.Layout
	Config config.Config
	// LookPath finds a host tool (system.LookPath).
	LookPath func(name string) (string, error)
	// FreeBytes reports the space available to banger under dir (statfs).
	FreeBytes func(dir string) (int64, error)
	// Run runs a command for its output (versions).
	Run func(ctx context.Context, argv ...string) ([]byte, error)
	// DaemonVersion asks the running bangerd its version; an error means
	// none answers.
	DaemonVersion func(ctx context.Context) (string, error)
	// Owner is the uid banger's directories and socket must belong to
	// (nil: the user running doctor; a system install's owner otherwise).
	Owner *int
	// RootHelper asks banger's root helper whether it answers (system
	// mode; nil in user mode, where there is none).
	RootHelper func(ctx context.Context) error
	// DMSnapshots asks whether dm root disks can be made where this
	// process cannot judge: the root helper makes them in system mode
	// (nil: dmsnap.Available, in this process).
	DMSnapshots func() error
	// RootJails is the root helper as it runs Firecracker's jailer for
	// an unprivileged daemon (system mode; nil in user mode).
	RootJails vmm.RootJails
	// ClientVersion is this CLI's version.
	ClientVersion string
	// CheckKVM says whether /dev/kvm runs guests (vmm.CheckKVM).
	CheckKVM func() error
	// ReadFile reads a host file (/proc values).
	ReadFile func(path string) ([]byte, error)
	// Firewall reads how many of banger's nftables tables are installed.
	Firewall func() (int, error)
	// SelectVMM picks the driver (vmm.SelectWith) and JailerChoice says
	// why Firecracker would not be jailed (vmm.JailerChoice).
	SelectVMM    func(o vmm.Options) (vmm.Driver, error)
	JailerChoice func(o vmm.Options, fcPath string) (bool, string, error)
	// Snapshots lists the daemon's snapshots (snapshot.list); an error
	// when it does not answer, and then no row is made.
	Snapshots func(ctx context.Context) ([]api.Snapshot, error)
	// DaemonUID is the uid bangerd runs as (what decides whether it can
	// jail Firecracker); an error when it does not answer, and then the
	// checks judge for the user running doctor.
	DaemonUID func(ctx context.Context) (int, error)

	daemonUID int // -1: unknown (bangerd does not answer)
}

func (e *Env) defaults() {
	if e.LookPath == nil {
		e.LookPath = system.LookPath
	}
	if e.FreeBytes == nil {
		e.FreeBytes = freeBytes
	}
	if e.Run == nil {
		e.Run = (&system.Exec{}).Run
	}
	if e.CheckKVM == nil {
		e.CheckKVM = vmm.CheckKVM
	}
	if e.ReadFile == nil {
		e.ReadFile = os.ReadFile
	}
	if e.SelectVMM == nil {
		e.SelectVMM = vmm.SelectWith
	}
	if e.JailerChoice == nil {
		e.JailerChoice = vmm.JailerChoice
	}
}

func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// tool is a host program banger runs, and what needs it.
type tool struct {
	name, pkg, forWhat string
	required           bool
}

// tools are every program banger's daemon and CLI run.
var tools = []tool{
	{"qemu-system-x86_64", "qemu-system-x86", "running VMs without Firecracker", true},
	{"qemu-img", "qemu-utils", "copy-on-write disks, clones, snapshots", true},
	{"mkfs.ext4", "e2fsprogs", "work disks and images", true},
	{"e2fsck", "e2fsprogs", "checking built images", true},
	{"resize2fs", "e2fsprogs", "growing images", true},
	{"debugfs", "e2fsprogs", "reading and editing images", true},
	{"ssh", "openssh-client", "vm ssh, vm exec", true},
	{"mmdebstrap", "mmdebstrap", "building catalog images (image pull debian-bookworm)", false},
	{"fakechroot", "fakechroot", "building catalog images without root (system mode)", false},
	{"fakeroot", "fakeroot", "building catalog images without root (system mode)", false},
	{"dpkg-deb", "dpkg", "building kernels from Debian packages", false},
	{"dmsetup", "dmsetup", "device-mapper root disks", false},
	{"losetup", "mount", "device-mapper root disks", false},
	{"firecracker", "a Firecracker release", "Firecracker VMs (with KVM)", false},
}

// Run performs every check, in a stable order.
func Run(ctx context.Context, e Env) []Check {
	e.defaults()
	e.daemonUID = -1
	if e.DaemonUID != nil {
		if uid, err := e.DaemonUID(ctx); err == nil {
			e.daemonUID = uid
		}
	}
	var out []Check
	vc, drv := e.vmmChoice(ctx)
	out = append(out, e.kvm(), vc)
	vmmName := ""
	if drv != nil {
		vmmName = drv.Name()
		out = append(out, e.sandbox(drv))
	}
	out = append(out, e.tools()...)
	if vmmName != "" {
		out = append(out, e.rootDisk(vmmName))
	}
	out = append(out, e.deviceMapper(), e.ipForward(), e.dnsRouting(), e.bridge(), e.firewall())
	out = append(out, e.dirs()...)
	out = append(out, e.socket(ctx), e.lock(), e.versions(ctx))
	if e.RootHelper != nil {
		out = append(out, e.rootHelper(ctx))
	}
	if c, ok := e.snapshots(ctx); ok {
		out = append(out, c)
	}
	out = append(out, e.space("state", e.Layout.StateDir), e.space("cache", e.Layout.CacheDir))
	return out
}

// Failed reports whether any check failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

func (e *Env) kvm() Check {
	if err := e.CheckKVM(); err != nil {
		return Check{Name: "kvm", Status: Warn, Detail: err.Error(),
			Fix: "VMs run under QEMU's TCG emulation: slower (a boot takes ~15 s), and TCG is not a security boundary; a host with a usable /dev/kvm runs them under Firecracker or QEMU with KVM"}
	}
	return Check{Name: "kvm", Status: Pass, Detail: "/dev/kvm runs guests"}
}

// vmmOptions are the driver options config.toml gives, for bangerd's
// uid when it answers.
func (e *Env) vmmOptions() vmm.Options {
	o := vmm.Options{Pref: e.Config.VMM, FirecrackerBin: e.Config.FirecrackerBin, QEMUBin: e.Config.QEMUBin, QEMUAccel: e.Config.QEMUAccel,
		Jailer: e.Config.Jailer, JailerBin: e.Config.JailerBin, JailBase: e.Layout.JailDir, RootJails: e.RootJails}
	if o.JailBase == "" {
		o.JailBase = filepath.Join(e.Layout.StateDir, "jail")
	}
	if e.daemonUID >= 0 {
		root := e.daemonUID == 0
		o.AsRoot = &root
	}
	return o
}

// vmmChoice also returns the chosen driver (nil when none works).
func (e *Env) vmmChoice(ctx context.Context) (Check, vmm.Driver) {
	d, err := e.SelectVMM(e.vmmOptions())
	if err != nil {
		return Check{Name: "vmm", Status: Fail, Detail: err.Error(), Fix: "install QEMU (apt-get install qemu-system-x86) or fix vmm in config.toml"}, nil
	}
	detail := d.Name()
	if k, ok := d.(interface{ KVM() bool }); ok {
		accel := "TCG"
		if k.KVM() {
			accel = "KVM"
		}
		detail += " with " + accel
	}
	bin := e.Config.QEMUBin
	if d.Name() == "firecracker" {
		bin = e.Config.FirecrackerBin
	}
	if bin == "" {
		bin = map[string]string{"qemu": "qemu-system-x86_64", "firecracker": "firecracker"}[d.Name()]
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if out, err := e.Run(cctx, bin, "--version"); err == nil {
		detail += "; " + strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return Check{Name: "vmm", Status: Pass, Detail: detail + " (vmm = " + orAuto(e.Config.VMM) + ")"}, d
}

// sandbox says what confines each VM's VMM process.
func (e *Env) sandbox(d vmm.Driver) Check {
	c := Check{Name: "vmm sandbox", Status: Pass}
	root := os.Geteuid() == 0
	if e.daemonUID >= 0 {
		root = e.daemonUID == 0
	}
	switch j, ok := d.(interface{ Jailed() bool }); {
	case ok && j.Jailed() && e.RootJails != nil && !root:
		c.Detail = "each VM's Firecracker runs under the jailer, which banger's root helper launches: its own chroot, mount namespace and cgroup, as banger's owner"
	case ok && j.Jailed():
		c.Detail = "each VM's Firecracker runs under the jailer: its own chroot, uid and cgroup"
	case ok:
		bin := e.Config.FirecrackerBin
		if p, err := e.LookPath(orDefault(bin, "firecracker")); err == nil {
			bin = p
		}
		_, why, _ := e.JailerChoice(e.vmmOptions(), bin)
		c.Status = Warn
		c.Detail = "Firecracker runs unjailed, as bangerd's user: " + why
		if e.daemonUID < 0 {
			c.Detail += " (judged for the user running doctor: bangerd does not answer)"
		}
		c.Fix = "install the jailer from Firecracker's release next to firecracker and run bangerd as root (firecracker_jailer = \"auto\")"
		if e.RootJails != nil {
			c.Fix = "install the jailer and firecracker from Firecracker's release as root's files on root's PATH (/usr/local/bin); banger's root helper then runs them (firecracker_jailer = \"auto\")"
		}
	case root:
		c.Detail = "QEMU runs under its seccomp sandbox and drops to a uid of its VM's own (-runas)"
	default:
		c.Detail = "QEMU runs under its seccomp sandbox, as bangerd's user"
	}
	return c
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runFunc adapts Env.Run to rootdisk.Runner.
type runFunc func(ctx context.Context, argv ...string) ([]byte, error)

func (f runFunc) Run(ctx context.Context, argv ...string) ([]byte, error) { return f(ctx, argv...) }

// probedRun is a rootdisk.Runner whose dm answer is DMSnapshots'.
type probedRun struct {
	runFunc
	dm func() error
}

func (p probedRun) SnapshotsAvailable() error { return p.dm() }

// rootDisk says which copy-on-write strategy new VMs get, and why the
// better ones are not available.
func (e *Env) rootDisk(vmmName string) Check {
	var r rootdisk.Runner = runFunc(e.Run)
	if e.DMSnapshots != nil {
		r = probedRun{runFunc(e.Run), e.DMSnapshots}
	}
	s, err := rootdisk.Choose(e.Config.RootDisk, vmmName, e.Layout.VMsDir, "", r)
	if err != nil {
		return Check{Name: "root-disk", Status: Fail, Detail: err.Error(), Fix: "set root_disk = \"auto\" in config.toml"}
	}
	var why []string
	for _, better := range []rootdisk.Strategy{rootdisk.DM, rootdisk.QCOW2, rootdisk.Reflink} {
		if better == s {
			break
		}
		if err := rootdisk.Check(better, vmmName, e.Layout.VMsDir, "", r); err != nil {
			why = append(why, fmt.Sprintf("not %s: %v", better, err))
		}
	}
	detail := fmt.Sprintf("%s (root_disk = %s)", s, orAuto(e.Config.RootDisk))
	if len(why) > 0 && (e.Config.RootDisk == "" || e.Config.RootDisk == rootdisk.Auto) {
		detail += "; " + strings.Join(why, "; ")
	}
	if s == rootdisk.Copy {
		return Check{Name: "root-disk", Status: Warn, Detail: detail,
			Fix: "every VM gets a full copy of its image; qcow2 (QEMU), reflink (XFS/btrfs state dir) or dm (root with device-mapper) share it"}
	}
	return Check{Name: "root-disk", Status: Pass, Detail: detail}
}

func orAuto(s string) string {
	if s == "" {
		return "auto"
	}
	return s
}

func (e *Env) tools() []Check {
	var out []Check
	for _, t := range tools {
		p, err := e.LookPath(t.name)
		switch {
		case err == nil:
			out = append(out, Check{Name: "tool " + t.name, Status: Pass, Detail: p})
		case t.required:
			out = append(out, Check{Name: "tool " + t.name, Status: Fail, Detail: "not found on PATH; needed for " + t.forWhat,
				Fix: "apt-get install " + t.pkg})
		default:
			out = append(out, Check{Name: "tool " + t.name, Status: Warn, Detail: "not found on PATH; only needed for " + t.forWhat,
				Fix: "install " + t.pkg + " if you need it"})
		}
	}
	return out
}

func (e *Env) deviceMapper() Check {
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		return Check{Name: "device-mapper", Status: Warn, Detail: "no /dev/mapper/control",
			Fix: "root disks use qcow2 overlays (QEMU), reflinks or copies instead; load dm_snapshot (modprobe dm_snapshot) for device-mapper snapshots"}
	}
	return Check{Name: "device-mapper", Status: Pass, Detail: "/dev/mapper/control present"}
}

func (e *Env) ipForward() Check {
	b, err := e.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return Check{Name: "ip_forward", Status: Warn, Detail: err.Error()}
	}
	if strings.TrimSpace(string(b)) == "1" {
		return Check{Name: "ip_forward", Status: Pass, Detail: "on"}
	}
	return Check{Name: "ip_forward", Status: Pass, Detail: "off; bangerd turns it on for the first VM with --nat (vm show says so)"}
}

func (e *Env) dnsRouting() Check {
	if _, err := os.Stat("/run/systemd/resolve/stub-resolv.conf"); err == nil {
		return Check{Name: "dns", Status: Pass, Detail: "systemd-resolved runs: bangerd routes ~vm to its DNS server, NAME.vm resolves on the host"}
	}
	return Check{Name: "dns", Status: Warn, Detail: "no systemd-resolved: NAME.vm does not resolve on the host by itself",
		Fix: "use banger ssh-config (ssh NAME.vm), or point a resolver at " + e.Config.DNSListen + " (README: dnsmasq, NetworkManager, dig)"}
}

// dirs checks the private directories: present ones must be the user's
// and closed to others.
func (e *Env) dirs() []Check {
	var out []Check
	for _, d := range []struct{ name, path string }{{"state dir", e.Layout.StateDir}, {"runtime dir", e.Layout.RuntimeDir}, {"ssh dir", e.Layout.SSHDir}} {
		fi, err := os.Lstat(d.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, Check{Name: d.name, Status: Pass, Detail: d.path + " (not made yet; bangerd makes it 0700)"})
			continue
		case err != nil:
			out = append(out, Check{Name: d.name, Status: Fail, Detail: err.Error()})
			continue
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch {
		case !fi.IsDir():
			out = append(out, Check{Name: d.name, Status: Fail, Detail: d.path + " is not a directory", Fix: "move it away; bangerd makes the directory"})
		case st != nil && int(st.Uid) != e.owner():
			out = append(out, Check{Name: d.name, Status: Fail, Detail: fmt.Sprintf("%s belongs to uid %d, not %s", d.path, st.Uid, e.ownerName()), Fix: "remove it, or point the XDG variables elsewhere"})
		case fi.Mode().Perm()&0o077 != 0:
			out = append(out, Check{Name: d.name, Status: Fail, Detail: fmt.Sprintf("%s has mode %04o; others can enter it", d.path, fi.Mode().Perm()), Fix: "chmod 700 " + d.path})
		default:
			out = append(out, Check{Name: d.name, Status: Pass, Detail: d.path + " (0700, yours)"})
		}
	}
	return out
}

// socket checks the control socket: a socket, 0600, answered.
func (e *Env) socket(ctx context.Context) Check {
	p := e.Layout.SocketPath
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Check{Name: "socket", Status: Warn, Detail: p + " does not exist: bangerd is not running", Fix: "any banger command starts it (or run bangerd)"}
	}
	if err != nil {
		return Check{Name: "socket", Status: Fail, Detail: err.Error()}
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return Check{Name: "socket", Status: Fail, Detail: p + " is not a socket", Fix: "remove it; bangerd makes its socket there"}
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return Check{Name: "socket", Status: Fail, Detail: fmt.Sprintf("%s has mode %04o; only you may connect", p, fi.Mode().Perm()), Fix: "chmod 600 " + p + " (bangerd makes it 0600: was it changed by hand?)"}
	}
	var d net.Dialer
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(cctx, "unix", p)
	if err != nil {
		return Check{Name: "socket", Status: Warn, Detail: p + " is stale: nothing answers", Fix: "rm " + p + ", then any banger command starts bangerd"}
	}
	c.Close()
	return Check{Name: "socket", Status: Pass, Detail: p + " (0600, answering)"}
}

func (e *Env) versions(ctx context.Context) Check {
	if e.DaemonVersion == nil {
		return Check{Name: "versions", Status: Warn, Detail: "bangerd not asked"}
	}
	v, err := e.DaemonVersion(ctx)
	if err != nil {
		return Check{Name: "versions", Status: Warn, Detail: "bangerd does not answer: " + err.Error()}
	}
	if v != e.ClientVersion {
		return Check{Name: "versions", Status: Warn, Detail: fmt.Sprintf("banger %s, bangerd %s", e.ClientVersion, v),
			Fix: "restart bangerd (it keeps VMs running) so both are the same build"}
	}
	return Check{Name: "versions", Status: Pass, Detail: "banger and bangerd " + v}
}

// snapshots marks the snapshots that can no longer be restored (their
// image, kernel or banger changed, a file is gone), with why.
func (e *Env) snapshots(ctx context.Context) (Check, bool) {
	if e.Snapshots == nil {
		return Check{}, false
	}
	all, err := e.Snapshots(ctx)
	if err != nil {
		return Check{}, false
	}
	var stale, names []string
	for _, sn := range all {
		if sn.Stale != "" {
			stale = append(stale, sn.Name+": "+sn.Stale)
			names = append(names, sn.Name)
		}
	}
	if len(stale) == 0 {
		return Check{Name: "snapshots", Status: Pass, Detail: fmt.Sprintf("%d, none stale", len(all))}, true
	}
	return Check{Name: "snapshots", Status: Warn,
		Detail: fmt.Sprintf("%d of %d stale (refused by vm create): %s", len(stale), len(all), strings.Join(stale, "; ")),
		Fix:    "banger snapshot rm " + strings.Join(names, " ") + " (and banger image warm IMAGE to make a warm one again)"}, true
}

// Free-space thresholds: a VM's disks start small, but images and builds
// need room.
const (
	warnFree = 2 << 30
	failFree = 512 << 20
)

func (e *Env) space(what, dir string) Check {
	name := "free space (" + what + ")"
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil || probe == "/" {
			break
		}
		probe = filepath.Dir(probe)
	}
	n, err := e.FreeBytes(probe)
	if err != nil {
		return Check{Name: name, Status: Warn, Detail: err.Error()}
	}
	detail := fmt.Sprintf("%d MiB free for %s", n>>20, dir)
	switch {
	case n < failFree:
		return Check{Name: name, Status: Fail, Detail: detail, Fix: "free some space (banger image cache prune, banger vm prune) or move " + dir}
	case n < warnFree:
		return Check{Name: name, Status: Warn, Detail: detail, Fix: "images and builds need a few GiB"}
	}
	return Check{Name: name, Status: Pass, Detail: detail}
}

// bridge looks for banger's bridge (made by bangerd unless --no-network).
func (e *Env) bridge() Check {
	name := e.Config.BridgeName
	if name == "" {
		name = "banger0"
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return Check{Name: "bridge", Status: Warn, Detail: name + " does not exist",
			Fix: "bangerd makes it at start (not with --no-network); start bangerd, or run doctor in the namespace bangerd runs in"}
	}
	if ifi.Flags&net.FlagUp == 0 {
		return Check{Name: "bridge", Status: Warn, Detail: name + " is down", Fix: "restart bangerd"}
	}
	return Check{Name: "bridge", Status: Pass, Detail: name + " up (" + e.Config.BridgeCIDR + ")"}
}

// firewall checks that the kernel's nftables can be read (banger's NAT and
// anti-spoofing rules live there).
func (e *Env) firewall() Check {
	if e.Firewall == nil {
		e.Firewall = func() (int, error) {
			obs, err := hostnat.State()
			return len(obs.Tables), err
		}
	}
	n, err := e.Firewall()
	switch {
	case err != nil && errors.Is(err, hostnat.ErrUnsupported):
		return Check{Name: "nftables", Status: Fail, Detail: err.Error(), Fix: "a kernel with nf_tables (modprobe nf_tables) is needed for --nat and the anti-spoofing rules"}
	case err != nil:
		return Check{Name: "nftables", Status: Warn, Detail: err.Error(), Fix: "run banger doctor as root (or as the user bangerd runs as) to see the rules"}
	case n == 0:
		return Check{Name: "nftables", Status: Warn, Detail: "readable; banger's tables are not installed (bangerd is not running here)"}
	}
	return Check{Name: "nftables", Status: Pass, Detail: fmt.Sprintf("readable; %d banger tables installed", n)}
}

// lock checks the daemon's lock file: a pid that no longer runs is stale.
func (e *Env) lock() Check {
	p := e.Layout.SocketPath + ".lock"
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Check{Name: "lock", Status: Pass, Detail: "no lock file (no bangerd on this socket)"}
	}
	if err != nil {
		return Check{Name: "lock", Status: Warn, Detail: err.Error()}
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err != nil || pid <= 0 {
		return Check{Name: "lock", Status: Warn, Detail: p + " holds no pid", Fix: "bangerd rewrites it at start"}
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return Check{Name: "lock", Status: Warn, Detail: fmt.Sprintf("%s names pid %d, which is gone (a bangerd that died)", p, pid),
			Fix: "harmless: the next bangerd takes the lock; rm " + p + " to tidy"}
	}
	return Check{Name: "lock", Status: Pass, Detail: fmt.Sprintf("held by bangerd pid %d", pid)}
}

// rootHelper is the system install's root helper: it must answer, and
// answer this user (the owner).
func (e *Env) rootHelper(ctx context.Context) Check {
	if err := e.RootHelper(ctx); err != nil {
		return Check{Name: "root helper", Status: Fail, Detail: err.Error(),
			Fix: "sudo banger system restart; journalctl -u bangerd-root.service says why it stopped"}
	}
	return Check{Name: "root helper", Status: Pass, Detail: "bangerd-root.service answers (bridge, taps, rules and port 53 for the unprivileged daemon)"}
}

// owner is the uid banger's files must belong to.
func (e *Env) owner() int {
	if e.Owner != nil {
		return *e.Owner
	}
	return os.Getuid()
}

func (e *Env) ownerName() string {
	if e.Owner != nil && *e.Owner != os.Getuid() {
		return fmt.Sprintf("the system install's owner (uid %d)", *e.Owner)
	}
	return "you"
}
