package rootdisk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/disk"
	"banger/internal/system"
)

// chmodLayer makes a frozen layer read-only; a test makes it fail to
// exercise the undo after the new overlay has replaced the source.
var chmodLayer = os.Chmod

// newOverlaySuffix names the overlay Clone makes for the source before
// moving it into place.
const newOverlaySuffix = ".clone-new"

// Clone makes dstPath a copy-on-write copy of src's current content. src's
// VM must be stopped (and a dm src detached). vmm ("qemu" or
// "firecracker") is the VMM that runs the disks, which decides how a plain
// disk is cloned. It returns src as it is afterwards (changed only when
// its content was frozen into a layer) and the new disk:
//
//   - qcow2: src's overlay is frozen into the read-only layer layerPath
//     (which must be on src's filesystem) and src and dst each get a new,
//     empty overlay over it: Chain = [layerPath, src's Chain...];
//   - reflink, copy: dst is a reflink of src.Path, else a sparse copy
//     (disk.CloneRoot); src is unchanged. dst's Strategy says which;
//   - dm: dst's COW file is a reflink/sparse copy of src's over the same
//     base (a persistent snapshot's COW file is valid over the same
//     origin); src is unchanged;
//   - plain (NewRaw): a reflink where the filesystem can; else, for qemu,
//     frozen into a raw layer at layerPath as for qcow2 (both disks
//     become qcow2 overlays); else a sparse copy.
//
// layerPath is only used (and then required) when a layer is frozen; it
// must not exist. Freezing is done so that src always holds its content:
// layerPath is first made a hard link to src.Path, the two new overlays
// are made over it, and the new source overlay is renamed over src.Path
// last. On failure everything Clone made is removed and src is as it was;
// an ENOSPC is reported as a *NoSpaceError.
func Clone(ctx context.Context, r Runner, src Disk, dstPath, layerPath, vmm string) (newSrc, dst Disk, err error) {
	fail := func(err error, need int64) (Disk, Disk, error) {
		return src, Disk{}, fmt.Errorf("rootdisk: clone %s to %s: %w", src.Path, dstPath, noSpace(err, filepath.Dir(dstPath), need))
	}
	if err := checkVMM(vmm); err != nil {
		return fail(err, 0)
	}
	if dstPath == "" {
		return fail(errors.New("empty destination path"), 0)
	}
	if dstPath, err = filepath.Abs(dstPath); err != nil {
		return fail(err, 0)
	}
	if src.DM != nil {
		return fail(fmt.Errorf("the disk is attached as %s; stop its VM and detach it first", src.DM.DMDev), 0)
	}
	st, err := os.Stat(src.Path)
	if err != nil {
		return fail(err, 0)
	}
	if !st.Mode().IsRegular() {
		return fail(fmt.Errorf("%s is not a regular file", src.Path), 0)
	}
	if _, err := os.Lstat(dstPath); err == nil {
		return fail(fmt.Errorf("%s already exists", dstPath), 0)
	}

	switch src.Strategy {
	case QCOW2:
		ns, d, err := freeze(ctx, r, src, dstPath, layerPath, FormatQCOW2)
		if err != nil {
			return fail(err, 2*overlayNeed)
		}
		return ns, d, nil
	case Reflink, Copy, DM:
		method, err := disk.CloneRoot(ctx, src.Path, dstPath)
		if err != nil {
			return fail(err, allocatedOrSize(src.Path))
		}
		d := Disk{Strategy: src.Strategy, Path: dstPath, Format: FormatRaw, Chain: slices.Clone(src.Chain)}
		if src.Strategy != DM {
			d.Strategy = Copy
			if method == disk.MethodReflink {
				d.Strategy = Reflink
			}
		}
		return src, d, nil
	case Plain:
		if err := reflinkFile(src.Path, dstPath); err == nil {
			return src, Disk{Strategy: Plain, Path: dstPath, Format: FormatRaw}, nil
		} else if isNoSpace(err) {
			return fail(err, metadataNeed)
		}
		if vmm == VMMQEMU {
			ns, d, err := freeze(ctx, r, src, dstPath, layerPath, FormatRaw)
			if err != nil {
				return fail(err, 2*overlayNeed)
			}
			return ns, d, nil
		}
		if _, err := disk.CloneRoot(ctx, src.Path, dstPath); err != nil {
			return fail(err, allocatedOrSize(src.Path))
		}
		return src, Disk{Strategy: Plain, Path: dstPath, Format: FormatRaw}, nil
	}
	return fail(fmt.Errorf("unknown strategy %q", src.Strategy), 0)
}

// freeze turns src.Path (a qcow2 overlay or a raw file, as format says)
// into the read-only layer layerPath and gives src and dst new empty qcow2
// overlays over it. The steps, each undone on a later failure:
//
//	qemu-img info --output=json -f FMT SRC   fails if a VM holds SRC
//	ln SRC LAYER                             both names, one file
//	qemu-img create ... -b LAYER -F FMT DST
//	qemu-img create ... -b LAYER -F FMT SRC.clone-new
//	mv SRC.clone-new SRC                     atomic: SRC's content now lives in LAYER only
//	chmod 0444 LAYER
func freeze(ctx context.Context, r Runner, src Disk, dstPath, layerPath, format string) (newSrc, dst Disk, err error) {
	if layerPath == "" {
		return src, Disk{}, errors.New("a layer path is needed to freeze the disk into a shared layer")
	}
	if layerPath, err = filepath.Abs(layerPath); err != nil {
		return src, Disk{}, err
	}
	if layerPath == src.Path || layerPath == dstPath {
		return src, Disk{}, fmt.Errorf("layer path %s is one of the disks", layerPath)
	}
	if _, err := os.Lstat(layerPath); err == nil {
		return src, Disk{}, fmt.Errorf("layer %s already exists", layerPath)
	}
	if _, err := imageInfo(ctx, r, src.Path, format, false); err != nil {
		var ce *system.CommandError
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "lock") {
			return src, Disk{}, fmt.Errorf("%s is in use (is its VM still running?): %w", src.Path, err)
		}
		return src, Disk{}, fmt.Errorf("check %s: %w", src.Path, err)
	}

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := os.Link(src.Path, layerPath); err != nil {
		if errors.Is(err, unix.EXDEV) {
			return src, Disk{}, fmt.Errorf("the layer %s must be on the same filesystem as %s: %w", layerPath, src.Path, err)
		}
		return src, Disk{}, fmt.Errorf("make layer: %w", err)
	}
	undo = append(undo, func() {
		// Only while it is a second name for src's file: never the
		// last copy of src's content.
		if sameFile(layerPath, src.Path) {
			os.Remove(layerPath)
		}
	})
	syncDir(filepath.Dir(layerPath))

	if err := createOverlay(ctx, r, dstPath, layerPath, format); err != nil {
		return src, Disk{}, err
	}
	undo = append(undo, func() { os.Remove(dstPath) })

	tmp := src.Path + newOverlaySuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return src, Disk{}, err
	}
	if err := createOverlay(ctx, r, tmp, layerPath, format); err != nil {
		return src, Disk{}, err
	}
	undo = append(undo, func() { os.Remove(tmp) })
	if err := os.Rename(tmp, src.Path); err != nil {
		return src, Disk{}, err
	}
	// From here src.Path is the new overlay; undoing puts the layer back.
	undo = append(undo, func() {
		os.Chmod(layerPath, 0o600)
		os.Rename(layerPath, src.Path)
	})
	if err := chmodLayer(layerPath, 0o444); err != nil {
		return src, Disk{}, err
	}
	syncDir(filepath.Dir(src.Path))
	syncDir(filepath.Dir(dstPath))

	chain := append([]string{layerPath}, src.Chain...)
	newSrc = Disk{Strategy: QCOW2, Path: src.Path, Format: FormatQCOW2, Chain: chain}
	dst = Disk{Strategy: QCOW2, Path: dstPath, Format: FormatQCOW2, Chain: slices.Clone(chain)}
	return newSrc, dst, nil
}

func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// syncDir flushes a directory's entries (best effort: renames and links
// survive a crash).
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}

// UnusedLayers returns the regular files directly in layersDir that no
// disk's Chain mentions (absolute, cleaned paths, sorted): the layers the
// daemon may delete. disks must be every Disk the daemon knows, and no
// Clone into layersDir may be running (its new layer is not in any
// recorded Chain yet). A missing layersDir has no layers.
func UnusedLayers(layersDir string, disks []Disk) ([]string, error) {
	dir, err := filepath.Abs(layersDir)
	if err != nil {
		return nil, fmt.Errorf("rootdisk: unused layers: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rootdisk: unused layers: %w", err)
	}
	used := map[string]bool{}
	for _, d := range disks {
		for _, p := range d.Chain {
			if a, err := filepath.Abs(p); err == nil {
				used[a] = true
			}
		}
	}
	var out []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if !used[p] {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

// SpaceForCreate estimates the bytes Create(s, base) writes, for
// CheckFree: the base's allocated size for copy, about 1 MiB otherwise.
func SpaceForCreate(s Strategy, base string) int64 {
	if s == Copy {
		return allocatedOrSize(base)
	}
	return overlayNeed
}

// SpaceForClone estimates the bytes Clone(src, a file in dstDir, vmm)
// writes, for CheckFree: about 2 MiB when it freezes a layer or can
// reflink, else src's allocated size.
func SpaceForClone(src Disk, dstDir, vmm string) int64 {
	switch {
	case src.Strategy == QCOW2:
		return 2 * overlayNeed
	case checkReflink(dstDir, src.Path) == nil:
		return metadataNeed
	case src.Strategy == Plain && vmm == VMMQEMU:
		return 2 * overlayNeed
	}
	return allocatedOrSize(src.Path)
}

// Unfreeze undoes a freeze of the disk at srcPath into layerPath that a
// crash interrupted, for a caller whose record still describes the disk
// as it was before (it never learnt of the layer): the new overlay goes
// and the layer, the disk's original content, is put back under
// srcPath. A freeze that never began, or only linked the layer, leaves
// srcPath as it was. Only a file at srcPath that is that layer (a bare
// link) or a qcow2 overlay standing directly on it is touched: anything
// else leaves both files alone. Idempotent.
func Unfreeze(ctx context.Context, r Runner, srcPath, layerPath string) error {
	if err := os.Remove(srcPath + newOverlaySuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if _, err := os.Lstat(layerPath); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if sameFile(layerPath, srcPath) {
		// Only a second name of the disk: the overlay never replaced it.
		return os.Remove(layerPath)
	}
	info, err := imageInfo(ctx, r, srcPath, FormatQCOW2, true)
	if err != nil || info.FullBackingFilename != layerPath {
		// Not the overlay freeze made over this layer: not ours to undo.
		return nil
	}
	if err := os.Chmod(layerPath, 0o600); err != nil {
		return err
	}
	if err := os.Rename(layerPath, srcPath); err != nil {
		return err
	}
	syncDir(filepath.Dir(srcPath))
	return nil
}
