// Package firecracker is banger's primary VMM driver: it boots a VM as a
// Firecracker microVM, configured through Firecracker's REST API on a unix
// socket, optionally under Firecracker's jailer.
//
// It owns one Firecracker process per VM, started detached from the daemon
// so the VM outlives a daemon restart, and the files it keeps for that VM:
// the API socket (fc.sock, the Handle's APISocket), the hybrid-vsock socket
// (vsock.sock) through which the host reaches the guest agent, and, when
// jailed, the jail directory with hard links to the kernel and disks. It must
// not create or change disks, taps or kernels; it only hands them to
// Firecracker.
//
// A start is: launch `firecracker --api-sock SOCK --id ID`, wait for the
// socket, then PUT /logger, /boot-source, /drives/rootfs, /drives/work,
// /machine-config, /network-interfaces/eth0, /vsock and finally
// /actions {"action_type":"InstanceStart"}. A graceful stop is
// /actions {"action_type":"SendCtrlAltDel"}, which the guest sees as a
// keyboard controller ctrl-alt-del (it needs the i8042 driver).
//
// Disks are handed over as descriptors, not paths: Start opens the root,
// work and configuration disks and Firecracker inherits them as fds 3, 4
// and 5, named to it as /proc/self/fd/N. A snapshot records those names,
// so a VM restored from it opens its own disks (inherited at the same
// numbers) where a path would name the saved VM's files: Firecracker
// cannot rename a drive at /snapshot/load (it can a tap and the vsock
// socket, which Start passes as overrides). See snapshot.go.
//
// The API is spoken by a small typed client in this package rather than
// github.com/firecracker-microvm/firecracker-go-sdk: v1.0.0 is the only
// version the module proxy serves here, it pulls in a large dependency tree
// (go-openapi, containernetworking, logrus, ...) for a surface of eight PUTs
// and one GET, and its process handling would fight banger's own (detached
// VMMs re-adopted by pid and start time).
//
// Kernels: Firecracker boots an uncompressed ELF vmlinux. Debian's kernel
// finds its virtio-mmio disks only through ACPI, which Firecracker provides on
// x86_64 only in its recent releases; older ones boot it without disks.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/vmm/vmmcore"
)

// Names of this driver, its defaults and the files it keeps.
const (
	DriverName    = "firecracker"
	DefaultBinary = "firecracker"
	APISocketName = "fc.sock"
	VsockName     = "vsock.sock"
	// GuestCID is the guest's vsock context id. With Firecracker's hybrid
	// vsock the host side is a unix socket per VM, so every VM may use the
	// first non-reserved CID.
	GuestCID = 3

	rootDriveID   = "rootfs"
	workDriveID   = "work"
	configDriveID = "config"
	ifaceID       = "eth0"
)

// DefaultStartTimeout bounds how long Start waits for Firecracker to
// answer and start the guest when the caller's context allows longer.
const DefaultStartTimeout = 30 * time.Second

// Config selects the Firecracker binary and how it runs.
type Config struct {
	// Binary is the firecracker executable (default: "firecracker" on PATH).
	// Under the jailer it must be an absolute path whose file name contains
	// "firecracker".
	Binary string
	// Jailer, when non-nil, runs Firecracker under its jailer. Off by
	// default.
	Jailer *JailerConfig
	// LogLevel is Firecracker's log level (Error, Warning, Info, Debug);
	// default Info.
	LogLevel string
	// StartTimeout defaults to DefaultStartTimeout.
	StartTimeout time.Duration
}

// Driver boots VMs with Firecracker. Create it with New.
type Driver struct {
	cfg Config
	// launch starts argv detached with its output appended to console and
	// extra inherited as fds 3, 4, ..., and returns the pid
	// (vmmcore.LaunchWith). Tests replace it.
	launch func(argv []string, console *os.File, extra []*os.File) (int, error)
}

// New returns a Firecracker driver.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "Info"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.Jailer != nil {
		j := *cfg.Jailer
		if j.Binary == "" {
			j.Binary = DefaultJailerBinary
		}
		if j.ChrootBase == "" {
			j.ChrootBase = DefaultChrootBase
		}
		if j.ParentCgroup == "" {
			j.ParentCgroup = DefaultParentCgroup
		}
		if j.CgroupRoot == "" {
			j.CgroupRoot = DefaultCgroupRoot
		}
		cfg.Jailer = &j
	}
	return &Driver{cfg: cfg, launch: vmmcore.LaunchWith}
}

// Name returns "firecracker".
func (d *Driver) Name() string { return DriverName }

// KernelKind returns "vmlinux": Firecracker boots the uncompressed ELF
// kernel.
func (d *Driver) KernelKind() string { return "vmlinux" }

// layout is where one VM's files are, as the host sees them and as
// Firecracker (possibly chrooted) is told.
type layout struct {
	id         string
	apiHost    string // the API socket, host path
	vsockHost  string // the vsock socket, host path
	jailDir    string // <base>/<exec>/<id> when jailed, else ""
	guestPaths vmPaths
	// disks are the files Start opens and Firecracker inherits, in fd
	// order from 3 (not jailed; the jail links them instead).
	disks []diskFile
	// uid, gid and memMiB are the jailed VMM's identity and guest memory
	// (its cgroup's limit derives from it).
	uid, gid, memMiB int
}

// diskFile is one disk Firecracker inherits as a descriptor.
type diskFile struct {
	path     string
	readOnly bool
}

// firstDiskFD is the descriptor the first inherited disk gets.
const firstDiskFD = 3

// fdPath names inherited descriptor n to the process that holds it.
func fdPath(n int) string { return "/proc/self/fd/" + strconv.Itoa(n) }

// vmPaths are the paths sent in API calls.
type vmPaths struct {
	kernel, initrd, root, work, config, vsock string
	// state and mem are the snapshot a restore loads (its state file and
	// guest memory), as the VMM names them.
	state, mem string
}

// instanceID turns a VM name into a Firecracker/jailer id: alphanumerics
// and hyphens, at most 64 characters.
func instanceID(name string) string {
	id := strings.Map(func(r rune) rune {
		if r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, name)
	if len(id) > 64 {
		id = id[:64]
	}
	if id == "" {
		id = "vm"
	}
	return id
}

func (d *Driver) layoutFor(spec vmmcore.Spec) (layout, error) {
	id := spec.ID
	if id == "" {
		id = spec.Name
	}
	l := layout{id: instanceID(id)}
	if d.cfg.Jailer != nil {
		return d.jailLayout(l, spec)
	}
	var err error
	if l.apiHost, err = vmmcore.SocketPath(spec.RuntimeDir, APISocketName); err != nil {
		return layout{}, err
	}
	if l.vsockHost, err = vmmcore.SocketPath(spec.RuntimeDir, VsockName); err != nil {
		return layout{}, err
	}
	l.guestPaths = vmPaths{kernel: spec.KernelPath, initrd: spec.InitrdPath, vsock: l.vsockHost}
	if spec.IncomingState != "" {
		l.guestPaths.state, l.guestPaths.mem = spec.IncomingState, spec.IncomingState+MemFileSuffix
	}
	for _, dk := range []struct {
		path     string
		readOnly bool
		name     *string
	}{{spec.RootDisk, false, &l.guestPaths.root}, {spec.WorkDisk, false, &l.guestPaths.work}, {spec.ConfigDisk, true, &l.guestPaths.config}} {
		if dk.path == "" {
			continue
		}
		*dk.name = fdPath(firstDiskFD + len(l.disks))
		l.disks = append(l.disks, diskFile{path: dk.path, readOnly: dk.readOnly})
	}
	return l, nil
}

// openDisks opens l's disks for Firecracker to inherit; the caller closes
// them once it has.
func openDisks(l layout) ([]*os.File, error) {
	var files []*os.File
	for _, dk := range l.disks {
		flag := os.O_RDWR
		if dk.readOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(dk.path, flag|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("open disk: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close()
	}
}

// Command returns the argv Start runs for spec.
func (d *Driver) Command(spec vmmcore.Spec) ([]string, error) {
	l, err := d.layoutFor(spec)
	if err != nil {
		return nil, err
	}
	return d.command(l), nil
}

func (d *Driver) command(l layout) []string {
	if d.cfg.Jailer != nil {
		return d.jailerCommand(l)
	}
	return []string{d.cfg.Binary, "--api-sock", l.apiHost, "--id", l.id}
}

// Start launches Firecracker, configures the VM and starts it (or, when
// spec.IncomingState is set, loads that snapshot and resumes it). It
// returns once Firecracker reports the instance running. On failure it kills what it
// launched, removes its sockets (and jail) and returns an error carrying the
// tail of the console log.
func (d *Driver) Start(ctx context.Context, spec vmmcore.Spec) (vmmcore.Handle, error) {
	if err := spec.Validate(); err != nil {
		return vmmcore.Handle{}, err
	}
	if err := rawDisksOnly(spec); err != nil {
		return vmmcore.Handle{}, err
	}
	l, err := d.layoutFor(spec)
	if err != nil {
		return vmmcore.Handle{}, err
	}
	if err := os.MkdirAll(spec.RuntimeDir, 0o700); err != nil {
		return vmmcore.Handle{}, fmt.Errorf("start vm %s: create runtime dir: %w", spec.Name, err)
	}
	for _, s := range []string{l.apiHost, l.vsockHost} {
		if err := vmmcore.RemoveStaleSocket(s); err != nil {
			return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
		}
	}
	helper := d.jailHelper()
	if d.cfg.Jailer != nil && helper == nil {
		if err := d.prepareJail(l, spec); err != nil {
			_ = os.RemoveAll(l.jailDir)
			return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
		}
	}
	console, err := vmmcore.OpenConsoleLog(spec.ConsoleLog)
	if err != nil {
		d.removeFiles(l)
		return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
	}
	defer console.Close()
	var pid int
	if helper != nil {
		// The helper makes the jail and runs the jailer: this daemon
		// may do neither.
		vmmcore.MarkBoot(console, DriverName, []string{"jailer", "--id", l.id, "(launched by banger's root helper)"})
		if pid, err = helper.StartJail(d.jailRequest(l, spec), console); err != nil {
			return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
		}
	} else {
		argv := d.command(l)
		vmmcore.MarkBoot(console, DriverName, argv)
		disks, err := openDisks(l)
		if err != nil {
			d.removeFiles(l)
			return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
		}
		pid, err = d.launch(argv, console, disks)
		closeAll(disks)
		if err != nil {
			d.removeFiles(l)
			return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w (install Firecracker from https://github.com/firecracker-microvm/firecracker/releases, or set vmm = \"qemu\")", spec.Name, err)
		}
	}
	h := vmmcore.Handle{Driver: DriverName, PID: pid, APISocket: l.apiHost}
	fail := func(err error) (vmmcore.Handle, error) {
		d.abort(h, l)
		return vmmcore.Handle{}, vmmcore.WithConsoleTail(fmt.Errorf("start vm %s with firecracker: %w", spec.Name, err), spec.ConsoleLog)
	}
	if h.StartTime, err = vmmcore.ProcStartTime(pid); err != nil {
		return fail(vmmcore.ErrExited)
	}
	if err := spec.ReportLaunch(h); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	if err := vmmcore.WaitSocket(ctx, l.apiHost, func() bool { return Alive(h) }); err != nil {
		return fail(err)
	}
	if spec.IncomingState != "" {
		err = d.restore(ctx, newClient(l.apiHost), spec, l)
	} else {
		err = d.configure(ctx, newClient(l.apiHost), spec, l.guestPaths)
	}
	if err != nil {
		return fail(err)
	}
	return h, nil
}

// apiCall is one PUT of the configuration sequence.
type apiCall struct {
	path string
	body any
}

// configure sends the whole VM configuration, then InstanceStart, and
// checks that Firecracker reports the instance running.
func (d *Driver) configure(ctx context.Context, c *client, spec vmmcore.Spec, p vmPaths) error {
	steps := []apiCall{
		{"/logger", loggerConfig{Level: d.cfg.LogLevel, ShowLevel: true}},
		{"/boot-source", bootSource{KernelImagePath: p.kernel, BootArgs: spec.Cmdline, InitrdPath: p.initrd}},
		{"/drives/" + rootDriveID, drive{DriveID: rootDriveID, PathOnHost: p.root, IsRootDevice: true, CacheType: "Writeback"}},
	}
	if p.work != "" {
		steps = append(steps, apiCall{"/drives/" + workDriveID,
			drive{DriveID: workDriveID, PathOnHost: p.work, CacheType: "Writeback"}})
	}
	if p.config != "" {
		steps = append(steps, apiCall{"/drives/" + configDriveID,
			drive{DriveID: configDriveID, PathOnHost: p.config, IsReadOnly: true, CacheType: "Unsafe"}})
	}
	steps = append(steps, apiCall{"/machine-config", machineConfig{VcpuCount: spec.VCPU, MemSizeMib: spec.MemoryMiB}})
	if spec.Tap != "" {
		steps = append(steps, apiCall{"/network-interfaces/" + ifaceID,
			networkInterface{IfaceID: ifaceID, HostDevName: spec.Tap, GuestMAC: spec.MAC}})
	}
	steps = append(steps,
		apiCall{"/vsock", vsockConfig{GuestCID: GuestCID, UDSPath: p.vsock}},
		apiCall{"/actions", action{ActionType: "InstanceStart"}},
	)
	for _, s := range steps {
		if err := c.put(ctx, s.path, s.body); err != nil {
			return err
		}
	}
	var info instanceInfo
	if err := c.get(ctx, "/", &info); err != nil {
		return err
	}
	if info.State != "Running" {
		return fmt.Errorf("firecracker reports the instance %q after InstanceStart, want Running", info.State)
	}
	return nil
}

// abort kills a Firecracker that failed to start and removes its files once
// it is gone.
func (d *Driver) abort(h vmmcore.Handle, l layout) {
	_ = d.Kill(h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = vmmcore.WaitGone(ctx, func() bool { return Alive(h) }, 20*time.Millisecond)
	d.removeFiles(l)
	if l.jailDir != "" && d.jailHelper() == nil {
		_ = d.removeCgroups(l.id)
	}
}

// jailHelper is the root helper that makes this driver's jails, if one
// does.
func (d *Driver) jailHelper() JailHelper {
	if d.cfg.Jailer == nil {
		return nil
	}
	return d.cfg.Jailer.Helper
}

// removeCgroups removes VM id's cgroups where this driver's jailer puts
// them (the defaults when the driver was made for a Handle only).
func (d *Driver) removeCgroups(id string) error {
	if j := d.cfg.Jailer; j != nil {
		return removeCgroups(j.CgroupRoot, j.ParentCgroup, id)
	}
	return removeCgroups("", "", id)
}

// Jailed reports whether VMs start under the jailer.
func (d *Driver) Jailed() bool { return d.cfg.Jailer != nil }

func (d *Driver) removeFiles(l layout) {
	_ = os.Remove(l.apiHost)
	_ = os.Remove(l.vsockHost)
	if l.jailDir != "" {
		if h := d.jailHelper(); h != nil {
			// The helper's RemoveJail takes the cgroups too.
			_ = h.RemoveJail(l.id)
		} else {
			_ = os.RemoveAll(l.jailDir)
		}
	}
}

// Shutdown asks the guest to power off (SendCtrlAltDel). It does not wait;
// use vmm.WaitExit.
func (d *Driver) Shutdown(ctx context.Context, h vmmcore.Handle) error {
	if !Alive(h) {
		return fmt.Errorf("shut down firecracker pid %d: %w", h.PID, vmmcore.ErrNotRunning)
	}
	if err := newClient(h.APISocket).put(ctx, "/actions", action{ActionType: "SendCtrlAltDel"}); err != nil {
		return fmt.Errorf("shut down firecracker pid %d: %w", h.PID, err)
	}
	return nil
}

// Kill sends SIGKILL to the Firecracker process if it is still the one h
// names.
func (d *Driver) Kill(h vmmcore.Handle) error {
	return vmmcore.Kill(h.PID, h.StartTime, matcher(h))
}

// Alive reports whether h's Firecracker process is running.
func (d *Driver) Alive(h vmmcore.Handle) bool { return Alive(h) }

// Cleanup removes the sockets (and the jail) of a VM whose Firecracker has
// exited. It refuses while the process is alive.
func (d *Driver) Cleanup(h vmmcore.Handle) error {
	if Alive(h) {
		return fmt.Errorf("clean up after firecracker pid %d: it is still running; stop or kill it first", h.PID)
	}
	if jailDir, id, ok := jailOf(h.APISocket); ok {
		if helper := d.jailHelper(); helper != nil {
			return helper.RemoveJail(id)
		}
		if err := os.RemoveAll(jailDir); err != nil {
			return fmt.Errorf("remove jail: %w", err)
		}
		return d.removeCgroups(id)
	}
	var errs []error
	for _, f := range []string{h.APISocket, AgentSocket(h)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Alive reports whether the process h names exists, is not a zombie,
// started at h.StartTime and is h's Firecracker: its command line names
// h.APISocket or, when jailed (the jailed process only sees its socket as
// /run/firecracker.socket), carries the jail's id.
func Alive(h vmmcore.Handle) bool {
	return h.APISocket != "" && vmmcore.Matches(h.PID, h.StartTime, matcher(h))
}

func matcher(h vmmcore.Handle) func([]string) bool {
	if _, id, ok := jailOf(h.APISocket); ok {
		return jailMatcher(id)
	}
	return vmmcore.ArgMentions(h.APISocket)
}

// hasID reports whether argv carries "--id ID" or "--id=ID" (the jailer
// passes the latter to Firecracker).
func hasID(argv []string, id string) bool {
	for i, a := range argv {
		if a == "--id="+id || (a == "--id" && i+1 < len(argv) && argv[i+1] == id) {
			return true
		}
	}
	return false
}

// AgentSocket returns the host unix socket of the VM's hybrid vsock: connect,
// send "CONNECT <port>\n", read "OK <n>\n", then talk to the guest port.
func AgentSocket(h vmmcore.Handle) string {
	return filepath.Join(filepath.Dir(h.APISocket), VsockName)
}

// rawDisksOnly refuses disk formats Firecracker cannot open: it takes raw
// files and block devices only (a device-mapper snapshot is one).
func rawDisksOnly(spec vmmcore.Spec) error {
	for _, f := range []struct{ what, format string }{{"root", spec.RootFormat}, {"work", spec.WorkFormat}} {
		if f.format != "" && f.format != "raw" {
			return fmt.Errorf("start vm %s: Firecracker cannot open a %s %s disk; it needs raw files or block devices (root_disk = \"dm\", \"reflink\" or \"copy\")", spec.Name, f.format, f.what)
		}
	}
	return nil
}
