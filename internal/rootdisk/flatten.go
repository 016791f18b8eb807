package rootdisk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/disk"
)

// Flatten writes everything d presents to its VM, its layers merged, to
// dst as one raw file that depends on nothing: an image build's root, or
// the work disk it keeps. dst must not exist; it is created 0600 and is
// sparse (all-zero ranges are holes). The VM must be stopped.
//
//   - qcow2: qemu-img convert to raw, which reads the whole chain and
//     writes only non-zero clusters;
//   - reflink, copy, plain: disk.CloneRoot, a reflink where the filesystem
//     can, else a sparse copy;
//   - dm: the snapshot is attached as dmName (base loop + COW loop), its
//     device converted like a raw file, and detached again.
//
// On failure, cancellation included, dst is removed.
func Flatten(ctx context.Context, r Runner, d Disk, dst, dmName string) (err error) {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("rootdisk: flatten: %s already exists", dst)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	switch d.Strategy {
	case QCOW2:
		return convertRaw(ctx, r, d.Path, FormatQCOW2, dst)
	case Reflink, Copy, Plain:
		if d.Format == FormatQCOW2 {
			// A clone's work disk layered by Clone.
			return convertRaw(ctx, r, d.Path, FormatQCOW2, dst)
		}
		_, err := disk.CloneRoot(ctx, d.Path, dst)
		return err
	case DM:
		if d.DM != nil {
			return fmt.Errorf("rootdisk: flatten %s: the disk is attached (is its VM running?)", d.Path)
		}
		att := d
		dev, _, err := att.Attach(ctx, r, dmName, nil)
		if err != nil {
			return err
		}
		cerr := convertRaw(ctx, r, dev, FormatRaw, dst)
		return errors.Join(cerr, att.Detach(context.WithoutCancel(ctx), r))
	default:
		return fmt.Errorf("rootdisk: flatten %s: unknown strategy %q", d.Path, d.Strategy)
	}
}

// convertRaw runs qemu-img convert from src (opened as format, never
// probed) to a new raw file dst, made 0600 before qemu-img opens it.
func convertRaw(ctx context.Context, r Runner, src, format, dst string) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("rootdisk: flatten: %w", err)
	}
	f.Close()
	// -n: write into the file made above (keeping its mode), sized to the
	// source here; --target-is-zero: it is all holes, so zero ranges are
	// skipped, not written.
	info, err := imageInfo(ctx, r, src, format, false)
	if err != nil {
		return fmt.Errorf("rootdisk: flatten %s: %w", src, err)
	}
	if err := os.Truncate(dst, info.VirtualSize); err != nil {
		return fmt.Errorf("rootdisk: flatten: size %s: %w", dst, err)
	}
	if _, err := r.Run(ctx, "qemu-img", "convert", "-q", "-n", "--target-is-zero", "-f", format, "-O", FormatRaw, src, dst); err != nil {
		return fmt.Errorf("rootdisk: flatten %s: %w", src, err)
	}
	return nil
}

// Over makes path a new, empty qcow2 overlay over the read-only layer top
// (in topFormat), which itself stands on below (nearest first): a VM's
// disk over a snapshot's frozen layer. The Disk's Chain is [top, below...].
func Over(ctx context.Context, r Runner, top, topFormat string, below []string, path string) (Disk, error) {
	if _, err := os.Lstat(path); err == nil {
		return Disk{}, fmt.Errorf("rootdisk: overlay %s already exists", path)
	}
	if err := createOverlay(ctx, r, path, top, topFormat); err != nil {
		return Disk{}, fmt.Errorf("rootdisk: overlay over %s: %w", top, noSpace(err, filepath.Dir(path), overlayNeed))
	}
	return Disk{Strategy: QCOW2, Path: path, Format: FormatQCOW2, Chain: append([]string{top}, below...)}, nil
}

// CreateOverlayFile makes path an empty qcow2 file over top (topFormat)
// without recording anything: the file a live disk snapshot switches a
// running VM to.
func CreateOverlayFile(ctx context.Context, r Runner, path, top, topFormat string) error {
	return createOverlay(ctx, r, path, top, topFormat)
}
