// Package workspace moves a host directory into a guest for
// `banger vm run PATH`, and the guest's changes back out as a patch for
// `banger vm workspace export`.
//
// # Host side
//
// NewPlan decides what to copy. Inside a git work tree (found with
// `git -C PATH rev-parse --show-toplevel`) the plan is the repository's top
// level, even when PATH is a subdirectory (Plan.Subdir says which): the
// tracked files as they are in the working tree (`git ls-files`; tracked
// files missing from the working tree are listed in Plan.Deleted), plus,
// with includeUntracked, the untracked files that are not ignored
// (`git ls-files --others --exclude-standard`). HEAD's commit and branch
// are recorded; a branch without commits is KindGitEmpty. Outside git the
// plan is the whole directory (KindDir, NoteNotGit). Symlinks are copied as
// links, wherever they point. Sockets, pipes and devices, submodule
// contents and nested repositories are left out and listed in Plan.Skipped
// (and Plan.Notes); an unreadable file or directory is an error naming it,
// and so is a .git that git cannot read (rather than copying it as a plain
// directory).
//
// WriteArchive streams the plan as one tar archive (owners root, modes
// kept): manifest.json (Manifest), env.sh (the same facts for the guest
// script), repo.bundle (KindGit: `git bundle create FILE refs/heads/BRANCH`,
// or HEAD when detached), git/index.info (the host index, `git ls-files -s
// -z`), git/blobs/OID (staged contents HEAD does not have), git/shallow
// (shallow clones), the files under tree/, and an end marker. A plan over
// Plan.Limit (DefaultMaxBytes, 2 GiB, unless Plan.MaxBytes says otherwise;
// files, bundle and staged blobs together) is refused with a *SizeError
// before a byte is written; Plan.CheckSize refuses early on the files
// alone.
//
// All host commands are git, run through a Runner (*system.Exec).
//
// # Guest side
//
// GuestScript(dest) is a POSIX sh script (sh, tar, coreutils and git) that
// reads the archive on stdin and lays it out in dest (DefaultDest,
// /root/repo). It unpacks next to dest and changes nothing unless the whole
// archive arrived. Then:
//
//   - KindDir: the files are copied over dest; no git init. A re-run
//     updates and adds files but does not remove files deleted on the host.
//   - git kinds, first time: `git init` (same object format), the bundle's
//     history, HEAD on the host's branch at the host's commit (unborn for
//     KindGitEmpty), the host's index (staged changes stay staged) and the
//     host's working tree, byte for byte with modes. `git status` in dest
//     then shows what it shows on the host (for the files copied), and
//     `git diff` the host's uncommitted changes.
//   - git kinds, re-run (dest/.git/banger-base exists): the guest's
//     state (HEAD, index, working tree, untracked files that are not
//     ignored) is first committed to refs/banger/pre-sync (with a reflog,
//     so nothing is lost); then dest is made equal to the host: HEAD, branch
//     and index are the host's, files the host has are overwritten, files
//     that the previous sync brought and the host no longer has are removed,
//     and files that exist only in the guest are left alone (they show as
//     untracked). Guest commits on the branch are replaced by the host's
//     (they stay reachable from refs/banger/pre-sync).
//   - dest is refused if it is a git repository banger did not prepare, a
//     non-empty directory that is not a workspace, or a workspace of an
//     unrelated repository (no history in common).
//
// Each sync records the base commit (the empty tree for KindGitEmpty) in
// dest/.git/banger-base and the host's working tree as shipped in
// refs/banger/synced (a commit whose parent is the base). Running the same
// archive twice gives the same result. The script prints one summary line
// to stdout; errors go to stderr and exit non-zero.
//
// ExportScript(base) prints a binary patch of everything in /root/repo
// that differs from base (default: banger-base): the guest's commits, its
// staged and unstaged changes, and new files that are not ignored. It
// snapshots the working tree in a temporary index (GIT_INDEX_FILE), so the
// guest's own index is untouched, and runs `git diff-index --cached
// --binary BASE` (plumbing, so the guest's diff settings do not change the
// output). The patch applies with `git apply` to a checkout of the base on
// the host. With base refs/banger/synced the patch holds only the guest's
// own changes, relative to the working tree the host shipped.
//
// # How the CLI uses it
//
// vm run PATH [--dry-run] [--include-untracked]:
//
//	p, err := workspace.NewPlan(ctx, &system.Exec{}, PATH, includeUntracked)
//	print p.Notes; for --dry-run, p.PrintList(stdout) and stop
//	p.CheckSize() before creating the VM
//	ssh ... -- sh -c GUEST_SCRIPT   with stdin = WriteArchive(ctx, p, pipe)
//
// and for vm workspace export NAME [--base-commit C]:
//
//	ssh ... -- sh -c EXPORT_SCRIPT  > patch (stdout), stdin empty
//
// The scripts are single command words: pass []string{"sh", "-c", script}
// as the ssh command (each word shell-quoted, as sshArgv does).
//
// The package starts no processes of its own other than through Runner,
// and never touches the host repository's refs, index or working tree.
package workspace
