package vmcp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/pkg/sftp"
)

// GuestHome is the directory relative guest paths are resolved against
// (banger logs in to guests as root).
const GuestHome = "/root"

// GuestPath resolves p as the guest sees it: a relative path (or ~, ~/x)
// is taken from GuestHome, and the result is cleaned with the guest's / as
// its root, so ".." cannot climb above it. It is always a path in the
// guest's own filesystem; nothing about it can reach the host. A trailing
// "/" or "/." is kept, since it changes what a copy means (see Copy).
func GuestPath(p string) string {
	switch {
	case p == "~":
		p = ""
	case strings.HasPrefix(p, "~/"):
		p = p[2:]
	}
	if !strings.HasPrefix(p, "/") {
		p = GuestHome + "/" + p
	}
	suffix := ""
	switch {
	case p != "/" && (strings.HasSuffix(p, "/.") || p == "."):
		suffix = "/."
	case p != "/" && strings.HasSuffix(p, "/"):
		suffix = "/"
	}
	p = path.Clean(p)
	if p == "/" {
		return p
	}
	return p + suffix
}

// Direction says which way a copy goes.
type Direction int

const (
	// ToGuest copies a host path into the guest.
	ToGuest Direction = iota
	// ToHost copies a guest path onto the host.
	ToHost
)

func (d Direction) String() string {
	if d == ToHost {
		return "guest to host"
	}
	return "host to guest"
}

// Copier copies between the host and one guest.
type Copier struct {
	// Client is an SFTP session with the guest; the caller opens and
	// closes it.
	Client *sftp.Client
	// GuestName names the guest in messages ("web" gives "web:/etc").
	GuestName string
	// Recursive allows directories (cp -r).
	Recursive bool
	// Progress, if set, is called as bytes are copied, with how many more
	// are done. Holes count: the calls for a file add up to its size.
	Progress func(n int64)
	// Warn, if set, is told about entries that are skipped (devices,
	// FIFOs, sockets).
	Warn func(msg string)
}

// Stats counts what a copy did, or (from Measure) would do.
type Stats struct {
	Files   int   // regular files
	Links   int   // symbolic links
	Dirs    int   // directories
	Skipped int   // devices, FIFOs and sockets, which are not copied
	Bytes   int64 // the regular files' sizes, holes included
}

func (c *Copier) sides(d Direction) (src, dst side) {
	g := guestSide{c: c.Client, name: c.GuestName}
	if d == ToHost {
		return g, hostSide{}
	}
	return hostSide{}, g
}

// source is a resolved SRC argument.
type source struct {
	path     string // cleaned
	info     fs.FileInfo
	contents bool // given as DIR/.: the directory's contents, not itself
}

// resolveSource checks SRC exists and may be copied. A SRC that is a
// symbolic link is followed without Recursive or when written with a
// trailing slash, as cp does.
func (c *Copier) resolveSource(s side, raw string) (source, error) {
	if raw == "" {
		return source{}, errors.New("the source path is empty")
	}
	contents := raw == "." || strings.HasSuffix(raw, "/.")
	slash := strings.HasSuffix(raw, "/") && s.clean(raw) != "/"
	p := s.clean(raw)
	if _, host := s.(hostSide); host {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
	}
	if p == "/" {
		contents = true
	}
	follow := !c.Recursive || slash || contents
	var fi fs.FileInfo
	var err error
	if follow {
		fi, err = s.stat(p)
	} else {
		fi, err = s.lstat(p)
	}
	if err != nil {
		return source{}, pathError(s, "read", p, err)
	}
	if fi.IsDir() && !c.Recursive {
		return source{}, fmt.Errorf("%s is a directory; use -r to copy directories", s.label(p))
	}
	if !fi.IsDir() && (slash || contents) {
		return source{}, fmt.Errorf("%s is not a directory (drop the trailing slash to copy the file)", s.label(p))
	}
	return source{path: p, info: fi, contents: contents && fi.IsDir()}, nil
}

// target works out where SRC lands, as cp does: inside DST when DST is an
// existing directory, else at DST itself, whose parent must exist.
func (c *Copier) target(s, d side, src source, raw string) (string, error) {
	if raw == "" {
		return "", errors.New("the destination path is empty")
	}
	slash := strings.HasSuffix(raw, "/") || strings.HasSuffix(raw, "/.")
	p := d.clean(raw)
	fi, err := d.stat(p)
	switch {
	case err == nil && fi.IsDir():
		if src.contents {
			return p, nil
		}
		return d.join(p, s.base(src.path)), nil
	case err == nil:
		if slash {
			return "", fmt.Errorf("%s is not a directory", d.label(p))
		}
		if src.info.IsDir() {
			return "", fmt.Errorf("cannot overwrite non-directory %s with directory %s; remove it or pick another destination", d.label(p), s.label(src.path))
		}
		return p, nil
	case errors.Is(err, fs.ErrNotExist):
		if slash && !src.info.IsDir() {
			return "", fmt.Errorf("%s: no such directory; create it first, or drop the trailing slash to copy to that name", d.label(p))
		}
		parent := d.dir(p)
		pfi, perr := d.stat(parent)
		if perr != nil && errors.Is(perr, fs.ErrNotExist) {
			return "", fmt.Errorf("destination directory %s does not exist; create it first (mkdir -p)", d.label(parent))
		}
		if perr != nil {
			return "", pathError(d, "read", parent, perr)
		}
		if !pfi.IsDir() {
			return "", fmt.Errorf("%s is not a directory", d.label(parent))
		}
		return p, nil
	default:
		return "", pathError(d, "read", p, err)
	}
}

// Measure counts what copying src would copy, for a progress total. It
// fails as Copy would for a missing source or a directory without
// Recursive.
func (c *Copier) Measure(ctx context.Context, dir Direction, src string) (Stats, error) {
	s, _ := c.sides(dir)
	from, err := c.resolveSource(s, src)
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	err = measure(ctx, s, from.path, from.info, &st)
	return st, err
}

func measure(ctx context.Context, s side, p string, fi fs.FileInfo, st *Stats) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		st.Dirs++
		ents, err := s.readDir(p)
		if err != nil {
			return pathError(s, "read directory", p, err)
		}
		for _, e := range ents {
			if err := measure(ctx, s, s.join(p, e.Name()), e, st); err != nil {
				return err
			}
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		st.Links++
	case fi.Mode().IsRegular():
		st.Files++
		st.Bytes += fi.Size()
	default:
		st.Skipped++
	}
	return nil
}

// Copy copies src to dst in direction dir: host to guest (src a host
// path, dst a guest path) or guest to host. Guest paths should come from
// GuestPath. Destination names follow cp (see the package comment). On
// error, what was copied so far stays.
func (c *Copier) Copy(ctx context.Context, dir Direction, src, dst string) (Stats, error) {
	if c.Client == nil {
		return Stats{}, errors.New("vmcp: no SFTP client")
	}
	s, d := c.sides(dir)
	from, err := c.resolveSource(s, src)
	if err != nil {
		return Stats{}, err
	}
	to, err := c.target(s, d, from, dst)
	if err != nil {
		return Stats{}, err
	}
	w := &walker{c: c, ctx: ctx, src: s, dst: d}
	err = w.copy(from.path, to, from.info, true)
	return w.stats, err
}

type walker struct {
	c        *Copier
	ctx      context.Context
	src, dst side
	stats    Stats
	buf      []byte
}

func (w *walker) copy(sp, dp string, fi fs.FileInfo, top bool) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		return w.copyDir(sp, dp, fi, top)
	case fi.Mode()&fs.ModeSymlink != 0:
		return w.copyLink(sp, dp, fi)
	case fi.Mode().IsRegular():
		return w.copyFile(sp, dp, fi)
	default:
		w.stats.Skipped++
		if w.c.Warn != nil {
			w.c.Warn(fmt.Sprintf("skipped %s: %s", w.src.label(sp), kind(fi.Mode())))
		}
		return nil
	}
}

func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO is not copied"
	case m&fs.ModeSocket != 0:
		return "a socket is not copied"
	case m&fs.ModeDevice != 0:
		return "a device is not copied"
	}
	return "not a regular file, directory or symbolic link"
}

// clear makes way at dp for an entry of a new kind: a directory there is
// an error (nothing is merged into or removed from it), a symbolic link is
// removed (never written through), a regular file is left to be
// overwritten (keepFile) or removed.
func (w *walker) clear(dp string, keepFile bool, what string) error {
	fi, err := w.dst.lstat(dp)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return pathError(w.dst, "read", dp, err)
	case fi.IsDir():
		return fmt.Errorf("cannot overwrite directory %s with %s; remove it or pick another destination", w.dst.label(dp), what)
	case fi.Mode().IsRegular() && keepFile:
		return nil
	}
	if err := w.dst.remove(dp); err != nil {
		return pathError(w.dst, "replace", dp, err)
	}
	return nil
}

func (w *walker) copyDir(sp, dp string, fi fs.FileInfo, top bool) error {
	existing, err := w.dst.lstat(dp)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := w.dst.mkdir(dp); err != nil {
			return pathError(w.dst, "create directory", dp, err)
		}
		// Owner-only until filled, then the source's mode.
		if err := w.dst.chmod(dp, 0o700); err != nil {
			return pathError(w.dst, "set mode of", dp, err)
		}
	case err != nil:
		return pathError(w.dst, "read", dp, err)
	case existing.IsDir():
		// merged into
	case top && existing.Mode()&fs.ModeSymlink != 0:
		// DST/. resolved through a link to a directory: merge into it.
	default:
		return fmt.Errorf("cannot overwrite non-directory %s with directory %s; remove it or pick another destination", w.dst.label(dp), w.src.label(sp))
	}
	w.stats.Dirs++
	ents, err := w.src.readDir(sp)
	if err != nil {
		return pathError(w.src, "read directory", sp, err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		if err := w.copy(w.src.join(sp, e.Name()), w.dst.join(dp, e.Name()), e, false); err != nil {
			return err
		}
	}
	if err := w.dst.chmod(dp, permOf(fi)); err != nil {
		return pathError(w.dst, "set mode of", dp, err)
	}
	return w.setTimes(dp, fi, false)
}

func (w *walker) copyLink(sp, dp string, fi fs.FileInfo) error {
	target, err := w.src.readlink(sp)
	if err != nil {
		return pathError(w.src, "read link", sp, err)
	}
	if err := w.clear(dp, false, "symbolic link "+w.src.label(sp)); err != nil {
		return err
	}
	if err := w.dst.symlink(target, dp); err != nil {
		return pathError(w.dst, "create link", dp, err)
	}
	w.stats.Links++
	return w.setTimes(dp, fi, true)
}

func (w *walker) setTimes(dp string, fi fs.FileInfo, link bool) error {
	atime, mtime := times(fi)
	if err := w.dst.chtimes(dp, atime, mtime, link); err != nil {
		return pathError(w.dst, "set times of", dp, err)
	}
	return nil
}

// permOf is fi's permission bits with setuid, setgid and sticky.
func permOf(fi fs.FileInfo) fs.FileMode {
	return fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// pathError says what failed on which path, with advice for the common
// causes.
func pathError(s side, op, p string, err error) error {
	var hint string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist; check the path", s.label(p))
	case errors.Is(err, fs.ErrPermission):
		if _, guest := s.(guestSide); guest {
			hint = " (permission denied in the guest)"
		} else {
			hint = " (permission denied; check the host path's owner and mode)"
		}
		return fmt.Errorf("%s %s: %w%s", op, s.label(p), err, hint)
	case errors.Is(err, syscall.ENOSPC):
		hint = "; free some space"
	}
	var se *sftp.StatusError
	if errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxFailure {
		if _, guest := s.(guestSide); guest {
			hint = " (the guest's sftp-server gives no reason: a full disk, a read-only filesystem or a file in the way are the usual causes)"
		}
	}
	return fmt.Errorf("%s %s: %w%s", op, s.label(p), err, hint)
}
