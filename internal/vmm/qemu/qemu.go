// Package qemu is banger's fallback VMM driver: it boots a VM with
// qemu-system-x86_64 -M microvm, with KVM where the host has it and TCG
// (software emulation, slow but everywhere) where it does not.
//
// It owns one QEMU process per VM, started detached from the daemon so the
// VM outlives a daemon restart, and the files it keeps in the VM's runtime
// directory: the QMP monitor socket (qmp.sock, also the Handle's APISocket),
// the guest agent's virtio-serial socket (agent.sock) and the pid file. It
// must not touch disks, taps or anything else the caller prepared; it only
// hands them to QEMU.
//
// The machine: microvm describes its virtio-mmio devices to the guest through
// ACPI (on by default in QEMU 7.2 and set explicitly here), which is what a
// distribution kernel such as Debian's needs, since its virtio_mmio has no
// command-line device support. The root disk is the first virtio-blk device
// (/dev/vda in the guest), the work disk the second (/dev/vdb). The guest
// agent channel is a virtio-serial port named org.banger.agent
// (/dev/virtio-ports/org.banger.agent in the guest), backed by the host unix
// socket AgentSocket(h); it needs no /dev/vhost-vsock on the host. -no-reboot
// makes a guest reboot end the QEMU process, as it ends Firecracker, so a
// reboot from inside the guest reads as "stopped" in both drivers.
//
// QMP is spoken by a small client in this package rather than through
// github.com/digitalocean/go-qemu: that module is not among banger's
// dependencies, and what banger needs is three JSON lines per exchange
// (greeting, qmp_capabilities, one command).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"banger/internal/vmm/vmmcore"
)

// Names of this driver and the files it keeps in a VM's runtime directory.
const (
	DriverName      = "qemu"
	DefaultBinary   = "qemu-system-x86_64"
	QMPSocketName   = "qmp.sock"
	AgentSocketName = "agent.sock"
	PIDFileName     = "qemu.pid"
	// AgentPortName is the virtio-serial port name the guest agent opens.
	AgentPortName = "org.banger.agent"
)

// DefaultStartTimeout bounds how long Start waits for QEMU to report the
// guest running when the caller's context allows longer.
const DefaultStartTimeout = 30 * time.Second

// Config selects the QEMU binary and accelerator.
type Config struct {
	// Binary is qemu-system-x86_64's path (default: found on PATH by name).
	Binary string
	// KVM selects -accel kvm -cpu host (less arch-capabilities); false
	// selects -accel tcg -cpu max.
	KVM bool
	// StartTimeout defaults to DefaultStartTimeout.
	StartTimeout time.Duration
	// VerdictFile, when set, is written when a KVM guest stalls, holding
	// the host's kernel release; KVMStalledBefore reads it back.
	VerdictFile string
}

// sandboxFor is QEMU's -sandbox value. With -runas, the set*id calls stay
// allowed: QEMU installs its seccomp filter before it drops to the -runas
// identity (7.2 dies with "Bad system call" otherwise), and once dropped
// the process has no capabilities, so the kernel refuses any way back.
func sandboxFor(runAs string) string {
	if runAs != "" {
		return "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
	}
	return "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
}

// KVMStalledBefore reports whether path records that KVM stalled a guest
// on this host kernel. A kernel upgrade (another release) probes again.
func KVMStalledBefore(path string) bool {
	if path == "" {
		return false
	}
	data, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(data)) == hostKernelRelease()
}

func hostKernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// Driver boots VMs with QEMU. The zero value is not usable; call New.
type Driver struct {
	cfg Config
	// launch starts argv detached with its output in console and returns
	// the pid (vmmcore.Launch).
	launch func(argv []string, console *os.File, extra []*os.File) (int, error)
}

// New returns a QEMU driver.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	return &Driver{cfg: cfg, launch: vmmcore.LaunchWith}
}

// Name returns "qemu".
func (d *Driver) Name() string { return DriverName }

// KernelKind returns "bzimage": QEMU boots the compressed kernel image.
func (d *Driver) KernelKind() string { return "bzimage" }

// KVM reports whether this driver runs guests under KVM (else TCG).
func (d *Driver) KVM() bool { return d.cfg.KVM && !kvmStalled.Load() }

// kvmStalled records, for the life of this process, that a guest under KVM
// never reached its kernel: some hosts (nested setups) expose a /dev/kvm
// that opens and answers every ioctl, yet the guest stops before its first
// line. From then on this process boots with TCG.
var kvmStalled atomic.Bool

// KVMBootProbe is how long a KVM guest may take to print its kernel banner
// before KVM is judged unusable (a KVM boot prints it well under a second).
var KVMBootProbe = 15 * time.Second

// kernelBanner is the first kernel line on the console (loglevel >= 6).
const kernelBanner = "Linux version "

// escapeOpt doubles commas, QEMU's quoting for a value inside an
// option=value,... list, so any file name is safe.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Command returns the argv that Start runs for spec. It is exported so that
// benchmarks can boot exactly the same machine without banger around it.
func (d *Driver) Command(spec vmmcore.Spec) ([]string, error) {
	return d.command(spec, false)
}

// The fd sets (-add-fd) that hold the writable disks' descriptors, set 1
// root and set 2 work, each a read-write and a read-only descriptor.
const (
	rootFDSet = 1
	workFDSet = 2
)

// command is Command; with fdSets the writable disks are opened through
// /dev/fdset/N, filled from inherited fds 3, 4, ... (see diskFiles). A QEMU
// that drops to -runas cannot open a path in banger's state directory,
// yet reopens a disk read-only when a snapshot layers a new file over it:
// it then takes the set's read-only descriptor instead of the path.
func (d *Driver) command(spec vmmcore.Spec, fdSets bool) ([]string, error) {
	qmp, err := vmmcore.SocketPath(spec.RuntimeDir, QMPSocketName)
	if err != nil {
		return nil, err
	}
	agent, err := vmmcore.SocketPath(spec.RuntimeDir, AgentSocketName)
	if err != nil {
		return nil, err
	}
	accel, cpu := "tcg", "max"
	if d.KVM() {
		// arch-capabilities (MSR 0x10a) is hidden from the guest: nested
		// KVM hosts (a VM as the development host) often refuse to set it
		// and QEMU then aborts at start. The guest only loses a hint about
		// which speculation mitigations it may skip.
		accel, cpu = "kvm", "host,-arch-capabilities"
	}
	argv := []string{d.cfg.Binary,
		"-name", "guest=" + escapeOpt(spec.Name) + ",debug-threads=on",
		"-machine", "microvm,acpi=on,rtc=on",
		"-accel", accel,
		"-cpu", cpu,
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-smp", strconv.Itoa(spec.VCPU),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// seccomp: no obsolete or privilege-raising system calls, no new
		// processes, no changes to scheduling or resources.
		"-sandbox", sandboxFor(spec.RunAs),
		"-kernel", spec.KernelPath,
	}
	if spec.RunAs != "" {
		argv = append(argv, "-runas", spec.RunAs)
	}
	if spec.InitrdPath != "" {
		argv = append(argv, "-initrd", spec.InitrdPath)
	}
	cmdline := spec.Cmdline
	if !d.KVM() {
		cmdline = withTSCHint(cmdline)
	}
	argv = append(argv, "-append", cmdline,
		"-chardev", "file,id=console,append=on,path="+escapeOpt(spec.ConsoleLog),
		"-serial", "chardev:console",
	)
	// Guests see them in this order: vda root, vdb work, then the
	// read-only configuration disk (found by its content, not its name).
	disks := []struct {
		id, path, format string
		readonly         bool
	}{{"root", spec.RootDisk, spec.RootFormat, false}, {"work", spec.WorkDisk, spec.WorkFormat, false}, {"config", spec.ConfigDisk, "raw", true}}
	nextFD := 3 // diskFiles' order: root, then work
	for _, disk := range disks {
		if disk.path == "" {
			continue
		}
		format := disk.format
		if format == "" {
			format = "raw"
		}
		file := escapeOpt(disk.path)
		if fdSets && !disk.readonly {
			set := rootFDSet
			if disk.id == "work" {
				set = workFDSet
			}
			fd := nextFD
			nextFD += 2
			file = fmt.Sprintf("/dev/fdset/%d", set)
			argv = append(argv, "-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=%s-rw", fd, set, disk.id),
				"-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=%s-ro", fd+1, set, disk.id))
		}
		opts := "id=" + disk.id + ",file=" + file + ",format=" + format + ",if=none,cache=writeback,aio=threads"
		if strings.HasPrefix(file, "/dev/fdset/") {
			// The set's read-only descriptor is another open file than
			// the read-write one, and OFD locks conflict between the two
			// of them when QEMU reopens the disk read-only. One VMM per
			// VM is banger's own invariant (the per-VM lock).
			opts += ",file.locking=off"
		}
		if disk.readonly {
			opts += ",readonly=on"
		} else {
			// A copy-on-write layer that cannot grow (host disk full)
			// pauses the guest instead of corrupting it; vm show reports it.
			opts += ",discard=unmap,werror=stop,rerror=report"
		}
		argv = append(argv, "-drive", opts, "-device", "virtio-blk-device,drive="+disk.id)
	}
	if spec.Tap != "" {
		nic := "virtio-net-device,netdev=net0"
		if spec.MAC != "" {
			nic += ",mac=" + spec.MAC
		}
		netdev := "tap,id=net0,ifname=" + escapeOpt(spec.Tap) + ",script=no,downscript=no"
		if spec.TapFile != nil {
			// Inherited after the disks' descriptors (launchAndWait).
			netdev = "tap,id=net0,fd=" + strconv.Itoa(nextFD)
		}
		argv = append(argv, "-netdev", netdev, "-device", nic)
	}
	if spec.IncomingState != "" {
		// The state file is handed over once QEMU's monitor answers
		// (loadState): the sandbox lets it neither spawn nor open paths.
		argv = append(argv, "-incoming", "defer")
	}
	argv = append(argv,
		"-device", "virtio-serial-device,id=vser0",
		"-chardev", "socket,id=agent,server=on,wait=off,path="+escapeOpt(agent),
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+AgentPortName,
		"-chardev", "socket,id=qmp,server=on,wait=off,path="+escapeOpt(qmp),
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", filepath.Join(spec.RuntimeDir, PIDFileName),
	)
	return argv, nil
}

// withTSCHint tells a TCG guest its TSC frequency. Under TCG the guest's
// TSC runs at the host's rate, but microvm offers no PIT, HPET or PM timer
// to calibrate it against, and on a loaded host the kernel's fallback
// calibration loops stall for minutes (seen on 2-core CI machines). The
// host kernel already knows the rate; pass it on with tsc_early_khz.
func withTSCHint(cmdline string) string {
	if strings.Contains(cmdline, "tsc_early_khz=") {
		return cmdline
	}
	khz := hostTSCkHz()
	if khz == 0 {
		return cmdline
	}
	return cmdline + " tsc_early_khz=" + strconv.FormatInt(khz, 10)
}

// hostTSCkHz reads the host's clock rate from /proc/cpuinfo ("cpu MHz",
// which the kernel derives from its TSC calibration); 0 when unknown.
func hostTSCkHz() int64 {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return parseCPUMHz(string(data))
}

func parseCPUMHz(cpuinfo string) int64 {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0
		}
		return int64(mhz * 1000)
	}
	return 0
}

// runtimeFiles are the files Start creates in the runtime directory that
// holds apiSocket.
func runtimeFiles(apiSocket string) []string {
	dir := filepath.Dir(apiSocket)
	return []string{apiSocket, filepath.Join(dir, AgentSocketName), filepath.Join(dir, PIDFileName)}
}

// Start boots spec and returns once QEMU's monitor reports the guest
// running. On failure it kills the QEMU it started, removes its files and
// returns an error carrying the tail of the console log.
func (d *Driver) Start(ctx context.Context, spec vmmcore.Spec) (vmmcore.Handle, error) {
	if err := spec.Validate(); err != nil {
		return vmmcore.Handle{}, err
	}
	if _, err := d.Command(spec); err != nil {
		return vmmcore.Handle{}, err
	}
	if err := os.MkdirAll(spec.RuntimeDir, 0o700); err != nil {
		return vmmcore.Handle{}, fmt.Errorf("start vm %s: create runtime dir: %w", spec.Name, err)
	}
	qmp := filepath.Join(spec.RuntimeDir, QMPSocketName)
	for _, f := range runtimeFiles(qmp) {
		if err := vmmcore.RemoveStaleSocket(f); err != nil {
			return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
		}
	}
	console, err := vmmcore.OpenConsoleLog(spec.ConsoleLog)
	if err != nil {
		return vmmcore.Handle{}, fmt.Errorf("start vm %s: %w", spec.Name, err)
	}
	defer console.Close()
	h, err := d.launchAndWait(ctx, spec, console)
	if err != nil || !d.KVM() || spec.IncomingState != "" {
		return h.Handle, err
	}
	// KVM: make sure the guest really runs before trusting KVM.
	if err := awaitConsole(ctx, spec.ConsoleLog, h.consoleOffset, kernelBanner, KVMBootProbe, func() bool { return Alive(h.Handle) }); err == nil {
		return h.Handle, nil
	} else if ctx.Err() != nil {
		d.abort(h.Handle)
		return vmmcore.Handle{}, ctx.Err()
	}
	d.abort(h.Handle)
	kvmStalled.Store(true)
	if d.cfg.VerdictFile != "" {
		_ = os.WriteFile(d.cfg.VerdictFile, []byte(hostKernelRelease()+"\n"), 0o644)
	}
	fmt.Fprintf(console, "[banger] the guest printed nothing %s after starting under KVM: this host's KVM does not run guests (nested virtualization?). Retrying with TCG, and remembering that (%s) until the host kernel changes; qemu_accel = \"kvm\" in config.toml forces KVM.\n", KVMBootProbe, d.cfg.VerdictFile)
	h, err = d.launchAndWait(ctx, spec, console)
	return h.Handle, err
}

// diskFiles opens the writable disks for their fd sets (see command):
// root read-write and read-only, then work the same, as fds 3..6. The
// caller closes them once QEMU has inherited them.
func diskFiles(spec vmmcore.Spec) ([]*os.File, error) {
	var files []*os.File
	for _, p := range []string{spec.RootDisk, spec.WorkDisk} {
		if p == "" {
			continue
		}
		rw, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			closeAll(files)
			return nil, err
		}
		ro, err := os.Open(p)
		if err != nil {
			rw.Close()
			closeAll(files)
			return nil, err
		}
		files = append(files, rw, ro)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// started is a Handle plus where its boot began in the console log.
type started struct {
	vmmcore.Handle
	consoleOffset int64
}

// launchAndWait starts argv and waits for QMP to report the guest running.
func (d *Driver) launchAndWait(ctx context.Context, spec vmmcore.Spec, console *os.File) (started, error) {
	// A QEMU that drops to -runas gets its writable disks as descriptors.
	fdSets := spec.RunAs != ""
	argv, err := d.command(spec, fdSets)
	if err != nil {
		return started{}, err
	}
	var extra []*os.File
	if fdSets {
		if extra, err = diskFiles(spec); err != nil {
			return started{}, fmt.Errorf("start vm %s: open disks: %w", spec.Name, err)
		}
		defer closeAll(extra)
	}
	if spec.TapFile != nil {
		// The caller's: it closes it.
		extra = append(extra, spec.TapFile)
	}
	qmp := filepath.Join(spec.RuntimeDir, QMPSocketName)
	vmmcore.MarkBoot(console, DriverName, argv)
	offset, _ := console.Seek(0, io.SeekEnd)

	pid, err := d.launch(argv, console, extra)
	if err != nil {
		return started{}, fmt.Errorf("start vm %s: %w (is %s installed? apt-get install qemu-system-x86)", spec.Name, err, d.cfg.Binary)
	}
	h := vmmcore.Handle{Driver: DriverName, PID: pid, APISocket: qmp}
	fail := func(err error) (started, error) {
		d.abort(h)
		return started{}, vmmcore.WithConsoleTail(fmt.Errorf("start vm %s with qemu: %w", spec.Name, err), spec.ConsoleLog)
	}
	if h.StartTime, err = vmmcore.ProcStartTime(pid); err != nil {
		return fail(vmmcore.ErrExited)
	}
	if err := spec.ReportLaunch(h); err != nil {
		return fail(err)
	}
	wctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	if spec.IncomingState != "" {
		if err := d.awaitMonitor(wctx, h); err != nil {
			return fail(err)
		}
		if err := d.loadState(wctx, h, spec.IncomingState); err != nil {
			return fail(err)
		}
	}
	if err := d.waitRunning(wctx, h, spec.IncomingState != ""); err != nil {
		return fail(err)
	}
	return started{Handle: h, consoleOffset: offset}, nil
}

// awaitConsole waits until the console log, from offset on, contains
// needle; it gives up after limit, when alive turns false or ctx ends.
func awaitConsole(ctx context.Context, path string, offset int64, needle string, limit time.Duration, alive func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if f, err := os.Open(path); err == nil {
			data, _ := io.ReadAll(io.NewSectionReader(f, offset, 1<<20))
			f.Close()
			if strings.Contains(string(data), needle) {
				return nil
			}
		}
		if !alive() {
			return vmmcore.ErrExited
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q on the console within %s", needle, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// terminalStatuses are QMP run states from which a starting guest will not
// reach "running" by itself.
var terminalStatuses = map[string]bool{
	"shutdown": true, "guest-panicked": true, "internal-error": true, "io-error": true,
}

// waitRunning waits for the guest to run. A guest loaded from a saved
// state (incoming) arrives paused, as it was saved: it is continued.
func (d *Driver) waitRunning(ctx context.Context, h vmmcore.Handle, incoming bool) error {
	var last error
	for {
		if !Alive(h) {
			return vmmcore.ErrExited
		}
		status, err := d.Status(ctx, h)
		switch {
		case err == nil && status == "running":
			return nil
		case err == nil && status == "paused" && incoming:
			if err := d.Resume(ctx, h); err != nil {
				last = err
			}
			continue
		case err == nil && terminalStatuses[status]:
			return fmt.Errorf("the guest is %s", status)
		case err == nil:
			last = fmt.Errorf("status %q", status)
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu did not report the guest running: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// awaitMonitor waits until QEMU's monitor answers.
func (d *Driver) awaitMonitor(ctx context.Context, h vmmcore.Handle) error {
	for {
		if !Alive(h) {
			return vmmcore.ErrExited
		}
		if _, err := d.Status(ctx, h); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu's monitor did not answer: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// abort kills a QEMU that failed to start and removes its files once it is
// gone, so a failed start leaves nothing behind.
func (d *Driver) abort(h vmmcore.Handle) {
	_ = d.Kill(h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = vmmcore.WaitGone(ctx, func() bool { return Alive(h) }, 20*time.Millisecond)
	for _, f := range runtimeFiles(h.APISocket) {
		_ = os.Remove(f)
	}
}

// Status returns QEMU's run state ("running", "paused", "shutdown", ...).
func (d *Driver) Status(ctx context.Context, h vmmcore.Handle) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := qmpDo(ctx, h.APISocket, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// Shutdown presses the guest's ACPI power button (QMP system_powerdown).
// It does not wait; use vmm.WaitExit.
func (d *Driver) Shutdown(ctx context.Context, h vmmcore.Handle) error {
	if !Alive(h) {
		return fmt.Errorf("shut down qemu pid %d: %w", h.PID, vmmcore.ErrNotRunning)
	}
	if err := qmpDo(ctx, h.APISocket, "system_powerdown", nil, nil); err != nil {
		return fmt.Errorf("shut down qemu pid %d: %w", h.PID, err)
	}
	return nil
}

// Kill sends SIGKILL to the QEMU process if it is still the one h names.
func (d *Driver) Kill(h vmmcore.Handle) error {
	return vmmcore.Kill(h.PID, h.StartTime, matcher(h))
}

// Alive reports whether h's QEMU process is running.
func (d *Driver) Alive(h vmmcore.Handle) bool { return Alive(h) }

// Cleanup removes the files Start left in the runtime directory. It refuses
// while the VMM is alive.
func (d *Driver) Cleanup(h vmmcore.Handle) error {
	if Alive(h) {
		return fmt.Errorf("clean up after qemu pid %d: it is still running; stop or kill it first", h.PID)
	}
	var errs []error
	for _, f := range runtimeFiles(h.APISocket) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Alive reports whether the process h names exists, is not a zombie,
// started at h.StartTime and has h.APISocket on its command line.
func Alive(h vmmcore.Handle) bool {
	return h.APISocket != "" && vmmcore.Matches(h.PID, h.StartTime, matcher(h))
}

func matcher(h vmmcore.Handle) func([]string) bool {
	return vmmcore.ArgMentions(h.APISocket, escapeOpt(h.APISocket))
}

// AgentSocket returns the host unix socket connected to the guest agent's
// virtio-serial port of the VM that h names.
func AgentSocket(h vmmcore.Handle) string {
	return filepath.Join(filepath.Dir(h.APISocket), AgentSocketName)
}
