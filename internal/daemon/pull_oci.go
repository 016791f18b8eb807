package daemon

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"banger/internal/api"
	"banger/internal/artifact"
	"banger/internal/config"
	"banger/internal/guestfs"
	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/oci"
	"banger/internal/rpc"
	"banger/internal/store"
)

// ociPlan is a validated image.pull of a registry reference.
type ociPlan struct {
	ref    string // normalized, e.g. registry.example/library/debian:bookworm
	name   string
	named  bool // the caller chose the name
	size   int64
	kernel string
}

// looksLikeRef tells an OCI reference from a catalog name.
func looksLikeRef(s string) bool { return strings.ContainsAny(s, "/:@") }

var unsafeNameChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// defaultImageName names an image after its repository and tag
// (registry.example/library/alpine:3.20 → alpine-3.20) or digest, never after a
// catalog entry.
func defaultImageName(ref name.Reference) string {
	suffix := ref.Identifier()
	if d, ok := ref.(name.Digest); ok {
		suffix = strings.TrimPrefix(d.DigestStr(), "sha256:")
		suffix = suffix[:min(12, len(suffix))]
	}
	n := unsafeNameChars.ReplaceAllString(path.Base(ref.Context().RepositoryStr())+"-"+suffix, "-")
	n = strings.TrimLeft(n, "._-")
	if len(n) > 59 {
		n = n[:59]
	}
	if _, ok := imageCatalog[n]; ok {
		n += "-oci"
	}
	return n
}

func (d *Daemon) planOCIPull(ctx context.Context, p api.ImagePullParams) (ociPlan, error) {
	ref, err := name.ParseReference(p.Source)
	if err != nil {
		return ociPlan{}, api.Errorf(api.CodeBadRequest, "%q is neither a catalog image (%s) nor an image reference (%v); use REGISTRY/REPO:TAG or REPO@sha256:DIGEST",
			p.Source, catalogNames(imageCatalog), err)
	}
	plan := ociPlan{ref: ref.Name(), name: p.Name, named: p.Name != "", kernel: p.Kernel}
	if plan.name == "" {
		plan.name = defaultImageName(ref)
	}
	if err := validateArtifactName("image", plan.name); err != nil {
		return ociPlan{}, err
	}
	if _, err := d.store.GetImage(ctx, plan.name); err == nil {
		return ociPlan{}, api.Errorf(api.CodeAlreadyExists, "image %q already exists; delete it first (banger image delete %s) or pick another --name", plan.name, plan.name)
	}
	if p.Size != "" {
		if plan.size, err = config.ParseSize(p.Size); err != nil {
			return ociPlan{}, api.Errorf(api.CodeBadRequest, "--size: %v", err)
		}
	}
	if plan.kernel == "" {
		plan.kernel = defaultPullKernel
	}
	if err := d.checkPullKernel(ctx, plan.kernel); err != nil {
		return ociPlan{}, err
	}
	return plan, nil
}

func (d *Daemon) pullOCIImage(ctx context.Context, p api.ImagePullParams) (api.PullResult, error) {
	plan, err := d.planOCIPull(ctx, p)
	if err != nil {
		return api.PullResult{}, err
	}
	op, joined, err := d.startPull(pullSpec{
		kind: api.OpKindImagePull, key: plan.ref, name: plan.name, anyName: !plan.named, kernel: plan.kernel,
		scratch: []string{d.ociWorkDir(plan.name), d.ociStagingDir(plan.name)},
		publish: filepath.Join(d.layout.ImagesDir, plan.name),
		reg:     d.ops.imagePull,
		work: func(ctx context.Context, op *pullOp) error {
			return d.convertOCIImage(ctx, op, plan)
		},
	})
	if err != nil {
		return api.PullResult{}, err
	}
	return pullResult(op, joined), nil
}

// ociWorkDir holds the unpacked layers while an image is converted.
func (d *Daemon) ociWorkDir(name string) string {
	return filepath.Join(d.layout.CacheDir, "build", "oci-"+name)
}

// ociStagingDir becomes ImagesDir/<name> in one rename once the image is
// complete. Image names never start with '.', so it cannot be one.
func (d *Daemon) ociStagingDir(name string) string {
	return filepath.Join(d.layout.ImagesDir, "."+name+".pulling")
}

// convertOCIImage is the work of an OCI image.pull: kernel, download and
// convert (with the kernel's modules), bootstrap, manifest, record.
func (d *Daemon) convertOCIImage(ctx context.Context, op *pullOp, plan ociPlan) error {
	k, km, err := d.ensureKernel(ctx, op, plan.kernel)
	if err != nil {
		return err
	}
	stageDir, work := d.ociStagingDir(plan.name), d.ociWorkDir(plan.name)
	for _, dir := range []string{stageDir, work} {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	busybox, err := initrdBusybox(k, km)
	if err != nil {
		rpc.Logger(ctx).Warn("no busybox for the guest bootstrap; it needs the image's own shell and ip", "err", err)
	}
	rootfs := filepath.Join(stageDir, image.RootFSFile)
	res, err := oci.Pull(ctx, d.runner, plan.ref, oci.Options{DestFile: rootfs, WorkDir: work, SizeBytes: plan.size,
		Progress: pullProgress(op), ExtraTrees: modulesTree(k, km),
		// An unprivileged daemon (system mode) unpacks as itself and sets
		// owners, modes and device nodes in the image with debugfs.
		Rootless: os.Geteuid() != 0})
	if err == nil {
		err = faultAfter(stagePullConvert)
	}
	if err != nil {
		return err
	}
	op.setStage("inject bootstrap")
	g := guestfs.Open(d.runner, rootfs)
	init, err := injectBootstrap(ctx, g, res, busybox)
	if err == nil {
		err = faultAfter(stagePullBootstrap)
	}
	if err != nil {
		return err
	}
	op.setStage("checksum")
	sum, _, err := artifact.HashFile(rootfs)
	if err == nil {
		err = faultAfter(stagePullChecksum)
	}
	if err != nil {
		return err
	}
	man := api.ImageManifest{Kind: api.ImageKindOCI, BuiltAt: d.now(), Ref: plan.ref, Digest: res.Digest, IndexDigest: res.RefDigest,
		SizeBytes: res.SizeBytes, ContentBytes: res.ContentBytes, SHA256: sum, Packages: countPackages(ctx, g, res.PackageManager),
		PackageManager: res.PackageManager, HasSystemd: res.HasSystemd, HasSSHD: res.HasSSHD, Init: init,
		Kernel: plan.kernel, KernelVersion: km.Version, Env: res.Config.Env, Entrypoint: res.Config.Entrypoint, Cmd: res.Config.Cmd}
	op.setStage("record")
	return d.publishOCIImage(ctx, plan, stageDir, man)
}

// publishOCIImage moves the finished image into place and records it.
func (d *Daemon) publishOCIImage(ctx context.Context, plan ociPlan, stageDir string, man api.ImageManifest) error {
	dst := filepath.Join(d.layout.ImagesDir, plan.name)
	// No row has this name (checked before the pull, reserved since), so
	// anything at dst is a leftover.
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.Rename(stageDir, dst); err != nil {
		return fmt.Errorf("publish image %s: %w", plan.name, err)
	}
	if err := faultAfter(stagePullPublish); err != nil {
		_ = os.RemoveAll(dst)
		return err
	}
	im := store.Image{Name: plan.name, Kernel: plan.kernel, RootfsPath: filepath.Join(dst, image.RootFSFile),
		Source: "oci " + plan.ref, SHA256: man.SHA256, SizeBytes: man.SizeBytes}
	if err := d.recordImage(ctx, &im, man); err != nil {
		_ = os.RemoveAll(dst)
		return err
	}
	return faultAfter(stagePullRecord)
}

// Points of an OCI pull the fault-injection tests break at.
const (
	stagePullConvert   = "pull: convert"
	stagePullBootstrap = "pull: bootstrap"
	stagePullChecksum  = "pull: checksum"
	stagePullPublish   = "pull: publish"
	stagePullRecord    = "pull: record"
)

// pullProgress turns oci's progress into the operation's stage and bytes.
func pullProgress(op *pullOp) oci.Progress {
	return func(stage string, done, total int64) {
		switch stage {
		case "layers":
			stage = "download layers"
		case "mkfs":
			stage = "build filesystem"
		}
		op.setProgress(stage, done, total)
	}
}

// modulesTree places the kernel's modules at /lib/modules/<version>.
func modulesTree(k store.Kernel, km kernel.Manifest) []oci.ExtraTree {
	if km.ModulesDir == "" {
		return nil
	}
	src := filepath.Join(k.Dir, km.ModulesDir)
	if st, err := os.Stat(src); err != nil || !st.IsDir() {
		return nil
	}
	return []oci.ExtraTree{{Src: src, Dest: "/lib/modules/" + km.Version}}
}
