package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/artifact"
	"banger/internal/disk"
	"banger/internal/kernel"
	"banger/internal/store"
)

// kernelImport copies a built kernel directory into the daemon's kernels
// directory and records it.
func (d *Daemon) kernelImport(ctx context.Context, p api.KernelImportParams) (api.Kernel, error) {
	if err := validateArtifactName("kernel", p.Name); err != nil {
		return api.Kernel{}, err
	}
	if p.From == "" || !filepath.IsAbs(p.From) {
		return api.Kernel{}, api.Errorf(api.CodeBadRequest, "--from must be an absolute directory path, got %q", p.From)
	}
	if _, err := d.store.GetKernel(ctx, p.Name); err == nil {
		return api.Kernel{}, api.Errorf(api.CodeAlreadyExists, "kernel %q already exists; remove it first with banger kernel rm %s", p.Name, p.Name)
	}
	m, err := kernel.LoadManifest(p.From)
	if err != nil {
		return api.Kernel{}, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	if err := m.Verify(p.From); err != nil {
		return api.Kernel{}, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	release, err := d.claimName("kernel", p.Name)
	if err != nil {
		return api.Kernel{}, err
	}
	defer release()
	// Checked again under the claim: an import of the same name that
	// finished meanwhile owns dst now.
	if _, err := d.store.GetKernel(ctx, p.Name); err == nil {
		return api.Kernel{}, api.Errorf(api.CodeAlreadyExists, "kernel %q already exists; remove it first with banger kernel rm %s", p.Name, p.Name)
	}
	dst := filepath.Join(d.layout.KernelsDir, p.Name)
	tmp := d.kernelImportDir(p.Name)
	_ = os.RemoveAll(tmp)
	// Copied, never linked: the caller keeps no write access to what is
	// recorded; and the copy is what is verified, not the caller's files.
	if err := artifact.CopyTreeNoLinks(p.From, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		if errors.Is(err, artifact.ErrLinkInTree) {
			return api.Kernel{}, api.Errorf(api.CodeBadRequest, "kernel import from %s: %v", p.From, err)
		}
		return api.Kernel{}, fmt.Errorf("copy kernel from %s: %w", p.From, err)
	}
	if err := m.Verify(tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return api.Kernel{}, api.Errorf(api.CodeBadRequest, "kernel import from %s: the files changed while they were copied: %v", p.From, err)
	}
	_ = os.RemoveAll(dst)
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.RemoveAll(tmp)
		return api.Kernel{}, err
	}
	k := store.Kernel{Name: p.Name, Arch: m.Arch, Source: fmt.Sprintf("%s %s (%s)", m.Source.Package, m.Source.Version, m.Source.Origin),
		Dir: dst, Version: m.Version, Files: "{}"}
	if err := d.store.CreateKernel(ctx, &k); err != nil {
		_ = os.RemoveAll(dst)
		return api.Kernel{}, err
	}
	return toAPIKernel(k), nil
}

// kernelImportDir is where an import copies a kernel before it is
// renamed into place.
func (d *Daemon) kernelImportDir(name string) string {
	return filepath.Join(d.layout.KernelsDir, name+importingSuffix)
}

func toAPIKernel(k store.Kernel) api.Kernel {
	return api.Kernel{Name: k.Name, Version: k.Version, Arch: k.Arch, Source: k.Source, Dir: k.Dir, CreatedAt: k.CreatedAt}
}

func (d *Daemon) kernelList(ctx context.Context, _ noParams) (api.KernelListResult, error) {
	ks, err := d.store.ListKernels(ctx)
	if err != nil {
		return api.KernelListResult{}, err
	}
	out := api.KernelListResult{Kernels: []api.Kernel{}}
	for _, k := range ks {
		out.Kernels = append(out.Kernels, toAPIKernel(k))
	}
	return out, nil
}

// imageRegister copies an ext4 root filesystem into the images directory
// and records it with its kernel.
func (d *Daemon) imageRegister(ctx context.Context, p api.ImageRegisterParams) (api.Image, error) {
	if err := validateArtifactName("image", p.Name); err != nil {
		return api.Image{}, err
	}
	if p.Rootfs == "" || !filepath.IsAbs(p.Rootfs) {
		return api.Image{}, api.Errorf(api.CodeBadRequest, "--rootfs must be an absolute file path, got %q", p.Rootfs)
	}
	st, err := os.Lstat(p.Rootfs)
	if err != nil || !st.Mode().IsRegular() {
		return api.Image{}, api.Errorf(api.CodeBadRequest, "--rootfs %s is not a readable regular file (a symbolic link is refused: give the file itself)", p.Rootfs)
	}
	if _, err := d.store.GetKernel(ctx, p.Kernel); err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			return api.Image{}, api.Errorf(api.CodeNotFound, "kernel %q not found; import it first (banger kernel import)", p.Kernel)
		}
		return api.Image{}, err
	}
	if _, err := d.store.GetImage(ctx, p.Name); err == nil {
		return api.Image{}, api.Errorf(api.CodeAlreadyExists, "image %q already exists; delete it first", p.Name)
	}
	release, err := d.claimName("image", p.Name)
	if err != nil {
		return api.Image{}, err
	}
	defer release()
	// Checked again under the claim: a register of the same name that
	// finished meanwhile owns the directory now. Without a row, whatever
	// is there was left by a register that died, and is replaced.
	if _, err := d.store.GetImage(ctx, p.Name); err == nil {
		return api.Image{}, api.Errorf(api.CodeAlreadyExists, "image %q already exists; delete it first", p.Name)
	}
	dir := filepath.Join(d.layout.ImagesDir, p.Name)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return api.Image{}, err
	}
	dst := filepath.Join(dir, "rootfs.ext4")
	if _, err := disk.CloneRoot(ctx, p.Rootfs, dst); err != nil {
		_ = os.RemoveAll(dir)
		return api.Image{}, fmt.Errorf("copy rootfs: %w", err)
	}
	sum, _, err := artifact.HashFile(dst)
	if err != nil {
		_ = os.RemoveAll(dir)
		return api.Image{}, err
	}
	im := store.Image{Name: p.Name, Kernel: p.Kernel, RootfsPath: dst, Source: "registered from " + p.Rootfs,
		SHA256: sum, SizeBytes: st.Size()}
	man := api.ImageManifest{Kind: api.ImageKindRegistered, BuiltAt: d.now(), From: p.Rootfs, SizeBytes: st.Size(), SHA256: sum,
		Packages: -1, Kernel: p.Kernel}
	if err := d.recordImage(ctx, &im, man); err != nil {
		_ = os.RemoveAll(dir)
		return api.Image{}, err
	}
	return toAPIImage(im), nil
}

func toAPIImage(im store.Image) api.Image {
	return api.Image{Name: im.Name, Kernel: im.Kernel, RootfsPath: im.RootfsPath, SizeBytes: im.SizeBytes,
		SHA256: im.SHA256, Source: im.Source, Default: im.IsDefault, CreatedAt: im.CreatedAt}
}

func (d *Daemon) imageList(ctx context.Context, _ noParams) (api.ImageListResult, error) {
	ims, err := d.store.ListImages(ctx)
	if err != nil {
		return api.ImageListResult{}, err
	}
	out := api.ImageListResult{Images: []api.Image{}}
	for _, im := range ims {
		out.Images = append(out.Images, toAPIImage(im))
	}
	return out, nil
}

func validateArtifactName(kind, name string) error {
	if !vmNameRE.MatchString(name) && !artifactNameRE.MatchString(name) {
		return api.Errorf(api.CodeBadRequest, "invalid %s name %q: use letters, digits, '.', '_' and '-'", kind, name)
	}
	// A half-done kernel import is NAME.importing beside the kernels, and
	// cache prune removes such names: no artifact may be called that.
	if strings.HasSuffix(name, importingSuffix) {
		return api.Errorf(api.CodeBadRequest, "invalid %s name %q: names ending in %s are banger's own (half-done imports)", kind, name, importingSuffix)
	}
	return nil
}

// importingSuffix names a kernel import in progress.
const importingSuffix = ".importing"
