package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Names inside the archive. Everything but tree/ is banger's own; the
// guest script reads env.sh, the git/ files and repo.bundle.
const (
	ArchiveManifest = "manifest.json"  // Manifest, for people and tools
	ArchiveEnv      = "env.sh"         // the same facts as sh assignments, for GuestScript
	ArchiveBundle   = "repo.bundle"    // KindGit: git bundle of HEAD's history
	ArchiveIndex    = "git/index.info" // git kinds: `git ls-files -s -z` of the host's index
	ArchiveShallow  = "git/shallow"    // shallow clones: the host's shallow file
	ArchiveBlobs    = "git/blobs/"     // staged blobs that are not in HEAD, named by object id
	ArchiveTree     = "tree/"          // the working-tree files
	ArchiveEnd      = "end"            // written last: an archive without it was cut short
)

// tar accepts an archive cut at an entry boundary without complaint, so
// the guest script checks for this last entry before it touches anything.
const endMarker = "banger workspace archive: complete\n"

// ManifestVersion is the archive layout version in manifest.json.
const ManifestVersion = 1

// Manifest is manifest.json.
type Manifest struct {
	Version          int    `json:"version"`
	Kind             Kind   `json:"kind"`
	Commit           string `json:"commit,omitempty"`
	Branch           string `json:"branch,omitempty"`
	ObjectFormat     string `json:"objectFormat,omitempty"`
	Shallow          bool   `json:"shallow,omitempty"`
	Root             string `json:"root"`
	Subdir           string `json:"subdir,omitempty"`
	IncludeUntracked bool   `json:"includeUntracked"`
	Files            int    `json:"files"`
	Bytes            int64  `json:"bytes"`
	Deleted          int    `json:"deleted,omitempty"`
	StagedBlobs      int    `json:"stagedBlobs,omitempty"`
}

// Bundle writes a git bundle of HEAD's history to file: the branch ref
// when HEAD is on a branch (refs/heads/NAME), else HEAD. Only KindGit
// plans have something to bundle.
func Bundle(ctx context.Context, r Runner, p *Plan, file string) error {
	if p.Kind != KindGit || p.Commit == "" {
		return errors.New("workspace: nothing to bundle: the plan has no commit")
	}
	ref := "HEAD"
	if p.Branch != "" {
		ref = "refs/heads/" + p.Branch
	}
	if _, err := r.Run(ctx, "git", "-C", p.Root, "bundle", "create", file, ref); err != nil {
		return fmt.Errorf("workspace: git bundle: %w", err)
	}
	return nil
}

type stagedBlob struct {
	oid   string
	size  int64
	empty bool // the empty blob, which git may not have stored
}

// Empty blob ids, for intent-to-add entries whose blob was never written.
var emptyBlob = map[string]bool{
	"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391":                         true,
	"473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813": true,
}

// stagedBlobs lists the index's blobs that the bundle does not carry:
// those of paths whose index entry differs from HEAD (every entry when
// there is no commit). Submodule entries have no blob here.
func (p *Plan) stagedBlobs(ctx context.Context) ([]stagedBlob, int64, error) {
	if p.Kind == KindDir {
		return nil, 0, nil
	}
	all := p.Kind == KindGitEmpty
	differ := map[string]bool{}
	if !all {
		out, err := p.git(ctx, "diff-index", "--cached", "-z", "--raw", "--no-renames", p.Commit, "--")
		if err != nil {
			return nil, 0, fmt.Errorf("workspace: comparing the index with HEAD: %w", err)
		}
		recs := strings.Split(string(out), "\x00")
		for i := 0; i+1 < len(recs); i += 2 {
			if !strings.HasPrefix(recs[i], ":") {
				return nil, 0, fmt.Errorf("workspace: unexpected git diff-index record %q", recs[i])
			}
			differ[recs[i+1]] = true
		}
	}
	var out []stagedBlob
	var total int64
	seen := map[string]bool{}
	for _, ie := range p.staged {
		if ie.mode == "160000" || (!all && !differ[ie.path]) || seen[ie.oid] || strings.Trim(ie.oid, "0") == "" {
			continue
		}
		seen[ie.oid] = true
		b := stagedBlob{oid: ie.oid}
		sz, err := p.git(ctx, "cat-file", "-s", ie.oid)
		switch {
		case err != nil && emptyBlob[ie.oid]:
			b.empty = true
		case err != nil:
			return nil, 0, fmt.Errorf("workspace: staged blob of %s: %w", ie.path, err)
		default:
			b.size, err = strconv.ParseInt(strings.TrimSpace(string(sz)), 10, 64)
			if err != nil {
				return nil, 0, fmt.Errorf("workspace: size of blob %s: %w", ie.oid, err)
			}
		}
		total += b.size
		out = append(out, b)
	}
	return out, total, nil
}

// WriteArchive streams the plan as one tar archive: manifest.json,
// env.sh, repo.bundle (KindGit), the host index and the staged blobs it
// needs (git kinds), the working tree under tree/ with modes kept and
// symlinks as links, and last an end marker. Owners are root. Files are read now, so they
// may have changed since NewPlan; a file that changes type or shrinks
// while it is read is an error.
//
// A plan over its limit (Plan.Limit: files, bundle and staged blobs
// together) is refused with a *SizeError before anything is written.
func WriteArchive(ctx context.Context, p *Plan, w io.Writer) error {
	if p == nil || p.runner == nil {
		return errors.New("workspace: WriteArchive needs a plan made by NewPlan")
	}
	if err := p.CheckSize(); err != nil {
		return err
	}
	limit := p.Limit()
	total := p.TotalBytes + int64(len(p.index))

	var bundleFile string
	var bundleSize int64
	if p.Kind == KindGit {
		dir, err := os.MkdirTemp("", "banger-workspace-")
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		defer os.RemoveAll(dir)
		bundleFile = filepath.Join(dir, "repo.bundle")
		if err := Bundle(ctx, p.runner, p, bundleFile); err != nil {
			return err
		}
		fi, err := os.Stat(bundleFile)
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		bundleSize = fi.Size()
		total += bundleSize
	}
	blobs, blobBytes, err := p.stagedBlobs(ctx)
	if err != nil {
		return err
	}
	total += blobBytes
	var shallow []byte
	if p.Shallow {
		out, err := p.git(ctx, "rev-parse", "--git-path", "shallow")
		if err != nil {
			return fmt.Errorf("workspace: locating the shallow file: %w", err)
		}
		sp := strings.TrimSpace(string(out))
		if !filepath.IsAbs(sp) {
			sp = filepath.Join(p.Root, sp)
		}
		if shallow, err = os.ReadFile(sp); err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
	}
	if total > limit {
		return &SizeError{Bytes: total, Limit: limit}
	}

	a := &archiveWriter{tw: tar.NewWriter(w), limit: limit, now: time.Now().Truncate(time.Second)}
	m := Manifest{Version: ManifestVersion, Kind: p.Kind, Commit: p.Commit, Branch: p.Branch, ObjectFormat: p.ObjectFormat,
		Shallow: p.Shallow, Root: p.Root, Subdir: p.Subdir, IncludeUntracked: p.IncludeUntracked, Files: p.Files,
		Bytes: p.TotalBytes, Deleted: len(p.Deleted), StagedBlobs: len(blobs)}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := a.data(ArchiveManifest, append(mj, '\n')); err != nil {
		return err
	}
	if err := a.data(ArchiveEnv, p.envFile()); err != nil {
		return err
	}
	if bundleFile != "" {
		if err := a.plainFile(ArchiveBundle, bundleFile, bundleSize); err != nil {
			return err
		}
	}
	if p.Kind != KindDir {
		if err := a.data(ArchiveIndex, p.index); err != nil {
			return err
		}
		if shallow != nil {
			if err := a.data(ArchiveShallow, shallow); err != nil {
				return err
			}
		}
		for _, b := range blobs {
			if err := ctx.Err(); err != nil {
				return err
			}
			var content []byte
			if !b.empty {
				if content, err = p.git(ctx, "cat-file", "blob", b.oid); err != nil {
					return fmt.Errorf("workspace: reading staged blob %s: %w", b.oid, err)
				}
			}
			if err := a.data(ArchiveBlobs+b.oid, content); err != nil {
				return err
			}
		}
	}
	if err := a.header(&tar.Header{Typeflag: tar.TypeDir, Name: ArchiveTree, Mode: 0o755}); err != nil {
		return err
	}
	for _, e := range p.Entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := a.treeEntry(e, p.abs(e.Path)); err != nil {
			return err
		}
	}
	if err := a.data(ArchiveEnd, []byte(endMarker)); err != nil {
		return err
	}
	if err := a.tw.Close(); err != nil {
		return fmt.Errorf("workspace: writing the archive: %w", err)
	}
	return nil
}

// envFile is env.sh: the facts GuestScript needs, as quoted assignments.
func (p *Plan) envFile() []byte {
	headRef := ""
	if p.Branch != "" {
		headRef = "refs/heads/" + p.Branch
	}
	var b bytes.Buffer
	for _, kv := range [][2]string{
		{"VERSION", strconv.Itoa(ManifestVersion)},
		{"KIND", string(p.Kind)},
		{"COMMIT", p.Commit},
		{"HEADREF", headRef},
		{"FORMAT", p.ObjectFormat},
		{"FILES", strconv.Itoa(p.Files)},
	} {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], shellQuote(kv[1]))
	}
	return b.Bytes()
}

type archiveWriter struct {
	tw      *tar.Writer
	written int64 // content bytes so far
	limit   int64
	now     time.Time
}

func (a *archiveWriter) header(h *tar.Header) error {
	h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
	if h.ModTime.IsZero() {
		h.ModTime = a.now
	}
	if err := a.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("workspace: writing the archive (%s): %w", h.Name, err)
	}
	return nil
}

func (a *archiveWriter) grow(n int64) error {
	if a.written+n > a.limit {
		return &SizeError{Bytes: a.written + n, Limit: a.limit}
	}
	a.written += n
	return nil
}

func (a *archiveWriter) data(name string, b []byte) error {
	if err := a.grow(int64(len(b))); err != nil {
		return err
	}
	if err := a.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b))}); err != nil {
		return err
	}
	if _, err := a.tw.Write(b); err != nil {
		return fmt.Errorf("workspace: writing the archive (%s): %w", name, err)
	}
	return nil
}

func (a *archiveWriter) plainFile(name, file string, size int64) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	defer f.Close()
	if err := a.grow(size); err != nil {
		return err
	}
	if err := a.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size}); err != nil {
		return err
	}
	if _, err := io.CopyN(a.tw, f, size); err != nil {
		return fmt.Errorf("workspace: writing the archive (%s): %w", name, err)
	}
	return nil
}

func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

func changed(full, how string) error {
	return fmt.Errorf("workspace: %s changed while it was being archived (%s); run it again", full, how)
}

func (a *archiveWriter) treeEntry(e Entry, full string) error {
	name := ArchiveTree + e.Path
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return changed(full, "it is gone")
		}
		return fmt.Errorf("workspace: %w", err)
	}
	switch e.Type {
	case TypeDir:
		if !fi.IsDir() {
			return changed(full, "no longer a directory")
		}
		return a.header(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: tarMode(fi.Mode()), ModTime: fi.ModTime().Truncate(time.Second)})
	case TypeSymlink:
		if fi.Mode()&fs.ModeSymlink == 0 {
			return changed(full, "no longer a symlink")
		}
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("workspace: cannot read link %s: %w", full, err)
		}
		return a.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: tarMode(fi.Mode()), ModTime: fi.ModTime().Truncate(time.Second)})
	}
	if !fi.Mode().IsRegular() {
		return changed(full, "no longer a regular file")
	}
	f, err := os.OpenFile(full, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("workspace: cannot read %s: %w", full, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return changed(full, "no longer a regular file")
	}
	size := fi.Size()
	if err := a.grow(size); err != nil {
		return err
	}
	if err := a.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: tarMode(fi.Mode()), Size: size, ModTime: fi.ModTime().Truncate(time.Second)}); err != nil {
		return err
	}
	if _, err := io.CopyN(a.tw, f, size); err != nil {
		if errors.Is(err, io.EOF) {
			return changed(full, "it shrank")
		}
		return fmt.Errorf("workspace: reading %s: %w", full, err)
	}
	return nil
}

// shellQuote quotes s as one POSIX sh word.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
