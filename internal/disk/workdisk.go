package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"banger/internal/api"
	"banger/internal/system"
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

// ResizeWorkDisk grows the work disk at path, and the ext4 file system in
// it, to newSize bytes. The VM must be stopped. Shrinking is refused with
// a bad_request error. Asking for the current size is not a no-op: the
// file system is checked and grown to fill the file, which completes a
// resize that was interrupted after the file grew.
//
// The file system is checked first (e2fsck -f -p, which repairs only what
// is safe to repair); if the check needs a human, nothing is changed and
// the error says which command to run.
func ResizeWorkDisk(ctx context.Context, r Runner, path string, newSize int64) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("resize work disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("resize work disk: %s is not a regular file", path)
	}
	cur := st.Size()
	if newSize < cur {
		return api.Errorf(api.CodeBadRequest, "cannot shrink the work disk from %d to %d bytes: banger only grows disks; give a size of at least %d MiB", cur, newSize, (cur+(1<<20)-1)>>20)
	}
	if err := checkExt4(ctx, r, path); err != nil {
		return err
	}
	if newSize > cur {
		if err := os.Truncate(path, newSize); err != nil {
			return fmt.Errorf("resize work disk %s to %d bytes: %w", path, newSize, err)
		}
	}
	if _, err := r.Run(ctx, "resize2fs", path); err != nil {
		return fmt.Errorf("resize work disk %s: grow the file system: %w; the file is already %d bytes, so running the same resize again retries", path, err, newSize)
	}
	return nil
}

// checkExt4 runs e2fsck in preen mode. Exit status 1 (errors corrected)
// and 2 (corrected, "reboot", meaningless for an image) are successes.
func checkExt4(ctx context.Context, r Runner, path string) error {
	_, err := r.Run(ctx, "e2fsck", "-f", "-p", path)
	if err == nil {
		return nil
	}
	var ce *system.CommandError
	if errors.As(err, &ce) && (ce.ExitCode == 1 || ce.ExitCode == 2) {
		return nil
	}
	return fmt.Errorf("check work disk %s before resizing: %w; nothing was changed — run `e2fsck -f %s` by hand to repair it, then retry", path, err, path)
}
