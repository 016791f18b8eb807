package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/artifact"
)

// DebianName is the catalog name of the kernel BuildDebian makes.
const DebianName = "debian-6.1"

// Recipe names the build recipe of debian-6.1 (the initrd and the files
// made). Bump it whenever BuildDebian's output changes, so caches of built
// kernels rebuild.
const Recipe = "debian-6.1-4"

// debianMetaPackage always depends on the current Debian kernel.
const debianMetaPackage = "linux-image-amd64"

// DebianCmdline is the base command line for kernels built by
// BuildDebian: serial console, root on the first virtio disk.
const DebianCmdline = "console=ttyS0 root=/dev/vda rw"

// BuildDebian builds the kernel "debian-6.1" into destDir from the host's
// configured Debian sources: the package linux-image-amd64 depends on, and
// busybox-static for the initrd. workDir holds downloads and unpacked
// packages while it runs; destDir appears complete or not at all (an
// existing destDir is replaced only once the new build is done).
// progress, when not nil, is told each stage as it starts.
func BuildDebian(ctx context.Context, r Runner, workDir, destDir string, progress func(stage string)) (Manifest, error) {
	if progress == nil {
		progress = func(string) {}
	}
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("build kernel %s: %w", DebianName, err)
	}
	work, err := os.MkdirTemp(workDir, "kernel-"+DebianName+"-")
	if err != nil {
		return Manifest{}, fmt.Errorf("build kernel %s: %w", DebianName, err)
	}
	defer os.RemoveAll(work)
	stage, err := artifact.NewStaging(destDir)
	if err != nil {
		return Manifest{}, fmt.Errorf("build kernel %s: %w", DebianName, err)
	}
	defer stage.Discard()

	m, err := buildDebian(ctx, r, work, stage.Dir, progress)
	if err != nil {
		return Manifest{}, fmt.Errorf("build kernel %s: %w", DebianName, err)
	}
	progress("publish")
	if err := stage.Publish(); err != nil {
		return Manifest{}, fmt.Errorf("build kernel %s: %w", DebianName, err)
	}
	return m, nil
}

func buildDebian(ctx context.Context, r Runner, work, out string, progress func(string)) (Manifest, error) {
	downloads := filepath.Join(work, "debs")
	if err := os.Mkdir(downloads, 0o755); err != nil {
		return Manifest{}, err
	}

	progress("resolve " + debianMetaPackage)
	meta, err := aptDownload(ctx, r, downloads, debianMetaPackage)
	if err != nil {
		return Manifest{}, err
	}
	metaFields, err := debFields(ctx, r, meta)
	if err != nil {
		return Manifest{}, err
	}
	pkg, err := concreteKernelPackage(metaFields["Depends"])
	if err != nil {
		return Manifest{}, fmt.Errorf("%s %s: %w", debianMetaPackage, metaFields["Version"], err)
	}

	progress("download " + pkg)
	kernelDeb, err := aptDownload(ctx, r, downloads, pkg)
	if err != nil {
		return Manifest{}, err
	}
	kernelFields, err := debFields(ctx, r, kernelDeb)
	if err != nil {
		return Manifest{}, err
	}
	progress("download busybox-static")
	busyboxDeb, err := aptDownload(ctx, r, downloads, "busybox-static")
	if err != nil {
		return Manifest{}, err
	}

	progress("unpack")
	kroot := filepath.Join(work, "kernel")
	bbroot := filepath.Join(work, "busybox")
	for _, u := range []struct{ deb, dir string }{{kernelDeb, kroot}, {busyboxDeb, bbroot}} {
		if _, err := r.Run(ctx, "dpkg-deb", "--extract", u.deb, u.dir); err != nil {
			return Manifest{}, fmt.Errorf("unpack %s: %w", filepath.Base(u.deb), err)
		}
	}
	busybox := filepath.Join(bbroot, "bin", "busybox")
	modulesBase, version, err := findModulesTree(kroot)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", pkg, err)
	}
	modulesDir := filepath.Join(modulesBase, version)
	vmlinuz := filepath.Join(kroot, "boot", "vmlinuz-"+version)
	if _, err := os.Stat(vmlinuz); err != nil {
		return Manifest{}, fmt.Errorf("%s has no boot/vmlinuz-%s: %w", pkg, version, err)
	}

	// Debian's postinst runs depmod; unpacking skips it, so modules.dep is
	// generated here with busybox's depmod (no kmod needed on the host).
	if _, err := os.Stat(filepath.Join(modulesDir, "modules.dep")); errors.Is(err, os.ErrNotExist) {
		progress("depmod")
		// busybox depmod wants -b to be the directory holding lib/modules.
		if _, err := r.Run(ctx, busybox, "depmod", "-b", filepath.Dir(filepath.Dir(modulesBase)), version); err != nil {
			return Manifest{}, fmt.Errorf("depmod %s: %w", version, err)
		}
	}

	progress("initrd")
	loaded, err := buildInitrd(ctx, r, initrdSpec{
		Busybox:    busybox,
		ModulesDir: modulesDir,
		Version:    version,
		Modules:    InitrdModules,
		Out:        filepath.Join(out, "initrd.img"),
	})
	if err != nil {
		return Manifest{}, err
	}

	progress("extract vmlinux")
	if err := artifact.CopyFile(vmlinuz, filepath.Join(out, "vmlinuz"), 0o644); err != nil {
		return Manifest{}, err
	}
	if err := ExtractVmlinux(ctx, r, vmlinuz, filepath.Join(out, "vmlinux")); err != nil {
		return Manifest{}, err
	}
	pvh, err := HasPVHNote(filepath.Join(out, "vmlinux"))
	if err != nil {
		return Manifest{}, err
	}
	files := map[string]string{RoleVmlinuz: "vmlinuz", RoleVmlinux: "vmlinux", RoleInitrd: "initrd.img"}
	if config := filepath.Join(kroot, "boot", "config-"+version); fileExists(config) {
		if err := artifact.CopyFile(config, filepath.Join(out, "config"), 0o644); err != nil {
			return Manifest{}, err
		}
		files[RoleConfig] = "config"
	}

	progress("modules")
	if err := moveTree(modulesDir, filepath.Join(out, "modules")); err != nil {
		return Manifest{}, fmt.Errorf("move modules tree: %w", err)
	}

	progress("manifest")
	m := Manifest{
		SchemaVersion: manifestSchema,
		Name:          DebianName,
		Version:       version,
		Arch:          kernelFields["Architecture"],
		Source: Source{
			Package: kernelFields["Package"],
			Version: kernelFields["Version"],
			Origin:  "debian",
		},
		Files:          map[string]File{},
		ModulesDir:     "modules",
		InitrdModules:  loaded,
		PVH:            pvh,
		Cmdline:        DebianCmdline,
		InitrdFeatures: []string{FeatureConfigDisk, FeatureNetArg},
		BuiltAt:        time.Now().UTC().Truncate(time.Second),
	}
	for role, rel := range files {
		f, err := describeFile(out, rel)
		if err != nil {
			return Manifest{}, err
		}
		m.Files[role] = f
	}
	if err := writeManifest(out, m); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// concreteKernelPackage picks the linux-image-<abi>-<flavour> package out
// of the meta package's Depends field.
func concreteKernelPackage(depends string) (string, error) {
	for _, alt := range strings.Split(depends, ",") {
		for _, dep := range strings.Split(alt, "|") {
			name, _, _ := strings.Cut(strings.TrimSpace(dep), " ")
			name, _, _ = strings.Cut(name, ":")
			if strings.HasPrefix(name, "linux-image-") && name != debianMetaPackage {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("depends on no linux-image-* package (Depends: %q)", depends)
}

// findModulesTree finds the single lib/modules/<version> directory in an
// unpacked kernel package (usr/lib/modules on merged-/usr layouts) and
// returns the modules base directory and the version.
func findModulesTree(root string) (base, version string, err error) {
	for _, rel := range []string{"lib/modules", "usr/lib/modules"} {
		base = filepath.Join(root, rel)
		entries, err := os.ReadDir(base)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", "", err
		}
		var versions []string
		for _, e := range entries {
			if e.IsDir() {
				versions = append(versions, e.Name())
			}
		}
		if len(versions) != 1 {
			return "", "", fmt.Errorf("want one kernel version under %s, found %v", rel, versions)
		}
		return base, versions[0], nil
	}
	return "", "", errors.New("no lib/modules directory in the package")
}
