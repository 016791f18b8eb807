// Package vmm is banger's interface to virtual machine monitors: the Driver
// lifecycle (start, graceful shutdown, kill, liveness) that the daemon uses,
// and the choice of driver for this host.
//
// Two drivers implement it: vmm/firecracker (Firecracker microVMs; needs KVM
// and the firecracker binary) and vmm/qemu (qemu-system-x86_64 -M microvm;
// KVM when usable, TCG otherwise, so banger works on hosts without KVM).
// Select picks one from the configured preference and what the host can do.
//
// VMM processes are started detached (own session, output appended to the
// VM's console log) so VMs survive a daemon restart or update. A Handle
// (driver, pid, process start time, API socket) is what the daemon stores
// to re-adopt a running VM: Alive checks all of it, so a recycled pid is
// never mistaken for a VMM. ForHandle gives a driver able to stop or kill a
// VM started under whichever driver its Handle names, even when the
// configured driver has since changed.
//
// This package owns no host state. It must not prepare disks, taps or
// kernels (other packages do, and hand over paths and names in a Spec), and
// the VM's runtime directory belongs to the driver only while the VM runs.
//
// The shared types live in vmm/vmmcore only to avoid an import cycle with
// the drivers; use the names re-exported here.
package vmm

import (
	"context"
	"fmt"
	"time"

	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
	"banger/internal/vmm/vmmcore"
)

// Spec describes one VM boot; see vmmcore.Spec.
type Spec = vmmcore.Spec

// Handle identifies a running VMM process; see vmmcore.Handle.
type Handle = vmmcore.Handle

// ErrNotRunning reports an operation on a VMM that is not running.
var ErrNotRunning = vmmcore.ErrNotRunning

// ErrExited reports a VMM that exited while it was being started.
var ErrExited = vmmcore.ErrExited

// Driver is one VMM implementation.
type Driver interface {
	// Name is "qemu" or "firecracker".
	Name() string
	// KernelKind is "bzimage" (QEMU) or "vmlinux" (Firecracker): the
	// kernel image format Spec.KernelPath must have.
	KernelKind() string
	// Start boots spec and returns once the VMM runs the guest. On any
	// failure it kills what it started, removes its sockets, and the error
	// includes the last lines of the console log.
	Start(ctx context.Context, spec Spec) (Handle, error)
	// Shutdown asks the guest to power off gracefully (QEMU: ACPI power
	// button; Firecracker: ctrl-alt-del). It does not wait; see WaitExit.
	Shutdown(ctx context.Context, h Handle) error
	// Kill sends SIGKILL to the VMM if it is alive.
	Kill(h Handle) error
	// Alive reports whether the VMM h names runs: the pid exists, is not a
	// zombie, started at h.StartTime and its command line names
	// h.APISocket.
	Alive(h Handle) bool
}

// Snapshotter is a driver that can save a running guest and load it into
// a new VMM (Spec.IncomingState): QEMU through its monitor, Firecracker
// through its snapshot API.
type Snapshotter interface {
	// Pause stops the guest's vCPUs and flushes its disks.
	Pause(ctx context.Context, h Handle) error
	// SaveState writes the paused guest's memory and device state to
	// path (and, for some drivers, files beside it: see StateFiles).
	SaveState(ctx context.Context, h Handle, path string) error
	// StateFiles lists every file SaveState(path) writes, path first.
	StateFiles(path string) []string
	// Resume runs a paused (or saved) guest again.
	Resume(ctx context.Context, h Handle) error
	// ResizeDisk grows a running guest's drive to size bytes and tells
	// the guest.
	ResizeDisk(ctx context.Context, h Handle, drive string, size int64) error
}

// DiskLayerer is a Snapshotter that can move a paused guest's disk onto a
// new copy-on-write layer (QEMU, qcow2). A driver without it (Firecracker,
// raw files only) has its disks frozen by copying them while the guest is
// paused.
type DiskLayerer interface {
	// SnapshotDisk switches the paused guest's disk drive ("root",
	// "work") to overlay, an existing qcow2 file whose backing file is
	// the drive's current top layer, which is then written no more.
	SnapshotDisk(ctx context.Context, h Handle, drive, overlay string) error
}

// Cleaner is implemented by both drivers: Cleanup removes the sockets (and
// Firecracker's jail) a VMM left in its runtime directory after it exited.
// It refuses while the VMM is alive. Call it after WaitExit or Kill and
// before deleting a VM.
type Cleaner interface {
	Cleanup(h Handle) error
}

var (
	_ Driver  = (*qemu.Driver)(nil)
	_ Driver  = (*firecracker.Driver)(nil)
	_ Cleaner = (*qemu.Driver)(nil)
	_ Cleaner = (*firecracker.Driver)(nil)

	_ Snapshotter = (*qemu.Driver)(nil)
	_ Snapshotter = (*firecracker.Driver)(nil)
	_ DiskLayerer = (*qemu.Driver)(nil)
)

// ProcStartTime returns field 22 of /proc/PID/stat, the process's start
// time in clock ticks after boot.
func ProcStartTime(pid int) (uint64, error) { return vmmcore.ProcStartTime(pid) }

// CheckKVM reports whether KVM is usable by this process; the error says why
// not and what to do.
func CheckKVM() error { return vmmcore.CheckKVM() }

// ForHandle returns a driver that can Shutdown, Kill, check and Cleanup the
// VM h names. Use it for VMs found running at daemon start: they keep the
// driver they were started with. It is not configured to Start VMs.
func ForHandle(h Handle) (Driver, error) {
	switch h.Driver {
	case qemu.DriverName:
		return qemu.New(qemu.Config{}), nil
	case firecracker.DriverName:
		return firecracker.New(firecracker.Config{}), nil
	default:
		return nil, fmt.Errorf("handle names unknown VMM driver %q", h.Driver)
	}
}

// Cleanup removes what the VMM h names left in its runtime directory (and
// Firecracker's jail) after it exited; see Cleaner.
func Cleanup(h Handle) error {
	d, err := ForHandle(h)
	if err != nil {
		return err
	}
	return d.(Cleaner).Cleanup(h)
}

// CleanupVia is Cleanup for a daemon whose Firecracker jails banger's root
// helper makes (system mode; jails nil otherwise): the helper removes a
// jailed VMM's jail and cgroups, which are root's.
func CleanupVia(h Handle, jails RootJails) error {
	if jails != nil && JailedHandle(h) {
		return firecracker.New(firecracker.Config{Jailer: &firecracker.JailerConfig{Helper: jails}}).Cleanup(h)
	}
	return Cleanup(h)
}

// Alive reports whether the VMM h names runs, whichever driver started it.
func Alive(h Handle) bool {
	switch h.Driver {
	case qemu.DriverName:
		return qemu.Alive(h)
	case firecracker.DriverName:
		return firecracker.Alive(h)
	default:
		return false
	}
}

// WaitExit polls Alive every poll (default 100ms) until the VMM is gone or
// ctx is done. It does not need the VMM to be this process's child, which it
// is not after a daemon restart.
func WaitExit(ctx context.Context, h Handle, poll time.Duration) error {
	if _, err := ForHandle(h); err != nil {
		return err
	}
	return vmmcore.WaitGone(ctx, func() bool { return Alive(h) }, poll)
}

// JailedHandle reports whether the VMM h names runs under Firecracker's
// jailer.
func JailedHandle(h Handle) bool {
	return h.Driver == firecracker.DriverName && firecracker.JailedHandle(h)
}

// AgentSocket returns the host unix socket that reaches the guest agent of
// the VM h names: with Firecracker the hybrid-vsock socket (send
// "CONNECT <port>\n", read "OK ...", then the stream is the guest port);
// with QEMU the virtio-serial port's socket, a single byte stream to
// /dev/virtio-ports/org.banger.agent in the guest.
func AgentSocket(h Handle) string {
	if h.Driver == firecracker.DriverName {
		return firecracker.AgentSocket(h)
	}
	return qemu.AgentSocket(h)
}
