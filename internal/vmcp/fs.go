package vmcp

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// side is one end of a copy: the host's filesystem or the guest's over
// SFTP. Errors are returned bare; the engine adds the path.
type side interface {
	// label names p for messages: "/x" on the host, "web:/x" in a guest.
	label(p string) string
	clean(p string) string
	join(dir, name string) string
	base(p string) string
	dir(p string) string

	lstat(p string) (fs.FileInfo, error)
	stat(p string) (fs.FileInfo, error)
	readDir(p string) ([]fs.FileInfo, error) // entries as lstat sees them
	readlink(p string) (string, error)
	symlink(target, p string) error
	mkdir(p string) error
	chmod(p string, mode fs.FileMode) error
	// chtimes sets p's times; link says p is a symbolic link (whose own
	// times are set where the side can, and left alone otherwise).
	chtimes(p string, atime, mtime time.Time, link bool) error
	remove(p string) error
	open(p string) (srcFile, error)
	// create opens p for writing, created with mode 0600 or truncated.
	create(p string) (dstFile, error)
}

// srcFile is a file being read.
type srcFile interface {
	io.ReaderAt
	io.Closer
	// nextData returns the next range [start, end) at or after off and
	// before size that may hold data; start >= size when none is left.
	// Sides that cannot tell holes from data return [off, size).
	nextData(off, size int64) (start, end int64)
}

// dstFile is a file being written.
type dstFile interface {
	io.WriterAt
	io.Closer
	Truncate(size int64) error
	Chmod(mode fs.FileMode) error
}

// hostSide is the host's filesystem.
type hostSide struct{}

func (hostSide) label(p string) string        { return p }
func (hostSide) clean(p string) string        { return filepath.Clean(p) }
func (hostSide) join(dir, name string) string { return filepath.Join(dir, name) }
func (hostSide) base(p string) string         { return filepath.Base(p) }
func (hostSide) dir(p string) string          { return filepath.Dir(p) }

func (hostSide) lstat(p string) (fs.FileInfo, error) { return os.Lstat(p) }
func (hostSide) stat(p string) (fs.FileInfo, error)  { return os.Stat(p) }

func (hostSide) readDir(p string) ([]fs.FileInfo, error) {
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, err
	}
	out := make([]fs.FileInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since it was listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, fi)
	}
	return out, nil
}

func (hostSide) readlink(p string) (string, error)      { return os.Readlink(p) }
func (hostSide) symlink(target, p string) error         { return os.Symlink(target, p) }
func (hostSide) mkdir(p string) error                   { return os.Mkdir(p, 0o700) }
func (hostSide) chmod(p string, mode fs.FileMode) error { return os.Chmod(p, mode) }
func (hostSide) remove(p string) error                  { return os.Remove(p) }
func (hostSide) open(p string) (srcFile, error)         { return openHost(p) }
func (hostSide) create(p string) (dstFile, error)       { return createHost(p) }
func (hostSide) chtimes(p string, atime, mtime time.Time, link bool) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	flags := 0
	if link {
		flags = unix.AT_SYMLINK_NOFOLLOW
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, flags)
}

type hostFile struct {
	*os.File
	noHoles bool // SEEK_DATA is not supported here
}

func openHost(p string) (*hostFile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	return &hostFile{File: f}, nil
}

func createHost(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
}

// nextData uses SEEK_DATA and SEEK_HOLE, so the holes of a sparse file are
// skipped without being read.
func (f *hostFile) nextData(off, size int64) (int64, int64) {
	if off >= size {
		return size, size
	}
	if f.noHoles {
		return off, size
	}
	start, err := f.Seek(off, unix.SEEK_DATA)
	if errors.Is(err, syscall.ENXIO) {
		return size, size // nothing but a hole up to the end
	}
	if err != nil {
		f.noHoles = true
		return off, size
	}
	if start >= size {
		return size, size
	}
	end, err := f.Seek(start, unix.SEEK_HOLE)
	if err != nil || end > size {
		end = size
	}
	return start, end
}

// guestSide is the guest's filesystem over SFTP.
type guestSide struct {
	c    *sftp.Client
	name string // the VM's name, for labels
}

func (g guestSide) label(p string) string {
	if g.name == "" {
		return "guest:" + p
	}
	return g.name + ":" + p
}
func (guestSide) clean(p string) string        { return path.Clean(p) }
func (guestSide) join(dir, name string) string { return path.Join(dir, name) }
func (guestSide) base(p string) string         { return path.Base(p) }
func (guestSide) dir(p string) string          { return path.Dir(p) }

func (g guestSide) lstat(p string) (fs.FileInfo, error) { return g.c.Lstat(p) }
func (g guestSide) stat(p string) (fs.FileInfo, error)  { return g.c.Stat(p) }

func (g guestSide) readDir(p string) ([]fs.FileInfo, error) {
	ents, err := g.c.ReadDir(p)
	if err != nil {
		return nil, err
	}
	out := ents[:0]
	for _, e := range ents {
		if n := e.Name(); n != "." && n != ".." && n != "" {
			out = append(out, e)
		}
	}
	return out, nil
}

func (g guestSide) readlink(p string) (string, error)      { return g.c.ReadLink(p) }
func (g guestSide) symlink(target, p string) error         { return g.c.Symlink(target, p) }
func (g guestSide) mkdir(p string) error                   { return g.c.Mkdir(p) }
func (g guestSide) chmod(p string, mode fs.FileMode) error { return g.c.Chmod(p, mode) }
func (g guestSide) remove(p string) error                  { return g.c.Remove(p) }

// chtimes leaves a link's own times alone: SFTP's setstat follows links.
func (g guestSide) chtimes(p string, atime, mtime time.Time, link bool) error {
	if link {
		return nil
	}
	return g.c.Chtimes(p, atime, mtime)
}

func (g guestSide) open(p string) (srcFile, error) {
	f, err := g.c.Open(p)
	if err != nil {
		return nil, err
	}
	return guestFile{f}, nil
}

func (g guestSide) create(p string) (dstFile, error) {
	f, err := g.c.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return nil, err
	}
	return f, nil
}

type guestFile struct{ *sftp.File }

// nextData: SFTP cannot find holes, so all of the rest may be data.
func (guestFile) nextData(off, size int64) (int64, int64) {
	if off >= size {
		return size, size
	}
	return off, size
}

// times returns fi's access and modification times (the access time is
// the modification time where fi does not carry one).
func times(fi fs.FileInfo) (atime, mtime time.Time) {
	mtime = fi.ModTime()
	switch st := fi.Sys().(type) {
	case *syscall.Stat_t:
		return time.Unix(st.Atim.Unix()), mtime
	case *sftp.FileStat:
		return time.Unix(int64(st.Atime), 0), mtime
	}
	return mtime, mtime
}
