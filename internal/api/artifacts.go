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

// PullParams name a catalog entry to pull (kernel.pull, image.pull).
type PullParams struct {
	Name string `json:"name"`
}

// PullResult is returned by kernel.pull and image.pull: the operation to
// follow (shared with any pull of the same name already in flight).
type PullResult struct {
	OpID   string `json:"op_id"`
	Name   string `json:"name"`
	Joined bool   `json:"joined"`
}
