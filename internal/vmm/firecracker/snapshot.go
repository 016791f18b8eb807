package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/disk"
	"banger/internal/vmm/vmmcore"
)

// Snapshots, through Firecracker's snapshot API. A save is PATCH /vm
// {"state":"Paused"}, then PUT /snapshot/create of a full snapshot: the
// device state to the path the caller names and the guest memory beside
// it (path + MemFileSuffix). A restore is a fresh Firecracker given the
// new VM's disks at the saved VM's descriptor numbers, PUT /logger, PUT
// /snapshot/load with a file memory backend, the new VM's tap as a
// network override and its own vsock socket as the vsock override, then
// PATCH /vm {"state":"Resumed"}.
//
// Firecracker resets the vsock device when a snapshot is loaded (it sends
// the guest a transport reset event): every vsock connection the guest
// had is closed, listening sockets stay. The agent's listener survives;
// the daemon dials it afresh after a restore.
//
// Disks: Firecracker writes raw files in place and cannot switch a drive
// to an overlay, so the caller freezes a disk by copying (reflinking) it
// while the guest is paused; the driver has no SnapshotDisk.

// MemFileSuffix names the guest memory file SaveState writes beside the
// state file.
const MemFileSuffix = ".mem"

// StateFiles lists what SaveState(path) writes: the device state and the
// guest memory.
func (d *Driver) StateFiles(path string) []string {
	return []string{path, path + MemFileSuffix}
}

// Pause stops the guest's vCPUs (PATCH /vm Paused). Firecracker completes
// the disk requests it took before it returns.
func (d *Driver) Pause(ctx context.Context, h vmmcore.Handle) error {
	return d.setState(ctx, h, "Paused")
}

// Resume runs a paused guest again (PATCH /vm Resumed).
func (d *Driver) Resume(ctx context.Context, h vmmcore.Handle) error {
	return d.setState(ctx, h, "Resumed")
}

func (d *Driver) setState(ctx context.Context, h vmmcore.Handle, state string) error {
	if !Alive(h) {
		return fmt.Errorf("%s firecracker pid %d: %w", strings.ToLower(state), h.PID, vmmcore.ErrNotRunning)
	}
	return newClient(h.APISocket).patch(ctx, "/vm", vmState{State: state})
}

// SaveState writes the paused guest's device state to path and its memory
// to path + MemFileSuffix (a full snapshot). Neither may exist; on failure
// neither is left. The guest stays paused.
func (d *Driver) SaveState(ctx context.Context, h vmmcore.Handle, path string) error {
	files := d.StateFiles(path)
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil {
			return fmt.Errorf("save state: %s already exists", f)
		}
	}
	// A jailed Firecracker writes inside its chroot; the files are then
	// moved out and given back to root.
	written := files
	jailDir, _, jailed := jailOf(h.APISocket)
	req := snapshotCreate{SnapshotType: "Full", SnapshotPath: files[0], MemFilePath: files[1]}
	if jailed {
		root := filepath.Join(jailDir, "root")
		req.SnapshotPath, req.MemFilePath = jailSave, jailSave+MemFileSuffix
		written = []string{filepath.Join(root, jailSave), filepath.Join(root, jailSave+MemFileSuffix)}
		for _, f := range written {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("save state: %w", err)
			}
		}
	}
	err := newClient(h.APISocket).put(ctx, "/snapshot/create", req)
	if err == nil && jailed {
		err = moveOut(written, files)
	}
	if err == nil {
		err = syncFiles(files)
	}
	if err != nil {
		for _, f := range append(written, files...) {
			_ = os.Remove(f)
		}
		return fmt.Errorf("save state to %s: %w", path, err)
	}
	return nil
}

// moveOut moves a jailed save's files to where the caller wants them,
// owned by root when the daemon is (the jailed uid keeps no hold on
// them); a daemon that is not root jails its VMMs as itself, and the
// files stay its own.
func moveOut(from, to []string) error {
	for i := range from {
		if err := os.Rename(from[i], to[i]); err != nil {
			if !errors.Is(err, unix.EXDEV) {
				return err
			}
			if _, err := disk.CloneRoot(context.Background(), from[i], to[i]); err != nil {
				return err
			}
			_ = os.Remove(from[i])
		}
		if os.Geteuid() != 0 {
			continue
		}
		if err := os.Chown(to[i], 0, 0); err != nil {
			return err
		}
	}
	return nil
}

// syncFiles makes sure what Firecracker wrote is on disk before the
// snapshot is recorded.
func syncFiles(files []string) error {
	for _, p := range files {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// restore loads spec.IncomingState into the fresh Firecracker at c and
// resumes the guest: the saved devices, with the new VM's tap and vsock
// socket in place of the saved VM's, and its disks at the same /proc/self/fd
// names.
func (d *Driver) restore(ctx context.Context, c *client, spec vmmcore.Spec, l layout) error {
	if err := c.put(ctx, "/logger", loggerConfig{Level: d.cfg.LogLevel, ShowLevel: true}); err != nil {
		return err
	}
	load := snapshotLoad{
		SnapshotPath:  l.guestPaths.state,
		MemBackend:    memoryBackend{BackendType: "File", BackendPath: l.guestPaths.mem},
		VsockOverride: &vsockOverride{UDSPath: l.guestPaths.vsock},
	}
	if spec.Tap != "" {
		load.NetworkOverrides = []networkOverride{{IfaceID: ifaceID, HostDevName: spec.Tap}}
	}
	if err := c.put(ctx, "/snapshot/load", load); err != nil {
		var apiErr *APIError
		if errors.As(err, &apiErr) && strings.Contains(apiErr.FaultMessage, "unknown field") {
			return fmt.Errorf("%w (restoring a snapshot needs a Firecracker whose /snapshot/load takes network_overrides and vsock_override: a recent release)", err)
		}
		return err
	}
	if err := expectState(ctx, c, "Paused", "after /snapshot/load"); err != nil {
		return err
	}
	if l.jailDir != "" {
		// The jail's copy (or link) is mapped now; a copy's blocks go
		// back to the filesystem when the VMM exits.
		for _, f := range []string{l.guestPaths.state, l.guestPaths.mem} {
			_ = os.Remove(filepath.Join(l.jailDir, "root", f))
		}
	}
	if err := c.patch(ctx, "/vm", vmState{State: "Resumed"}); err != nil {
		return err
	}
	return expectState(ctx, c, "Running", "after resuming the loaded snapshot")
}

func expectState(ctx context.Context, c *client, want, when string) error {
	var info instanceInfo
	if err := c.get(ctx, "/", &info); err != nil {
		return err
	}
	if info.State != want {
		return fmt.Errorf("firecracker reports the instance %q %s, want %s", info.State, when, want)
	}
	return nil
}

// driveIDs maps banger's drive names to Firecracker's.
var driveIDs = map[string]string{"root": rootDriveID, "work": workDriveID}

// ResizeDisk grows the running guest's drive ("root" or "work") to size
// bytes: the regular file Firecracker holds (reached through
// /proc/PID/fd, whatever its name, or through the jail) is extended, then PATCH /drives tells
// Firecracker, which tells the guest. It never shrinks, and refuses a
// block device.
func (d *Driver) ResizeDisk(ctx context.Context, h vmmcore.Handle, drive string, size int64) error {
	id, ok := driveIDs[drive]
	if !ok {
		return fmt.Errorf("resize: unknown drive %q (want root or work)", drive)
	}
	if !Alive(h) {
		return fmt.Errorf("resize %s: firecracker pid %d: %w", drive, h.PID, vmmcore.ErrNotRunning)
	}
	c := newClient(h.APISocket)
	var cfg vmConfig
	if err := c.get(ctx, "/vm/config", &cfg); err != nil {
		return err
	}
	var guestPath string
	for _, dr := range cfg.Drives {
		if dr.DriveID == id {
			guestPath = dr.PathOnHost
		}
	}
	// The file as the host reaches it: through the jail, or through the
	// descriptor Firecracker inherited.
	var hostPath string
	if jailDir, _, jailed := jailOf(h.APISocket); jailed && filepath.IsAbs(guestPath) {
		hostPath = filepath.Join(jailDir, "root", guestPath)
	} else if n, err := strconv.Atoi(strings.TrimPrefix(guestPath, "/proc/self/fd/")); err == nil && strings.HasPrefix(guestPath, "/proc/self/fd/") {
		hostPath = "/proc/" + strconv.Itoa(h.PID) + "/fd/" + strconv.Itoa(n)
	} else {
		return fmt.Errorf("resize %s: firecracker has it as %q, neither an inherited descriptor nor a jail path", drive, guestPath)
	}
	f, err := os.OpenFile(hostPath, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("resize %s: %w", drive, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("resize %s: %w", drive, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("resize %s: it is not a regular file", drive)
	}
	if size < st.Size() {
		return fmt.Errorf("resize %s: %d bytes is smaller than its %d; a disk only grows", drive, size, st.Size())
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("resize %s: %w", drive, err)
	}
	return c.patch(ctx, "/drives/"+id, partialDrive{DriveID: id, PathOnHost: guestPath})
}
