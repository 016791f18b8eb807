package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// ManifestFile is the name of the manifest inside an image directory.
const ManifestFile = "manifest.json"

// RootFSFile is the root filesystem inside an image directory.
const RootFSFile = "rootfs.ext4"

const manifestSchema = 1

// Manifest describes an image directory.
type Manifest struct {
	SchemaVersion int `json:"schema_version"`
	// Name is the catalog name, e.g. "debian-bookworm".
	Name    string    `json:"name"`
	BuiltAt time.Time `json:"built_at"`
	// KernelVersion is the `uname -r` of the kernel whose modules are in
	// /lib/modules; empty when the image carries no modules.
	KernelVersion string     `json:"kernel_version,omitempty"`
	RootFS        FileRecord `json:"rootfs"`
	// Sources are the apt source lines the image was built from.
	Sources  []string  `json:"sources,omitempty"`
	Packages []Package `json:"packages"`
}

// FileRecord describes one file of an image directory.
type FileRecord struct {
	// Path is relative to the image directory.
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	// Size is the apparent size in bytes (the file is sparse).
	Size int64 `json:"size"`
}

// LoadManifest reads dir/manifest.json and checks that it names an image
// with a root filesystem. It does not hash the filesystem; see Verify.
func LoadManifest(dir string) (Manifest, error) {
	var m Manifest
	p := filepath.Join(dir, ManifestFile)
	data, err := os.ReadFile(p)
	if err != nil {
		return m, fmt.Errorf("read image manifest in %s: %w (rebuild or re-pull the image)", dir, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("parse image manifest %s: %w (rebuild or re-pull the image)", p, err)
	}
	switch {
	case m.SchemaVersion != manifestSchema:
		return m, fmt.Errorf("image manifest %s: schema version %d, this banger reads %d", p, m.SchemaVersion, manifestSchema)
	case m.Name == "":
		return m, fmt.Errorf("image manifest %s: no name", p)
	case m.RootFS.Path == "" || !filepath.IsLocal(m.RootFS.Path):
		return m, fmt.Errorf("image manifest %s: rootfs path %q is not inside the image directory", p, m.RootFS.Path)
	}
	return m, nil
}

// RootFSPath is the absolute path of the image's root filesystem.
func (m Manifest) RootFSPath(dir string) string { return filepath.Join(dir, m.RootFS.Path) }

// Verify hashes the root filesystem in dir against the manifest.
func (m Manifest) Verify(dir string) error {
	sum, size, err := hashFile(m.RootFSPath(dir))
	if err != nil {
		return fmt.Errorf("verify image %s: %w", m.Name, err)
	}
	if sum != m.RootFS.SHA256 || size != m.RootFS.Size {
		return fmt.Errorf("verify image %s: %s has sha256 %s size %d, manifest says %s size %d; rebuild or re-pull the image",
			m.Name, m.RootFS.Path, sum, size, m.RootFS.SHA256, m.RootFS.Size)
	}
	return nil
}

func writeManifest(dir string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write image manifest: %w", err)
	}
	return nil
}

func hashFile(path string) (string, int64, error) {
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

// staging is a directory beside dest that becomes dest in one rename, so
// an image directory appears complete or not at all.
type staging struct {
	dir, dest string
	done      bool
}

func newStaging(dest string) (*staging, error) {
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
	return &staging{dir: dir, dest: dest}, nil
}

// publish moves the staged directory to dest, replacing what was there.
func (s *staging) publish() error {
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
	if err := os.Rename(s.dir, s.dest); err != nil {
		if old != "" {
			os.Rename(old, s.dest)
		}
		return fmt.Errorf("publish %s: %w", s.dest, err)
	}
	s.done = true
	return nil
}

// discard removes the staged directory unless it was published.
func (s *staging) discard() {
	if !s.done {
		os.RemoveAll(s.dir)
	}
}
