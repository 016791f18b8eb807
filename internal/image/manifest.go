package image

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"banger/internal/artifact"
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
	sum, size, err := artifact.HashFile(m.RootFSPath(dir))
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
