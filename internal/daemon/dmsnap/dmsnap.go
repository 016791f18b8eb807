package dmsnap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"banger/internal/loopdev"
	"banger/internal/system"
)

// Runner runs a host command and returns its stdout; a command that exits
// non-zero returns a *system.CommandError carrying its stderr.
// *system.Exec satisfies it.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Handles names everything one snapshot is made of. An empty field means
// that resource does not exist (yet). The daemon persists Handles (they
// marshal to JSON) so that a restarted daemon can tear down what a dead
// one made.
type Handles struct {
	BaseLoop string // loop device of the base image, attached read-only, e.g. /dev/loop3
	COWLoop  string // loop device of the COW file, e.g. /dev/loop4
	DMName   string // device-mapper name, e.g. banger-<vmid>
	DMDev    string // /dev/mapper/<DMName>: the block device the VMM opens
	COWPath  string // the COW file Create made
	// AutoClear: the loops clear themselves once the dm device lets go of
	// them (CreateFromFiles). Teardown then never detaches them by name: a
	// number the kernel has handed out again may be someone else's.
	AutoClear bool `json:",omitempty"`
}

// Spec describes the snapshot Create makes.
type Spec struct {
	// Name is the device-mapper name: 1 to 100 characters from
	// [a-zA-Z0-9_-], not starting with '-'. Conventionally "banger-<vmid>".
	Name string
	// BasePath is the shared base image: an existing regular file whose
	// size is a non-zero multiple of 512 bytes. It is only ever read.
	BasePath string
	// COWPath is where Create makes the sparse COW file. It must be an
	// absolute path that does not exist yet.
	COWPath string
	// COWSize is the COW file's size in bytes; 0 means the base's size.
	COWSize int64
}

// maxNameLen is the longest Spec.Name accepted (device-mapper allows 127).
const maxNameLen = 100

// chunkSectors is the snapshot's chunk size in 512-byte sectors (4 KiB).
const chunkSectors = 8

// Remove's bound on waiting for a busy dm device: about a second.
const (
	removeTries      = 10
	removeRetryDelay = 100 * time.Millisecond
)

// cleanupTimeout bounds the teardown Create runs after a failure; it runs
// even when the caller's context is already cancelled.
const cleanupTimeout = 30 * time.Second

const (
	mapperDir     = "/dev/mapper"
	mapperControl = "/dev/mapper/control"
)

var (
	nameRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
	loopRe = regexp.MustCompile(`^/dev/loop[0-9]+$`)
)

// Available reports whether this host can make snapshots: nil when the
// kernel's device-mapper answers on /dev/mapper/control and dmsetup and
// losetup are on PATH; otherwise an error saying what is missing and how
// to get it. The control node existing is not enough: libdevmapper
// creates it even on a kernel without device-mapper, so Available opens
// it (which also loads dm_mod where it is a module). That needs root, as
// making snapshots does.
func Available() error {
	if err := dmAvailable(); err != nil {
		return err
	}
	if _, err := system.LookPath("losetup"); err != nil {
		return fmt.Errorf("dmsnap: losetup not found on PATH: %w (install util-linux)", err)
	}
	return nil
}

// AvailableFromFiles is Available for CreateFromFiles, which attaches
// loops by descriptor (no losetup): device-mapper and dmsetup, and a
// loop control device that opens (the loop module loaded; a service's
// device allow-list permitting it).
func AvailableFromFiles() error {
	if err := dmAvailable(); err != nil {
		return err
	}
	f, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("dmsnap: loop devices are not usable: %w (modprobe loop)", err)
	}
	f.Close()
	return nil
}

func dmAvailable() error {
	const noDM = "the kernel has no device-mapper; run `modprobe dm_snapshot`, or use a kernel built with CONFIG_BLK_DEV_DM and CONFIG_DM_SNAPSHOT"
	if _, err := os.Stat(mapperControl); err != nil {
		return fmt.Errorf("dmsnap: device-mapper is not available: %w (%s)", err, noDM)
	}
	f, err := os.OpenFile(mapperControl, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO) {
			return fmt.Errorf("dmsnap: device-mapper is not available: %w (%s)", err, noDM)
		}
		return fmt.Errorf("dmsnap: device-mapper is not usable: %w (snapshots need root)", err)
	}
	f.Close()
	if _, err := system.LookPath("dmsetup"); err != nil {
		return fmt.Errorf("dmsnap: dmsetup not found on PATH: %w (install it: the dmsetup package on Debian/Ubuntu, device-mapper on Fedora/Arch)", err)
	}
	return nil
}

// table returns the device-mapper table line of a persistent snapshot of
// base (the origin) over cow, sectors long.
func table(sectors int64, baseLoop, cowLoop string) string {
	return fmt.Sprintf("0 %d snapshot %s %s P %d", sectors, baseLoop, cowLoop, chunkSectors)
}

// Create makes the snapshot spec describes and returns its Handles; the
// VMM then opens h.DMDev. The steps, in order:
//
//	create COW file        O_EXCL, truncated (sparse) to the size asked
//	losetup --find --show --read-only BASE   → BaseLoop
//	losetup --find --show COW                → COWLoop
//	dmsetup create NAME --table "0 S snapshot BaseLoop COWLoop P 8"
//
// After each resource is made, record is called with the Handles so far
// (each call's Handles extend the previous one's); a record error stops
// Create. record may be nil.
//
// If any step fails, Create tears down what it made (as Cleanup does, even
// if ctx is cancelled) and returns an error naming the step, joined with
// any teardown error. The Handles returned with an error are those of the
// resources that could not be torn down (zero when teardown succeeded).
func Create(ctx context.Context, r Runner, spec Spec, record func(Handles) error) (Handles, error) {
	baseSize, err := validate(spec)
	if err != nil {
		return Handles{}, err
	}
	cowSize := spec.COWSize
	if cowSize == 0 {
		cowSize = baseSize
	}

	var h Handles
	fail := func(stepErr error) (Handles, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		left, cerr := teardown(cctx, r, h, nil)
		if cerr != nil {
			cerr = fmt.Errorf("dmsnap: cleanup after failed create: %w", cerr)
		}
		return left, errors.Join(stepErr, cerr)
	}
	made := func(what string) error {
		if record == nil {
			return nil
		}
		if err := record(h); err != nil {
			return fmt.Errorf("dmsnap: record handles after %s: %w", what, err)
		}
		return nil
	}

	if err := createCOWFile(spec.COWPath, cowSize); err != nil {
		return Handles{}, err // nothing of ours exists
	}
	h.COWPath = spec.COWPath
	if err := made("creating the COW file"); err != nil {
		return fail(err)
	}

	loop, err := attach(ctx, r, "base", spec.BasePath, true)
	if err != nil {
		return fail(err)
	}
	h.BaseLoop = loop
	if err := made("attaching the base loop device"); err != nil {
		return fail(err)
	}

	loop, err = attach(ctx, r, "COW", spec.COWPath, false)
	if err != nil {
		return fail(err)
	}
	h.COWLoop = loop
	if err := made("attaching the COW loop device"); err != nil {
		return fail(err)
	}

	tbl := table(baseSize/512, h.BaseLoop, h.COWLoop)
	if _, err := r.Run(ctx, "dmsetup", "create", spec.Name, "--table", tbl); err != nil {
		return fail(fmt.Errorf("dmsnap: create device-mapper device %s: %w", spec.Name, err))
	}
	h.DMName = spec.Name
	h.DMDev = filepath.Join(mapperDir, spec.Name)
	if err := made("creating the device-mapper device"); err != nil {
		return fail(err)
	}
	return h, nil
}

// CreateFromFiles makes the snapshot name from files the caller already
// has open — base read-only, cow open read-write and already sized —
// instead of paths: each goes on an autoclearing loop device
// (internal/loopdev), then dmsetup create name. The loops live as long as
// the dm device holds them, so Remove of the returned Handles (AutoClear
// set, no COWPath) needs only dmsetup remove, and a failure here, or the
// caller dying, leaves no loop behind. Banger's root helper makes its
// owner's snapshots this way, from descriptors the daemon passes.
func CreateFromFiles(ctx context.Context, r Runner, name string, base, cow *os.File) (Handles, error) {
	if err := checkName(name); err != nil {
		return Handles{}, fmt.Errorf("dmsnap: invalid spec: %w", err)
	}
	st, err := base.Stat()
	if err != nil {
		return Handles{}, fmt.Errorf("dmsnap: base image: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() == 0 || st.Size()%512 != 0 {
		return Handles{}, fmt.Errorf("dmsnap: invalid spec: base image %s is not a regular file of a non-zero multiple of 512 bytes (%s, %d bytes)", base.Name(), st.Mode().Type(), st.Size())
	}
	baseLoop, err := loopdev.Attach(base, true)
	if err != nil {
		return Handles{}, fmt.Errorf("dmsnap: attach base loop device: %w", err)
	}
	defer baseLoop.Close() // from here on the dm table holds it, or nothing
	cowLoop, err := loopdev.Attach(cow, false)
	if err != nil {
		return Handles{}, fmt.Errorf("dmsnap: attach COW loop device: %w", err)
	}
	defer cowLoop.Close()
	tbl := table(st.Size()/512, baseLoop.Path, cowLoop.Path)
	if _, err := r.Run(ctx, "dmsetup", "create", name, "--table", tbl); err != nil {
		err = fmt.Errorf("dmsnap: create device-mapper device %s: %w", name, err)
		if isBusy(err) {
			return Handles{}, err // the name is taken: not ours to remove
		}
		// dmsetup may have made the device before failing (its table
		// refused, or killed waiting for udev): take it down.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if rerr := removeDM(cctx, r, name, nil); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return Handles{}, err
	}
	return Handles{BaseLoop: baseLoop.Path, COWLoop: cowLoop.Path, DMName: name, DMDev: filepath.Join(mapperDir, name), AutoClear: true}, nil
}

// CheckName says whether name is a valid device-mapper name here.
func CheckName(name string) error { return checkName(name) }

// Cleanup tears down whatever a partial Create made, in reverse order:
// dmsetup remove, losetup -d of the COW loop, losetup -d of the base
// loop, removal of the COW file. Empty handles are skipped; a resource
// that is already gone counts as torn down. It carries on past failures
// and returns them joined, each naming its step.
func Cleanup(ctx context.Context, r Runner, h Handles) error {
	_, err := teardown(ctx, r, h, nil)
	return err
}

// Remove tears down a complete snapshot once the VMM has let go of it. It
// is Cleanup, except that dmsetup remove is retried while the device is
// busy (up to 10 tries, 100 ms apart), and that if the
// dm device cannot be removed nothing else is touched: the loop devices
// and COW file stay with the live device, and the same Handles can be
// passed to Remove again later.
func Remove(ctx context.Context, r Runner, h Handles) error {
	return remove(ctx, r, h, retryPolicy{tries: removeTries, delay: removeRetryDelay})
}

type retryPolicy struct {
	tries int
	delay time.Duration
}

func remove(ctx context.Context, r Runner, h Handles, p retryPolicy) error {
	_, err := teardown(ctx, r, h, &p)
	return err
}

// teardown undoes h in reverse order and returns the Handles of what is
// left. With busy == nil it is Cleanup: one dmsetup remove attempt, then
// carry on regardless. With busy set it is Remove: retry a busy dm device,
// and stop if it cannot be removed.
func teardown(ctx context.Context, r Runner, h Handles, busy *retryPolicy) (Handles, error) {
	left := h
	var errs []error
	if h.DMName != "" {
		if err := removeDM(ctx, r, h.DMName, busy); err != nil {
			errs = append(errs, err)
			if busy != nil {
				return left, errors.Join(errs...)
			}
		} else {
			left.DMName, left.DMDev = "", ""
		}
	} else {
		left.DMDev = ""
	}
	if h.AutoClear {
		// The loops went with the dm device.
		left.COWLoop, left.BaseLoop = "", ""
		h.COWLoop, h.BaseLoop = "", ""
	}
	if h.COWLoop != "" {
		if err := detach(ctx, r, "COW", h.COWLoop); err != nil {
			errs = append(errs, err)
		} else {
			left.COWLoop = ""
		}
	}
	if h.BaseLoop != "" {
		if err := detach(ctx, r, "base", h.BaseLoop); err != nil {
			errs = append(errs, err)
		} else {
			left.BaseLoop = ""
		}
	}
	if h.COWPath != "" {
		if err := removeCOWFile(h.COWPath); err != nil {
			errs = append(errs, err)
		} else {
			left.COWPath = ""
		}
	}
	return left, errors.Join(errs...)
}

func validate(spec Spec) (baseSize int64, err error) {
	bad := func(format string, args ...any) (int64, error) {
		return 0, fmt.Errorf("dmsnap: invalid spec: "+format, args...)
	}
	if err := checkName(spec.Name); err != nil {
		return bad("%v", err)
	}
	if !filepath.IsAbs(spec.BasePath) {
		return bad("base image path %q is not absolute", spec.BasePath)
	}
	st, err := os.Stat(spec.BasePath)
	if err != nil {
		return bad("base image: %v", err)
	}
	if !st.Mode().IsRegular() {
		return bad("base image %s is not a regular file", spec.BasePath)
	}
	if st.Size() == 0 || st.Size()%512 != 0 {
		return bad("base image %s is %d bytes; want a non-zero multiple of 512", spec.BasePath, st.Size())
	}
	if !filepath.IsAbs(spec.COWPath) {
		return bad("COW file path %q is not absolute", spec.COWPath)
	}
	if _, err := os.Lstat(spec.COWPath); err == nil {
		return bad("COW file %s already exists", spec.COWPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return bad("COW file: %v", err)
	}
	if spec.COWSize < 0 {
		return bad("COW size %d is negative", spec.COWSize)
	}
	return st.Size(), nil
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty device-mapper name")
	case len(name) > maxNameLen:
		return fmt.Errorf("device-mapper name is %d characters; at most %d allowed", len(name), maxNameLen)
	case !nameRe.MatchString(name):
		return fmt.Errorf("device-mapper name %q may only hold letters, digits, '_' and '-'", name)
	case name[0] == '-':
		return fmt.Errorf("device-mapper name %q must not start with '-'", name)
	}
	return nil
}

// createCOWFile makes path as a sparse file of size bytes. It fails if
// path exists; a file it made and could not size is removed.
func createCOWFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("dmsnap: create COW file: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("dmsnap: create COW file %s of %d bytes: %w", path, size, err)
	}
	return nil
}

func removeCOWFile(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("dmsnap: remove COW file: refusing relative path %q", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dmsnap: remove COW file: %w", err)
	}
	return nil
}

// attach runs losetup --find --show [--read-only] file and returns the
// loop device it printed.
func attach(ctx context.Context, r Runner, what, file string, readOnly bool) (string, error) {
	argv := []string{"losetup", "--find", "--show"}
	if readOnly {
		argv = append(argv, "--read-only")
	}
	argv = append(argv, file)
	out, err := r.Run(ctx, argv...)
	if err != nil {
		return "", fmt.Errorf("dmsnap: attach %s loop device: %w", what, err)
	}
	dev := strings.TrimSpace(string(out))
	if !loopRe.MatchString(dev) {
		return "", fmt.Errorf("dmsnap: attach %s loop device: losetup printed %q, not a loop device", what, dev)
	}
	return dev, nil
}

func detach(ctx context.Context, r Runner, what, dev string) error {
	if !loopRe.MatchString(dev) {
		return fmt.Errorf("dmsnap: detach %s loop device: refusing %q: not a loop device", what, dev)
	}
	if _, err := r.Run(ctx, "losetup", "-d", dev); err != nil && !loopGone(err) {
		return fmt.Errorf("dmsnap: detach %s loop device %s: %w", what, dev, err)
	}
	return nil
}

// removeDM runs dmsetup remove name; with p set it retries while the
// device is busy.
func removeDM(ctx context.Context, r Runner, name string, p *retryPolicy) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("dmsnap: remove device-mapper device: refusing: %w", err)
	}
	tries := 1
	if p != nil && p.tries > 1 {
		tries = p.tries
	}
	var err error
	for i := 1; ; i++ {
		_, err = r.Run(ctx, "dmsetup", "remove", name)
		if err == nil || dmGone(err) {
			return nil
		}
		if !isBusy(err) {
			return fmt.Errorf("dmsnap: remove device-mapper device %s: %w", name, err)
		}
		if i >= tries {
			break
		}
		t := time.NewTimer(p.delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("dmsnap: remove device-mapper device %s: gave up waiting for it to stop being busy after %d tries: %w (last error: %v)", name, i, ctx.Err(), err)
		case <-t.C:
		}
	}
	if tries == 1 {
		return fmt.Errorf("dmsnap: remove device-mapper device %s: %w", name, err)
	}
	return fmt.Errorf("dmsnap: remove device-mapper device %s: still busy after %d tries (is a VMM still holding %s open?): %w",
		name, tries, filepath.Join(mapperDir, name), err)
}

// stderrOf returns the stderr a failed command left, or the error text
// when the Runner did not return a *system.CommandError.
func stderrOf(err error) string {
	var ce *system.CommandError
	if errors.As(err, &ce) {
		return ce.Stderr
	}
	return err.Error()
}

func isBusy(err error) bool {
	return strings.Contains(stderrOf(err), "Device or resource busy")
}

// dmGone: dmsetup remove of a name that does not exist ("remove ioctl on
// NAME failed: No such device or address").
func dmGone(err error) bool {
	return strings.Contains(stderrOf(err), "No such device or address")
}

// loopGone: losetup -d of a loop device that is not attached ("No such
// device or address") or has no device node ("No such device").
func loopGone(err error) bool {
	return strings.Contains(stderrOf(err), "No such device")
}
