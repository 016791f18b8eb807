// Package artifact holds what banger's build outputs (kernel and image
// directories) share on disk: a staging directory that is published by one
// rename, so an artifact appears complete or not at all, and the SHA-256
// hashing their manifests record.
//
// It knows nothing of kernels or images; it must not delete anything but
// its own staging and the previous copy it replaces.
package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// HashFile returns the hex SHA-256 and size of the file at path.
func HashFile(path string) (sum string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Staging is a directory beside Dest that becomes Dest in one rename.
type Staging struct {
	// Dir is where the artifact is built.
	Dir  string
	dest string
	done bool
}

// NewStaging creates a staging directory (mode 0755) beside dest.
func NewStaging(dest string) (*Staging, error) {
	dest = filepath.Clean(dest)
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".partial-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Staging{Dir: dir, dest: dest}, nil
}

// Publish moves the staged directory to dest, replacing what was there;
// if that fails the previous copy is put back.
func (s *Staging) Publish() error {
	var old string
	if _, err := os.Lstat(s.dest); err == nil {
		tmp, err := os.MkdirTemp(filepath.Dir(s.dest), "."+filepath.Base(s.dest)+".old-")
		if err != nil {
			return err
		}
		old = filepath.Join(tmp, "old")
		if err := os.Rename(s.dest, old); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("move the previous %s aside: %w", s.dest, err)
		}
		defer os.RemoveAll(tmp)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(s.Dir, s.dest); err != nil {
		if old != "" {
			_ = os.Rename(old, s.dest)
		}
		return fmt.Errorf("publish %s: %w", s.dest, err)
	}
	s.done = true
	return nil
}

// Discard removes the staged directory unless it was published.
func (s *Staging) Discard() {
	if !s.done {
		os.RemoveAll(s.Dir)
	}
}
