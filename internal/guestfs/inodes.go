package guestfs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Inode is the metadata SetInodes gives one path of an image.
type Inode struct {
	// Path is absolute and clean; "/" is the root directory.
	Path string
	// Mode is the type (fs.ModeDir, fs.ModeSymlink, fs.ModeDevice,
	// fs.ModeCharDevice, fs.ModeNamedPipe or none: regular) and the
	// permission bits, setuid, setgid and sticky included.
	Mode     fs.FileMode
	UID, GID uint32
	// Major and Minor are a device's numbers: for a character or block
	// device, whatever is at Path (a placeholder) is replaced by the node.
	Major, Minor uint32
	// Xattrs are set as given (file capabilities live in
	// security.capability).
	Xattrs map[string][]byte
	// Mtime and Atime, when not zero, are set (whole seconds): a device
	// node debugfs makes is dated now.
	Mtime, Atime time.Time
}

func (in Inode) device() bool { return in.Mode&fs.ModeDevice != 0 }

// stMode is in.Mode as an ext4 i_mode (type and permission bits).
func (in Inode) stMode() uint32 {
	m := permBits(in.Mode)
	switch {
	case in.Mode&fs.ModeDir != 0:
		m |= 0o040000
	case in.Mode&fs.ModeSymlink != 0:
		m |= 0o120000
	case in.Mode&fs.ModeCharDevice != 0:
		m |= 0o020000
	case in.Mode&fs.ModeDevice != 0:
		m |= 0o060000
	case in.Mode&fs.ModeNamedPipe != 0:
		m |= 0o010000
	default:
		m |= 0o100000
	}
	return m
}

// listed is one entry of debugfs's `ls -p`.
type listed struct {
	ino      uint64
	mode     uint32
	uid, gid uint32
	name     string
}

// parseListing reads `ls -p DIR` lines: /INODE/MODE/UID/GID/NAME/SIZE/
// (a name never holds a slash). A name seen twice — which only a name
// with a newline in it, printed as two lines, could fake — is ambiguous
// and maps to nothing.
func parseListing(lines []string) map[string]listed {
	out := map[string]listed{}
	twice := map[string]bool{}
	for _, l := range lines {
		f := strings.Split(l, "/")
		if len(f) != 8 || f[0] != "" {
			continue
		}
		ino, err1 := strconv.ParseUint(f[1], 10, 64)
		mode, err2 := strconv.ParseUint(f[2], 8, 32)
		uid, err3 := strconv.ParseUint(f[3], 10, 32)
		gid, err4 := strconv.ParseUint(f[4], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			continue
		}
		if _, seen := out[f[5]]; seen {
			twice[f[5]] = true
		}
		out[f[5]] = listed{ino: ino, mode: uint32(mode), uid: uint32(uid), gid: uint32(gid), name: f[5]}
	}
	for n := range twice {
		delete(out, n)
	}
	return out
}

// reXattrName is an extended attribute name debugfs is given: a known
// namespace, so it can never read as one of ea_set's options; of system.*
// only the ACLs (libext2fs keeps system.data for inline file data).
var reXattrName = regexp.MustCompile(`^((user|security)\.[^\x00\n\r]+|trusted\.[^\x00\n\r]+|system\.posix_acl_(access|default))$`)

// dirAndName is where a path is listed: its parent and its name there
// ("/" is "." in its own listing).
func dirAndName(p string) (string, string) {
	if p == "/" {
		return "/", "."
	}
	dir, name := path.Split(p)
	if dir != "/" {
		dir = strings.TrimSuffix(dir, "/")
	}
	return dir, name
}

// SetInodes gives each path its owner, mode and extended attributes, and
// makes the device nodes asked for, in one debugfs run over the image. It
// is how an image built without root (mkfs.ext4 -d from a tree its user
// owns) gets its files' real owners, setuid bits, device nodes and
// capabilities. Paths are looked up once, by listing their directories
// (`ls -p`), and the requests then name inodes by number: debugfs
// resolves a path by scanning each directory on the way, which for tens
// of thousands of paths costs more than building the image. Afterwards
// every directory is listed again (and each device and attribute read
// back) and the first inode that differs is named: debugfs reports a
// failed request only on stderr, and still exits 0.
func (im *Image) SetInodes(ctx context.Context, inodes []Inode) error {
	if len(inodes) == 0 {
		return nil
	}
	for _, in := range inodes {
		if err := checkGuestPathOrRoot(in.Path); err != nil {
			return err
		}
		if in.device() && in.Path == "/" {
			return fmt.Errorf("guestfs: the root directory cannot be a device")
		}
		for name := range in.Xattrs {
			if !reXattrName.MatchString(name) {
				return fmt.Errorf("guestfs: %s: extended attribute %q is not a user, security or trusted one or a POSIX ACL", in.Path, name)
			}
		}
	}
	dir, err := im.tempDir()
	if err != nil {
		return fmt.Errorf("guestfs: temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)

	// Where every path is, and what it is now.
	dirs := map[string]bool{}
	for _, in := range inodes {
		d, _ := dirAndName(in.Path)
		dirs[d] = true
	}
	dirList := slices.Sorted(maps.Keys(dirs))
	list := func() (map[string]map[string]listed, error) {
		cmds := []string{rootSentinel}
		for _, d := range dirList {
			c, err := command("ls", "-p", d)
			if err != nil {
				return nil, err
			}
			cmds = append(cmds, c)
		}
		sections, err := im.runScript(ctx, dir, false, cmds)
		if err != nil {
			return nil, err
		}
		out := map[string]map[string]listed{}
		for i, d := range dirList {
			out[d] = parseListing(sections[i+1])
		}
		return out, nil
	}
	before, err := list()
	if err != nil {
		return err
	}

	write := []string{rootSentinel}
	var check []string // devices and attributes, read back one by one
	add := func(to *[]string, verb string, args ...string) error {
		c, err := command(verb, args...)
		if err != nil {
			return err
		}
		*to = append(*to, c)
		return nil
	}
	type xattrCheck struct {
		in        Inode
		name, out string
	}
	var xchecks []xattrCheck
	var devices []Inode
	for i, in := range inodes {
		d, name := dirAndName(in.Path)
		cur, ok := before[d][name]
		if !ok {
			return fmt.Errorf("guestfs: %s is not in %s (or its directory lists the name twice)", in.Path, im.path)
		}
		ref := fmt.Sprintf("<%d>", cur.ino)
		if in.device() {
			// debugfs's mknod makes a name in its current directory; the
			// node is a new inode, named by its path from here on.
			for _, c := range [][]string{{"cd", d}, {"rm", name}} {
				if err := add(&write, c[0], c[1:]...); err != nil {
					return err
				}
			}
			kind := "c"
			if in.Mode&fs.ModeCharDevice == 0 {
				kind = "b"
			}
			write = append(write, fmt.Sprintf("mknod %s %s %d %d", mustQuote(name), kind, in.Major, in.Minor))
			if err := add(&write, "cd", "/"); err != nil {
				return err
			}
			ref = mustQuote(in.Path)
			devices = append(devices, in)
		}
		if in.device() || wide(in) {
			if err := add(&check, "stat", in.Path); err != nil {
				return err
			}
		}
		sets := [][2]string{
			{"mode", fmt.Sprintf("0%o", in.stMode())},
			{"uid", strconv.FormatUint(uint64(in.UID), 10)},
			{"gid", strconv.FormatUint(uint64(in.GID), 10)},
		}
		if !in.Mtime.IsZero() {
			sets = append(sets, [2]string{"mtime", fmt.Sprintf("@%d", in.Mtime.Unix())})
		}
		if !in.Atime.IsZero() {
			sets = append(sets, [2]string{"atime", fmt.Sprintf("@%d", in.Atime.Unix())})
		}
		for _, set := range sets {
			// Owners are always set: before e2fsprogs 1.47 ls -p shows
			// only their low 16 bits, so an equal-looking one may not be.
			if set[0] == "mode" && cur.mode == in.stMode() && !in.device() {
				continue
			}
			write = append(write, "sif "+ref+" "+set[0]+" "+set[1])
		}
		for j, attr := range slices.Sorted(maps.Keys(in.Xattrs)) {
			val := filepath.Join(dir, fmt.Sprintf("x%d-%d", i, j))
			if err := os.WriteFile(val, in.Xattrs[attr], 0o600); err != nil {
				return err
			}
			q, err := quote(val)
			if err != nil {
				return err
			}
			write = append(write, "ea_set -f "+q+" "+ref+" "+mustQuote(attr))
			out := val + ".read"
			if err := add(&check, "ea_get", "-f", out, in.Path, attr); err != nil {
				return err
			}
			xchecks = append(xchecks, xattrCheck{in, attr, out})
		}
	}
	for _, c := range write {
		if len(c) > maxLine {
			return fmt.Errorf("guestfs: a debugfs request is %d bytes; the limit is %d", len(c), maxLine)
		}
	}
	if _, err := im.runScript(ctx, dir, true, write); err != nil {
		return err
	}

	after, err := list()
	if err != nil {
		return err
	}
	for _, in := range inodes {
		d, name := dirAndName(in.Path)
		got, ok := after[d][name]
		switch {
		case !ok:
			return fmt.Errorf("guestfs: %s: not in %s after setting its owner and mode", in.Path, im.path)
		case got.mode != in.stMode() || (!wide(in) && (got.uid != in.UID || got.gid != in.GID)):
			return fmt.Errorf("guestfs: %s in %s is %06o %d:%d after debugfs set it to %06o %d:%d", in.Path, im.path, got.mode, got.uid, got.gid, in.stMode(), in.UID, in.GID)
		}
	}
	if len(check) == 0 {
		return nil
	}
	sections, err := im.runScript(ctx, dir, false, append([]string{rootSentinel}, check...))
	if err != nil {
		return err
	}
	k := 1
	for _, in := range inodes {
		if in.device() || wide(in) {
			fi := parseStat(sections[k])
			major, minor, isDev := deviceNumbers(sections[k])
			k++
			if fi == nil || fi.UID != in.UID || fi.GID != in.GID {
				return fmt.Errorf("guestfs: %s in %s is not owned by %d:%d after debugfs set it (%+v)", in.Path, im.path, in.UID, in.GID, fi)
			}
			if in.device() && (!isDev || major != in.Major || minor != in.Minor) {
				return fmt.Errorf("guestfs: device %s in %s is %d:%d (%v), want %d:%d", in.Path, im.path, major, minor, isDev, in.Major, in.Minor)
			}
		}
		k += len(in.Xattrs)
	}
	for _, x := range xchecks {
		got, err := os.ReadFile(x.out)
		if err != nil || !bytes.Equal(got, x.in.Xattrs[x.name]) {
			return fmt.Errorf("guestfs: extended attribute %s of %s in %s did not take (%v)", x.name, x.in.Path, im.path, err)
		}
	}
	return nil
}

// wide says whether an owner does not fit the 16 bits older debugfs
// lists: stat checks those.
func wide(in Inode) bool { return in.UID > 0xffff || in.GID > 0xffff }

var reDevice = regexp.MustCompile(`^Device major/minor number: (\d+):(\d+) `)

// deviceNumbers reads a device's numbers from debugfs's stat (decimal,
// before the hex).
func deviceNumbers(lines []string) (major, minor uint32, ok bool) {
	for _, l := range lines {
		if m := reDevice.FindStringSubmatch(l); m != nil {
			a, _ := strconv.ParseUint(m[1], 10, 32)
			b, _ := strconv.ParseUint(m[2], 10, 32)
			return uint32(a), uint32(b), true
		}
	}
	return 0, 0, false
}

// mustQuote quotes a name already checked by checkGuestPath.
func mustQuote(s string) string {
	q, _ := quote(s)
	return q
}
