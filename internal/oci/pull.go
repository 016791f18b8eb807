package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/guestfs"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sys/unix"
)

// Runner runs a host command from an argv slice and returns its stdout.
// *system.Exec satisfies it.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Progress reports a stage and its byte progress. Stages, in order:
// "layers" (compressed bytes downloaded and unpacked, of the sum of the
// layer sizes) and "mkfs" (0 of ContentBytes when it starts, all of it
// when done). It is called from Pull's goroutine.
type Progress func(stage string, done, total int64)

// Options tunes a Pull.
type Options struct {
	// DestFile is the ext4 file to create. It must not exist; on any
	// failure it is removed.
	DestFile string
	// WorkDir holds the staging tree while the image is unpacked (it needs
	// room for the whole image). Empty means DestFile's directory.
	WorkDir string
	// SizeBytes is the filesystem size; 0 means 1.5 × the content with a
	// floor of 1 GiB.
	SizeBytes int64
	// Progress, when set, receives progress updates.
	Progress Progress
	// Insecure talks plain HTTP to the registry. Loopback and private
	// (RFC 1918) registries get HTTP without it.
	Insecure bool
	// FreeBytes reports the space available under a directory (statfs
	// by default; tests replace it).
	FreeBytes func(dir string) (int64, error)
	// ExtraTrees are host directories added to the image after its
	// layers (see ExtraTree). Result's HasSystemd, HasSSHD and
	// PackageManager describe the image before they are added.
	ExtraTrees []ExtraTree
	// Limits bound the unpacked image (zero fields: the defaults).
	Limits Limits
	// Customize, when set, edits the unpacked tree (its directory) after
	// the layers and ExtraTrees, before the filesystem is made. Rootless,
	// every path it makes or replaces becomes root's with the mode it
	// leaves there (setuid bits included, which the host file then
	// loses); it must replace files, not chmod or chown them in place.
	Customize func(tree string) error
	// Rootless unpacks without root, for an unprivileged daemon: the
	// staging tree is the caller's own (no setuid bit, device node or
	// foreign owner ever on the host) and the image's owners, modes,
	// device nodes and extended attributes are set in the finished
	// filesystem with debugfs (guestfs.SetInodes), which needs no
	// privilege on a file the caller owns. Without it Pull needs root.
	Rootless bool

	// retry overrides the registry retry backoff (tests).
	retry *remote.Backoff
}

// ImageConfig is the part of the image's run configuration a VM can use.
type ImageConfig struct {
	Env        []string
	Cmd        []string
	Entrypoint []string
	WorkingDir string
	User       string
}

// Result describes a converted image.
type Result struct {
	// Digest is the digest of the linux/amd64 image manifest converted.
	Digest string
	// RefDigest is what the reference resolved to: the index digest for a
	// multi-platform image, else the same as Digest.
	RefDigest string
	// ContentBytes is the disk space the unpacked tree uses (allocated
	// blocks, hard links counted once); Inodes is its number of inodes.
	ContentBytes int64
	Inodes       int64
	// SizeBytes is the size of the filesystem in DestFile.
	SizeBytes int64
	// What the image holds, for deciding on a first-boot bootstrap.
	HasSystemd     bool
	HasSSHD        bool
	PackageManager string // "apt", "apk", "dnf", "yum" or ""
	Config         ImageConfig
}

const (
	// FSLabel is the label of every root filesystem banger makes.
	FSLabel = "bangerroot"

	minSize       = 1 << 30
	progressEvery = 1 << 20
)

var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Pull fetches ref (REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...)
// anonymously, picks its linux/amd64 image, and writes it as an ext4 root
// filesystem to opts.DestFile with mkfs.ext4 run through r. It needs
// root (to keep owners and device nodes) unless opts.Rootless. On error nothing is left: no
// DestFile, no staging tree. Bad references, images without linux/amd64
// and unsafe images are api.CodeBadRequest errors; a missing image or tag
// is api.CodeNotFound.
func Pull(ctx context.Context, r Runner, ref string, opts Options) (res Result, err error) {
	if err := opts.check(); err != nil {
		return Result{}, err
	}
	img, res, err := resolveImage(ctx, ref, opts)
	if err != nil {
		return Result{}, err
	}
	// Unpacked, the layers take at least what they take compressed: refuse
	// at once a cache filesystem that cannot hold even that.
	var compressed int64
	if layers, err := img.Layers(); err == nil {
		for _, l := range layers {
			if n, err := l.Size(); err == nil {
				compressed += n
			}
		}
	}
	if err := checkFree(opts.freeBytes(), opts.workDir(), compressed, "unpack "+ref+" (its compressed layers alone)"); err != nil {
		return Result{}, err
	}
	err = build(ctx, r, "pull "+ref, opts, &res, func(rootDir string, own *owners) error {
		return unpackImage(ctx, img, rootDir, opts.progress(), opts.Limits, own)
	})
	return res, err
}

// ConvertTar is Pull for a root filesystem held in the tar archive at
// tarFile (one layer: owners, modes, devices and attributes as its
// headers say), such as mmdebstrap --format=tar writes; Result's image
// configuration and digests are empty.
func ConvertTar(ctx context.Context, r Runner, tarFile string, opts Options) (res Result, err error) {
	if err := opts.check(); err != nil {
		return Result{}, err
	}
	err = build(ctx, r, "convert "+tarFile, opts, &res, func(rootDir string, own *owners) error {
		// Closed once unpacked: a caller may remove the tar then.
		f, err := os.Open(tarFile)
		if err != nil {
			return err
		}
		defer f.Close()
		x, err := newExtractor(rootDir, own)
		if err != nil {
			return err
		}
		defer x.close()
		x.lim = opts.Limits.withDefaults()
		if err := x.apply(ctx, 0, filepath.Base(tarFile), f); err != nil {
			return err
		}
		return x.finish()
	})
	return res, err
}

// check refuses options no conversion can take.
func (opts Options) check() error {
	if opts.DestFile == "" {
		return errors.New("oci pull: no destination file given")
	}
	if opts.SizeBytes < 0 {
		return api.Errorf(api.CodeBadRequest, "image size %d is negative; give a positive size or none", opts.SizeBytes)
	}
	for _, t := range opts.ExtraTrees {
		if err := t.check(); err != nil {
			return err
		}
	}
	if os.Geteuid() != 0 && !opts.Rootless {
		return errors.New("converting an OCI image as root keeps file owners and device nodes by making them; without root, set Rootless")
	}
	return nil
}

func (opts Options) progress() Progress {
	if opts.Progress == nil {
		return func(string, int64, int64) {}
	}
	return opts.Progress
}

func (opts Options) workDir() string {
	if opts.WorkDir == "" {
		return filepath.Dir(opts.DestFile)
	}
	return opts.WorkDir
}

func (opts Options) freeBytes() func(string) (int64, error) {
	if opts.FreeBytes == nil {
		return statfsFree
	}
	return opts.FreeBytes
}

// build makes opts.DestFile from the tree unpack fills (label, "pull
// REF" or "convert FILE", heads its errors): staging tree, extra trees, Customize, the
// filesystem, and rootless the owners and modes in it. res gets what it
// measured. On error nothing is left.
func build(ctx context.Context, r Runner, label string, opts Options, res *Result, unpack func(rootDir string, own *owners) error) (err error) {
	var own *owners
	if opts.Rootless {
		own = newOwners()
	}
	progress := opts.progress()
	workDir := opts.workDir()

	// Make DestFile first, exclusively: it is ours to remove from here on.
	dest, err := os.OpenFile(opts.DestFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return api.Errorf(api.CodeAlreadyExists, "%s already exists; remove it or write to another file", opts.DestFile)
		}
		return fmt.Errorf("create %s: %w", opts.DestFile, err)
	}
	dest.Close()
	defer func() {
		if err != nil {
			os.Remove(opts.DestFile)
		}
	}()

	// The staging tree sits in a 0700 directory so no other host user can
	// reach its setuid files or device nodes.
	stage, err := os.MkdirTemp(workDir, "oci-staging-*")
	if err != nil {
		return fmt.Errorf("make staging directory in %s: %w", workDir, err)
	}
	defer os.RemoveAll(stage)
	rootDir := filepath.Join(stage, "rootfs")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		return fmt.Errorf("make staging root: %w", err)
	}
	if err := os.Chmod(rootDir, 0o755); err != nil { // umask
		return err
	}
	if own != nil {
		// mkfs.ext4 -d makes the root 0755 root:root unless the image's
		// "./" entry says otherwise.
		if err := own.record(unix.AT_FDCWD, rootDir, owned{mode: fs.ModeDir | 0o755}); err != nil {
			return err
		}
	}

	if err := unpack(rootDir, own); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}

	found, err := detect(rootDir)
	if err != nil {
		return err
	}
	res.HasSystemd, res.HasSSHD, res.PackageManager = found.systemd, found.sshd, found.pkgManager
	if err := addExtraTrees(ctx, rootDir, opts.ExtraTrees, own); err != nil {
		return err
	}
	if opts.Customize != nil {
		if err := customize(rootDir, own, opts.Customize); err != nil {
			return err
		}
	}

	res.ContentBytes, res.Inodes, err = treeUsage(rootDir)
	if err != nil {
		return fmt.Errorf("measure unpacked image: %w", err)
	}
	size, err := fsSize(res.ContentBytes, opts.SizeBytes)
	if err != nil {
		return err
	}
	res.SizeBytes = size

	// The filesystem holds the whole content (its file is sparse beyond).
	if err := checkFree(opts.freeBytes(), filepath.Dir(opts.DestFile), res.ContentBytes, "write the filesystem"); err != nil {
		return err
	}
	var fixes []guestfs.Inode
	if own != nil {
		if fixes, err = own.inodes(rootDir); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
	}
	progress("mkfs", 0, res.ContentBytes)
	if err := makeExt4(ctx, r, rootDir, opts.DestFile, size, res.Inodes, own == nil); err != nil {
		return err
	}
	if err := guestfs.Open(r, opts.DestFile).SetInodes(ctx, fixes); err != nil {
		return fmt.Errorf("%s: give the unpacked files their owners and modes: %w", label, err)
	}
	progress("mkfs", res.ContentBytes, res.ContentBytes)
	return nil
}

// resolveImage finds the linux/amd64 image ref names and fills the
// Result fields known from the registry.
func resolveImage(ctx context.Context, ref string, opts Options) (v1.Image, Result, error) {
	var nameOpts []name.Option
	if opts.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	parsed, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return nil, Result{}, api.Errorf(api.CodeBadRequest, "%q is not an image reference (%v); use REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST", ref, err)
	}
	backoff := remote.Backoff{Duration: time.Second, Factor: 3, Jitter: 0.1, Steps: 3}
	if opts.retry != nil {
		backoff = *opts.retry
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuth(authn.Anonymous),
		remote.WithPlatform(platform),
		remote.WithUserAgent("banger"),
		remote.WithRetryBackoff(backoff),
	}
	desc, err := remote.Get(parsed, ropts...)
	if err != nil {
		return nil, Result{}, registryError(ref, "fetch manifest of", err)
	}
	res := Result{RefDigest: desc.Digest.String()}

	var img v1.Image
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, Result{}, registryError(ref, "read index of", err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, Result{}, registryError(ref, "read index of", err)
		}
		var chosen *v1.Descriptor
		var have []string
		for i := range im.Manifests {
			d := &im.Manifests[i]
			if d.Platform == nil {
				continue
			}
			if d.Platform.OS != "unknown" { // attestations
				have = append(have, d.Platform.String())
			}
			if d.Platform.OS == platform.OS && d.Platform.Architecture == platform.Architecture && d.MediaType.IsImage() {
				if chosen == nil || chosen.Platform.Variant != "" && d.Platform.Variant == "" {
					chosen = d
				}
			}
		}
		if chosen == nil {
			return nil, Result{}, api.Errorf(api.CodeBadRequest, "image %s has no linux/amd64 variant (it has: %s); pick a tag built for linux/amd64", ref, listOrNone(have))
		}
		img, err = idx.Image(chosen.Digest)
		if err != nil {
			return nil, Result{}, registryError(ref, "fetch linux/amd64 manifest of", err)
		}
	} else {
		if !desc.MediaType.IsImage() {
			return nil, Result{}, api.Errorf(api.CodeBadRequest, "%s is a %s, not a container image; pick an image reference", ref, desc.MediaType)
		}
		img, err = desc.Image()
		if err != nil {
			return nil, Result{}, registryError(ref, "read manifest of", err)
		}
	}

	digest, err := img.Digest()
	if err != nil {
		return nil, Result{}, registryError(ref, "digest manifest of", err)
	}
	res.Digest = digest.String()
	if !desc.MediaType.IsIndex() {
		res.RefDigest = res.Digest
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, Result{}, registryError(ref, "fetch config of", err)
	}
	if cfg.OS != platform.OS || cfg.Architecture != platform.Architecture {
		return nil, Result{}, api.Errorf(api.CodeBadRequest, "image %s is for %s/%s, not linux/amd64; pick a tag built for linux/amd64", ref, orUnknown(cfg.OS), orUnknown(cfg.Architecture))
	}
	res.Config = ImageConfig{
		Env:        cfg.Config.Env,
		Cmd:        cfg.Config.Cmd,
		Entrypoint: cfg.Config.Entrypoint,
		WorkingDir: cfg.Config.WorkingDir,
		User:       cfg.Config.User,
	}
	return img, res, nil
}

// registryError words a registry failure; a missing repo or tag is
// CodeNotFound.
func registryError(ref, what string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return api.Errorf(api.CodeNotFound, "image %s not found in its registry (%v); check the repository and tag", ref, err)
	}
	return fmt.Errorf("%s %s: %w (check the reference and that the registry is reachable)", what, ref, err)
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "no platforms listed"
	}
	return strings.Join(s, ", ")
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// unpackImage streams every layer, in order, into rootDir, checking each
// layer's compressed digest (go-containerregistry, at EOF) and its
// uncompressed digest against the config's diff IDs.
func unpackImage(ctx context.Context, img v1.Image, rootDir string, progress Progress, lim Limits, own *owners) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("list layers: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(layers) {
		return fmt.Errorf("the image config lists %d layers but the manifest %d; the image is malformed", len(cfg.RootFS.DiffIDs), len(layers))
	}
	var total int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return fmt.Errorf("layer size: %w", err)
		}
		total += n
	}

	x, err := newExtractor(rootDir, own)
	if err != nil {
		return err
	}
	defer x.close()
	x.lim = lim.withDefaults()

	var done, reported int64
	report := func(n int64) {
		done += n
		if done-reported >= progressEvery || done == total {
			reported = done
			progress("layers", done, total)
		}
	}
	progress("layers", 0, total)
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := unpackLayer(ctx, x, i, l, cfg.RootFS.DiffIDs[i], report); err != nil {
			return err
		}
	}
	return x.finish()
}

func unpackLayer(ctx context.Context, x *extractor, i int, l v1.Layer, diffID v1.Hash, report func(int64)) error {
	digest, err := l.Digest()
	if err != nil {
		return fmt.Errorf("layer %d: digest: %w", i+1, err)
	}
	counted, err := partial.CompressedToLayer(&countingLayer{Layer: l, report: report})
	if err != nil {
		return fmt.Errorf("layer %d (%s): %w", i+1, digest, err)
	}
	rc, err := counted.Uncompressed()
	if err != nil {
		return fmt.Errorf("layer %d (%s): download: %w", i+1, digest, err)
	}
	defer rc.Close()
	h := sha256.New()
	tee := io.TeeReader(rc, h)
	if err := x.apply(ctx, i, digest.String(), tee); err != nil {
		return err
	}
	// The tar end marker may come before the end of the stream: read on
	// to EOF so the blob digest is checked, and the diff ID with it.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("layer %d (%s): download: %w", i+1, digest, err)
	}
	if err := checkHash(h, diffID); err != nil {
		return fmt.Errorf("layer %d (%s): %w", i+1, digest, err)
	}
	return nil
}

func checkHash(h hash.Hash, want v1.Hash) error {
	if want.Algorithm != "sha256" {
		return fmt.Errorf("diff ID %s uses an unsupported algorithm", want)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != want.Hex {
		return fmt.Errorf("uncompressed content has digest sha256:%s but the image config says %s; the image is corrupt or was tampered with", got, want)
	}
	return nil
}

// countingLayer reports the compressed bytes read from a layer.
type countingLayer struct {
	v1.Layer
	report func(int64)
}

func (c *countingLayer) Compressed() (io.ReadCloser, error) {
	rc, err := c.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return &countingReader{ReadCloser: rc, report: c.report}, nil
}

type countingReader struct {
	io.ReadCloser
	report func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.report(int64(n))
	}
	return n, err
}

// treeUsage sums the allocated bytes and counts the inodes under dir,
// counting hard-linked files once.
func treeUsage(dir string) (bytes, inodes int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("no stat for %s", info.Name())
		}
		if st.Nlink > 1 && !info.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		inodes++
		bytes += st.Blocks * 512
		return nil
	})
	return bytes, inodes, err
}

// fsSize picks the filesystem size: the request, or 1.5 × content with a
// 1 GiB floor; rounded up to whole MiB.
func fsSize(content, requested int64) (int64, error) {
	const mib = 1 << 20
	size := requested
	if size == 0 {
		size = max(content*3/2, minSize)
	} else if content > size*9/10 {
		return 0, api.Errorf(api.CodeBadRequest, "the image holds %d MiB; a %d MiB filesystem is too small: give a size of at least %d MiB or none",
			content/mib, size/mib, (content*3/2+mib-1)/mib)
	}
	return (size + mib - 1) / mib * mib, nil
}

// makeExt4 sizes the file (sparse) and builds the filesystem from tree.
// Lazy inode-table and journal init keep mkfs from writing zeroes over it.
// Images of many small files get more inodes than mke2fs's default.
func makeExt4(ctx context.Context, r Runner, tree, file string, size, inodes int64, copyRoot bool) error {
	if err := os.Truncate(file, size); err != nil {
		return fmt.Errorf("size %s: %w", file, err)
	}
	argv := []string{"mkfs.ext4", "-F", "-q", "-d", tree,
		"-E", "lazy_itable_init=1,lazy_journal_init=1", "-L", FSLabel}
	if need := inodes*3/2 + 1024; need > defaultInodes(size) {
		argv = append(argv, "-N", fmt.Sprint(need))
	}
	argv = append(argv, file, fmt.Sprintf("%dk", size/1024))
	if _, err := r.Run(ctx, argv...); err != nil {
		return fmt.Errorf("build the %d MiB root filesystem with mkfs.ext4 (if it ran out of space, give a larger size; else check there is room in %s and e2fsprogs is 1.43 or newer): %w",
			size>>20, filepath.Dir(file), err)
	}
	if !copyRoot {
		return nil // a rootless pull sets every inode afterwards
	}
	return copyRootInode(ctx, r, tree, file)
}

// copyRootInode gives the filesystem's root directory the tree's owner and
// mode: mkfs.ext4 -d makes it 0755 root:root whatever the tree says, and
// an image may say otherwise in its "./" entry.
func copyRootInode(ctx context.Context, r Runner, tree, file string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(tree, &st); err != nil {
		return fmt.Errorf("stat unpacked root: %w", err)
	}
	if st.Mode&0o7777 == 0o755 && st.Uid == 0 && st.Gid == 0 {
		return nil
	}
	for _, set := range []string{
		fmt.Sprintf("mode 0%o", st.Mode&(syscall.S_IFMT|0o7777)),
		fmt.Sprintf("uid %d", st.Uid),
		fmt.Sprintf("gid %d", st.Gid),
	} {
		if _, err := r.Run(ctx, "debugfs", "-w", "-R", "set_inode_field / "+set, file); err != nil {
			return fmt.Errorf("set the root directory's %s with debugfs: %w", set, err)
		}
	}
	return nil
}

// defaultInodes is how many inodes mke2fs gives a filesystem of size
// bytes by itself (mke2fs.conf: "small" below 512 MiB, else "default").
func defaultInodes(size int64) int64 {
	if size < 512<<20 {
		return size / 4096
	}
	return size / 16384
}

// checkFree refuses, with the numbers, when dir's filesystem has less than
// need bytes available.
func checkFree(free func(string) (int64, error), dir string, need int64, what string) error {
	have, err := free(dir)
	if err != nil {
		return fmt.Errorf("check free space in %s: %w", dir, err)
	}
	if have >= need {
		return nil
	}
	const mb = 1 << 20
	return api.Errorf(api.CodeOperationFailed, "not enough space in %s to %s: needs at least %d MB, %d MB free; free some (banger image cache prune) or move the cache",
		dir, what, (need+mb-1)/mb, have/mb)
}

func statfsFree(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}
