package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/store"
)

// pullOp is one kernel.pull or image.pull operation.
type pullOp struct {
	opCore
	// key identifies what is pulled (a catalog name or a normalized OCI
	// reference); pulls of one key share this operation.
	key string
	// kernel is the kernel the pull builds or boots its image with.
	kernel string
	// scratch are the paths (prefixes) the pull writes while it runs;
	// image.cache_prune leaves them alone.
	scratch []string
}

// catalog of what `banger kernel pull` and `banger image pull` can build
// locally from the host's Debian sources.
var (
	kernelCatalog = map[string]string{"debian-6.1": "Debian bookworm's linux-image-amd64 (6.1): bzImage, vmlinux, a small initrd and modules"}
	imageCatalog  = map[string]struct{ kernel, about string }{
		"debian-bookworm": {"debian-6.1", "Debian 12 minbase + systemd, openssh-server, iproute2, ca-certificates, sudo, git, curl"},
	}
)

// defaultPullKernel boots images pulled from a registry unless --kernel
// names another.
const defaultPullKernel = "debian-6.1"

func catalogNames[T any](m map[string]T) string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// pullOnce makes concurrent pulls of one thing share one operation, and
// keeps a pull, a kernel import and an image register from making the
// same kernel or image at once.
type pullOnce struct {
	mu       sync.Mutex
	inflight map[string]*pullOp // kind + "/" + key
	claimed  map[string]bool    // "kernel/NAME", "image/NAME": an import or register at work
}

// artifactOf is "kernel" or "image", what a pull of kind makes.
func artifactOf(kind string) string {
	if kind == api.OpKindKernelPull {
		return "kernel"
	}
	return "image"
}

// claimName reserves a kernel or image name (artifact "kernel" or
// "image") for a synchronous import or register, refusing while a pull or
// another import makes it; release frees it.
func (d *Daemon) claimName(artifact, name string) (release func(), err error) {
	d.pulls.mu.Lock()
	defer d.pulls.mu.Unlock()
	key := artifact + "/" + name
	if d.pulls.claimed[key] {
		return nil, api.Errorf(api.CodeBadRequest, "%s %q is being imported or registered already; wait for that to finish", artifact, name)
	}
	for _, op := range d.pulls.running() {
		if artifactOf(op.kind) == artifact && op.target == name {
			return nil, api.Errorf(api.CodeBadRequest, "%s %q is being pulled (operation %s); wait for it or pick another name", artifact, name, op.ID())
		}
	}
	if d.pulls.claimed == nil {
		d.pulls.claimed = map[string]bool{}
	}
	d.pulls.claimed[key] = true
	return func() {
		d.pulls.mu.Lock()
		delete(d.pulls.claimed, key)
		d.pulls.mu.Unlock()
	}, nil
}

// running returns the pulls not yet done and forgets the others.
// Callers hold p.mu.
func (p *pullOnce) running() []*pullOp {
	var out []*pullOp
	for key, op := range p.inflight {
		if op.IsDone() {
			delete(p.inflight, key)
			continue
		}
		out = append(out, op)
	}
	return out
}

// pullSpec describes a pull to start or join.
type pullSpec struct {
	kind string // api.OpKindKernelPull or api.OpKindImagePull
	key  string
	name string // the kernel or image the pull makes
	// anyName joins a pull of key whatever name it makes (the caller let
	// the name default).
	anyName bool
	kernel  string
	scratch []string
	// publish is where the pull moves what it made once complete; a
	// crash before the artifact's row is recorded removes it.
	publish string
	reg     interface{ Insert(*pullOp) }
	work    func(ctx context.Context, op *pullOp) error
}

// startPull joins the running pull of spec.key or starts one. An image
// pull of another source into the same image name is refused.
func (d *Daemon) startPull(spec pullSpec) (*pullOp, bool, error) {
	d.pulls.mu.Lock()
	defer d.pulls.mu.Unlock()
	if d.pulls.claimed[artifactOf(spec.kind)+"/"+spec.name] {
		return nil, false, api.Errorf(api.CodeBadRequest, "%s %q is being imported or registered; wait for that to finish", artifactOf(spec.kind), spec.name)
	}
	for _, op := range d.pulls.running() {
		if op.kind != spec.kind {
			continue
		}
		switch {
		case op.key == spec.key && (op.target == spec.name || spec.anyName):
			return op, true, nil
		case op.key == spec.key:
			return nil, false, api.Errorf(api.CodeBadRequest, "%s is already being pulled as %q (operation %s); wait for it to finish, then pull again for another name", spec.key, op.target, op.ID())
		case op.target == spec.name:
			return nil, false, api.Errorf(api.CodeBadRequest, "%q is already being pulled from %s (operation %s); wait for it or pick another name", spec.name, op.key, op.ID())
		}
	}
	opID := rpc.NewOpID()
	log := d.log.With("op_id", opID, "kind", spec.kind, "target", spec.name)
	ctx, cancel := context.WithCancel(rpc.WithLogger(rpc.WithOpID(d.bgCtx, opID), log))
	op := &pullOp{opCore: newOpCore(opID, spec.kind, spec.name, cancel, d.now), key: spec.key, kernel: spec.kernel, scratch: spec.scratch}
	spec.reg.Insert(op)
	if d.pulls.inflight == nil {
		d.pulls.inflight = map[string]*pullOp{}
	}
	d.pulls.inflight[spec.kind+"/"+spec.key] = op
	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		defer cancel()
		log.Info("pull begun", "source", spec.key)
		// A crash mid-pull leaves its scratch and perhaps a published
		// directory no row names: the journal removes them.
		j := d.beginJournal(opID, spec.kind, spec.name)
		var acts []journalAct
		if spec.publish != "" {
			acts = append(acts, journalAct{Do: actRemovePath, Path: spec.publish})
		}
		for _, p := range spec.scratch {
			acts = append(acts, journalAct{Do: actRemovePath, Path: p, Prefix: strings.HasSuffix(p, ".")})
		}
		err := j.record(ctx, "begin", acts...)
		if err == nil {
			err = spec.work(ctx, op)
		}
		j.finish(ctx)
		if err != nil {
			log.Warn("pull failed", "err", err)
		} else {
			log.Info("pull done")
		}
		op.finish(err)
	}()
	return op, false, nil
}

func pullResult(op *pullOp, joined bool) api.PullResult {
	return api.PullResult{OpID: op.ID(), Name: op.target, Joined: joined}
}

func (d *Daemon) kernelPull(ctx context.Context, p api.PullParams) (api.PullResult, error) {
	if _, ok := kernelCatalog[p.Name]; !ok {
		return api.PullResult{}, api.Errorf(api.CodeNotFound, "no kernel %q in the catalog; available: %s", p.Name, catalogNames(kernelCatalog))
	}
	if _, err := d.store.GetKernel(ctx, p.Name); err == nil {
		return api.PullResult{}, api.Errorf(api.CodeAlreadyExists, "kernel %q is already installed", p.Name)
	}
	op, joined, err := d.startKernelPull(p.Name)
	if err != nil {
		return api.PullResult{}, err
	}
	return pullResult(op, joined), nil
}

func (d *Daemon) startKernelPull(name string) (*pullOp, bool, error) {
	return d.startPull(pullSpec{
		kind: api.OpKindKernelPull, key: name, name: name, kernel: name,
		scratch: []string{d.kernelBuildDir(name), filepath.Join(d.layout.KernelsDir, "."+name+".")},
		publish: filepath.Join(d.layout.KernelsDir, name),
		reg:     d.ops.kernelPull,
		work: func(ctx context.Context, op *pullOp) error {
			return d.buildKernel(ctx, name, op.setStage)
		},
	})
}

func (d *Daemon) kernelBuildDir(name string) string {
	return filepath.Join(d.layout.CacheDir, "build", "kernel-"+name)
}

// buildKernel builds a catalog kernel into the kernels dir and records it.
func (d *Daemon) buildKernel(ctx context.Context, name string, stage func(string)) error {
	if _, err := d.store.GetKernel(ctx, name); err == nil {
		return nil
	}
	work := d.kernelBuildDir(name)
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

// checkPullKernel makes sure name is installed or can be pulled from the
// catalog, before an image pull begins.
func (d *Daemon) checkPullKernel(ctx context.Context, name string) error {
	if _, err := d.store.GetKernel(ctx, name); err == nil {
		return nil
	} else if !api.IsCode(err, api.CodeNotFound) {
		return err
	}
	if _, ok := kernelCatalog[name]; ok {
		return nil
	}
	return api.Errorf(api.CodeNotFound, "kernel %q is neither installed nor in the catalog (%s); see banger kernel list", name, catalogNames(kernelCatalog))
}

// ensureKernel returns the installed kernel called name, pulling it from
// the catalog first (joining a kernel.pull already running) when missing.
// op's stage follows the kernel pull meanwhile.
func (d *Daemon) ensureKernel(ctx context.Context, op *pullOp, name string) (store.Kernel, kernel.Manifest, error) {
	k, err := d.store.GetKernel(ctx, name)
	if api.IsCode(err, api.CodeNotFound) {
		if err := d.waitKernelPull(ctx, op, name); err != nil {
			return store.Kernel{}, kernel.Manifest{}, fmt.Errorf("kernel %s: %w", name, err)
		}
		k, err = d.store.GetKernel(ctx, name)
	}
	if err != nil {
		return store.Kernel{}, kernel.Manifest{}, err
	}
	m, err := kernel.LoadManifest(k.Dir)
	return k, m, err
}

func (d *Daemon) waitKernelPull(ctx context.Context, op *pullOp, name string) error {
	if err := d.checkPullKernel(ctx, name); err != nil {
		return err
	}
	kop, _, err := d.startKernelPull(name)
	if err != nil {
		return err
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		op.setStage("kernel " + name + ": " + kop.summary().Stage)
		select {
		case <-kop.doneCh:
			if s := kop.summary(); s.Error != "" {
				return fmt.Errorf("pull (operation %s) failed: %s", kop.ID(), s.Error)
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (d *Daemon) imagePull(ctx context.Context, p api.ImagePullParams) (api.PullResult, error) {
	if p.Source == "" {
		p.Source, p.Name = p.Name, ""
	}
	if p.Source == "" {
		return api.PullResult{}, api.Errorf(api.CodeBadRequest, "give a catalog image (%s) or an image reference such as registry.example/library/debian:bookworm", catalogNames(imageCatalog))
	}
	if _, ok := imageCatalog[p.Source]; ok {
		if p.Name != "" || p.Size != "" || p.Kernel != "" {
			return api.PullResult{}, api.Errorf(api.CodeBadRequest, "--name, --size and --kernel apply to OCI references; catalog image %q has its own", p.Source)
		}
		return d.pullCatalogImage(ctx, p.Source)
	}
	if !looksLikeRef(p.Source) {
		return api.PullResult{}, api.Errorf(api.CodeNotFound, "no image %q in the catalog (available: %s); to pull from a registry give a reference such as registry.example/library/debian:bookworm",
			p.Source, catalogNames(imageCatalog))
	}
	return d.pullOCIImage(ctx, p)
}

func (d *Daemon) pullCatalogImage(ctx context.Context, name string) (api.PullResult, error) {
	if _, err := d.store.GetImage(ctx, name); err == nil {
		return api.PullResult{}, api.Errorf(api.CodeAlreadyExists, "image %q is already installed", name)
	}
	op, joined, err := d.startCatalogImagePull(name)
	if err != nil {
		return api.PullResult{}, err
	}
	return pullResult(op, joined), nil
}

// startCatalogImagePull starts (or joins) the build of a catalog image.
func (d *Daemon) startCatalogImagePull(name string) (*pullOp, bool, error) {
	entry := imageCatalog[name]
	work := filepath.Join(d.layout.CacheDir, "build", "image-"+name)
	return d.startPull(pullSpec{
		kind: api.OpKindImagePull, key: name, name: name, kernel: entry.kernel,
		scratch: []string{work, filepath.Join(d.layout.ImagesDir, "."+name+".")},
		publish: filepath.Join(d.layout.ImagesDir, name),
		reg:     d.ops.imagePull,
		work: func(ctx context.Context, op *pullOp) error {
			return d.buildCatalogImage(ctx, op, name, entry.kernel, work)
		},
	})
}

func (d *Daemon) buildCatalogImage(ctx context.Context, op *pullOp, name, kernelName, work string) error {
	k, km, err := d.ensureKernel(ctx, op, kernelName)
	if err != nil {
		return err
	}
	dst := filepath.Join(d.layout.ImagesDir, name)
	defer os.RemoveAll(work)
	m, err := image.BuildDebianBookworm(ctx, d.runner, image.BuildOptions{WorkDir: work, DestDir: dst,
		KernelModulesDir: filepath.Join(k.Dir, km.ModulesDir), KernelVersion: km.Version, Progress: op.setStage})
	if err != nil {
		return err
	}
	op.setStage("record")
	man := catalogManifest(m, kernelName)
	im := store.Image{Name: name, Kernel: kernelName, RootfsPath: m.RootFSPath(dst),
		Source: "built locally with mmdebstrap", SHA256: m.RootFS.SHA256, SizeBytes: m.RootFS.Size}
	if err := d.recordImage(ctx, &im, man); err != nil {
		_ = os.RemoveAll(dst)
		return err
	}
	return nil
}

// catalogManifest is what image.show tells about a catalog image.
func catalogManifest(m image.Manifest, kernelName string) api.ImageManifest {
	return api.ImageManifest{Kind: api.ImageKindCatalog, BuiltAt: m.BuiltAt, SizeBytes: m.RootFS.Size, SHA256: m.RootFS.SHA256,
		Packages: len(m.Packages), PackageManager: "apt", HasSystemd: true, HasSSHD: true, Init: "systemd",
		Kernel: kernelName, KernelVersion: m.KernelVersion, Sources: m.Sources}
}

// recordImage stores im with its manifest; it becomes the default when
// there is none yet or when the config names it.
func (d *Daemon) recordImage(ctx context.Context, im *store.Image, man api.ImageManifest) error {
	data, err := json.Marshal(man)
	if err != nil {
		return fmt.Errorf("encode image manifest: %w", err)
	}
	im.Manifest = string(data)
	ctx = context.WithoutCancel(ctx)
	_, defErr := d.store.DefaultImage(ctx)
	im.IsDefault = api.IsCode(defErr, api.CodeNotFound) || im.Name == d.cfg.DefaultImage
	return d.store.CreateImage(ctx, im)
}
