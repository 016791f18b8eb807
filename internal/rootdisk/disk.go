package rootdisk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/disk"
)

// Disk formats: what the VMM opens.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

// Disk is one VM disk, possibly layered over read-only files, as the daemon
// records it (it marshals to JSON for the DB).
type Disk struct {
	Strategy Strategy `json:"strategy"`
	// Path is the file this VM writes: the qcow2 overlay, the raw
	// reflink/copy/plain file, or the dm COW file.
	Path string `json:"path"`
	// Format is what the VMM opens: "raw" or "qcow2" (dm: raw, the
	// /dev/mapper device Attach returns).
	Format string `json:"format"`
	// Chain lists the read-only files Path layers over, nearest first
	// (frozen layers, then the image rootfs); empty for copy, reflink and
	// plain disks. Every file in it is shared and must outlive this Disk.
	Chain []string `json:"chain,omitempty"`
	// DM is set while a dm disk is attached (between Attach and Detach).
	// Handles are only valid within one host boot: clear them on a disk
	// whose VM did not survive a reboot, never pass them to Detach.
	DM *dmsnap.Handles `json:"dm,omitempty"`
}

// qcow2Magic starts every qcow2 file.
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// Space estimates for the operations that allocate almost nothing: a
// qcow2 header with its first tables is about 200 KiB, a reflink or an
// empty sparse file only metadata.
const (
	overlayNeed  = 1 << 20
	metadataNeed = 1 << 20
)

// NewRaw wraps a raw file the caller made itself (the work disk: a sparse
// file holding ext4) as a Disk with no Chain.
func NewRaw(path string) Disk {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return Disk{Strategy: Plain, Path: path, Format: FormatRaw}
}

// Create makes path a new, empty layer over base for strategy s and
// returns its Disk. base must be a raw image (a file starting with the
// qcow2 magic is refused: qcow2 layers are made by Clone) and is never
// opened for writing. path must not exist; it is created 0600:
//
//   - qcow2: qemu-img create -q -f qcow2 -b BASE -F raw PATH, whose
//     virtual size is base's; Chain = [base];
//   - reflink: FICLONE of base onto path (fails, rather than copy, when
//     the filesystem cannot); no Chain;
//   - copy: disk.CloneRoot, a reflink where possible, else a sparse copy;
//     no Chain;
//   - dm: a sparse, all-zero COW file a little larger than base (a new
//     persistent snapshot; Attach builds the device); Chain = [base].
//
// On failure nothing Create made is left behind, and an ENOSPC is
// reported as a *NoSpaceError (errors.Is(err, ErrNoSpace)).
func Create(ctx context.Context, r Runner, s Strategy, base, path string) (Disk, error) {
	base, path, err := absPaths(base, path)
	if err != nil {
		return Disk{}, fmt.Errorf("rootdisk: create: %w", err)
	}
	fail := func(err error, need int64) (Disk, error) {
		return Disk{}, fmt.Errorf("rootdisk: create %s disk %s over %s: %w", s, path, base, noSpace(err, filepath.Dir(path), need))
	}
	size, err := checkRawBase(base)
	if err != nil {
		return fail(err, 0)
	}
	if base == path {
		return fail(errors.New("the disk cannot be its own base"), 0)
	}
	if err := ctx.Err(); err != nil {
		return fail(err, 0)
	}
	switch s {
	case QCOW2:
		if err := createOverlay(ctx, r, path, base, FormatRaw); err != nil {
			return fail(err, overlayNeed)
		}
		return Disk{Strategy: QCOW2, Path: path, Format: FormatQCOW2, Chain: []string{base}}, nil
	case Reflink:
		if err := reflinkFile(base, path); err != nil {
			return fail(err, metadataNeed)
		}
		return Disk{Strategy: Reflink, Path: path, Format: FormatRaw}, nil
	case Copy:
		if _, err := disk.CloneRoot(ctx, base, path); err != nil {
			return fail(err, allocatedOrSize(base))
		}
		return Disk{Strategy: Copy, Path: path, Format: FormatRaw}, nil
	case DM:
		if size%512 != 0 {
			return fail(fmt.Errorf("a dm snapshot needs a base whose size is a multiple of 512 bytes, not %d", size), 0)
		}
		if err := createSparse(path, cowSize(size)); err != nil {
			return fail(err, metadataNeed)
		}
		return Disk{Strategy: DM, Path: path, Format: FormatRaw, Chain: []string{base}}, nil
	}
	return fail(fmt.Errorf("unknown strategy %q", s), 0)
}

// cowSize is the size of a dm COW file for a base of size bytes: enough
// for every chunk of the base to be rewritten (4 KiB chunks, one 16-byte
// exception record per chunk, 256 records per metadata chunk) plus the
// header, rounded up to 1 MiB. The file is sparse, so the slack costs
// nothing until written.
func cowSize(size int64) int64 {
	n := size + size/128 + 2*mb
	return (n + mb - 1) / mb * mb
}

func absPaths(paths ...string) (string, string, error) {
	out := make([]string, len(paths))
	for i, p := range paths {
		if p == "" {
			return "", "", errors.New("empty path")
		}
		a, err := filepath.Abs(p)
		if err != nil {
			return "", "", err
		}
		out[i] = a
	}
	return out[0], out[1], nil
}

// checkRawBase checks that base is a non-empty regular file that is not a
// qcow2 image, and returns its size.
func checkRawBase(base string) (int64, error) {
	f, err := os.Open(base)
	if err != nil {
		return 0, fmt.Errorf("base image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("base image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("base image %s is not a regular file", base)
	}
	if st.Size() == 0 {
		return 0, fmt.Errorf("base image %s is empty", base)
	}
	head := make([]byte, len(qcow2Magic))
	if _, err := io.ReadFull(f, head); err == nil && string(head) == string(qcow2Magic) {
		return 0, fmt.Errorf("base image %s is a qcow2 file; Create layers over raw images only (qcow2 layers come from Clone)", base)
	}
	return st.Size(), nil
}

// createOverlay makes path (which must not exist) a qcow2 overlay over
// backing, whose format is backingFmt ("raw" or "qcow2", given so that
// QEMU never probes it). The file is created 0600 first so that qemu-img,
// which keeps the mode of an existing file, never leaves it world
// readable. On failure path is removed.
func createOverlay(ctx context.Context, r Runner, path, backing, backingFmt string) error {
	if err := createEmpty(path); err != nil {
		return err
	}
	if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFmt, path); err != nil {
		os.Remove(path)
		return fmt.Errorf("make qcow2 overlay: %w", err)
	}
	return nil
}

// createEmpty creates path, which must not exist, as an empty 0600 file.
func createEmpty(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// createSparse creates path, which must not exist, as a 0600 file of size
// bytes holding no data.
func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// reflinkFile makes dst (which must not exist) a reflink of src with
// FICLONE, creating it 0600. It never falls back to copying; on failure
// dst is removed and the error says why the filesystem refused.
func reflinkFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		switch {
		case errors.Is(err, unix.EXDEV):
			return fmt.Errorf("reflink %s: it is on %s and %s on %s: a reflink cannot cross filesystems", src, describeFS(filepath.Dir(src)), dst, describeFS(filepath.Dir(dst)))
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL):
			return fmt.Errorf("reflink %s: %w", src, cannotReflink(filepath.Dir(dst), err))
		}
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	return nil
}

// allocatedOrSize is the bytes path has allocated (its size when stat
// cannot tell), the most a sparse copy of it needs.
func allocatedOrSize(path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	if a := st.Blocks * 512; a < st.Size {
		return a
	}
	return st.Size
}

// attachSuffix names the hard link to a dm disk's COW file that Attach
// hands to dmsnap.Create (see Attach).
const attachSuffix = ".dmattach"

// Attach makes the disk ready for the VMM and returns what to open: for a
// dm disk it builds the snapshot with dmsnap.Create (base Chain[0] on a
// read-only loop, the COW file Path on a second loop, dmsetup create
// dmName) and returns ("/dev/mapper/<dmName>", "raw"), setting d.DM; for
// every other disk it only checks that Path exists and returns (Path,
// Format).
//
// record is called with the Handles after each resource dmsnap makes (and
// once more with the final Handles) so the daemon can persist them; it may
// be nil. On failure what was made is torn down and d.DM stays nil; when
// nothing is left, record is called a last time with the zero Handles, so
// what was recorded does not outlive it (what could not be torn down
// stays recorded, for a later Detach).
//
// dmsnap.Create insists on creating the COW file itself, and its teardown
// deletes it; a dm disk's COW file must instead persist across boots. So
// Attach gives dmsnap the name Path+".dmattach" and, once dmsnap has made
// its empty file there, replaces it with a hard link to Path before any
// loop device is attached: the COW loop then holds Path's data, and
// dmsnap's teardown deletes only the link. The link is removed once the
// device exists, and the Handles returned hold no COWPath, so Detach
// never deletes the COW file.
func (d *Disk) Attach(ctx context.Context, r Runner, dmName string, record func(dmsnap.Handles) error) (devPath, format string, err error) {
	if d.Strategy != DM {
		st, err := os.Stat(d.Path)
		if err != nil {
			return "", "", fmt.Errorf("rootdisk: attach: %w", err)
		}
		if !st.Mode().IsRegular() {
			return "", "", fmt.Errorf("rootdisk: attach: %s is not a regular file", d.Path)
		}
		return d.Path, d.Format, nil
	}
	if d.DM != nil {
		return "", "", fmt.Errorf("rootdisk: attach %s: already attached as %s (detach it first; handles recorded before a host reboot must be cleared, not detached)", d.Path, d.DM.DMDev)
	}
	if len(d.Chain) == 0 {
		return "", "", fmt.Errorf("rootdisk: attach %s: a dm disk needs its base image in Chain", d.Path)
	}
	if !filepath.IsAbs(d.Path) {
		return "", "", fmt.Errorf("rootdisk: attach: COW file path %q is not absolute", d.Path)
	}
	if st, err := os.Stat(d.Path); err != nil {
		return "", "", fmt.Errorf("rootdisk: attach: COW file: %w", err)
	} else if !st.Mode().IsRegular() {
		return "", "", fmt.Errorf("rootdisk: attach: COW file %s is not a regular file", d.Path)
	}
	if sn, ok := r.(Snapshotter); ok {
		return d.attachWith(sn, dmName, record)
	}
	link := d.Path + attachSuffix
	if err := removeAttachLink(d.Path); err != nil {
		return "", "", fmt.Errorf("rootdisk: attach: %w", err)
	}
	linked := false
	h, err := dmsnap.Create(ctx, r, dmsnap.Spec{Name: dmName, BasePath: d.Chain[0], COWPath: link}, func(h dmsnap.Handles) error {
		if !linked {
			// dmsnap has just made its own empty COW file at link, and
			// nothing else yet: put the persistent COW file there.
			if err := os.Remove(link); err != nil {
				return err
			}
			if err := os.Link(d.Path, link); err != nil {
				return fmt.Errorf("link the COW file %s to %s: %w", d.Path, link, err)
			}
			linked = true
		}
		if record != nil {
			return record(h)
		}
		return nil
	})
	if err != nil {
		if rerr := removeAttachLink(d.Path); rerr != nil {
			err = errors.Join(err, rerr)
		}
		h.COWPath = ""
		if h == (dmsnap.Handles{}) && record != nil {
			if rerr := record(dmsnap.Handles{}); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return "", "", fmt.Errorf("rootdisk: attach %s: %w", d.Path, err)
	}
	h.COWPath = ""
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", detachAfter(ctx, r, h, fmt.Errorf("rootdisk: attach %s: remove %s: %w", d.Path, link, err))
	}
	if record != nil {
		if err := record(h); err != nil {
			return "", "", detachAfter(ctx, r, h, fmt.Errorf("rootdisk: attach %s: record handles: %w", d.Path, err))
		}
	}
	d.DM = &h
	return h.DMDev, FormatRaw, nil
}

// attachWith is Attach through a Snapshotter: the base and the COW file
// go to it open, read-only and read-write — what this process may do
// with them is all it can ask for. The name is recorded before the
// snapshot exists, so a crash in between leaves a name to remove.
func (d *Disk) attachWith(sn Snapshotter, dmName string, record func(dmsnap.Handles) error) (string, string, error) {
	if record != nil {
		if err := record(dmsnap.Handles{DMName: dmName, AutoClear: true}); err != nil {
			return "", "", fmt.Errorf("rootdisk: attach %s: record handles: %w", d.Path, err)
		}
	}
	base, err := os.Open(d.Chain[0])
	if err != nil {
		return "", "", fmt.Errorf("rootdisk: attach: base image: %w", err)
	}
	defer base.Close()
	cow, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		return "", "", fmt.Errorf("rootdisk: attach: COW file: %w", err)
	}
	defer cow.Close()
	h, err := sn.AttachSnapshot(dmName, base, cow)
	if err != nil {
		// The helper made nothing, or took it down (or will, if it
		// finishes after this caller gave up and cannot answer).
		if record != nil {
			if rerr := record(dmsnap.Handles{}); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return "", "", fmt.Errorf("rootdisk: attach %s: %w", d.Path, err)
	}
	if record != nil {
		if err := record(h); err != nil {
			if derr := sn.DetachSnapshot(h); derr != nil {
				err = errors.Join(err, derr)
			}
			return "", "", fmt.Errorf("rootdisk: attach %s: record handles: %w", d.Path, err)
		}
	}
	d.DM = &h
	return h.DMDev, FormatRaw, nil
}

// detachAfter tears down a snapshot Attach made and then could not hand
// over, and returns cause joined with any teardown error.
func detachAfter(ctx context.Context, r Runner, h dmsnap.Handles, cause error) error {
	h.COWPath = ""
	return errors.Join(cause, dmsnap.Cleanup(context.WithoutCancel(ctx), r, h))
}

// removeAttachLink removes a stale Path+".dmattach" left by an Attach
// that died; it must be a hard link to path (or dmsnap's empty file).
func removeAttachLink(path string) error {
	link := path + attachSuffix
	lst, err := os.Lstat(link)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pst, perr := os.Stat(path)
	if !lst.Mode().IsRegular() || (lst.Size() != 0 && (perr != nil || !os.SameFile(lst, pst))) {
		return fmt.Errorf("%s exists and is not a link to %s; remove it by hand", link, path)
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Detach undoes Attach: for an attached dm disk it runs dmsnap.Remove
// (dmsetup remove, retried while busy, then losetup -d of both loops) and
// clears d.DM; the COW file stays. For other disks, and a dm disk that is
// not attached, it does nothing. If the dm device cannot be removed d.DM
// is kept, so Detach can be retried.
func (d *Disk) Detach(ctx context.Context, r Runner) error {
	if d.Strategy != DM || d.DM == nil {
		return nil
	}
	h := *d.DM
	if h.COWPath != d.Path+attachSuffix {
		h.COWPath = "" // dmsnap may delete Attach's link, never the COW file
	}
	if sn, ok := r.(Snapshotter); ok && h.AutoClear {
		if err := sn.DetachSnapshot(h); err != nil {
			return fmt.Errorf("rootdisk: detach %s: %w", d.Path, err)
		}
		d.DM = nil
		return nil
	}
	if err := dmsnap.Remove(ctx, r, h); err != nil {
		return fmt.Errorf("rootdisk: detach %s: %w", d.Path, err)
	}
	d.DM = nil
	return nil
}

// Usage returns the bytes the VM's own layer (Path) holds on the host:
// its allocated extents that are not shared with another file (FIEMAP),
// so a fresh reflink counts as almost nothing; where FIEMAP is not
// supported, its allocated blocks. The Chain is not counted.
func (d Disk) Usage() (int64, error) {
	n, err := exclusiveBytes(d.Path)
	if err != nil {
		return 0, fmt.Errorf("rootdisk: usage of %s: %w", d.Path, err)
	}
	return n, nil
}

// Grow makes the disk's virtual size size bytes (a multiple of 512): a
// qcow2 disk with qemu-img resize -q -f qcow2 PATH SIZE, a raw one by
// truncating (extending) Path. The VM must be stopped. It never shrinks
// (a smaller size is a bad_request error; the same size does nothing),
// and never touches the filesystem inside: the guest grows it. A dm disk
// cannot grow: its snapshot is exactly as large as its base image.
func (d Disk) Grow(ctx context.Context, r Runner, size int64) error {
	if size <= 0 || size%512 != 0 {
		return api.Errorf(api.CodeBadRequest, "disk size %d bytes is not a positive multiple of 512", size)
	}
	if d.Strategy == DM {
		return api.Errorf(api.CodeBadRequest, "cannot grow the dm root disk %s: a device-mapper snapshot is exactly as large as its base image", d.Path)
	}
	cur, err := d.VirtualSize(ctx, r)
	if err != nil {
		return err
	}
	if size < cur {
		return api.Errorf(api.CodeBadRequest, "cannot shrink the disk %s from %d to %d bytes: banger only grows disks; give a size of at least %d MiB", d.Path, cur, size, (cur+mb-1)/mb)
	}
	if size == cur {
		return nil
	}
	switch d.Format {
	case FormatQCOW2:
		_, err = r.Run(ctx, "qemu-img", "resize", "-q", "-f", "qcow2", d.Path, fmt.Sprint(size))
	case FormatRaw:
		err = os.Truncate(d.Path, size)
	default:
		err = fmt.Errorf("unknown format %q", d.Format)
	}
	if err != nil {
		return fmt.Errorf("rootdisk: grow %s to %d bytes: %w", d.Path, size, noSpace(err, filepath.Dir(d.Path), metadataNeed))
	}
	return nil
}

// VirtualSize returns the size of the disk the guest sees: the qcow2
// virtual size (qemu-img info -U, so it works while the VM runs), a raw
// file's size, or a dm disk's base size.
func (d Disk) VirtualSize(ctx context.Context, r Runner) (int64, error) {
	var size int64
	var err error
	switch {
	case d.Strategy == DM:
		if len(d.Chain) == 0 {
			return 0, fmt.Errorf("rootdisk: size of %s: a dm disk needs its base image in Chain", d.Path)
		}
		size, err = fileSize(d.Chain[0])
	case d.Format == FormatQCOW2:
		var info qemuInfo
		info, err = imageInfo(ctx, r, d.Path, FormatQCOW2, true)
		size = info.VirtualSize
	case d.Format == FormatRaw:
		size, err = fileSize(d.Path)
	default:
		err = fmt.Errorf("unknown format %q", d.Format)
	}
	if err != nil {
		return 0, fmt.Errorf("rootdisk: size of %s: %w", d.Path, err)
	}
	return size, nil
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Remove deletes the VM's own layer, d.Path, and nothing in its Chain.
// An attached dm disk is detached first (and nothing is deleted if that
// fails). A Path that is already gone is not an error.
func Remove(ctx context.Context, r Runner, d Disk) error {
	if d.Path == "" {
		return errors.New("rootdisk: remove: disk has no path")
	}
	if slices.Contains(d.Chain, d.Path) {
		return fmt.Errorf("rootdisk: remove: refusing to delete %s: it is in the disk's own chain", d.Path)
	}
	if d.Strategy == DM {
		if err := d.Detach(ctx, r); err != nil {
			return fmt.Errorf("rootdisk: remove: %w", err)
		}
		if err := removeAttachLink(d.Path); err != nil {
			return fmt.Errorf("rootdisk: remove: %w", err)
		}
	}
	if err := os.Remove(d.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rootdisk: remove: %w", err)
	}
	return nil
}
