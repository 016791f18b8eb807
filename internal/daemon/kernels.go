package daemon

import (
	"context"
	"os"
	"sort"
	"strings"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/store"
)

func (d *Daemon) getKernel(ctx context.Context, name string) (store.Kernel, error) {
	k, err := d.store.GetKernel(ctx, name)
	if api.IsCode(err, api.CodeNotFound) {
		return k, api.Errorf(api.CodeNotFound, "kernel %q not found; see banger kernel list", name)
	}
	return k, err
}

func (d *Daemon) kernelCatalogList(ctx context.Context, _ noParams) (api.KernelCatalogResult, error) {
	out := api.KernelCatalogResult{Kernels: []api.KernelCatalogEntry{}}
	for _, n := range strings.Split(catalogNames(kernelCatalog), ", ") {
		_, err := d.store.GetKernel(ctx, n)
		if err != nil && !api.IsCode(err, api.CodeNotFound) {
			return api.KernelCatalogResult{}, err
		}
		out.Kernels = append(out.Kernels, api.KernelCatalogEntry{Name: n, About: kernelCatalog[n], Installed: err == nil})
	}
	return out, nil
}

// kernelUsers lists the images and VMs that boot kernel name.
func (d *Daemon) kernelUsers(ctx context.Context, name string) (images, vms []string, err error) {
	ims, err := d.store.ListImages(ctx)
	if err != nil {
		return nil, nil, err
	}
	images = []string{}
	for _, im := range ims {
		if im.Kernel == name {
			images = append(images, im.Name)
		}
	}
	all, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, nil, err
	}
	vms = []string{}
	for _, v := range all {
		if v.Kernel == name {
			vms = append(vms, v.Name)
		}
	}
	return images, vms, nil
}

func (d *Daemon) kernelShow(ctx context.Context, p api.ArtifactRef) (api.KernelDetails, error) {
	k, err := d.getKernel(ctx, p.Name)
	if err != nil {
		return api.KernelDetails{}, err
	}
	out := api.KernelDetails{Kernel: toAPIKernel(k), Files: []api.KernelFile{}, Suits: []string{}}
	if out.Images, out.VMs, err = d.kernelUsers(ctx, k.Name); err != nil {
		return api.KernelDetails{}, err
	}
	m, err := kernel.LoadManifest(k.Dir)
	if err != nil {
		out.ManifestError = err.Error()
		return out, nil
	}
	describeKernel(&out, m)
	return out, nil
}

// describeKernel fills what the manifest says, including which VMMs can
// boot the kernel: QEMU takes the bzImage, Firecracker an ELF vmlinux
// with a PVH entry point.
func describeKernel(out *api.KernelDetails, m kernel.Manifest) {
	out.SourcePackage, out.SourceVersion = m.Source.Package, m.Source.Version
	out.ModulesDir, out.InitrdModules, out.PVH, out.Cmdline, out.BuiltAt = m.ModulesDir, m.InitrdModules, m.PVH, m.Cmdline, m.BuiltAt
	for role, f := range m.Files {
		out.Files = append(out.Files, api.KernelFile{Role: role, Path: f.Path, SHA256: f.SHA256, Size: f.Size})
	}
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Role < out.Files[j].Role })
	if _, ok := m.Files[kernel.RoleVmlinuz]; ok {
		out.Suits = append(out.Suits, "qemu")
	}
	if _, ok := m.Files[kernel.RoleVmlinux]; ok && m.PVH {
		out.Suits = append(out.Suits, "firecracker")
	}
}

// kernelRm removes a kernel no image, VM or running pull uses.
func (d *Daemon) kernelRm(ctx context.Context, p api.ArtifactRef) (api.Kernel, error) {
	k, err := d.getKernel(ctx, p.Name)
	if err != nil {
		return api.Kernel{}, err
	}
	// allocMu: no create can reserve a VM on this kernel between the
	// check and the delete.
	d.allocMu.Lock()
	defer d.allocMu.Unlock()
	images, vms, err := d.kernelUsers(ctx, k.Name)
	if err != nil {
		return api.Kernel{}, err
	}
	switch {
	case len(images) > 0:
		return api.Kernel{}, api.Errorf(api.CodeBadRequest, "kernel %q is used by image %s; delete those images first", k.Name, strings.Join(images, ", "))
	case len(vms) > 0:
		return api.Kernel{}, api.Errorf(api.CodeBadRequest, "kernel %q is used by VM %s; delete those VMs first", k.Name, strings.Join(vms, ", "))
	}
	// Under the pulls' lock no image pull can start using it meanwhile.
	d.pulls.mu.Lock()
	for _, op := range d.pulls.running() {
		if op.kernel == k.Name {
			d.pulls.mu.Unlock()
			return api.Kernel{}, api.Errorf(api.CodeBadRequest, "kernel %q is in use by %s %s (operation %s); wait for it to finish", k.Name, op.kind, op.target, op.ID())
		}
	}
	err = d.store.DeleteKernel(ctx, k.Name)
	d.pulls.mu.Unlock()
	if err != nil {
		return api.Kernel{}, err
	}
	if isWithin(d.layout.KernelsDir, k.Dir) {
		if err := os.RemoveAll(k.Dir); err != nil {
			return api.Kernel{}, api.Errorf(api.CodeOperationFailed, "kernel %q is removed but its files are not: %v; remove %s by hand", k.Name, err, k.Dir)
		}
	}
	return toAPIKernel(k), nil
}
