package artifact

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
