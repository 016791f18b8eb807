package vmm

import (
	"fmt"

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
	// KVMVerdictFile, when set, remembers across daemon restarts that this
	// host's KVM stalled a guest (see qemu.Config.VerdictFile), so "auto"
	// goes straight to TCG instead of probing again.
	KVMVerdictFile string
}

// probe is what the choice depends on; tests replace it.
type probe struct {
	kvm      func() error
	lookPath func(name string) (string, error)
}

var hostProbe = probe{kvm: vmmcore.CheckKVM, lookPath: system.LookPath}

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
			return firecracker.New(firecracker.Config{Binary: fcPath}), nil
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
		return firecracker.New(firecracker.Config{Binary: fcPath}), nil

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
