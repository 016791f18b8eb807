// Package vmcp copies files and directory trees between the host and a
// guest over SFTP: the engine behind `banger vm cp`.
//
// A Copier works on an *sftp.Client the caller has opened (over banger's
// SSH connection to the guest) and on the host's own filesystem. One tree
// walk serves both directions; each side is a small filesystem interface
// (host: package os; guest: the SFTP client).
//
// What a copy keeps and what it means:
//
//   - Regular files, directories (only with Recursive, like cp -r) and
//     symbolic links, which are copied as links, never followed: a link's
//     target is copied verbatim, so an absolute target names a path on the
//     side the link lands on. A symlink named as SRC itself is followed
//     without Recursive (cp copies what it points at) and copied as a
//     link with it (cp -r). Devices, FIFOs and sockets are skipped with a
//     warning. Hard links become separate files.
//   - Permission bits (setuid, setgid and sticky included), modification
//     and access times (to the second: SFTP carries whole seconds). Not
//     ownership: files land owned by the user doing the writing (root in
//     the guest, the invoking user on the host).
//   - Sparse files stay sparse. Reading on the host, data is found with
//     SEEK_DATA/SEEK_HOLE and every all-zero 4 KiB block is skipped, so
//     holes and runs of zeros never cross the wire: the guest file is
//     written with WriteAt past them and truncated to its full size at the
//     end. Reading in the guest, SFTP has no way to find holes, so the
//     zeros are read, but all-zero blocks are not written on the host,
//     which gets holes in their place.
//   - A file is copied up to the size it had when the copy reached it
//     (what it grows by meanwhile is not copied), except that one that
//     reports size 0 is read to its end, as /proc and /sys files have
//     data they do not count.
//   - Destination names follow cp: copying into an existing directory puts
//     SRC's base name inside it; otherwise DST is the new name, and its
//     parent directory must exist. SRC written as DIR/. means DIR's
//     contents (merged into DST when DST is an existing directory). A DST
//     with a trailing slash must be a directory unless a directory is
//     being copied to it. An existing file is overwritten in place; an
//     existing directory is merged into; a symbolic link in the way is
//     replaced, never written through; a file never replaces a directory
//     or the other way round.
//
// Guest paths are paths in the guest's own filesystem: GuestPath resolves
// them against /root and cleans them with the guest's / as the root, so
// `..` can climb no higher than the guest's /. They can never name a host
// path, so there is nothing on the host for them to escape to.
//
// The package must not start processes, dial SSH or talk to the daemon:
// the caller brings the SFTP client and owns its connection (closing it is
// how a copy blocked on the network is interrupted).
package vmcp
