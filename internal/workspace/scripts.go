package workspace

import "strings"

// GuestScript is the POSIX sh script that unpacks a WriteArchive stream
// (its stdin) into dest in the guest ("" means DefaultDest). Run it as
// `sh -c SCRIPT` over ssh with the archive on stdin. It needs sh, tar, cp,
// mktemp, coreutils and, for git workspaces, git. On success it prints one
// summary line to stdout; errors go to stderr with a non-zero exit.
//
// See the package documentation for what it does to dest, first time and
// on a re-sync.
func GuestScript(dest string) string {
	if dest == "" {
		dest = DefaultDest
	}
	return strings.NewReplacer("@DEST@", shellQuote(dest)).Replace(guestScript)
}

// ExportScript is ExportScriptAt(DefaultDest, base).
func ExportScript(base string) string { return ExportScriptAt(DefaultDest, base) }

// ExportScriptAt is the POSIX sh script that prints to stdout a binary
// patch of everything in the guest repository dest that differs from
// base: commits made in the guest, uncommitted changes, and new files that
// are not ignored. base "" means the commit the workspace was prepared
// from (dest/.git/banger-base; the empty tree for a repository that had
// no commits). The guest's own index is left alone (the snapshot is taken
// in a temporary index). `git apply` takes the patch on the host, on a
// checkout of base. An empty output means no changes.
func ExportScriptAt(dest, base string) string {
	if dest == "" {
		dest = DefaultDest
	}
	return strings.NewReplacer("@DEST@", shellQuote(dest), "@BASE@", shellQuote(base)).Replace(exportScript)
}

const guestScript = `# banger: unpack a workspace archive (stdin) into a directory
set -eu
umask 022
D=@DEST@
say() { printf 'banger: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
case $D in
/) die "refusing to use / as the workspace" ;;
/*) ;;
*) D=$PWD/$D ;;
esac
D=${D%/}
for c in tar cp mktemp dirname sort; do
	command -v "$c" >/dev/null 2>&1 || die "$c is not installed in the guest"
done
P=$(dirname -- "$D")
mkdir -p -- "$P" || die "cannot create $P"
T=$(mktemp -d "$P/.banger-workspace.XXXXXX") || die "cannot make a temporary directory in $P"
trap 'chmod -R u+w -- "$T" 2>/dev/null; rm -rf -- "$T"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
tar -x -p --no-same-owner --warning=no-timestamp -f - -C "$T" || die "could not unpack the workspace archive from stdin (was it cut short?)"
[ -f "$T/env.sh" ] || die "stdin is not a banger workspace archive (no env.sh)"
[ -f "$T/end" ] || die "the workspace archive was cut short (no end marker); nothing was changed"
VERSION= KIND= COMMIT= HEADREF= FORMAT=sha1 FILES=0
. "$T/env.sh"
[ "$VERSION" = 1 ] || die "workspace archive version $VERSION is not one this script knows (1)"

if [ "$KIND" = dir ]; then
	mkdir -p -- "$D"
	cp -a --remove-destination -- "$T/tree/." "$D/" || die "copying the files into $D failed"
	printf 'banger: workspace %s ready: %s files from the host (not a git repository)\n' "$D" "$FILES"
	exit 0
fi
case $KIND in
git | git-empty) ;;
*) die "unknown workspace kind '$KIND'" ;;
esac
command -v git >/dev/null 2>&1 || die "git is not installed in the guest"
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost
GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost
export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL
g() { git -C "$D" "$@"; }
# gi INDEX ARGS...: git in D with a temporary index
gi() { _i=$1; shift; GIT_INDEX_FILE=$_i git -C "$D" "$@"; }

fresh=no
if [ -e "$D/.git" ]; then
	[ -f "$D/.git/banger-base" ] || die "$D is a git repository that banger did not prepare; pick another destination or remove it"
elif [ -d "$D" ] && [ -n "$(ls -A -- "$D")" ]; then
	die "$D is not empty and is not a banger workspace; pick another destination or remove it"
else
	if [ "$FORMAT" = sha1 ]; then
		git -c init.defaultBranch=main init -q "$D" >/dev/null
	else
		git -c init.defaultBranch=main init -q --object-format="$FORMAT" "$D" >/dev/null
	fi
	fresh=yes
	g hash-object -t tree /dev/null >"$D/.git/banger-base"
fi
EMPTY=$(g hash-object -t tree /dev/null)
OLD=$(cat -- "$D/.git/banger-base")

if [ -n "$COMMIT" ]; then
	[ -f "$T/repo.bundle" ] || die "the archive has no repo.bundle"
	g bundle unbundle "$T/repo.bundle" >/dev/null || die "could not read the host's history (repo.bundle) into $D"
	if [ -f "$T/git/shallow" ]; then
		cat -- "$T/git/shallow" >"$T/shallow"
		if [ -f "$D/.git/shallow" ]; then cat -- "$D/.git/shallow" >>"$T/shallow"; fi
		sort -u -- "$T/shallow" >"$D/.git/shallow"
	fi
	g cat-file -e "$COMMIT^{commit}" 2>/dev/null || die "the host's commit $COMMIT is missing after unbundling"
	if [ "$fresh" = no ] && [ "$OLD" != "$EMPTY" ] && [ ! -f "$D/.git/shallow" ] && g cat-file -e "$OLD^{commit}" 2>/dev/null; then
		if ! g merge-base "$OLD" "$COMMIT" >/dev/null 2>&1; then
			die "$D holds a different repository (no history in common with the host's); pick another destination or remove it"
		fi
	fi
fi

# A re-sync first records everything the guest has (HEAD, index, working
# tree, untracked files that are not ignored) as refs/banger/pre-sync.
note=
if [ "$fresh" = no ]; then
	rm -f -- "$T/snap.idx"
	if [ -f "$D/.git/index" ]; then cp -- "$D/.git/index" "$T/snap.idx"; fi
	gi "$T/snap.idx" add -A >/dev/null || die "could not record the guest's state before re-syncing (git add -A in $D failed)"
	tree=$(gi "$T/snap.idx" write-tree)
	if head=$(g rev-parse -q --verify HEAD); then
		snap=$(g commit-tree -p "$head" -m "banger: guest state before re-sync" "$tree")
	else
		snap=$(g commit-tree -m "banger: guest state before re-sync" "$tree")
	fi
	g update-ref --create-reflog -m "banger: before re-sync" refs/banger/pre-sync "$snap"
	note="; the guest's previous state is refs/banger/pre-sync"
fi

# NEW is the host's working tree as shipped; refs/banger/synced holds the
# previous one. Going from that to NEW removes what the host removed,
# writes what it has, and leaves files only the guest has alone.
GIT_INDEX_FILE=$T/new.idx git --git-dir="$D/.git" --work-tree="$T/tree" -C "$T/tree" add -A -f >/dev/null ||
	die "could not hash the host's files"
NEW=$(GIT_INDEX_FILE=$T/new.idx git --git-dir="$D/.git" write-tree)
if SYNCED=$(g rev-parse -q --verify 'refs/banger/synced^{tree}'); then :; else SYNCED=$EMPTY; fi
gi "$T/wt.idx" read-tree "$SYNCED"
gi "$T/wt.idx" read-tree --reset -u "$NEW" || die "could not update the files in $D"
# Exact bytes, modes and times come from the archive itself.
cp -a --remove-destination -- "$T/tree/." "$D/" || die "copying the files into $D failed"

if [ -n "$COMMIT" ]; then
	if [ -n "$HEADREF" ]; then
		g update-ref -m "banger: sync from host" "$HEADREF" "$COMMIT"
		g symbolic-ref HEAD "$HEADREF"
	else
		g update-ref --no-deref -m "banger: sync from host" HEAD "$COMMIT"
	fi
	BASE=$COMMIT
else
	g symbolic-ref HEAD "$HEADREF"
	if g rev-parse -q --verify "$HEADREF" >/dev/null; then g update-ref -d "$HEADREF"; fi
	BASE=$EMPTY
fi

# The index is the host's: staged changes stay staged.
rm -f -- "$D/.git/index"
if [ -d "$T/git/blobs" ]; then
	for b in "$T"/git/blobs/*; do
		[ -f "$b" ] || continue
		h=$(g hash-object -w --no-filters "$b") || die "could not store staged blob ${b##*/}"
		[ "$h" = "${b##*/}" ] || die "staged blob ${b##*/} does not match its content"
	done
fi
g update-index -z --index-info <"$T/git/index.info" || die "could not rebuild the index in $D"
g update-index -q --refresh >/dev/null 2>&1 || :

if [ -n "$COMMIT" ]; then
	synced=$(g commit-tree -p "$COMMIT" -m "banger: the host's working tree" "$NEW")
else
	synced=$(g commit-tree -m "banger: the host's working tree" "$NEW")
fi
g update-ref --create-reflog -m "banger: sync from host" refs/banger/synced "$synced"
printf '%s\n' "$BASE" >"$D/.git/banger-base"

if [ -n "$HEADREF" ]; then what=${HEADREF#refs/heads/}; else what="detached HEAD"; fi
if [ -n "$COMMIT" ]; then what="$what at $(g rev-parse --short=12 "$COMMIT")"; else what="$what (no commits yet)"; fi
printf 'banger: workspace %s ready: git %s, %s files from the host%s\n' "$D" "$what" "$FILES" "$note"
`

const exportScript = `# banger: print a patch of the guest workspace's changes against a base
set -eu
D=@DEST@
BASE=@BASE@
die() { printf 'banger: %s\n' "$*" >&2; exit 1; }
command -v git >/dev/null 2>&1 || die "git is not installed in the guest"
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
[ -d "$D" ] || die "$D does not exist; prepare the workspace first (banger vm run)"
cd -- "$D"
gd=$(git rev-parse --absolute-git-dir 2>/dev/null) || die "$D is not a git repository"
if [ -z "$BASE" ]; then
	[ -f "$gd/banger-base" ] || die "$D records no base commit ($gd/banger-base); pass a base commit"
	BASE=$(cat -- "$gd/banger-base")
fi
git rev-parse -q --verify "$BASE^{tree}" >/dev/null || die "base '$BASE' is not a commit or tree in $D"
T=$(mktemp -d "$gd/banger-export.XXXXXX")
trap 'rm -rf -- "$T"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -f "$gd/index" ]; then cp -- "$gd/index" "$T/index"; fi
GIT_INDEX_FILE=$T/index git add -A >&2 || die "git add -A in $D failed"
GIT_INDEX_FILE=$T/index git diff-index --cached --binary "$BASE" --
`
