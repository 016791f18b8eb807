package rootdisk

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/system"
)

// ErrNoSpace is wrapped by every error that means the filesystem is (or
// would be) full: CheckFree's, and an ENOSPC met by Create, Clone or Grow.
// Their message reads "no space left on DEVICE (needs ~N MB, M MB free)".
var ErrNoSpace = errors.New("no space left")

const mb = 1 << 20

// NoSpaceError is the error behind ErrNoSpace.
type NoSpaceError struct {
	Device string // the filesystem's source (/dev/vda1, /dev/loop3), else its mount point
	Need   int64  // bytes the operation needs (an estimate)
	Free   int64  // bytes available to the daemon at the time of the error
	Err    error  // the ENOSPC that was met, if any
}

func (e *NoSpaceError) Error() string {
	if e.Need <= 0 {
		return fmt.Sprintf("no space left on %s (%d MB free)", e.Device, e.Free/mb)
	}
	return fmt.Sprintf("no space left on %s (needs ~%d MB, %d MB free)", e.Device, (e.Need+mb-1)/mb, e.Free/mb)
}

// SpaceError is the *NoSpaceError of cause, a write into dir that found
// its filesystem full (how much more it needed is not known).
func SpaceError(dir string, cause error) *NoSpaceError {
	free, err := freeBytes(dir)
	if err != nil {
		free = 0
	}
	return &NoSpaceError{Device: deviceOf(dir), Free: free, Err: cause}
}

// Is makes errors.Is(err, ErrNoSpace) true.
func (e *NoSpaceError) Is(target error) bool { return target == ErrNoSpace }

// Unwrap returns the ENOSPC met, if any.
func (e *NoSpaceError) Unwrap() error { return e.Err }

// CheckFree returns nil when the filesystem holding dir has at least need
// bytes available (statfs f_bavail), else a *NoSpaceError (wrapping
// ErrNoSpace) naming the filesystem's device and both numbers.
func CheckFree(dir string, need int64) error {
	free, err := freeBytes(dir)
	if err != nil {
		return fmt.Errorf("check free space in %s: %w", dir, err)
	}
	if free >= need {
		return nil
	}
	return &NoSpaceError{Device: deviceOf(dir), Need: need, Free: free}
}

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// isNoSpace reports whether err is an ENOSPC (or EDQUOT), returned by a
// syscall or reported on a command's stderr.
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var ce *system.CommandError
	if errors.As(err, &ce) {
		return strings.Contains(ce.Stderr, "No space left on device") || strings.Contains(ce.Stderr, "Disk quota exceeded")
	}
	return false
}

// noSpace turns an ENOSPC met while writing into dir into a *NoSpaceError;
// other errors (and nil) are returned as they are. Call it after removing
// what the failed operation made, so Free is what is really left.
func noSpace(err error, dir string, need int64) error {
	if err == nil || !isNoSpace(err) || errors.Is(err, ErrNoSpace) {
		return err
	}
	free, ferr := freeBytes(dir)
	if ferr != nil {
		free = 0
	}
	return &NoSpaceError{Device: deviceOf(dir), Need: need, Free: free, Err: err}
}

// mount is one line of /proc/self/mountinfo.
type mount struct {
	point  string // mount point
	fstype string
	source string
}

// device names the filesystem: its source when that is a path
// (/dev/vda1, /dev/loop3), else its mount point (tmpfs, overlay, ...).
func (m mount) device() string {
	if strings.HasPrefix(m.source, "/") {
		return m.source
	}
	return m.point
}

// deviceOf is mountOf(path).device(), or path itself when mountinfo
// cannot tell.
func deviceOf(path string) string {
	m, err := mountOf(path)
	if err != nil {
		return path
	}
	return m.device()
}

// mountOf finds the mount holding path in /proc/self/mountinfo: the one
// with the deepest mount point containing path (after resolving
// symlinks), the last listed when several share that point (it is on
// top).
func mountOf(path string) (mount, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return mount{}, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return mount{}, err
	}
	best := -1
	for i, m := range mounts {
		if within(abs, m.point) && (best < 0 || len(m.point) >= len(mounts[best].point)) {
			best = i
		}
	}
	if best < 0 {
		return mount{}, fmt.Errorf("no mount in /proc/self/mountinfo holds %s", abs)
	}
	return mounts[best], nil
}

// within reports whether path is point or below it.
func within(path, point string) bool {
	if point == "/" {
		return true
	}
	return path == point || strings.HasPrefix(path, point+"/")
}

func readMountinfo(file string) ([]mount, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m, ok := parseMountinfoLine(sc.Text()); ok {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// parseMountinfoLine parses
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func parseMountinfoLine(line string) (mount, bool) {
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 6 || sep < 0 || sep+2 >= len(f) {
		return mount{}, false
	}
	return mount{
		point:  unescapeOctal(f[4]),
		fstype: f[sep+1],
		source: unescapeOctal(f[sep+2]),
	}, true
}

// unescapeOctal undoes mountinfo's \NNN escapes (space is \040).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
