// Package rootdisk gives each VM copy-on-write disks over a shared,
// read-only base image, instead of a full copy of the image per VM. It
// owns the VM's own layer file (Disk.Path), the layer files Clone freezes,
// and, for dm disks, the attach/detach of the snapshot device through
// dmsnap.
//
// Strategies, best first (the root_disk setting: auto|dm|qcow2|reflink|copy):
//
//   - dm: a device-mapper snapshot (dmsnap): the base on a read-only loop,
//     the VM's sparse COW file on a second loop. The COW file persists with
//     the VM; the loop and dm devices exist only while it runs (Attach at
//     boot, Detach at stop). For Firecracker, or wherever dmsnap.Available.
//   - qcow2: a qcow2 overlay whose backing file is the base (QEMU only,
//     any filesystem).
//   - reflink: a FICLONE of the base (btrfs, xfs with reflink=1).
//   - copy: a sparse copy, the last resort.
//
// Choose picks one for (VMM, VM directory, base) by probing the host each
// time; Check says why a strategy cannot work. A raw file the caller made
// itself, such as the work disk, is wrapped with NewRaw (Strategy plain).
//
// Clone of a qcow2 disk freezes the source's overlay into a shared layer
// and gives both VMs new, empty overlays over it:
//
//	before                              after Clone(src, dst, layer L1)
//
//	src.qcow2 (rw, VM A's writes)       src.qcow2 (rw, new, empty) ─┐
//	   │ backing                        dst.qcow2 (rw, new, empty) ─┤
//	   ▼                                                             ▼
//	rootfs.ext4 (ro, image)             layers/L1 (ro 0444: A's writes so far)
//	                                       │ backing
//	                                       ▼
//	                                    rootfs.ext4 (ro, image)
//
//	src Chain: [rootfs]                 src, dst Chain: [L1, rootfs]
//
// Invariants:
//   - The base is never written: it is only ever a qcow2 backing file
//     (passed with -F raw, so QEMU never probes it), the source of a
//     reflink or copy, or a read-only loop device.
//   - A file in a Chain is read-only and shared: it is never changed or
//     removed by this package (Remove deletes Path only). The daemon
//     deletes a layer once no Disk's Chain mentions it (UnusedLayers).
//     Chain lists the whole backing chain down to the image, so a layer
//     that another layer is built on stays in use.
//   - Every function that creates files removes what it created before
//     returning an error; Clone leaves its source as it found it. An
//     ENOSPC becomes a *NoSpaceError (errors.Is(err, ErrNoSpace)) with
//     the same message as CheckFree's: "no space left on DEVICE (needs ~N
//     MB, M MB free)".
//   - Files are created 0600 (they hold the guest's secrets), frozen
//     layers 0444.
//   - Commands (qemu-img, and losetup/dmsetup through dmsnap) run through
//     the caller's Runner as argv slices. Nothing here runs fsck or
//     resize2fs: the guest grows its own filesystem after Grow.
//
// The package knows nothing of VMs, the store or the VMMs beyond the VMM
// name; the caller records the Disks (they marshal to JSON) and must
// serialise Clone with UnusedLayers.
package rootdisk
