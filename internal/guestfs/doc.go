// Package guestfs patches files inside an ext4 disk image without mounting
// it, so bangerd needs neither a loop device nor a mount to write a guest's
// hostname, resolv.conf, network config, sshd drop-in, authorized_keys or
// fstab before first boot.
//
// It drives debugfs (e2fsprogs) in batch mode through a Runner. An Edit
// collects operations (write a file, make directories, make a symlink,
// remove an entry) and Image.Apply carries them out in three debugfs runs:
//
//  1. probe (read-only): stat every path the edit touches and each of its
//     ancestors, so the plan knows what exists;
//  2. write (debugfs -w): the planned commands, e.g. `rm` before `write`
//     because debugfs refuses to overwrite, `mkdir` for missing parents,
//     `sif` for mode and ownership;
//  3. verify (read-only): stat and read back every result and compare it
//     with what was asked for.
//
// The verify pass exists because debugfs reports most failures only on
// stderr and still exits 0, and a Runner hands back stderr only when the
// command fails. Checking the outcome is what turns "debugfs said nothing"
// into an error.
//
// Names are quoted for debugfs's request parser (the ss library: a
// double-quoted argument may hold spaces and tabs, and "" inside quotes is
// one literal "). A command file is read line by line and cut at '\r', so
// paths containing NUL, newline or carriage return cannot be expressed and
// are refused with a bad_request error, as are relative or unclean paths.
// Paths are resolved inside the image only: symlinks in ancestors are
// followed within the image's own root, never on the host.
//
// The package owns nothing but temporary host files it removes before
// returning. It must not be used on an image a running VM has open, and it
// does not mount, loop-attach or fsck anything.
package guestfs
