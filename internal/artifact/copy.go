package artifact

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CopyFile copies the regular file src to dst with mode perm, replacing dst.
func CopyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// CopyTree copies directories, regular files and symlinks from src to dst,
// keeping modes. With hardlink, regular files are hard-linked where the
// filesystem allows (for artifacts that are never modified in place) and
// copied otherwise. Other file types are an error.
func CopyTree(src, dst string, hardlink bool) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			if hardlink && os.Link(p, target) == nil {
				return nil
			}
			return CopyFile(p, target, info.Mode().Perm())
		default:
			return fmt.Errorf("copy %s: unsupported file type %v", p, d.Type())
		}
	})
}

// ErrLinkInTree is wrapped by CopyTreeNoLinks for a symbolic link (or any
// file that is neither a directory nor a regular file) in the source.
var ErrLinkInTree = errors.New("not a regular file or directory")

// CopyTreeNoLinks copies a tree of directories and regular files only,
// for a caller's files the daemon takes in (kernel import): every file is
// copied (never hard-linked, so the caller keeps no write access to what
// is recorded), opened with O_NOFOLLOW and checked to be regular on the
// open descriptor, so a file swapped for a symbolic link meanwhile is
// refused rather than followed. A symbolic link anywhere is refused.
func CopyTreeNoLinks(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		case d.Type().IsRegular():
			return copyNoFollow(p, target)
		default:
			return fmt.Errorf("%s: %w (%v); import copies files only", p, ErrLinkInTree, d.Type())
		}
	})
}

func copyNoFollow(src, dst string) error {
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return fmt.Errorf("%s: %w (it became a symbolic link)", src, ErrLinkInTree)
		}
		return fmt.Errorf("open %s: %w", src, err)
	}
	in := os.NewFile(uintptr(fd), src)
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: %w", src, ErrLinkInTree)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}
