package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExtraTree is a host directory placed in the image at Dest after the
// layers are unpacked and before the filesystem is built: a kernel's
// /lib/modules/<version> tree, which is thousands of files and far
// cheaper to add here than to write into the finished ext4 one by one.
type ExtraTree struct {
	// Src is a host directory. Directories, regular files and symlinks
	// are copied with their permission bits, owned by root.
	Src string
	// Dest is an absolute, clean guest path other than "/". Whatever the
	// image holds there is replaced. Symlinks on the way to Dest are
	// followed inside the image root (merged-/usr /lib -> usr/lib).
	Dest string
}

func (t ExtraTree) check() error {
	if !path.IsAbs(t.Dest) || path.Clean(t.Dest) != t.Dest || t.Dest == "/" {
		return fmt.Errorf("extra tree destination %q: want a clean absolute guest path other than /", t.Dest)
	}
	st, err := os.Stat(t.Src)
	if err != nil {
		return fmt.Errorf("extra tree for %s: %w", t.Dest, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("extra tree for %s: %s is not a directory", t.Dest, t.Src)
	}
	return nil
}

// addExtraTrees copies each tree into the staging root, in order.
func addExtraTrees(ctx context.Context, rootDir string, trees []ExtraTree, own *owners) error {
	if len(trees) == 0 {
		return nil
	}
	r, err := openRoot(rootDir)
	if err != nil {
		return err
	}
	r.own = own
	defer r.close()
	for _, t := range trees {
		if err := r.addTree(ctx, t); err != nil {
			return fmt.Errorf("add %s to the image at %s: %w", t.Src, t.Dest, err)
		}
	}
	return nil
}

func (r *root) addTree(ctx context.Context, t ExtraTree) error {
	parent, base := splitRel(strings.TrimPrefix(t.Dest, "/"))
	pfd, err := r.openDir(parent, true)
	if err != nil {
		return fmt.Errorf("parent directory: %w", err)
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, base); err != nil {
		return fmt.Errorf("replace what the image has there: %w", err)
	}
	return copyDirAt(ctx, t.Src, pfd, base, r.own)
}

// copyDirAt makes directory name in parentFd and copies the host
// directory src into it. Everything below name was made here, so entries
// are created with *at calls that never follow a symlink.
func copyDirAt(ctx context.Context, src string, parentFd int, name string, own *owners) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	perm, err := hostPerm(src)
	if err != nil {
		return err
	}
	if err := unix.Mkdirat(parentFd, name, 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", name, err)
	}
	fd, err := unix.Openat(parentFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", name, err)
	}
	defer unix.Close(fd)
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(src, e.Name())
		switch {
		case e.IsDir():
			err = copyDirAt(ctx, p, fd, e.Name(), own)
		case e.Type()&os.ModeSymlink != 0:
			err = copySymlinkAt(p, fd, e.Name(), own)
		case e.Type().IsRegular():
			err = copyFileAt(p, fd, e.Name(), own)
		default:
			err = fmt.Errorf("%s: unsupported file type %v (only directories, files and symlinks are copied)", p, e.Type())
		}
		if err != nil {
			return err
		}
	}
	return rootOwned(fd, fs.ModeDir, perm, own)
}

// rootOwned makes the copy open at fd root's with perm, or (rootless)
// records that.
func rootOwned(fd int, typ fs.FileMode, perm uint32, own *owners) error {
	return own.setFd(fd, owned{mode: goMode(typ, perm)}, perm)
}

func copySymlinkAt(src string, dirFd int, name string, own *owners) error {
	target, err := os.Readlink(src)
	if err != nil {
		return err
	}
	if err := unix.Symlinkat(target, dirFd, name); err != nil {
		return fmt.Errorf("symlink %s: %w", name, err)
	}
	if own != nil {
		return own.record(dirFd, name, owned{mode: fs.ModeSymlink | 0o777})
	}
	if err := unix.Fchownat(dirFd, name, 0, 0, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown symlink %s: %w", name, err)
	}
	return nil
}

func copyFileAt(src string, dirFd int, name string, own *owners) error {
	perm, err := hostPerm(src)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fd, err := unix.Openat(dirFd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	out := os.NewFile(uintptr(fd), name)
	_, err = io.Copy(out, in) // copy_file_range where the file systems allow
	if err == nil {
		err = rootOwned(fd, 0, perm, own)
	}
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// hostPerm is the st_mode permission bits (setuid, setgid, sticky
// included) of a host path, not following a final symlink.
func hostPerm(p string) (uint32, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, errors.New("no stat for " + p)
	}
	return st.Mode & 0o7777, nil
}
