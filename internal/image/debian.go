package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/artifact"
	"banger/internal/oci"
)

// DebianBookwormName is the catalog name of the image BuildDebianBookworm
// makes.
const DebianBookwormName = "debian-bookworm"

// Recipe names the build recipe of debian-bookworm. Bump it whenever what
// BuildDebianBookworm produces changes, so caches of built images (the
// e2e suite's) rebuild instead of booting a stale image.
const Recipe = "bookworm-3"

const bookworm = "bookworm"

// DefaultSizeBytes is the root filesystem size when BuildOptions leaves
// SizeBytes zero. The file is sparse: unused space costs no disk.
const DefaultSizeBytes int64 = 2 << 30

// minSizeBytes leaves room for the ~650 MB tree (with kernel modules).
const minSizeBytes int64 = 1 << 30

// DebianBookwormPackages are installed on top of mmdebstrap's minbase
// variant (which installs no Recommends). systemd-networkd ships in
// systemd; systemd-resolved is left out so that /etc/resolv.conf stays a
// plain file the daemon writes.
var DebianBookwormPackages = []string{
	"systemd-sysv", "udev", "kmod", "dbus", "libpam-systemd",
	"openssh-server", "iproute2", "ca-certificates", "sudo", "git", "curl",
	"e2fsprogs", "less",
}

// dpkgPathFilters keep documentation, man pages and translations out of
// the image (copyright files stay).
var dpkgPathFilters = []string{
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/locale/*",
	"path-include=/usr/share/locale/locale.alias",
	"path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright",
}

// File is a file to place in the image.
type File struct {
	Data []byte
	// Mode is Go's fs.FileMode: permission bits, optionally with
	// fs.ModeSetuid, fs.ModeSetgid or fs.ModeSticky.
	Mode fs.FileMode
}

const extraFileModeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// BuildOptions configure BuildDebianBookworm.
type BuildOptions struct {
	// WorkDir holds the unpacked tree while the build runs (~700 MB).
	WorkDir string
	// DestDir receives rootfs.ext4 and manifest.json. It appears complete
	// or not at all; an existing DestDir is replaced once the build is done.
	DestDir string
	// KernelModulesDir is a kernel's modules tree (/lib/modules/<version>),
	// placed at /lib/modules/<KernelVersion> in the image. Both or neither.
	KernelModulesDir string
	KernelVersion    string
	// SizeBytes is the root filesystem's size; zero means DefaultSizeBytes.
	SizeBytes int64
	// ExtraFiles are written into the image last: guest path -> file.
	ExtraFiles map[string]File
	// Sources are apt source lines ("deb URI SUITE COMPONENTS") or mirror
	// URIs for mmdebstrap. Empty means the host's configured sources for
	// bookworm, bookworm-updates and bookworm-security (/etc/apt), or
	// an error when the host has none.
	Sources []string
	// Progress, when not nil, is told each stage as it starts.
	Progress func(stage string)
}

// BuildDebianBookworm builds the image "debian-bookworm" into
// opts.DestDir. As root, mmdebstrap installs the packages into a
// directory, depmod runs chrooted in it, and mkfs.ext4 copies it. Without
// root (a system install's daemon) mmdebstrap runs them under fakechroot
// and fakeroot and writes a tar whose headers carry the owners, which
// the rootless OCI conversion turns into the filesystem (oci.ConvertTar),
// with banger's edits of the tree made there (they become root's) and
// depmod run under fakechroot.
func BuildDebianBookworm(ctx context.Context, r Runner, opts BuildOptions) (Manifest, error) {
	if err := opts.check(); err != nil {
		return Manifest{}, fmt.Errorf("build image %s: %w", DebianBookwormName, err)
	}
	if opts.Progress == nil {
		opts.Progress = func(string) {}
	}
	if opts.SizeBytes == 0 {
		opts.SizeBytes = DefaultSizeBytes
	}
	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("build image %s: %w", DebianBookwormName, err)
	}
	work, err := os.MkdirTemp(opts.WorkDir, "image-"+DebianBookwormName+"-")
	if err != nil {
		return Manifest{}, fmt.Errorf("build image %s: %w", DebianBookwormName, err)
	}
	defer os.RemoveAll(work)
	stage, err := artifact.NewStaging(opts.DestDir)
	if err != nil {
		return Manifest{}, fmt.Errorf("build image %s: %w", DebianBookwormName, err)
	}
	defer stage.Discard()

	m, err := buildDebianBookworm(ctx, r, opts, filepath.Join(work, "tree"), stage.Dir)
	if err != nil {
		return Manifest{}, fmt.Errorf("build image %s: %w", DebianBookwormName, err)
	}
	opts.Progress("publish")
	if err := stage.Publish(); err != nil {
		return Manifest{}, fmt.Errorf("build image %s: %w", DebianBookwormName, err)
	}
	return m, nil
}

func (o BuildOptions) check() error {
	if o.WorkDir == "" || o.DestDir == "" {
		return errors.New("WorkDir and DestDir are required")
	}
	if (o.KernelModulesDir == "") != (o.KernelVersion == "") {
		return errors.New("KernelModulesDir and KernelVersion go together: set both or neither")
	}
	if o.KernelVersion != "" && (strings.ContainsAny(o.KernelVersion, "/\x00") || o.KernelVersion == "." || o.KernelVersion == ".." ||
		strings.HasPrefix(o.KernelVersion, "-")) {
		return fmt.Errorf("kernel version %q is not a directory name", o.KernelVersion)
	}
	if o.SizeBytes != 0 && o.SizeBytes < minSizeBytes {
		return fmt.Errorf("size %d bytes is below the %d-byte minimum", o.SizeBytes, minSizeBytes)
	}
	for p, f := range o.ExtraFiles {
		if _, err := guestRel(p); err != nil {
			return err
		}
		if f.Mode&^extraFileModeBits != 0 {
			return fmt.Errorf("extra file %q: mode %v has bits beyond permissions, fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky (Unix 04000 is not fs.ModeSetuid)", p, f.Mode)
		}
	}
	return nil
}

// guestRel turns an absolute guest path into a path relative to the tree.
func guestRel(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return "", fmt.Errorf("extra file %q: want a clean absolute path to a file", p)
	}
	return strings.TrimPrefix(p, "/"), nil
}

func buildDebianBookworm(ctx context.Context, r Runner, opts BuildOptions, tree, out string) (Manifest, error) {
	sources := opts.Sources
	if len(sources) == 0 {
		var err error
		if sources, err = hostDebianSources("/etc/apt", bookworm); err != nil {
			return Manifest{}, fmt.Errorf("read the host's apt sources: %w", err)
		}
		if len(sources) == 0 {
			return Manifest{}, fmt.Errorf("the host's apt sources (/etc/apt) name no Debian %s repository; add one (deb URI %s main) and retry", bookworm, bookworm)
		}
	}

	rootless := os.Geteuid() != 0
	opts.Progress("mmdebstrap")
	mode, format, target := "--mode=root", "--format=directory", tree
	if rootless {
		// fakechroot mode runs dpkg and the maintainer scripts under
		// fakechroot and fakeroot; only the tar it writes keeps owners.
		mode, format, target = "--mode=fakechroot", "--format=tar", tree+".tar"
	}
	argv := []string{"mmdebstrap", mode, format, "--variant=minbase",
		"--include=" + strings.Join(DebianBookwormPackages, ",")}
	if rootless {
		// A tar is made in a temporary directory of $TMPDIR's: the work
		// directory's, not /tmp (read-only to a system install's daemon).
		argv = append([]string{"env", "TMPDIR=" + filepath.Dir(tree)}, argv...)
	}
	for _, f := range dpkgPathFilters {
		argv = append(argv, "--dpkgopt="+f)
	}
	argv = append(argv, bookworm, target)
	argv = append(argv, sources...)
	if _, err := r.Run(ctx, argv...); err != nil {
		return Manifest{}, fmt.Errorf("mmdebstrap: %w (is mmdebstrap installed%s and a Debian mirror reachable?)", err, map[bool]string{true: ", with fakechroot and fakeroot,"}[rootless])
	}

	var pkgs []Package
	edit := func(tree string) error {
		if rootless {
			// Unpacked: the tar is no longer needed, and the disk it
			// takes is (tar, tree and filesystem would all be there).
			if err := os.Remove(target); err != nil {
				return err
			}
		}
		opts.Progress("customize")
		if err := customizeTree(tree); err != nil {
			return err
		}
		if opts.KernelModulesDir != "" {
			opts.Progress("kernel modules")
			if err := installModules(ctx, r, rootless, tree, opts.KernelModulesDir, opts.KernelVersion); err != nil {
				return err
			}
		}
		if len(opts.ExtraFiles) > 0 {
			opts.Progress("extra files")
			if err := writeExtraFiles(tree, opts.ExtraFiles); err != nil {
				return err
			}
		}
		status, err := os.Open(filepath.Join(tree, "var/lib/dpkg/status"))
		if err != nil {
			return fmt.Errorf("list packages: %w", err)
		}
		defer status.Close()
		pkgs, err = parseDpkgStatus(status)
		return err
	}

	rootfs := filepath.Join(out, RootFSFile)
	if rootless {
		if _, err := oci.ConvertTar(ctx, r, target, oci.Options{DestFile: rootfs, WorkDir: filepath.Dir(tree),
			SizeBytes: opts.SizeBytes, Rootless: true, Customize: edit,
			Progress: func(stage string, done, _ int64) {
				if stage == "mkfs" && done == 0 {
					opts.Progress("mkfs")
				}
			}}); err != nil {
			return Manifest{}, err
		}
	} else {
		if err := edit(tree); err != nil {
			return Manifest{}, err
		}
		opts.Progress("mkfs")
		if err := makeExt4(ctx, r, tree, rootfs, opts.SizeBytes); err != nil {
			return Manifest{}, err
		}
	}

	opts.Progress("manifest")
	sum, size, err := artifact.HashFile(rootfs)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{
		SchemaVersion: manifestSchema,
		Name:          DebianBookwormName,
		BuiltAt:       time.Now().UTC().Truncate(time.Second),
		KernelVersion: opts.KernelVersion,
		RootFS:        FileRecord{Path: RootFSFile, SHA256: sum, Size: size},
		Sources:       sources,
		Packages:      pkgs,
	}
	if err := writeManifest(out, m); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// installModules places the kernel's modules tree and builds its indexes
// with the image's own depmod, chrooted (under fakechroot when rootless),
// so udev in the guest can load modules.
func installModules(ctx context.Context, r Runner, rootless bool, tree, src, version string) error {
	if _, err := os.Stat(filepath.Join(src, "modules.order")); err != nil {
		return fmt.Errorf("kernel modules %s: %w (want a /lib/modules/<version> tree)", src, err)
	}
	root, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	dst := path.Join("lib/modules", version)
	if err := root.RemoveAll(dst); err != nil {
		return err
	}
	if err := copyIntoRoot(root, src, dst); err != nil {
		return fmt.Errorf("copy kernel modules: %w", err)
	}
	argv := []string{"chroot", tree, "/sbin/depmod", "-a", version}
	if rootless {
		// Debian's depmod is a symlink to /bin/kmod, which the kernel
		// would look up on the host, not in fakechroot's tree: bash
		// finds it there and runs it under the name kmod acts on.
		argv = []string{"fakechroot", "chroot", tree, "/bin/bash", "-c",
			`exec -a depmod "$(readlink -f /sbin/depmod)" -a "$1"`, "depmod", version}
	}
	if _, err := r.Run(ctx, argv...); err != nil {
		return fmt.Errorf("depmod %s in the image: %w", version, err)
	}
	return nil
}

func writeExtraFiles(tree string, files map[string]File) error {
	root, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	for p, f := range files {
		rel, err := guestRel(p)
		if err != nil {
			return err
		}
		if err := replaceFile(root, rel, f.Data, f.Mode&extraFileModeBits); err != nil {
			return fmt.Errorf("extra file %s: %w", p, err)
		}
	}
	return nil
}

// makeExt4 makes a sparse ext4 filesystem of size bytes at file holding
// the tree. Lazy inode-table and journal init keep mkfs from writing
// zeroes over the whole file.
func makeExt4(ctx context.Context, r Runner, tree, file string, size int64) error {
	used, err := treeBytes(tree)
	if err != nil {
		return err
	}
	if used > size*9/10 {
		return fmt.Errorf("the image tree holds %d bytes; a %d-byte filesystem is too small (raise the size)", used, size)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", file, err)
	}
	if _, err := r.Run(ctx, "mkfs.ext4", "-F", "-q", "-L", "bangerroot", "-d", tree,
		"-E", "lazy_itable_init=1,lazy_journal_init=1", file); err != nil {
		return fmt.Errorf("mkfs.ext4: %w", err)
	}
	return nil
}

// treeBytes sums the sizes of the regular files under dir.
func treeBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}
