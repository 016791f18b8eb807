package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/store"
)

// pullOp is one kernel.pull or image.pull operation.
type pullOp struct {
	opCore
}

// catalog of what `banger kernel pull` and `banger image pull` can build
// locally from the host's Debian sources.
var (
	kernelCatalog = map[string]string{"debian-6.1": "Debian bookworm's linux-image-amd64 (6.1): bzImage, vmlinux, a small initrd and modules"}
	imageCatalog  = map[string]struct{ kernel, about string }{
		"debian-bookworm": {"debian-6.1", "Debian 12 minbase + systemd, openssh-server, iproute2, ca-certificates, sudo, git, curl"},
	}
)

func catalogNames[T any](m map[string]T) string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// pullOnce makes concurrent pulls of one name share one operation.
type pullOnce struct {
	mu       sync.Mutex
	inflight map[string]*pullOp
}

func (d *Daemon) startPull(kind, name string, reg interface{ Insert(*pullOp) }, work func(ctx context.Context, op *pullOp) error) api.PullResult {
	d.pulls.mu.Lock()
	defer d.pulls.mu.Unlock()
	key := kind + "/" + name
	if op, ok := d.pulls.inflight[key]; ok && !op.IsDone() {
		return api.PullResult{OpID: op.ID(), Name: name, Joined: true}
	}
	opID := rpc.NewOpID()
	log := d.log.With("op_id", opID, "kind", kind, "target", name)
	ctx, cancel := context.WithCancel(rpc.WithLogger(rpc.WithOpID(d.bgCtx, opID), log))
	op := &pullOp{opCore: newOpCore(opID, kind, name, cancel, d.now)}
	reg.Insert(op)
	if d.pulls.inflight == nil {
		d.pulls.inflight = map[string]*pullOp{}
	}
	d.pulls.inflight[key] = op
	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		defer cancel()
		err := work(ctx, op)
		if err != nil {
			log.Warn("pull failed", "err", err)
		} else {
			log.Info("pull done")
		}
		op.finish(err)
	}()
	return api.PullResult{OpID: opID, Name: name}
}

func (d *Daemon) kernelPull(ctx context.Context, p api.PullParams) (api.PullResult, error) {
	if _, ok := kernelCatalog[p.Name]; !ok {
		return api.PullResult{}, api.Errorf(api.CodeNotFound, "no kernel %q in the catalog; available: %s", p.Name, catalogNames(kernelCatalog))
	}
	if _, err := d.store.GetKernel(ctx, p.Name); err == nil {
		return api.PullResult{}, api.Errorf(api.CodeAlreadyExists, "kernel %q is already installed", p.Name)
	}
	return d.startPull(api.OpKindKernelPull, p.Name, d.ops.kernelPull, func(ctx context.Context, op *pullOp) error {
		return d.buildKernel(ctx, p.Name, op.setStage)
	}), nil
}

// buildKernel builds a catalog kernel into the kernels dir and records it.
func (d *Daemon) buildKernel(ctx context.Context, name string, stage func(string)) error {
	if _, err := d.store.GetKernel(ctx, name); err == nil {
		return nil
	}
	work := filepath.Join(d.layout.CacheDir, "build", "kernel-"+name)
	dst := filepath.Join(d.layout.KernelsDir, name)
	defer os.RemoveAll(work)
	m, err := kernel.BuildDebian(ctx, d.runner, work, dst, stage)
	if err != nil {
		return err
	}
	stage("record")
	k := store.Kernel{Name: name, Arch: m.Arch, Source: fmt.Sprintf("%s %s (%s)", m.Source.Package, m.Source.Version, m.Source.Origin),
		Dir: dst, Version: m.Version, Files: "{}"}
	if err := d.store.CreateKernel(context.WithoutCancel(ctx), &k); err != nil {
		_ = os.RemoveAll(dst)
		return err
	}
	return nil
}

func (d *Daemon) imagePull(ctx context.Context, p api.PullParams) (api.PullResult, error) {
	entry, ok := imageCatalog[p.Name]
	if !ok {
		return api.PullResult{}, api.Errorf(api.CodeNotFound, "no image %q in the catalog; available: %s", p.Name, catalogNames(imageCatalog))
	}
	if _, err := d.store.GetImage(ctx, p.Name); err == nil {
		return api.PullResult{}, api.Errorf(api.CodeAlreadyExists, "image %q is already installed", p.Name)
	}
	return d.startPull(api.OpKindImagePull, p.Name, d.ops.imagePull, func(ctx context.Context, op *pullOp) error {
		if err := d.buildKernel(ctx, entry.kernel, func(s string) { op.setStage("kernel: " + s) }); err != nil {
			return fmt.Errorf("kernel %s: %w", entry.kernel, err)
		}
		k, err := d.store.GetKernel(ctx, entry.kernel)
		if err != nil {
			return err
		}
		km, err := kernel.LoadManifest(k.Dir)
		if err != nil {
			return err
		}
		dst := filepath.Join(d.layout.ImagesDir, p.Name)
		work := filepath.Join(d.layout.CacheDir, "build", "image-"+p.Name)
		defer os.RemoveAll(work)
		m, err := image.BuildDebianBookworm(ctx, d.runner, image.BuildOptions{WorkDir: work, DestDir: dst,
			KernelModulesDir: filepath.Join(k.Dir, km.ModulesDir), KernelVersion: km.Version, Progress: op.setStage})
		if err != nil {
			return err
		}
		op.setStage("record")
		_, defErr := d.store.DefaultImage(ctx)
		im := store.Image{Name: p.Name, Kernel: entry.kernel, RootfsPath: filepath.Join(dst, m.RootFS.Path),
			Source: "built locally with mmdebstrap", SHA256: m.RootFS.SHA256, SizeBytes: m.RootFS.Size,
			IsDefault: api.IsCode(defErr, api.CodeNotFound) || p.Name == d.cfg.DefaultImage}
		if err := d.store.CreateImage(context.WithoutCancel(ctx), &im); err != nil {
			_ = os.RemoveAll(dst)
			return err
		}
		return nil
	}), nil
}
