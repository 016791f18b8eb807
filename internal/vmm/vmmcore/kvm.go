package vmmcore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// kvmDevice is the KVM device node; a variable so tests can probe a file
// that is not a KVM device.
var kvmDevice = "/dev/kvm"

// sysModules is where the kernel lists loaded modules; a variable so tests
// can describe another host.
var sysModules = "/sys/module"

const (
	kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
	kvmAPIVersion    = 12     // the only stable KVM API version
)

// CheckKVM reports whether this process can use KVM: /dev/kvm opens
// read-write and answers KVM_GET_API_VERSION with 12. The error says which
// step failed and what to do about it.
func CheckKVM() error {
	if err := checkPVM(); err != nil {
		return err
	}
	fd, err := unix.Open(kvmDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s is missing (no hardware virtualization, or the kvm_intel/kvm_amd module is not loaded)", kvmDevice)
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s is not accessible to uid %d (add the user to the kvm group)", kvmDevice, os.Getuid())
	case err != nil:
		return fmt.Errorf("open %s: %w", kvmDevice, err)
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%s does not answer KVM_GET_API_VERSION (%v): it is not a usable KVM device", kvmDevice, err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s reports KVM API version %d, want %d", kvmDevice, v, kvmAPIVersion)
	}
	return nil
}

// checkPVM refuses a KVM that only runs PVM guests: with kvm_pvm loaded and
// neither kvm_intel nor kvm_amd, /dev/kvm opens and answers every ioctl,
// but a stock guest kernel (Debian's) stalls in early boot. Knowing it at
// once saves the boot probe that would otherwise find out in 15 s.
func checkPVM() error {
	has := func(m string) bool {
		_, err := os.Stat(sysModules + "/" + m)
		return err == nil
	}
	if has("kvm_pvm") && !has("kvm_intel") && !has("kvm_amd") {
		return fmt.Errorf("%s is PVM-only (module kvm_pvm is loaded, kvm_intel/kvm_amd are not): it runs only PVM-built guest kernels, so banger uses TCG", kvmDevice)
	}
	return nil
}
