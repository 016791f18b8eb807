package api

import "time"

// Kernel is the public shape of one kernel.
type Kernel struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Arch      string    `json:"arch"`
	Source    string    `json:"source"`
	Dir       string    `json:"dir"`
	CreatedAt time.Time `json:"created_at"`
}

// KernelImportParams import a kernel directory (one with a manifest.json
// as banger's kernel builder writes it).
type KernelImportParams struct {
	Name string `json:"name"`
	From string `json:"from"`
}

// KernelListResult is the result of kernel.list.
type KernelListResult struct {
	Kernels []Kernel `json:"kernels"`
}

// ArtifactRef names one kernel or image (kernel.show, kernel.rm,
// image.show, image.delete, image.promote).
type ArtifactRef struct {
	Name string `json:"name"`
}

// KernelCatalogEntry is one kernel `banger kernel pull` can build.
type KernelCatalogEntry struct {
	Name      string `json:"name"`
	About     string `json:"about"`
	Installed bool   `json:"installed"`
}

// KernelCatalogResult is the result of kernel.catalog.
type KernelCatalogResult struct {
	Kernels []KernelCatalogEntry `json:"kernels"`
}

// KernelFile is one file of a kernel directory.
type KernelFile struct {
	Role   string `json:"role"` // vmlinuz, vmlinux, initrd, config
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// KernelDetails is the result of kernel.show: the record, what its
// manifest says, which VMMs it suits and who uses it.
type KernelDetails struct {
	Kernel
	SourcePackage string       `json:"source_package"`
	SourceVersion string       `json:"source_version"`
	Files         []KernelFile `json:"files"`
	ModulesDir    string       `json:"modules_dir,omitempty"`
	InitrdModules []string     `json:"initrd_modules,omitempty"`
	PVH           bool         `json:"pvh"`
	Cmdline       string       `json:"cmdline"`
	BuiltAt       time.Time    `json:"built_at"`
	// Suits lists the VMMs the kernel has a boot file for: "qemu"
	// (vmlinuz) and "firecracker" (an ELF vmlinux with a PVH entry).
	Suits  []string `json:"suits"`
	Images []string `json:"images"`
	VMs    []string `json:"vms"`
	// ManifestError says why the manifest could not be read, if it could not.
	ManifestError string `json:"manifest_error,omitempty"`
}

// Image is the public shape of one image.
type Image struct {
	Name       string    `json:"name"`
	Kernel     string    `json:"kernel"`
	RootfsPath string    `json:"rootfs_path"`
	SizeBytes  int64     `json:"size_bytes"`
	SHA256     string    `json:"sha256"`
	Source     string    `json:"source"`
	Default    bool      `json:"default"`
	CreatedAt  time.Time `json:"created_at"`
}

// Image kinds (ImageManifest.Kind).
const (
	ImageKindCatalog    = "catalog"    // built locally by `image pull CATALOG-NAME`
	ImageKindOCI        = "oci"        // converted from a registry image
	ImageKindRegistered = "registered" // an ext4 file given to `image register`
	ImageKindBuild      = "build"      // `image build --from IMAGE`
	ImageKindFromVM     = "from-vm"    // `image build --from-vm VM`
)

// ImageManifest is what banger recorded about how an image was made.
type ImageManifest struct {
	Kind    string    `json:"kind"`
	BuiltAt time.Time `json:"built_at"`
	// Ref is the OCI reference pulled (normalized); Digest the linux/amd64
	// image manifest converted, IndexDigest what the ref resolved to.
	Ref         string `json:"ref,omitempty"`
	Digest      string `json:"digest,omitempty"`
	IndexDigest string `json:"index_digest,omitempty"`
	// From is the host file an image was registered from.
	From string `json:"from,omitempty"`
	// SizeBytes is the root filesystem's size, ContentBytes the space its
	// files take.
	SizeBytes    int64  `json:"size_bytes"`
	ContentBytes int64  `json:"content_bytes,omitempty"`
	SHA256       string `json:"sha256"`
	// Packages is the number of installed packages the image's package
	// database lists; -1 when banger could not count them.
	Packages       int    `json:"packages"`
	PackageManager string `json:"package_manager,omitempty"`
	HasSystemd     bool   `json:"has_systemd"`
	HasSSHD        bool   `json:"has_sshd"`
	// Init is how the guest starts: "systemd" (the image's own, with
	// banger's bootstrap unit) or "banger-init" (banger's first-boot
	// script as /sbin/init, which installs and runs sshd).
	Init          string   `json:"init,omitempty"`
	Kernel        string   `json:"kernel"`
	KernelVersion string   `json:"kernel_version,omitempty"`
	Sources       []string `json:"sources,omitempty"`
	Env           []string `json:"env,omitempty"`
	Entrypoint    []string `json:"entrypoint,omitempty"`
	Cmd           []string `json:"cmd,omitempty"`

	// An image build's record (kinds build and from-vm): the base image
	// and the sha256 of its root filesystem, the VM a from-vm image was
	// made of, what the build installed, copied and ran, and the banger
	// that built it.
	Base          string        `json:"base,omitempty"`
	BaseSHA256    string        `json:"base_sha256,omitempty"`
	FromVM        string        `json:"from_vm,omitempty"`
	BuildPackages []string      `json:"build_packages,omitempty"`
	Copies        []string      `json:"copies,omitempty"`
	Scripts       []BuildScript `json:"scripts,omitempty"`
	BangerVersion string        `json:"banger_version,omitempty"`
	// WorkSeed: the image carries a /root (work.ext4 beside its root):
	// every VM's work disk starts as a copy of it.
	WorkSeed bool `json:"work_seed,omitempty"`
}

// BuildScript is one --script an image build ran.
type BuildScript struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// ImageBuildCopy is one --copy SRC:DST of an image build: a host file or
// directory and where it goes in the guest.
type ImageBuildCopy struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// ImageBuildParams begin an image build (image.build.begin). Exactly one
// of From and FromVM is set. Host paths (Scripts, Copies' Src) are
// absolute.
type ImageBuildParams struct {
	Name     string           `json:"name"`
	From     string           `json:"from,omitempty"`
	FromVM   string           `json:"from_vm,omitempty"`
	Packages []string         `json:"packages,omitempty"`
	Scripts  []string         `json:"scripts,omitempty"`
	Copies   []ImageBuildCopy `json:"copies,omitempty"`
	// Size is the new image's root filesystem size ("8G"); empty keeps
	// the base's.
	Size string `json:"size,omitempty"`
	// NAT gives the build VM a way out (default on: packages need their
	// mirrors).
	NAT *bool `json:"nat,omitempty"`
	// WithWorkDisk keeps the build VM's /root (--from-vm: the VM's) as
	// the image's work seed.
	WithWorkDisk bool `json:"with_work_disk,omitempty"`
	VCPU         int  `json:"vcpu,omitempty"`
	MemoryMiB    int  `json:"memory_mib,omitempty"`
}

// ImageBuildBeginResult names the build's operation.
type ImageBuildBeginResult struct {
	OpID string `json:"op_id"`
	Name string `json:"name"`
}

// ImageBuildStatusParams ask for a build's state and its output lines
// from index Since on.
type ImageBuildStatusParams struct {
	OpID  string `json:"op_id"`
	Since int    `json:"since"`
}

// ImageBuildStatus is the result of image.build.status.
type ImageBuildStatus struct {
	Operation OperationSummary `json:"operation"`
	Stages    []StageTiming    `json:"stages"`
	// Output holds the guest's output lines (packages, scripts) from
	// index Since; Next is the index to ask from next time. Lines that
	// fell out of the bounded buffer are counted in Dropped.
	Output  []string `json:"output"`
	Next    int      `json:"next"`
	Dropped int      `json:"dropped,omitempty"`
	Image   *Image   `json:"image,omitempty"`
}

// ImageDetails is the result of image.show.
type ImageDetails struct {
	Image
	Manifest ImageManifest `json:"manifest"`
	VMs      []string      `json:"vms"`
}

// ImageRegisterParams register an existing ext4 root filesystem file.
type ImageRegisterParams struct {
	Name   string `json:"name"`
	Rootfs string `json:"rootfs"`
	Kernel string `json:"kernel"`
}

// ImageListResult is the result of image.list.
type ImageListResult struct {
	Images []Image `json:"images"`
}

// PullParams name a catalog entry to pull (kernel.pull).
type PullParams struct {
	Name string `json:"name"`
}

// ImagePullParams are the params of image.pull. Source is a catalog name
// or an OCI reference (REGISTRY/REPO:TAG, REPO@sha256:...); Name, Size and
// Kernel apply to OCI references. An empty Source takes Name (the catalog
// form {"name": "debian-bookworm"}).
type ImagePullParams struct {
	Source string `json:"source,omitempty"`
	Name   string `json:"name,omitempty"`
	Size   string `json:"size,omitempty"`
	Kernel string `json:"kernel,omitempty"`
}

// PullResult is returned by kernel.pull and image.pull: the operation to
// follow (shared with any pull of the same name or reference already in
// flight).
type PullResult struct {
	OpID   string `json:"op_id"`
	Name   string `json:"name"`
	Joined bool   `json:"joined"`
}

// CachePruneParams are the params of image.cache_prune.
type CachePruneParams struct {
	DryRun bool `json:"dry_run"`
}

// CacheEntry is one build leftover image.cache_prune removed (or would).
type CacheEntry struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

// CachePruneResult is the result of image.cache_prune. Skipped lists
// entries that belong to operations still running.
type CachePruneResult struct {
	DryRun     bool         `json:"dry_run"`
	Removed    []CacheEntry `json:"removed"`
	Skipped    []CacheEntry `json:"skipped"`
	TotalBytes int64        `json:"total_bytes"`
}
