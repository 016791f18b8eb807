// Package kernel builds and describes banger's guest kernels.
//
// A kernel is a directory:
//
//	vmlinuz        bzImage, booted by QEMU
//	vmlinux        the ELF image inside vmlinuz, booted by Firecracker
//	initrd.img     a small busybox initramfs: loads the virtio and ext4
//	               modules, waits for root=, mounts it, switch_root
//	config         the kernel's build configuration
//	modules/       the /lib/modules/<version> tree that images receive
//	manifest.json  name, version, source package and a sha256 per file
//
// The default kernel "debian-6.1" is built from Debian's linux-image-amd64
// package (BuildDebian). Debian builds virtio_mmio, virtio_blk and ext4 as
// modules, so the initrd is not optional: without it the kernel cannot see
// its root disk.
//
// This package owns building kernel directories and reading their
// manifests. It must not know about VMs, images or the daemon's store, and
// it runs host commands only through its Runner.
package kernel
