package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"banger/internal/api"

	"golang.org/x/sys/unix"
)

// Layer is one uncompressed layer tar stream. Name says which layer it is
// in errors (a registry layer's digest, a file name).
type Layer struct {
	Name string
	Tar  io.Reader
}

// ExtractLayers replays layers, in order, into the existing directory
// rootDir, the way a container runtime stacks them: whiteouts delete what
// lower layers made, opaque markers clear a directory, and owners, modes
// (setuid/setgid/sticky included), times, extended attributes, hard
// links, symlinks, device nodes and fifos are kept. It needs root.
//
// Nothing is written outside rootDir: see the package doc. An entry whose
// name climbs out of the root is refused with an api.CodeBadRequest error
// naming the layer and the entry; rootDir is then left half-written for
// the caller to remove.
func ExtractLayers(ctx context.Context, layers []Layer, rootDir string) error {
	return ExtractLayersLimited(ctx, layers, rootDir, Limits{})
}

// Limits bound what unpacking an image may cost: a compression bomb or a
// sparse entry claiming terabytes is refused with the numbers instead of
// filling the disk or spinning the CPU. Zero fields take the defaults.
type Limits struct {
	// TotalBytes caps the regular files' sizes summed over every layer
	// (DefaultTotalBytes).
	TotalBytes int64
	// FileBytes caps one regular file (DefaultFileBytes).
	FileBytes int64
	// Entries caps the tar entries over every layer (DefaultEntries).
	Entries int64
}

// Defaults: generous for development images, far below what a bomb asks.
const (
	DefaultTotalBytes = 64 << 30
	DefaultFileBytes  = 16 << 30
	DefaultEntries    = 4_000_000
)

func (l Limits) withDefaults() Limits {
	if l.TotalBytes <= 0 {
		l.TotalBytes = DefaultTotalBytes
	}
	if l.FileBytes <= 0 {
		l.FileBytes = DefaultFileBytes
	}
	if l.Entries <= 0 {
		l.Entries = DefaultEntries
	}
	return l
}

// ExtractLayersLimited is ExtractLayers within lim.
func ExtractLayersLimited(ctx context.Context, layers []Layer, rootDir string, lim Limits) error {
	x, err := newExtractor(rootDir, nil)
	if err != nil {
		return err
	}
	x.lim = lim.withDefaults()
	defer x.close()
	for i, l := range layers {
		if err := x.apply(ctx, i, l.Name, l.Tar); err != nil {
			return err
		}
	}
	return x.finish()
}

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	sparseBlock    = 4096
	copyBufSize    = 1 << 20
)

// errClimbsOut marks an entry or link name that leaves the root.
var errClimbsOut = errors.New(`climbs out of the image root with ".."`)

// extractor applies layers to one root. Directory times are set once at
// the end, since creating entries inside a directory changes its mtime.
type extractor struct {
	root     *root
	dirTimes map[string][2]unix.Timespec
	buf      []byte
	// lim bounds the whole extraction; bytes and entries count so far.
	lim            Limits
	bytes, entries int64
	// own, when set, makes the unpack rootless: owners, exact modes,
	// device nodes and attributes are recorded there, not applied.
	own *owners
}

func newExtractor(rootDir string, own *owners) (*extractor, error) {
	r, err := openRoot(rootDir)
	if err != nil {
		return nil, err
	}
	r.own = own
	return &extractor{root: r, own: own, dirTimes: map[string][2]unix.Timespec{}, buf: make([]byte, copyBufSize), lim: Limits{}.withDefaults()}, nil
}

// ownFd gives the inode open at fd its owner and mode, or (rootless)
// its staging mode, recording the rest. xattrs are the rootless
// recording's; applied ones are set by path (setXattrs).
func (x *extractor) ownFd(fd int, typ fs.FileMode, uid, gid int, perm uint32, hdr *tar.Header) error {
	return x.own.setFd(fd, owned{mode: goMode(typ, perm), uid: uid, gid: gid, xattrs: xattrsOf(hdr)}, perm)
}

// xattrsAt applies hdr's attributes to name in dirfd, unless rootless
// (ownFd or ownAt recorded them).
func (x *extractor) xattrsAt(dirfd int, name string, hdr *tar.Header) error {
	if x.own != nil {
		return nil
	}
	return setXattrs(dirfd, name, hdr)
}

func (x *extractor) close() { x.root.close() }

// layerState is what one layer has put down so far, so that an opaque
// marker clears only what lower layers made, wherever it appears in the
// tar stream.
type layerState struct {
	written map[string]bool // entries of this layer
	touched map[string]bool // their ancestor directories
}

func (ls *layerState) add(rel string) {
	ls.written[rel] = true
	for p := path.Dir(rel); p != "." && !ls.touched[p]; p = path.Dir(p) {
		ls.touched[p] = true
	}
}

// apply replays one layer. idx and name only label errors.
func (x *extractor) apply(ctx context.Context, idx int, name string, r io.Reader) error {
	tr := tar.NewReader(r)
	ls := &layerState{written: map[string]bool{}, touched: map[string]bool{}}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %d (%s): read tar: %w", idx+1, name, err)
		}
		if err := x.count(hdr); err != nil {
			return api.Errorf(api.CodeBadRequest, "layer %d (%s): entry %q: %v; refusing to unpack the image", idx+1, name, hdr.Name, err)
		}
		if err := x.entry(ctx, tr, hdr, ls); err != nil {
			if errors.Is(err, errClimbsOut) {
				return api.Errorf(api.CodeBadRequest, "layer %d (%s): %v; refusing to unpack an unsafe image", idx+1, name, err)
			}
			return fmt.Errorf("layer %d (%s): entry %q: %w", idx+1, name, hdr.Name, err)
		}
	}
}

// count adds hdr to what the extraction has unpacked and refuses it when
// a limit is passed. A regular file counts its size as the tar says
// (holes included: that is what a sparse bomb inflates).
func (x *extractor) count(hdr *tar.Header) error {
	x.entries++
	if x.entries > x.lim.Entries {
		return fmt.Errorf("the image has more than %d entries", x.lim.Entries)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	if hdr.Size > x.lim.FileBytes {
		return fmt.Errorf("the file is %d bytes, over the %d-byte limit for one file", hdr.Size, x.lim.FileBytes)
	}
	x.bytes += hdr.Size
	if x.bytes > x.lim.TotalBytes {
		return fmt.Errorf("the image unpacks to more than %d bytes (the limit)", x.lim.TotalBytes)
	}
	return nil
}

// cleanName turns a tar name into a clean path relative to the root, ""
// for the root itself. Names that climb out with ".." are refused; a
// leading "/" is dropped, as tar does.
func cleanName(name string) (string, error) {
	n := path.Clean(strings.TrimLeft(name, "/"))
	if n == ".." || strings.HasPrefix(n, "../") {
		return "", errClimbsOut
	}
	if n == "." {
		return "", nil
	}
	return n, nil
}

func splitRel(rel string) (parent, base string) {
	parent, base = path.Split(rel)
	return strings.TrimSuffix(parent, "/"), base
}

func (x *extractor) entry(ctx context.Context, tr *tar.Reader, hdr *tar.Header, ls *layerState) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return fmt.Errorf("entry %q %w", hdr.Name, err)
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("an entry for the root directory that is not a directory")
		}
		return x.rootDirEntry(hdr)
	}
	parent, base := splitRel(rel)

	if strings.HasPrefix(base, whiteoutPrefix) {
		return x.whiteout(parent, base, ls)
	}

	pfd, err := x.root.openDir(parent, true)
	if err != nil {
		return fmt.Errorf("parent directory: %w", err)
	}
	defer unix.Close(pfd)

	var linkTarget string
	if hdr.Typeflag == tar.TypeLink {
		linkTarget, err = cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %q -> %q: target %w", hdr.Name, hdr.Linkname, err)
		}
		if linkTarget == "" {
			return fmt.Errorf("hard link to the root directory %q", hdr.Linkname)
		}
		if linkTarget == rel {
			ls.add(rel)
			return nil
		}
	}

	// What is there already is replaced, except that a directory entry
	// over a directory only updates its metadata (layers merge).
	st, err := lstatAt(pfd, base)
	exists := err == nil
	if exists && hdr.Typeflag == tar.TypeLink && x.sameFile(st, linkTarget) {
		ls.add(rel) // already that file (reached through another path)
		return nil
	}
	if exists && !(hdr.Typeflag == tar.TypeDir && isDir(st)) {
		if err := removeAt(pfd, base); err != nil {
			return fmt.Errorf("replace existing entry: %w", err)
		}
		if isDir(st) {
			x.forgetDirTimes(rel)
		}
		exists = false
	}

	uid, gid := hdr.Uid, hdr.Gid
	perm := uint32(hdr.Mode) & 0o7777
	times := headerTimes(hdr)

	switch hdr.Typeflag {
	case tar.TypeDir:
		if !exists {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open directory: %w", err)
		}
		err = x.ownFd(fd, fs.ModeDir, uid, gid, perm, hdr)
		unix.Close(fd)
		if err != nil {
			return err
		}
		if err := x.xattrsAt(pfd, base, hdr); err != nil {
			return err
		}
		x.dirTimes[rel] = times

	case tar.TypeReg, tar.TypeGNUSparse, '\x00': // '\x00' is the old TypeRegA
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create file: %w", err)
		}
		f := os.NewFile(uintptr(fd), rel)
		err = copySparse(ctx, f, tr, x.buf)
		if err == nil {
			err = x.ownFd(fd, 0, uid, gid, perm, hdr)
		}
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close file: %w", cerr)
		}
		if err != nil {
			return err
		}
		if err := x.xattrsAt(pfd, base, hdr); err != nil {
			return err
		}
		if err := setTimes(pfd, base, times); err != nil {
			return err
		}

	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		if x.own != nil {
			if err := x.own.record(pfd, base, owned{mode: fs.ModeSymlink | 0o777, uid: uid, gid: gid, xattrs: xattrsOf(hdr)}); err != nil {
				return err
			}
		} else if err := unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown symlink to %d:%d: %w", uid, gid, err)
		}
		if err := x.xattrsAt(pfd, base, hdr); err != nil {
			return err
		}
		if err := setTimes(pfd, base, times); err != nil {
			return err
		}

	case tar.TypeLink:
		tparent, tbase := splitRel(linkTarget)
		tfd, err := x.root.openDir(tparent, false)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		// Flags 0: a link to a symlink links the symlink itself.
		err = unix.Linkat(tfd, tbase, pfd, base, 0)
		unix.Close(tfd)
		if err != nil {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
		}

	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if x.own != nil {
			if err := x.stageSpecial(pfd, base, hdr, uid, gid, perm); err != nil {
				return err
			}
			if err := setTimes(pfd, base, times); err != nil {
				return err
			}
			break
		}
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, kind|perm, int(dev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
		if err := unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown to %d:%d: %w", uid, gid, err)
		}
		// After chown, which clears setuid/setgid. base was just made by
		// us and is not a symlink, so following it is safe.
		if err := unix.Fchmodat(pfd, base, perm, 0); err != nil {
			return fmt.Errorf("chmod %o: %w", perm, err)
		}
		if err := setXattrs(pfd, base, hdr); err != nil {
			return err
		}
		if err := setTimes(pfd, base, times); err != nil {
			return err
		}

	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	ls.add(rel)
	return nil
}

// stageSpecial is a device or fifo entry, rootless: a fifo is made (that
// needs no privilege) and a device is an empty placeholder file; either
// is recorded for guestfs.SetInodes to make right in the image.
func (x *extractor) stageSpecial(pfd int, base string, hdr *tar.Header, uid, gid int, perm uint32) error {
	m := owned{uid: uid, gid: gid, xattrs: xattrsOf(hdr)}
	switch hdr.Typeflag {
	case tar.TypeFifo:
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|stagePerm(perm, false), 0); err != nil {
			return fmt.Errorf("mkfifo: %w", err)
		}
		m.mode = goMode(fs.ModeNamedPipe, perm)
	default:
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create the placeholder of a device: %w", err)
		}
		unix.Close(fd)
		typ := fs.ModeDevice
		if hdr.Typeflag == tar.TypeChar {
			typ |= fs.ModeCharDevice
		}
		m.mode = goMode(typ, perm)
		m.major, m.minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
		m.mtime, m.atime = hdr.ModTime, hdr.AccessTime
		if m.atime.IsZero() {
			m.atime = m.mtime
		}
	}
	return x.own.record(pfd, base, m)
}

func isDir(st unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }

// sameFile reports whether rel (resolved inside the root, last component
// not followed) is the inode st describes.
func (x *extractor) sameFile(st unix.Stat_t, rel string) bool {
	parent, base := splitRel(rel)
	pfd, err := x.root.openDir(parent, false)
	if err != nil {
		return false
	}
	defer unix.Close(pfd)
	tst, err := lstatAt(pfd, base)
	return err == nil && tst.Dev == st.Dev && tst.Ino == st.Ino
}

// rootDirEntry applies a "./" entry's owner and mode to the root.
func (x *extractor) rootDirEntry(hdr *tar.Header) error {
	fd, err := x.root.resolve(".", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("open root: %w", err)
	}
	defer unix.Close(fd)
	if err := x.ownFd(fd, fs.ModeDir, hdr.Uid, hdr.Gid, uint32(hdr.Mode)&0o7777, hdr); err != nil {
		return err
	}
	x.dirTimes[""] = headerTimes(hdr)
	return nil
}

// whiteout handles ".wh.NAME" (delete NAME from lower layers) and the
// opaque marker (clear the directory of what lower layers put there).
func (x *extractor) whiteout(parent, base string, ls *layerState) error {
	if base == whiteoutOpaque {
		pfd, err := x.root.openDir(parent, true)
		if err != nil {
			return fmt.Errorf("opaque directory: %w", err)
		}
		unix.Close(pfd)
		fd, err := x.root.resolve(parent, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return fmt.Errorf("opaque directory: %w", err)
		}
		defer unix.Close(fd)
		if err := x.clearOpaque(fd, parent, ls); err != nil {
			return fmt.Errorf("clear opaque directory: %w", err)
		}
		return nil
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." || strings.HasPrefix(victim, whiteoutPrefix) {
		return fmt.Errorf("malformed whiteout %q", base)
	}
	pfd, err := x.root.openDir(parent, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // nothing below to delete
	}
	if err != nil {
		return fmt.Errorf("whiteout parent: %w", err)
	}
	defer unix.Close(pfd)
	st, err := lstatAt(pfd, victim)
	if err != nil {
		return nil // nothing below to delete
	}
	if err := removeAt(pfd, victim); err != nil {
		return fmt.Errorf("whiteout: %w", err)
	}
	if isDir(st) {
		x.forgetDirTimes(path.Join(parent, victim))
	}
	return nil
}

// clearOpaque removes from the directory open at fd (whose clean path is
// rel) everything that this layer did not write, keeping the way down to
// what it did.
func (x *extractor) clearOpaque(fd int, rel string, ls *layerState) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		child := path.Join(rel, n)
		st, err := lstatAt(fd, n)
		if err != nil {
			return err
		}
		if ls.written[child] || ls.touched[child] {
			if !isDir(st) {
				continue
			}
			cfd, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = x.clearOpaque(cfd, child, ls)
			unix.Close(cfd)
			if err != nil {
				return err
			}
			continue
		}
		if err := removeAt(fd, n); err != nil {
			return fmt.Errorf("remove %s: %w", child, err)
		}
		if isDir(st) {
			x.forgetDirTimes(child)
		}
	}
	return nil
}

// forgetDirTimes drops recorded times at and below rel, which was removed.
func (x *extractor) forgetDirTimes(rel string) {
	if len(x.dirTimes) == 0 {
		return
	}
	prefix := rel + "/"
	for p := range x.dirTimes {
		if p == rel || strings.HasPrefix(p, prefix) {
			delete(x.dirTimes, p)
		}
	}
}

// finish sets the directory times recorded from the layers.
func (x *extractor) finish() error {
	for rel, t := range x.dirTimes {
		if rel == "" {
			if err := unix.UtimesNanoAt(x.root.fd, ".", t[:], 0); err != nil {
				return fmt.Errorf("set times of the root: %w", err)
			}
			continue
		}
		parent, base := splitRel(rel)
		pfd, err := x.root.openDir(parent, false)
		if err != nil {
			continue // went away under a later symlink; nothing to date
		}
		st, err := lstatAt(pfd, base)
		if err == nil && isDir(st) {
			err = setTimes(pfd, base, t)
		} else {
			err = nil
		}
		unix.Close(pfd)
		if err != nil {
			return fmt.Errorf("directory %s: %w", rel, err)
		}
	}
	return nil
}

func headerTimes(hdr *tar.Header) [2]unix.Timespec {
	m := hdr.ModTime
	a := hdr.AccessTime
	if a.IsZero() {
		a = m
	}
	return [2]unix.Timespec{timespec(a), timespec(m)}
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{}
	}
	return unix.NsecToTimespec(t.UnixNano())
}

func setTimes(dirfd int, name string, t [2]unix.Timespec) error {
	if err := unix.UtimesNanoAt(dirfd, name, t[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// setOwnerMode chowns then chmods an open file: chown clears setuid and
// setgid, so the mode goes second.
func setOwnerMode(fd, uid, gid int, perm uint32) error {
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return fmt.Errorf("chown to %d:%d: %w", uid, gid, err)
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("chmod %o: %w", perm, err)
	}
	return nil
}

// setXattrs applies the entry's extended attributes (file capabilities
// such as ping's cap_net_raw live there). SELinux labels are the guest's
// business and overlayfs markers are the builder's; both are skipped. It
// runs after chown, which drops security.capability.
func setXattrs(dirfd int, name string, hdr *tar.Header) error {
	for attr, v := range xattrsOf(hdr) {
		// The parent is reached through our own descriptor; the last
		// component is not followed (lsetxattr).
		p := fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
		if err := unix.Lsetxattr(p, attr, v, 0); err != nil {
			return fmt.Errorf("set extended attribute %s: %w", attr, err)
		}
	}
	return nil
}

// xattrsOf is the entry's extended attributes banger keeps (nil: none).
func xattrsOf(hdr *tar.Header) map[string][]byte {
	const prefix = "SCHILY.xattr."
	var out map[string][]byte
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, prefix)
		if !ok || attr == "security.selinux" || strings.HasPrefix(attr, "trusted.overlay.") {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[attr] = []byte(v)
	}
	return out
}

var zeroBlock [sparseBlock]byte

// copySparse copies r into the new file f, leaving runs of zero blocks as
// holes, so sparse files (a huge /var/log/lastlog) stay small on disk and
// mkfs.ext4 keeps them sparse.
func copySparse(ctx context.Context, f *os.File, r io.Reader, buf []byte) error {
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := fill(r, buf)
		data := buf[:n]
		for i := 0; i < n; {
			j := i
			for j < n && isZeroBlock(data, j) {
				j += sparseBlock
			}
			k := min(j, n)
			for k < n && !isZeroBlock(data, k) {
				k += sparseBlock
			}
			k = min(k, n)
			if k > j {
				if _, err := f.WriteAt(data[j:k], off+int64(j)); err != nil {
					return fmt.Errorf("write file: %w", err)
				}
			}
			i = k
		}
		off += int64(n)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read file data: %w", rerr)
		}
	}
	if err := f.Truncate(off); err != nil {
		return fmt.Errorf("size file: %w", err)
	}
	return nil
}

func isZeroBlock(data []byte, at int) bool {
	end := min(at+sparseBlock, len(data))
	return bytes.Equal(data[at:end], zeroBlock[:end-at])
}

// fill reads until buf is full or r fails; io.EOF is returned as is.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
