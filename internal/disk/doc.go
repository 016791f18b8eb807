// Package disk makes and grows the per-VM disk image files that are plain
// files on the host:
//
//   - the root disk when device-mapper snapshots are not available: a
//     copy-on-write clone of the base image (FICLONE reflink on btrfs/xfs),
//     or else a sparse copy that keeps the base image's holes;
//   - the work disk: a sparse ext4 file (mounted at /root in the guest),
//     made with lazy inode/journal init. It is never checked or resized on
//     the host once a guest has written it: the file grows (rootdisk), the
//     guest grows the filesystem online.
//
// Commands (mkfs.ext4) run through a Runner. The
// package owns only the files it is asked to create, and removes them
// again when creating fails. It must not touch an image a running VM has
// open, never shrinks a disk, and knows nothing about VMs or the store.
package disk
