// Package image builds banger's default guest root image.
//
// An image is a directory:
//
//	rootfs.ext4    the root filesystem, a sparse ext4 file labelled
//	               "bangerroot"; VMs boot copy-on-write views of it
//	manifest.json  name, build time, size, sha256, kernel version and the
//	               Debian packages inside
//
// BuildDebianBookworm makes the image "debian-bookworm" with mmdebstrap
// from the host's configured Debian sources, then prepares the tree for
// banger: systemd-networkd enabled, SSH host keys generated on each VM's
// first boot, an empty machine-id, the work disk in fstab, the kernel's
// modules tree, no apt timers. Per-VM files (hostname, network, resolv.conf,
// authorized_keys) are not baked in: the daemon writes them for each VM.
//
// This package owns building image directories and reading their
// manifests. It must not know about VMs, the daemon's store or how root
// disks are snapshotted, and it runs host commands only through its Runner.
package image
