package oci

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/guestfs"
)

// owners is how a rootless unpack keeps what it may not apply. A process
// without root cannot chown, make device nodes or set security.*
// attributes, and must keep its own way into every directory and file to
// build the image at all; so each inode it makes in the staging tree is
// recorded here, by inode number, with the owner, mode, device numbers
// and attributes the image says, and guestfs.SetInodes applies them to
// the finished filesystem (Pull). Every inode the staging tree gets is
// recorded when it is made, so a number the kernel reuses after a
// whiteout is recorded afresh.
type owners struct {
	byIno map[uint64]owned
}

type owned struct {
	mode         fs.FileMode // type and permission bits, setuid/setgid/sticky included
	uid, gid     int
	major, minor uint32
	xattrs       map[string][]byte
	// times are a device's (debugfs dates the node it makes now).
	atime, mtime time.Time
}

func newOwners() *owners { return &owners{byIno: map[uint64]owned{}} }

// record notes m for the inode named by dirfd and name (name "" : dirfd
// itself), never following a final symlink.
func (o *owners) record(dirfd int, name string, m owned) error {
	var st unix.Stat_t
	var err error
	if name == "" {
		err = unix.Fstat(dirfd, &st)
	} else {
		err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("stat %s to record its owner: %w", name, err)
	}
	o.byIno[st.Ino] = m
	return nil
}

// setFd gives the inode open at fd m's owner and perm (a nil o: a root
// unpack), or, rootless, its staging mode, recording m for the image.
func (o *owners) setFd(fd int, m owned, perm uint32) error {
	if o == nil {
		return setOwnerMode(fd, m.uid, m.gid, perm)
	}
	if err := unix.Fchmod(fd, stagePerm(perm, m.mode.IsDir())); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return o.record(fd, "", m)
}

// stagePerm is the mode a rootless unpack gives a staged file: the
// image's permission bits without setuid, setgid and sticky (the host
// never holds a setuid file of the image's), and always the builder's
// own way in (mkfs.ext4 -d must read every file and enter every
// directory).
func stagePerm(perm uint32, dir bool) uint32 {
	p := perm & 0o777
	if dir {
		return p | 0o700
	}
	return p | 0o600
}

// goMode turns st_mode permission bits and a type into an fs.FileMode.
func goMode(typ fs.FileMode, perm uint32) fs.FileMode { return typ | guestfs.PermFromUnix(perm) }

// inodes lists, for each inode of the tree at rootDir (a hard-linked one
// once, but a device under each of its names), what the image must hold: the recorded owner and mode. An inode
// with no record, or whose record is of another type, is an error: the
// unpack made something it did not account for.
func (o *owners) inodes(rootDir string) ([]guestfs.Inode, error) {
	var out []guestfs.Inode
	seen := map[uint64]bool{}
	err := filepath.WalkDir(rootDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		m, recorded := o.byIno[st.Ino]
		if seen[st.Ino] && !(recorded && m.mode&fs.ModeDevice != 0) {
			return nil // a hard link: its inode is set once
		}
		// A device's placeholder linked under several names becomes a
		// node under each (debugfs makes nodes by name).
		seen[st.Ino] = true
		rel, err := filepath.Rel(rootDir, p)
		if err != nil {
			return err
		}
		guest := "/" + filepath.ToSlash(rel)
		if rel == "." {
			guest = "/"
		}
		if !recorded {
			return fmt.Errorf("unpacked %s has no recorded owner", guest)
		}
		staged := d.Type()
		want := m.mode.Type()
		if want != staged && !(want&fs.ModeDevice != 0 && staged == 0) {
			return fmt.Errorf("unpacked %s is a %v but was recorded as a %v", guest, staged, want)
		}
		out = append(out, guestfs.Inode{Path: guest, Mode: m.mode, UID: uint32(m.uid), GID: uint32(m.gid),
			Major: m.major, Minor: m.minor, Xattrs: m.xattrs, Atime: m.atime, Mtime: m.mtime})
		return nil
	})
	return out, err
}

// customize runs edit on the tree at rootDir. Rootless (own set), the
// inodes it made are recorded as root's with the type and mode they
// have, and lose on the host the setuid, setgid and sticky bits they
// keep in the image; an inode that was there before (renamed, linked
// anew, edited in place) keeps its record. An inode is known by its
// number and birth time: a file the edit replaces often gets the number
// of the one it removed, and without birth times (a filesystem that
// keeps none) that cannot be told from the same file, so a rootless
// edit is refused there.
func customize(rootDir string, own *owners, edit func(tree string) error) error {
	var before map[inodeID]bool
	if own != nil {
		var err error
		if before, err = treeInodes(rootDir); err != nil {
			return err
		}
	}
	if err := edit(rootDir); err != nil {
		return err
	}
	if own == nil {
		return nil
	}
	return filepath.WalkDir(rootDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		id, err := identify(p)
		if err != nil {
			return err
		}
		if before[id] {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		perm := st.Mode & 0o7777
		m := owned{mode: goMode(d.Type(), perm)}
		if d.Type()&fs.ModeSymlink == 0 {
			if err := unix.Chmod(p, stagePerm(perm, d.IsDir())); err != nil {
				return err
			}
		}
		return own.record(unix.AT_FDCWD, p, m)
	})
}

// inodeID tells one inode from another that later takes its number:
// its number and birth time.
type inodeID struct {
	ino       uint64
	sec, nsec int64
}

func identify(p string) (inodeID, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_BTIME, &stx); err != nil {
		return inodeID{}, err
	}
	if stx.Mask&unix.STATX_BTIME == 0 {
		return inodeID{}, fmt.Errorf("%s: its filesystem keeps no birth times, which editing an image without root needs (to tell the files an edit makes from those it finds); give banger a cache directory on ext4, xfs or btrfs", p)
	}
	return inodeID{ino: stx.Ino, sec: stx.Btime.Sec, nsec: int64(stx.Btime.Nsec)}, nil
}

// treeInodes lists the inodes of the tree at dir.
func treeInodes(dir string) (map[inodeID]bool, error) {
	out := map[inodeID]bool{}
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		id, err := identify(p)
		if err != nil {
			return err
		}
		out[id] = true
		return nil
	})
	return out, err
}
