package rootdisk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
)

// Runner runs a host command and returns its stdout; a command that exits
// non-zero returns a *system.CommandError carrying its stderr.
// *system.Exec satisfies it (and so does it satisfy dmsnap.Runner).
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Snapshotter makes the device-mapper snapshots of dm disks from open
// files, where the process cannot (banger's root helper, for a daemon in
// system mode: privops.Client). A Runner that is also a Snapshotter is
// used for them instead of running losetup and dmsetup itself: Check asks
// it whether dm works, Attach hands it the base and COW file open
// (read-only, read-write), Detach hands it the Handles.
type Snapshotter interface {
	SnapshotProber
	AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error)
	DetachSnapshot(h dmsnap.Handles) error
}

// SnapshotProber says whether dm snapshots can be made, for a Runner
// that does not make them itself (a Snapshotter, or banger doctor asking
// the root helper).
type SnapshotProber interface {
	SnapshotsAvailable() error
}

// dmAvailable is Check's answer for dm.
func dmAvailable(r Runner) error {
	if sn, ok := r.(SnapshotProber); ok {
		return sn.SnapshotsAvailable()
	}
	return dmsnap.Available()
}

// Strategy is how a VM's disk is layered over its read-only base.
type Strategy string

// The strategies, best first. Plain is not a configuration choice: it marks
// a raw file the caller made itself (NewRaw), such as the work disk.
const (
	DM      Strategy = "dm"      // device-mapper snapshot: base loop (ro) + sparse COW file
	QCOW2   Strategy = "qcow2"   // qcow2 overlay whose backing file is the base (QEMU only)
	Reflink Strategy = "reflink" // FICLONE of the base (btrfs, xfs with reflink=1)
	Copy    Strategy = "copy"    // sparse copy of the base: the last resort
	Plain   Strategy = "plain"   // a raw file with no base (NewRaw)
)

// Auto is the configuration value that lets Choose pick.
const Auto = "auto"

// The VMM names Choose and Clone understand (the vmm drivers' names).
const (
	VMMQEMU        = "qemu"
	VMMFirecracker = "firecracker"
)

// ordered lists the configurable strategies, best first.
var ordered = []Strategy{DM, QCOW2, Reflink, Copy}

// ParseStrategy parses the root_disk configuration value: "auto" (or
// empty) gives auto = true; "dm", "qcow2", "reflink" and "copy" give that
// strategy. Anything else is a bad_request error listing the choices.
func ParseStrategy(s string) (strategy Strategy, auto bool, err error) {
	switch v := strings.TrimSpace(s); v {
	case "", Auto:
		return "", true, nil
	case string(DM), string(QCOW2), string(Reflink), string(Copy):
		return Strategy(v), false, nil
	}
	return "", false, api.Errorf(api.CodeBadRequest, "root_disk = %q is not one of auto, dm, qcow2, reflink, copy", s)
}

func checkVMM(vmm string) error {
	if vmm != VMMQEMU && vmm != VMMFirecracker {
		return fmt.Errorf("rootdisk: unknown VMM %q (want %q or %q)", vmm, VMMQEMU, VMMFirecracker)
	}
	return nil
}

// Check reports whether strategy s works on this host for a VM run by vmm
// ("qemu" or "firecracker") whose files live in dir, layered over base
// (base may be empty when it is not known yet; dir need not exist yet,
// its nearest existing ancestor is probed): nil if it does, else an
// error saying why not. It probes every time and caches nothing:
//
//   - dm: dmsnap.Available() (a kernel device-mapper that answers, dmsetup
//     and losetup on PATH, root), or a SnapshotProber r's answer;
//   - qcow2: vmm is qemu, and `qemu-img --version` runs through r;
//   - reflink: FICLONE works between two tiny files made in dir, and a
//     64 KiB FICLONERANGE from base into dir works (same filesystem);
//   - copy: always.
func Check(s Strategy, vmm, dir, base string, r Runner) error {
	if err := checkVMM(vmm); err != nil {
		return err
	}
	switch s {
	case DM:
		return dmAvailable(r)
	case QCOW2:
		if vmm != VMMQEMU {
			return fmt.Errorf("%s opens only raw disks; qcow2 overlays are for qemu", vmm)
		}
		if _, err := r.Run(context.Background(), "qemu-img", "--version"); err != nil {
			return fmt.Errorf("qemu-img does not run: %w (install qemu-utils)", err)
		}
		return nil
	case Reflink:
		return checkReflink(dir, base)
	case Copy:
		return nil
	}
	return fmt.Errorf("rootdisk: unknown strategy %q", s)
}

// Choose returns the strategy to use for a new VM. pref is the root_disk
// setting: "auto" (or empty) returns the first of dm, qcow2, reflink, copy
// that Check accepts; an explicit strategy is returned if Check accepts
// it, else a bad_request error such as
//
//	root_disk = "reflink": /var/lib/x is on ext4, which cannot reflink; use auto, qcow2 or copy
//
// base is the image file the disk will layer over ("" if not known; then
// reflink is judged on dir alone). Copy always works, so the caller should
// warn when auto lands on it (Check tells why each better one failed).
func Choose(pref, vmm, dir, base string, r Runner) (Strategy, error) {
	s, auto, err := ParseStrategy(pref)
	if err != nil {
		return "", err
	}
	if err := checkVMM(vmm); err != nil {
		return "", err
	}
	if auto {
		for _, c := range ordered {
			if Check(c, vmm, dir, base, r) == nil {
				return c, nil
			}
		}
		return Copy, nil
	}
	why := Check(s, vmm, dir, base, r)
	if why == nil {
		return s, nil
	}
	alts := []string{Auto}
	for _, c := range ordered {
		if c != s && Check(c, vmm, dir, base, r) == nil {
			alts = append(alts, string(c))
		}
	}
	return "", api.Errorf(api.CodeBadRequest, "root_disk = %q: %v; use %s", string(s), why, orList(alts))
}

// orList renders ["a","b","c"] as "a, b or c".
func orList(xs []string) string {
	if len(xs) == 1 {
		return xs[0]
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " or " + xs[len(xs)-1]
}

// probeSize is how much of the base checkReflink clones into dir.
const probeSize = 64 << 10

// checkReflink probes FICLONE inside dir and, when base is given, a
// FICLONERANGE of the base's first 64 KiB into dir.
// A dir that does not exist yet is probed in its nearest existing
// ancestor (the VM's directory is usually made after the choice).
func checkReflink(dir, base string) error {
	dir, err := existingDir(dir)
	if err != nil {
		return fmt.Errorf("cannot probe reflink support: %w", err)
	}
	a, err := os.CreateTemp(dir, ".rootdisk-probe-*")
	if err != nil {
		return fmt.Errorf("cannot probe reflink support in %s: %w", dir, err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	b, err := os.CreateTemp(dir, ".rootdisk-probe-*")
	if err != nil {
		return fmt.Errorf("cannot probe reflink support in %s: %w", dir, err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	if _, err := a.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("cannot probe reflink support in %s: %w", dir, err)
	}
	if err := unix.IoctlFileClone(int(b.Fd()), int(a.Fd())); err != nil {
		return cannotReflink(dir, err)
	}
	if base == "" {
		return nil
	}
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("cannot probe reflink of the base image: %w", err)
	}
	defer in.Close()
	bst, err := in.Stat()
	if err != nil {
		return fmt.Errorf("cannot probe reflink of the base image: %w", err)
	}
	if !bst.Mode().IsRegular() {
		return fmt.Errorf("base image %s is not a regular file", base)
	}
	n := min(bst.Size(), int64(probeSize))
	if n == 0 {
		return fmt.Errorf("base image %s is empty", base)
	}
	if err := b.Truncate(0); err != nil {
		return fmt.Errorf("cannot probe reflink support in %s: %w", dir, err)
	}
	err = unix.IoctlFileCloneRange(int(b.Fd()), &unix.FileCloneRange{Src_fd: int64(in.Fd()), Src_length: uint64(n)})
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("base image %s is on %s and %s on %s: a reflink cannot cross filesystems", base, describeFS(filepath.Dir(base)), dir, describeFS(dir))
	}
	return fmt.Errorf("cannot reflink base image %s into %s: %w", base, dir, err)
}

// existingDir returns dir, or its nearest ancestor that exists, which
// must be a directory.
func existingDir(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		st, err := os.Stat(d)
		switch {
		case err == nil && st.IsDir():
			return d, nil
		case err == nil:
			return "", fmt.Errorf("%s is not a directory", d)
		case !errors.Is(err, fs.ErrNotExist) || d == filepath.Dir(d):
			return "", err
		}
		d = filepath.Dir(d)
	}
}

// cannotReflink explains a failed FICLONE inside dir.
func cannotReflink(dir string, err error) error {
	m, merr := mountOf(dir)
	if merr != nil {
		return fmt.Errorf("%s cannot reflink: %w", dir, err)
	}
	if m.fstype == "xfs" {
		return fmt.Errorf("%s is on xfs made without reflink support (mkfs.xfs -m reflink=1), which cannot reflink (%v)", dir, err)
	}
	return fmt.Errorf("%s is on %s, which cannot reflink", dir, m.fstype)
}

// describeFS names the filesystem holding path for a message: "ext4
// (/dev/vda1)".
func describeFS(path string) string {
	m, err := mountOf(path)
	if err != nil {
		return "an unknown filesystem"
	}
	return fmt.Sprintf("%s (%s)", m.fstype, m.device())
}
