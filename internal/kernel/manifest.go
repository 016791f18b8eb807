package kernel

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/artifact"
)

// ManifestFile is the name of the manifest inside a kernel directory.
const ManifestFile = "manifest.json"

// manifestSchema is bumped when Manifest changes incompatibly.
const manifestSchema = 1

// File roles in Manifest.Files.
const (
	RoleVmlinuz = "vmlinuz" // bzImage (QEMU)
	RoleVmlinux = "vmlinux" // ELF (Firecracker)
	RoleInitrd  = "initrd"  // gzip'ed newc cpio
	RoleConfig  = "config"  // the kernel's .config
)

// Manifest describes a kernel directory.
type Manifest struct {
	SchemaVersion int `json:"schema_version"`
	// Name is the catalog name, e.g. "debian-6.1".
	Name string `json:"name"`
	// Version is the kernel release as `uname -r` prints it; it names the
	// modules directory inside guests (/lib/modules/<Version>).
	Version string `json:"version"`
	Arch    string `json:"arch"`
	Source  Source `json:"source"`
	// Files maps a role (RoleVmlinuz, ...) to a file in the directory.
	Files map[string]File `json:"files"`
	// ModulesDir is the directory, relative to the kernel directory, that
	// holds the /lib/modules/<Version> tree.
	ModulesDir string `json:"modules_dir"`
	// InitrdModules are the modules the initrd loads, in load order.
	InitrdModules []string `json:"initrd_modules"`
	// PVH reports whether vmlinux carries a PVH entry point note.
	PVH bool `json:"pvh"`
	// Cmdline is the base kernel command line this kernel's initrd expects;
	// the VMM appends its own arguments.
	Cmdline string `json:"cmdline"`
	// InitrdFeatures are what the initrd does beyond mounting the root
	// (FeatureConfigDisk, FeatureNetArg); a kernel built before a feature
	// existed lacks it, and the daemon refuses what needs it.
	InitrdFeatures []string  `json:"initrd_features,omitempty"`
	BuiltAt        time.Time `json:"built_at"`
}

// Initrd features.
const (
	// FeatureConfigDisk: the initrd applies a VM's configuration disk
	// (internal/configdisk) over the root before its init runs.
	FeatureConfigDisk = "config-disk"
	// FeatureNetArg: banger.net=ADDR/LEN,GW,MAC on the command line brings
	// the interface up in the initrd.
	FeatureNetArg = "net-arg"
)

// HasInitrdFeature reports whether the kernel's initrd does f.
func (m Manifest) HasInitrdFeature(f string) bool {
	for _, have := range m.InitrdFeatures {
		if have == f {
			return true
		}
	}
	return false
}

// Source names the package a kernel was built from.
type Source struct {
	// Package is the binary package, e.g. linux-image-6.1.0-56-amd64.
	Package string `json:"package"`
	// Version is the package version, e.g. 6.1.192-2.
	Version string `json:"version"`
	// Origin says where the package came from, e.g. "debian".
	Origin string `json:"origin"`
}

// File is one file of a kernel directory.
type File struct {
	// Path is relative to the kernel directory.
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// LoadManifest reads dir/manifest.json and checks that it names a kernel
// with the files a VMM needs. It does not hash the files; see Verify.
func LoadManifest(dir string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, fmt.Errorf("read kernel manifest in %s: %w (rebuild or re-pull the kernel)", dir, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("parse kernel manifest %s: %w (rebuild or re-pull the kernel)", filepath.Join(dir, ManifestFile), err)
	}
	if err := m.validate(); err != nil {
		return m, fmt.Errorf("kernel manifest %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return m, nil
}

func (m Manifest) validate() error {
	if m.SchemaVersion != manifestSchema {
		return fmt.Errorf("schema version %d, this banger reads %d", m.SchemaVersion, manifestSchema)
	}
	if m.Name == "" || m.Version == "" {
		return errors.New("name or version is empty")
	}
	for _, role := range []string{RoleVmlinuz, RoleInitrd} {
		if _, ok := m.Files[role]; !ok {
			return fmt.Errorf("no %q file", role)
		}
	}
	for role, f := range m.Files {
		if !filepath.IsLocal(f.Path) {
			return fmt.Errorf("file %q has path %q outside the kernel directory", role, f.Path)
		}
	}
	if m.ModulesDir != "" && !filepath.IsLocal(m.ModulesDir) {
		return fmt.Errorf("modules_dir %q is outside the kernel directory", m.ModulesDir)
	}
	return nil
}

// Path returns the absolute path of the file with the given role in the
// kernel directory dir, or an error when the manifest has no such file.
func (m Manifest) Path(dir, role string) (string, error) {
	f, ok := m.Files[role]
	if !ok {
		return "", fmt.Errorf("kernel %s has no %s file", m.Name, role)
	}
	return filepath.Join(dir, f.Path), nil
}

// Verify hashes every file of the manifest in dir and reports the first
// one that is missing or differs.
func (m Manifest) Verify(dir string) error {
	for role, f := range m.Files {
		sum, size, err := artifact.HashFile(filepath.Join(dir, f.Path))
		if err != nil {
			return fmt.Errorf("verify kernel %s %s: %w", m.Name, role, err)
		}
		if sum != f.SHA256 || size != f.Size {
			return fmt.Errorf("verify kernel %s: %s (%s) has sha256 %s size %d, manifest says %s size %d; rebuild or re-pull the kernel",
				m.Name, role, f.Path, sum, size, f.SHA256, f.Size)
		}
	}
	return nil
}

func writeManifest(dir string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode kernel manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write kernel manifest: %w", err)
	}
	return nil
}

// describeFile hashes dir/rel for the manifest.
func describeFile(dir, rel string) (File, error) {
	sum, size, err := artifact.HashFile(filepath.Join(dir, rel))
	if err != nil {
		return File{}, err
	}
	return File{Path: rel, SHA256: sum, Size: size}, nil
}

// BootCmdline is the full kernel command line a banger guest boots this
// kernel with: the manifest's base (root device for its initrd), the serial
// console, and loglevel=6, which keeps the console log readable (banner,
// warnings, errors) and gives the QEMU driver the banner it checks KVM
// boots by. panic=-1 with reboot=t ends the VMM on a guest panic.
func (m Manifest) BootCmdline() string {
	base := strings.TrimSpace(m.Cmdline)
	if base == "" {
		base = "root=/dev/vda rw"
	}
	if !strings.Contains(base, "console=") {
		base += " console=ttyS0"
	}
	return base + " loglevel=6 reboot=t panic=-1"
}
