package qemu

import (
	"context"
	"fmt"
	"os"
	"time"

	"banger/internal/vmm/vmmcore"
)

// Pause stops the guest's vCPUs (QMP stop, which drains and flushes every
// disk first).
func (d *Driver) Pause(ctx context.Context, h vmmcore.Handle) error {
	return qmpDo(ctx, h.APISocket, "stop", nil, nil)
}

// StateFiles lists what SaveState(path) writes: the one migration stream.
func (d *Driver) StateFiles(path string) []string { return []string{path} }

// Resume runs the guest again (QMP cont; after a completed save it also
// takes the disks back, which the save handed over).
func (d *Driver) Resume(ctx context.Context, h vmmcore.Handle) error {
	return qmpDo(ctx, h.APISocket, "cont", nil, nil)
}

// SnapshotDisk makes overlay (an existing qcow2 file over the drive's
// current top layer) the drive's new top: QMP blockdev-add of the file
// without its backing chain, then blockdev-snapshot, which puts the
// current top under it. The file is opened here and handed over as
// descriptors (QMP add-fd, "/dev/fdset/N"): a QEMU running as its VM's
// own unprivileged uid could not open a path in banger's state directory.
// The set holds a read-only descriptor too, for when a later snapshot
// makes this layer a backing file (QEMU then reopens it read-only), and
// stays while QEMU lives. Locking is off for it, as for the drives
// (command): two descriptors of one file would lock each other out.
func (d *Driver) SnapshotDisk(ctx context.Context, h vmmcore.Handle, drive, overlay string) error {
	rw, err := os.OpenFile(overlay, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", drive, err)
	}
	defer rw.Close()
	ro, err := os.Open(overlay)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", drive, err)
	}
	defer ro.Close()
	q, err := dialQMP(ctx, h.APISocket)
	if err != nil {
		return err
	}
	defer q.Close()
	var set struct {
		FdsetID int `json:"fdset-id"`
	}
	if err := q.executeWithFD("add-fd", nil, rw, &set); err != nil {
		return err
	}
	if err := q.executeWithFD("add-fd", map[string]any{"fdset-id": set.FdsetID}, ro, nil); err != nil {
		return err
	}
	node := fmt.Sprintf("%s-layer-%d", drive, set.FdsetID)
	if err := q.execute("blockdev-add", map[string]any{
		"driver": "qcow2", "node-name": node, "backing": nil,
		"file": map[string]any{"driver": "file", "filename": fmt.Sprintf("/dev/fdset/%d", set.FdsetID), "locking": "off"},
	}, nil); err != nil {
		return err
	}
	return q.execute("blockdev-snapshot", map[string]any{"node": drive, "overlay": node}, nil)
}

// ResizeDisk grows the drive (QMP block_resize); the guest's virtio-blk
// driver is told of the new capacity.
func (d *Driver) ResizeDisk(ctx context.Context, h vmmcore.Handle, drive string, size int64) error {
	return qmpDo(ctx, h.APISocket, "block_resize", map[string]any{"device": drive, "size": size}, nil)
}

// saveBandwidth lifts QEMU's default migration cap (32 MiB/s): a save
// goes to a local file as fast as the disk takes it.
const saveBandwidth = 1 << 40

// saveFD and restoreFD name the state file's descriptor in QEMU.
const (
	saveFD    = "banger-save"
	restoreFD = "banger-restore"
)

// SaveState writes the paused guest's RAM and device state to path, a
// migration stream that Spec.IncomingState loads. The file is made here
// (0600, never an existing one) and handed to QEMU as a descriptor (QMP
// getfd, "fd:" URI): the sandboxed QEMU may not spawn a process or open
// a path. It is polled with query-migrate until done; the guest stays
// paused.
func (d *Driver) SaveState(ctx context.Context, h vmmcore.Handle, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer f.Close()
	if err := qmpDo(ctx, h.APISocket, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(saveBandwidth)}, nil); err != nil {
		return err
	}
	q, err := dialQMP(ctx, h.APISocket)
	if err != nil {
		return err
	}
	err = q.passFD(saveFD, f)
	if err == nil {
		err = q.execute("migrate", map[string]any{"uri": "fd:" + saveFD}, nil)
	}
	q.Close()
	if err != nil {
		return err
	}
	if err := awaitMigration(ctx, h, path); err != nil {
		return err
	}
	return f.Sync()
}

// awaitMigration polls query-migrate until the migration completes.
func awaitMigration(ctx context.Context, h vmmcore.Handle, path string) error {
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := qmpDo(ctx, h.APISocket, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("save state to %s: migration %s: %s", path, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			_ = qmpDo(context.WithoutCancel(ctx), h.APISocket, "migrate_cancel", nil, nil)
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// loadState starts loading path into a QEMU started with -incoming
// defer: the file is handed over as a descriptor and migrate-incoming
// reads it. The guest arrives paused (as saved); waitRunning continues it.
func (d *Driver) loadState(ctx context.Context, h vmmcore.Handle, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	defer f.Close()
	q, err := dialQMP(ctx, h.APISocket)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.passFD(restoreFD, f); err != nil {
		return err
	}
	return q.execute("migrate-incoming", map[string]any{"uri": "fd:" + restoreFD}, nil)
}
