package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Runner runs one host command from an argv slice and returns its stdout;
// *system.Exec satisfies it. All git commands go through it as
// `git -C DIR ...`.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Kind says how a workspace reaches the guest.
type Kind string

const (
	// KindGit: a git work tree with a HEAD commit; the guest gets the
	// history (a bundle), the index and the working tree.
	KindGit Kind = "git"
	// KindGitEmpty: a git work tree whose branch has no commit yet; the
	// guest gets `git init`, the index and the working tree.
	KindGitEmpty Kind = "git-empty"
	// KindDir: not in a git repository; the guest gets the files only.
	KindDir Kind = "dir"
)

// Notes the CLI can print as they are.
const (
	NoteNotGit   = "not a git repository: copying the directory as it is"
	NoteNoCommit = "the repository has no commits yet: copying the files without history (git init in the guest)"
	NoteShallow  = "the repository is a shallow clone: the guest gets the same shallow history"
)

// DefaultMaxBytes is the archive limit when Plan.MaxBytes is zero.
const DefaultMaxBytes int64 = 2 << 30

// DefaultDest is where the workspace lands in the guest.
const DefaultDest = "/root/repo"

// EntryType is the kind of one planned path.
type EntryType string

const (
	TypeFile    EntryType = "file"
	TypeDir     EntryType = "dir"
	TypeSymlink EntryType = "symlink"
)

// Entry is one path that goes into the archive's tree/.
type Entry struct {
	Path      string      // slash-separated, relative to Plan.Root
	Type      EntryType   // file, dir or symlink
	Mode      fs.FileMode // permission and setuid/setgid/sticky bits
	Size      int64       // regular files only
	Target    string      // symlinks: the link text, copied as it is
	Untracked bool        // git plans: an untracked, not ignored file
}

// Skip is a path the plan leaves out, with the reason (never silently).
type Skip struct {
	Path   string
	Reason string
}

// Plan is what `banger vm run PATH` will copy into the guest. Build one
// with NewPlan; print it for --dry-run; stream it with WriteArchive.
type Plan struct {
	// Root is the directory that is copied: the repository's top level
	// for git plans (even when PATH was a subdirectory), else PATH.
	Root string
	// Subdir is PATH relative to Root ("" when PATH is Root), slash-separated.
	Subdir string
	Kind   Kind
	// Commit is HEAD's commit (KindGit only).
	Commit string
	// Branch is the branch HEAD is on (short name, e.g. "main"); "" when
	// HEAD is detached or for KindDir.
	Branch string
	// ObjectFormat is the repository's hash ("sha1" or "sha256").
	ObjectFormat string
	// Shallow is set for a shallow clone; the guest gets the same
	// shallow boundary.
	Shallow          bool
	IncludeUntracked bool

	// Entries are the files, directories and symlinks under tree/,
	// sorted by path (a directory precedes its contents).
	Entries []Entry
	// Deleted are tracked paths missing from the working tree; the guest
	// shows them deleted too (git status " D").
	Deleted []string
	// Skipped are paths left out, each with its reason.
	Skipped []Skip
	// Notes are lines for the user (NoteNotGit, NoteNoCommit, ...).
	Notes []string

	Files      int   // regular files and symlinks in Entries
	TotalBytes int64 // sum of the regular files' sizes

	// MaxBytes bounds the archive (tree, bundle and staged blobs);
	// 0 means DefaultMaxBytes.
	MaxBytes int64

	runner Runner
	index  []byte       // `git ls-files -s -z`, as it is
	staged []indexEntry // parsed index
}

type indexEntry struct {
	mode, oid, stage, path string
}

// NewPlan inspects path (a directory) and decides what to copy; see the
// package documentation. r runs git on the host.
func NewPlan(ctx context.Context, r Runner, dir string, includeUntracked bool) (*Plan, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("workspace: %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("workspace: %s is not a directory; give the directory to copy (a git work tree or any folder)", dir)
	}
	out, gerr := r.Run(ctx, "git", "-C", abs, "rev-parse", "--show-toplevel", "--show-prefix")
	if gerr != nil {
		if marker := findGitMarker(abs); marker != "" {
			return nil, fmt.Errorf("workspace: %s is inside a git repository (%s) but git cannot read it: %w", dir, marker, gerr)
		}
		p := &Plan{Root: abs, Kind: KindDir, runner: r, IncludeUntracked: includeUntracked}
		p.Notes = append(p.Notes, NoteNotGit)
		if err := p.walkDir(ctx); err != nil {
			return nil, err
		}
		p.finish()
		return p, nil
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) < 1 || lines[0] == "" {
		return nil, fmt.Errorf("workspace: git rev-parse --show-toplevel in %s printed nothing", dir)
	}
	p := &Plan{Root: lines[0], runner: r, IncludeUntracked: includeUntracked}
	if len(lines) > 1 {
		p.Subdir = strings.TrimSuffix(lines[1], "/")
	}
	if err := p.planGit(ctx); err != nil {
		return nil, err
	}
	p.finish()
	return p, nil
}

// findGitMarker returns the first .git found in dir or above it, or "".
func findGitMarker(dir string) string {
	for {
		m := filepath.Join(dir, ".git")
		if _, err := os.Lstat(m); err == nil {
			return m
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func (p *Plan) git(ctx context.Context, args ...string) ([]byte, error) {
	return p.runner.Run(ctx, append([]string{"git", "-C", p.Root}, args...)...)
}

func (p *Plan) planGit(ctx context.Context) error {
	p.ObjectFormat = "sha1"
	if out, err := p.git(ctx, "rev-parse", "--show-object-format"); err == nil {
		if f := strings.TrimSpace(string(out)); f != "" {
			p.ObjectFormat = f
		}
	}
	headRef := ""
	if out, err := p.git(ctx, "symbolic-ref", "-q", "HEAD"); err == nil {
		headRef = strings.TrimSpace(string(out))
	}
	p.Branch = strings.TrimPrefix(headRef, "refs/heads/")
	if !strings.HasPrefix(headRef, "refs/heads/") {
		p.Branch = ""
	}
	out, err := p.git(ctx, "rev-parse", "-q", "--verify", "HEAD^{commit}")
	switch {
	case err == nil:
		p.Kind = KindGit
		p.Commit = strings.TrimSpace(string(out))
	case headRef != "":
		p.Kind = KindGitEmpty
		p.Notes = append(p.Notes, NoteNoCommit)
	default:
		return fmt.Errorf("workspace: %s: HEAD is detached but names no commit: %w", p.Root, err)
	}
	if p.Kind == KindGit {
		if out, err := p.git(ctx, "rev-parse", "--is-shallow-repository"); err == nil && strings.TrimSpace(string(out)) == "true" {
			p.Shallow = true
			p.Notes = append(p.Notes, NoteShallow)
		}
	}

	idx, err := p.git(ctx, "ls-files", "-s", "-z")
	if err != nil {
		return fmt.Errorf("workspace: listing tracked files: %w", err)
	}
	p.index = idx
	p.staged, err = parseIndex(idx)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, ie := range p.staged {
		if seen[ie.path] {
			continue // an unmerged path has several stages
		}
		seen[ie.path] = true
		if err := p.addTracked(ie); err != nil {
			return err
		}
	}
	if p.IncludeUntracked {
		out, err := p.git(ctx, "ls-files", "-z", "--others", "--exclude-standard")
		if err != nil {
			return fmt.Errorf("workspace: listing untracked files: %w", err)
		}
		for _, rel := range splitNul(out) {
			if seen[rel] {
				continue
			}
			if strings.HasSuffix(rel, "/") {
				p.Skipped = append(p.Skipped, Skip{Path: strings.TrimSuffix(rel, "/"), Reason: "a nested git repository (not copied)"})
				continue
			}
			fi, err := os.Lstat(p.abs(rel))
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // gone since git listed it
				}
				return fmt.Errorf("workspace: %w", err)
			}
			e, ok, err := p.entryFor(rel, fi)
			if err != nil {
				return err
			}
			if ok {
				e.Untracked = true
				p.Entries = append(p.Entries, e)
			}
		}
	}
	return p.addParents()
}

func (p *Plan) addTracked(ie indexEntry) error {
	fi, err := os.Lstat(p.abs(ie.path))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			p.Deleted = append(p.Deleted, ie.path)
			return nil
		}
		return fmt.Errorf("workspace: %w", err)
	}
	if ie.mode == "160000" { // a submodule
		if fi.IsDir() {
			p.Entries = append(p.Entries, Entry{Path: ie.path, Type: TypeDir, Mode: fi.Mode() & modeBits})
		}
		p.Skipped = append(p.Skipped, Skip{Path: ie.path, Reason: "a submodule: its contents are not copied (the guest sees it uninitialised)"})
		return nil
	}
	if fi.IsDir() {
		// A tracked file replaced by a directory: git shows the file
		// deleted (and the directory's files untracked).
		p.Deleted = append(p.Deleted, ie.path)
		return nil
	}
	e, ok, err := p.entryFor(ie.path, fi)
	if err != nil {
		return err
	}
	if ok {
		p.Entries = append(p.Entries, e)
	}
	return nil
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// entryFor makes the entry for a file or symlink; other kinds are skipped
// (with a reason) and unreadable files are errors.
func (p *Plan) entryFor(rel string, fi fs.FileInfo) (Entry, bool, error) {
	full := p.abs(rel)
	switch {
	case fi.Mode().IsRegular():
		f, err := os.Open(full)
		if err != nil {
			return Entry{}, false, fmt.Errorf("workspace: cannot read %s: %w", full, err)
		}
		f.Close()
		return Entry{Path: rel, Type: TypeFile, Mode: fi.Mode() & modeBits, Size: fi.Size()}, true, nil
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(full)
		if err != nil {
			return Entry{}, false, fmt.Errorf("workspace: cannot read link %s: %w", full, err)
		}
		return Entry{Path: rel, Type: TypeSymlink, Mode: fi.Mode() & modeBits, Target: target}, true, nil
	case fi.IsDir():
		return Entry{Path: rel, Type: TypeDir, Mode: fi.Mode() & modeBits}, true, nil
	default:
		p.Skipped = append(p.Skipped, Skip{Path: rel, Reason: "not a regular file, directory or symlink (" + fileKind(fi.Mode()) + ")"})
		return Entry{}, false, nil
	}
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
}

// addParents adds the directories that hold the planned files, with
// their modes, so the guest's directories match the host's.
func (p *Plan) addParents() error {
	have := map[string]bool{}
	for _, e := range p.Entries {
		if e.Type == TypeDir {
			have[e.Path] = true
		}
	}
	var dirs []Entry
	for _, e := range p.Entries {
		for d := path.Dir(e.Path); d != "." && !have[d]; d = path.Dir(d) {
			have[d] = true
			fi, err := os.Lstat(p.abs(d))
			if err != nil {
				return fmt.Errorf("workspace: %w", err)
			}
			if !fi.IsDir() {
				return fmt.Errorf("workspace: %s is no longer a directory", p.abs(d))
			}
			dirs = append(dirs, Entry{Path: d, Type: TypeDir, Mode: fi.Mode() & modeBits})
		}
	}
	p.Entries = append(p.Entries, dirs...)
	return nil
}

func (p *Plan) walkDir(ctx context.Context) error {
	return filepath.WalkDir(p.Root, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("workspace: cannot read %s: %w", full, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if full == p.Root {
			return nil
		}
		rel, err := filepath.Rel(p.Root, full)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("workspace: cannot read %s: %w", full, err)
		}
		e, ok, err := p.entryFor(filepath.ToSlash(rel), fi)
		if err != nil {
			return err
		}
		if ok {
			p.Entries = append(p.Entries, e)
		}
		return nil
	})
}

func (p *Plan) finish() {
	sort.Slice(p.Entries, func(i, j int) bool { return p.Entries[i].Path < p.Entries[j].Path })
	sort.Strings(p.Deleted)
	p.Files, p.TotalBytes = 0, 0
	for _, e := range p.Entries {
		if e.Type != TypeDir {
			p.Files++
		}
		p.TotalBytes += e.Size
	}
	for _, s := range p.Skipped {
		p.Notes = append(p.Notes, "skipping "+s.Path+": "+s.Reason)
	}
}

func (p *Plan) abs(rel string) string { return filepath.Join(p.Root, filepath.FromSlash(rel)) }

// Limit is the archive limit in force (MaxBytes, or DefaultMaxBytes).
func (p *Plan) Limit() int64 {
	if p.MaxBytes > 0 {
		return p.MaxBytes
	}
	return DefaultMaxBytes
}

// CheckSize refuses a plan whose files alone are over the limit. The CLI
// can call it before it starts a VM; WriteArchive checks again with the
// bundle and staged blobs counted.
func (p *Plan) CheckSize() error {
	if p.TotalBytes > p.Limit() {
		return &SizeError{Bytes: p.TotalBytes, Limit: p.Limit()}
	}
	return nil
}

// SizeError is a workspace over the archive limit.
type SizeError struct {
	Bytes, Limit int64
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("workspace: %s to copy is over the %s limit; run with --dry-run to see what would be copied, "+
		"and leave out large files (.gitignore them, or drop untracked files)", HumanBytes(e.Bytes), HumanBytes(e.Limit))
}

// PrintList writes the --dry-run listing: one line per file or symlink
// with its size, the deleted and skipped paths, the notes and the total.
func (p *Plan) PrintList(w io.Writer) error {
	var b bytes.Buffer
	for _, e := range p.Entries {
		tag := ""
		if e.Untracked {
			tag = "  (untracked)"
		}
		switch e.Type {
		case TypeFile:
			fmt.Fprintf(&b, "%10s  %s%s\n", HumanBytes(e.Size), e.Path, tag)
		case TypeSymlink:
			fmt.Fprintf(&b, "%10s  %s -> %s%s\n", "link", e.Path, e.Target, tag)
		}
	}
	for _, d := range p.Deleted {
		fmt.Fprintf(&b, "%10s  %s\n", "deleted", d)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	what := string(p.Kind)
	switch p.Kind {
	case KindGit:
		br := p.Branch
		if br == "" {
			br = "detached HEAD"
		}
		what = fmt.Sprintf("git %s at %.12s", br, p.Commit)
	case KindGitEmpty:
		what = fmt.Sprintf("git %s, no commits", p.Branch)
	case KindDir:
		what = "not git"
	}
	fmt.Fprintf(&b, "%s: %d files, %s (limit %s; %s)\n", p.Root, p.Files, HumanBytes(p.TotalBytes), HumanBytes(p.Limit()), what)
	_, err := w.Write(b.Bytes())
	return err
}

// HumanBytes formats n as 1.5 MiB and the like.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func splitNul(b []byte) []string {
	var out []string
	for _, s := range bytes.Split(b, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out
}

// parseIndex reads `git ls-files -s -z`: "MODE OID STAGE\tPATH" records.
func parseIndex(b []byte) ([]indexEntry, error) {
	var out []indexEntry
	for _, rec := range splitNul(b) {
		meta, p, ok := strings.Cut(rec, "\t")
		f := strings.Fields(meta)
		if !ok || len(f) != 3 {
			return nil, fmt.Errorf("workspace: unexpected git ls-files -s record %q", rec)
		}
		out = append(out, indexEntry{mode: f[0], oid: f[1], stage: f[2], path: p})
	}
	return out, nil
}
