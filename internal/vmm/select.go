package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
	"banger/internal/vmm/vmmcore"
)

// Preferences accepted for the vmm config key.
const (
	PrefAuto        = "auto"
	PrefQEMU        = qemu.DriverName
	PrefFirecracker = firecracker.DriverName
)

// QEMU accelerator choices.
const (
	AccelAuto = "auto" // KVM when CheckKVM passes, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Options is the full driver choice; Select covers the common case.
type Options struct {
	// Pref is "auto" (or empty), "qemu" or "firecracker".
	Pref string
	// FirecrackerBin and QEMUBin are binary names or paths (empty: the
	// default names, looked up on PATH).
	FirecrackerBin string
	QEMUBin        string
	// QEMUAccel is "auto" (or empty), "kvm" or "tcg". "tcg" is for hosts
	// whose /dev/kvm opens but cannot run guests (some nested setups).
	QEMUAccel string
	// Jailer is "auto" (or empty: Firecracker runs under its jailer when
	// the daemon is root and the jailer binary is found), "on" (required)
	// or "off". JailerBin names the jailer (default "jailer" on PATH).
	// JailBase is the jails' chroot base: it must be on the filesystem of
	// the VMs' disks (they are hard-linked in); empty means the jailer's
	// default, /srv/jailer.
	Jailer    string
	JailerBin string
	JailBase  string
	// AsRoot, when set, says whether bangerd runs as root (the jailer
	// needs it); nil: this process's own uid decides. banger doctor sets
	// it from the daemon it asks.
	AsRoot *bool
	// RootJails, when set, is banger's root helper, which runs the jailer
	// for a daemon that is not root (system mode); "auto" then jails
	// when it says it can, with JailBase its jails' directory.
	RootJails RootJails
	// KVMVerdictFile, when set, remembers across daemon restarts that this
	// host's KVM stalled a guest (see qemu.Config.VerdictFile), so "auto"
	// goes straight to TCG instead of probing again.
	KVMVerdictFile string
}

// RootJails is banger's root helper as it jails Firecracker for a daemon
// that is not root (privops.Client).
type RootJails interface {
	firecracker.JailHelper
	// JailAvailable says whether it can, the name of its firecracker
	// binary and where it makes jails; the error says why not.
	JailAvailable() (execName, base string, err error)
}

// probe is what the choice depends on; tests replace it.
type probe struct {
	kvm      func() error
	lookPath func(name string) (string, error)
	// root reports whether this process runs as root; cgroupVersion is
	// the host's cgroup hierarchy (2 unified, 1 per controller, 0 none).
	root          func() bool
	cgroupVersion func() int
}

var hostProbe = probe{kvm: vmmcore.CheckKVM, lookPath: system.LookPath,
	root: func() bool { return os.Geteuid() == 0 }, cgroupVersion: CgroupVersion}

// CgroupVersion reports the host's cgroup hierarchy: 2 when the unified
// hierarchy is mounted at /sys/fs/cgroup, 1 when the memory controller has
// a v1 hierarchy there, else 0 (the jailer then sets no limits).
func CgroupVersion() int {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return 2
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		return 1
	}
	return 0
}

// Select picks the VMM driver: pref "auto" (or empty) takes Firecracker
// when KVM is usable and the firecracker binary is found, else QEMU;
// "firecracker" and "qemu" take that driver or explain why it cannot work
// here and what to do.
func Select(pref, fcBin, qemuBin string) (Driver, error) {
	return SelectWith(Options{Pref: pref, FirecrackerBin: fcBin, QEMUBin: qemuBin})
}

// SelectWith is Select with every option.
func SelectWith(o Options) (Driver, error) { return selectDriver(o, hostProbe) }

const installQEMU = "install it with `apt-get install qemu-system-x86`"

const installFirecracker = "install a Firecracker release (v1.10 or newer, for ACPI) onto PATH"

func selectDriver(o Options, p probe) (Driver, error) {
	fcBin := o.FirecrackerBin
	if fcBin == "" {
		fcBin = firecracker.DefaultBinary
	}
	qemuBin := o.QEMUBin
	if qemuBin == "" {
		qemuBin = qemu.DefaultBinary
	}
	switch o.QEMUAccel {
	case "", AccelAuto, AccelKVM, AccelTCG:
	default:
		return nil, api.Errorf(api.CodeBadRequest, "qemu accelerator %q is not one of auto, kvm, tcg", o.QEMUAccel)
	}

	switch o.Pref {
	case "", PrefAuto:
		kvmErr := p.kvm()
		fcPath, fcErr := p.lookPath(fcBin)
		if kvmErr == nil && fcErr == nil {
			return newFirecracker(o, p, fcPath)
		}
		d, err := newQEMU(o, p, qemuBin, kvmErr)
		if err != nil {
			why := kvmErr
			if why == nil {
				why = fmt.Errorf("the firecracker binary %q is not on PATH", fcBin)
			}
			return nil, fmt.Errorf("no usable VMM on this host: Firecracker cannot run (%v) and QEMU cannot either (%w)", why, err)
		}
		return d, nil

	case PrefFirecracker:
		if err := p.kvm(); err != nil {
			return nil, fmt.Errorf("vmm = %q but %w; set vmm = \"qemu\" or \"auto\"", PrefFirecracker, err)
		}
		fcPath, err := p.lookPath(fcBin)
		if err != nil {
			return nil, fmt.Errorf("vmm = %q but the firecracker binary %q was not found (%v): %s, or set vmm = \"qemu\" or \"auto\"",
				PrefFirecracker, fcBin, err, installFirecracker)
		}
		return newFirecracker(o, p, fcPath)

	case PrefQEMU:
		d, err := newQEMU(o, p, qemuBin, p.kvm())
		if err != nil {
			return nil, fmt.Errorf("vmm = %q but %w", PrefQEMU, err)
		}
		return d, nil

	default:
		return nil, api.Errorf(api.CodeBadRequest, "vmm = %q is not one of auto, qemu, firecracker", o.Pref)
	}
}

// newFirecracker makes the Firecracker driver, jailed as o.Jailer says.
func newFirecracker(o Options, p probe, fcPath string) (Driver, error) {
	j, err := jailerFor(o, p, fcPath)
	if err != nil {
		return nil, err
	}
	return firecracker.New(firecracker.Config{Binary: fcPath, Jailer: j}), nil
}

// jailerFor decides whether Firecracker runs under its jailer: "auto"
// jails it when the daemon is root (the jailer must be), the jailer is
// found and the firecracker binary's name says firecracker (the jailer
// insists); "on" requires all of it; "off" never jails. A jailed VMM runs
// as its VM's uid (Spec.RunAs).
func jailerFor(o Options, p probe, fcPath string) (*firecracker.JailerConfig, error) {
	j, _, err := jailerChoice(o, p, fcPath)
	return j, err
}

// JailerChoice says whether Firecracker at fcPath would run under its
// jailer with o on this host, and if not, why not.
func JailerChoice(o Options, fcPath string) (jailed bool, why string, err error) {
	j, why, err := jailerChoice(o, hostProbe, fcPath)
	return j != nil, why, err
}

func jailerChoice(o Options, p probe, fcPath string) (*firecracker.JailerConfig, string, error) {
	mode := o.Jailer
	switch mode {
	case "", "auto", "on":
	case "off":
		return nil, "firecracker_jailer = \"off\"", nil
	default:
		return nil, "", api.Errorf(api.CodeBadRequest, "firecracker_jailer = %q is not one of auto, on, off", mode)
	}
	why := ""
	bin := o.JailerBin
	if bin == "" {
		bin = firecracker.DefaultJailerBinary
	}
	jpath, err := p.lookPath(bin)
	root := p.root()
	if o.AsRoot != nil {
		root = *o.AsRoot
	}
	if !root && o.RootJails != nil {
		exec, base, err := o.RootJails.JailAvailable()
		if err == nil && filepath.Clean(base) != filepath.Clean(o.JailBase) {
			err = fmt.Errorf("its jails are in %s, and this daemon looks for them in %s (bangerd root-helper --jail-dir)", base, o.JailBase)
		}
		if err == nil {
			return &firecracker.JailerConfig{Helper: o.RootJails, ExecName: exec, ChrootBase: o.JailBase}, "", nil
		}
		why = "banger's root helper cannot run the jailer: " + err.Error()
		if mode == "on" {
			return nil, why, fmt.Errorf("firecracker_jailer = \"on\" but %s; fix that or set it to \"auto\" or \"off\"", why)
		}
		return nil, why, nil
	}
	switch {
	case !root:
		why = "bangerd does not run as root, and the jailer must"
	case err != nil:
		why = fmt.Sprintf("the jailer binary %q was not found (%v); it ships with Firecracker's release", bin, err)
	case !strings.Contains(filepath.Base(fcPath), "firecracker"):
		why = fmt.Sprintf("the jailer only runs a binary whose name contains \"firecracker\", and firecracker_bin is %s", fcPath)
	}
	if why != "" {
		if mode == "on" {
			return nil, why, fmt.Errorf("firecracker_jailer = \"on\" but %s; fix that or set it to \"auto\" or \"off\"", why)
		}
		return nil, why, nil
	}
	return &firecracker.JailerConfig{Binary: jpath, ChrootBase: o.JailBase, CgroupVersion: p.cgroupVersion()}, "", nil
}

// newQEMU finds the QEMU binary and picks its accelerator.
func newQEMU(o Options, p probe, bin string, kvmErr error) (Driver, error) {
	path, err := p.lookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s was not found (%v): %s", bin, err, installQEMU)
	}
	useKVM := kvmErr == nil
	switch o.QEMUAccel {
	case AccelTCG:
		useKVM = false
	case AccelKVM:
		if kvmErr != nil {
			return nil, fmt.Errorf("qemu accelerator \"kvm\" was asked for but %w; set it to \"auto\" or \"tcg\"", kvmErr)
		}
	}
	if useKVM && o.QEMUAccel != AccelKVM && qemu.KVMStalledBefore(o.KVMVerdictFile) {
		useKVM = false
	}
	return qemu.New(qemu.Config{Binary: path, KVM: useKVM, VerdictFile: o.KVMVerdictFile}), nil
}
