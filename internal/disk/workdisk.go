package disk

import (
	"context"
	"fmt"
	"os"

	"banger/internal/api"
)

// Runner runs a host command and returns its stdout; a command that exits
// non-zero returns a *system.CommandError. *system.Exec satisfies it.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// WorkLabel is the ext4 volume label of every work disk; the guest's fstab
// mounts the work disk by this label.
const WorkLabel = "bangerwork"

// MinWorkDiskSize is the smallest work disk CreateWorkDisk makes: below
// this an ext4 file system with a journal has almost no room for files.
const MinWorkDiskSize = 32 << 20

// CreateWorkDisk creates path as a sparse file of sizeBytes holding an
// empty ext4 file system labelled WorkLabel whose root directory belongs
// to root. Inode tables and the journal are initialised lazily (by the
// guest kernel after mount), so creation takes well under a second even
// for large disks. path must not exist; on failure it is removed.
func CreateWorkDisk(ctx context.Context, r Runner, path string, sizeBytes int64) (err error) {
	if sizeBytes < MinWorkDiskSize {
		return api.Errorf(api.CodeBadRequest, "work disk size %d bytes is too small; use at least %d MiB (e.g. --disk-size 8G)", sizeBytes, MinWorkDiskSize>>20)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create work disk: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := f.Truncate(sizeBytes); err != nil {
		f.Close()
		return fmt.Errorf("create work disk %s: size it to %d bytes: %w", path, sizeBytes, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create work disk %s: %w", path, err)
	}
	if _, err := r.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", WorkLabel,
		"-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", path); err != nil {
		return fmt.Errorf("create work disk %s: make ext4 file system: %w (is e2fsprogs installed?)", path, err)
	}
	return nil
}
