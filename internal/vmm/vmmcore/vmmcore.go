// Package vmmcore holds the parts of banger's VMM contract that both drivers
// need: the Spec of a VM to boot, the Handle that identifies a running VMM
// process across daemon restarts, process identity checks on /proc, the
// console log helpers and the KVM capability probe.
//
// It exists only so that package vmm can import the drivers (vmm/qemu,
// vmm/firecracker) to choose between them without an import cycle: vmm
// re-exports every name callers need, so code outside internal/vmm should
// import vmm, not this package.
//
// It owns no state. It must not know about any one VMM's command line or API;
// that belongs in the driver packages.
package vmmcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"banger/internal/api"
)

// Spec describes one VM boot. Paths are host paths; the driver translates
// them where its VMM needs something else (a jail, option escaping).
type Spec struct {
	Name string
	// ID is a short name unique among VMs (banger: the first 12 hex
	// digits of the VM's id), for what must be short: a Firecracker
	// jail's directory, whose socket path is bounded. Empty: Name.
	ID        string
	VCPU      int
	MemoryMiB int
	// KernelPath is a bzImage for QEMU and an ELF vmlinux for Firecracker;
	// the caller picks by the driver's KernelKind.
	KernelPath string
	InitrdPath string // optional
	Cmdline    string
	// RootDisk and WorkDisk are disk image files (or block devices) in
	// RootFormat and WorkFormat: "raw" (the default when empty) or "qcow2"
	// (QEMU only). WorkDisk is optional.
	RootDisk   string
	WorkDisk   string
	RootFormat string
	WorkFormat string
	// ConfigDisk is the VM's configuration disk (internal/configdisk), a
	// raw file the guest gets read-only after the other disks; optional.
	ConfigDisk string
	// Tap is the host tap device for the guest's one NIC; empty means no
	// network device. MAC is the guest's address (optional).
	Tap string
	MAC string
	// TapFile, when set, is a descriptor attached to Tap (privops.OpenTap)
	// that QEMU is handed instead of opening the tap by name: a daemon
	// without CAP_NET_ADMIN gets it from banger's root helper. The caller
	// closes it once Start returns. Firecracker always opens its tap by
	// name and ignores it.
	TapFile *os.File
	// RuntimeDir is a per-VM directory the driver owns while the VM runs:
	// its API socket, agent socket and pid file live here.
	RuntimeDir string
	// ConsoleLog receives the guest serial console and the VMM's own
	// output, appended.
	ConsoleLog string
	// IncomingState, when set, is a saved state (Snapshotter.SaveState)
	// the VMM loads instead of booting the kernel: the guest resumes where
	// the snapshot left it. The machine (vCPUs, memory, devices) must be
	// the one that was saved.
	IncomingState string
	// Launched, when set, is called with the VMM's Handle the moment its
	// process exists, before Start waits for it or configures it, so that
	// the caller can record what a new daemon must find if this one dies
	// in the middle of Start. An error from it fails Start (the VMM is
	// killed). A driver that relaunches (QEMU's KVM fallback) calls it
	// again with the new Handle.
	Launched func(Handle) error
	// RunAs, when set ("UID:GID"), is the unprivileged identity the VMM
	// takes once its devices and files are open (QEMU -runas), so a guest
	// that escapes into the VMM holds no more than its own VM's open
	// files. Empty: the VMM keeps the daemon's identity. A jailed
	// Firecracker runs as it (jailer --uid/--gid); an unjailed one keeps
	// the daemon's identity.
	RunAs string
}

// Handle identifies a running VMM process. It is what the daemon stores to
// re-adopt a VM after it restarts: PID alone is not enough because pids are
// recycled, so Alive also checks StartTime and that the process's command
// line names APISocket.
type Handle struct {
	Driver string `json:"driver"`
	PID    int    `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat (clock ticks after boot).
	StartTime uint64 `json:"start_time"`
	APISocket string `json:"api_socket"`
}

// ErrNotRunning reports an operation on a VMM that is not running.
var ErrNotRunning = errors.New("the VMM is not running")

// maxSocketPath is the longest path a unix socket may have (sun_path is 108
// bytes including the terminating NUL).
const maxSocketPath = 107

// Validate checks what every driver needs before it starts a process. It
// returns an *api.Error with CodeBadRequest for bad input. Limits that a
// VMM enforces itself (Firecracker's 32 vCPUs, say) are left to it, so the
// user sees the VMM's own words.
func (s Spec) Validate() error {
	bad := func(format string, args ...any) error {
		return api.Errorf(api.CodeBadRequest, format, args...)
	}
	switch {
	case s.Name == "":
		return bad("vm spec: name is empty")
	case s.VCPU < 1:
		return bad("vm %s: vcpu must be at least 1, got %d", s.Name, s.VCPU)
	case s.MemoryMiB < 1:
		return bad("vm %s: memory must be at least 1 MiB, got %d", s.Name, s.MemoryMiB)
	case s.RuntimeDir == "" || !filepath.IsAbs(s.RuntimeDir):
		return bad("vm %s: runtime dir %q must be an absolute path", s.Name, s.RuntimeDir)
	case s.ConsoleLog == "":
		return bad("vm %s: console log path is empty", s.Name)
	case s.RootDisk == "":
		return bad("vm %s: root disk path is empty", s.Name)
	}
	files := []struct{ what, path string }{
		{"kernel", s.KernelPath},
		{"initrd", s.InitrdPath},
		{"root disk", s.RootDisk},
		{"work disk", s.WorkDisk},
	}
	for i, f := range files {
		if f.path == "" {
			if i == 0 {
				return bad("vm %s: kernel path is empty", s.Name)
			}
			continue
		}
		st, err := os.Stat(f.path)
		if err != nil {
			return bad("vm %s: %s %s: %v", s.Name, f.what, f.path, err)
		}
		if st.IsDir() {
			return bad("vm %s: %s %s is a directory, not a file", s.Name, f.what, f.path)
		}
	}
	if s.MAC != "" {
		hw, err := net.ParseMAC(s.MAC)
		if err != nil || len(hw) != 6 {
			return bad("vm %s: MAC %q is not a 6-byte Ethernet address", s.Name, s.MAC)
		}
	}
	return nil
}

// SocketPath joins dir and name and checks that the result fits in a unix
// socket address.
func SocketPath(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if len(p) > maxSocketPath {
		return "", api.Errorf(api.CodeBadRequest,
			"socket path %s is %d bytes, longer than the %d a unix socket allows: use a shorter runtime directory",
			p, len(p), maxSocketPath)
	}
	return p, nil
}

// RemoveStaleSocket removes a socket file left behind by a VMM that died
// without cleaning up. It refuses when something still accepts connections
// on it: that is a live VMM, and removing its socket would orphan it.
func RemoveStaleSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if c, err := net.Dial("unix", path); err == nil {
		_ = c.Close()
		return fmt.Errorf("a process is still listening on %s: stop the VM that owns it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// ErrExited reports a VMM process that exited while it was being started.
var ErrExited = errors.New("the VMM process exited during start")

// WaitSocket polls until a unix socket at path accepts a connection. It
// fails early with ErrExited once alive reports false, and when ctx is done.
func WaitSocket(ctx context.Context, path string, alive func() bool) error {
	const poll = 20 * time.Millisecond
	for {
		if c, err := net.Dial("unix", path); err == nil {
			_ = c.Close()
			return nil
		}
		if !alive() {
			return ErrExited
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", path, ctx.Err())
		case <-time.After(poll):
		}
	}
}

// ReportLaunch calls spec.Launched, if set, with h.
func (s Spec) ReportLaunch(h Handle) error {
	if s.Launched == nil {
		return nil
	}
	return s.Launched(h)
}
