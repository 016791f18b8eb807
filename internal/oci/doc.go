// Package oci turns an OCI or Docker image from a registry into a bootable
// ext4 root filesystem file; it serves `banger image pull REGISTRY/REPO:TAG`.
//
// A pull resolves the reference anonymously, picks the linux/amd64
// manifest, streams each layer (checking the blob digest and the config's
// diff ID), and replays the layers in order into a staging directory:
//
//	registry ──► manifest (linux/amd64) ──► layer 1 … layer n (tar streams)
//	                                              │ whiteouts, opaque dirs,
//	                                              ▼ owners, modes, devices
//	                                   WorkDir/oci-*/rootfs ──► mkfs.ext4 -d ──► DestFile
//	                                              ▲
//	                          Options.ExtraTrees ─┘ (host dirs, e.g. a kernel's modules)
//
// As root, owners, modes, device nodes and attributes are made in the
// staging tree and mkfs.ext4 -d copies them. Rootless (Options.Rootless,
// an unprivileged daemon), the tree is the caller's own — no setuid bit,
// device node or foreign owner on the host, a placeholder file for each
// device — and what each inode should be is recorded (owners, by inode
// number when it is made) and set in the finished filesystem by
// guestfs.SetInodes (debugfs), which reads every one back. debugfs takes
// requests line by line, so an image with a name holding a newline or a
// carriage return cannot be pulled rootless (it is refused, naming it).
//
// Invariants:
//   - Nothing a layer holds is written outside the staging root. Every path
//     is resolved with openat2(RESOLVE_IN_ROOT), as if the root were "/":
//     symlinks in parent components are followed but clamped to the root
//     (so `lib -> /usr/lib` then `lib/x` lands in usr/lib/x), the last
//     component is never followed, and entry names that climb out with
//     ".." are refused.
//   - A failed pull leaves nothing behind: the staging tree is always
//     removed and DestFile is removed on any error. An existing DestFile
//     is never overwritten.
//
// This package owns fetching image blobs and building the root filesystem
// file. It must not know about the daemon's store, image names or VMs;
// sharing one download between concurrent pulls of a ref is the caller's
// job, and so is the first-boot bootstrap (Result only reports what the
// image holds: systemd, sshd, a package manager). Host commands
// (mkfs.ext4) run only through its Runner.
package oci
