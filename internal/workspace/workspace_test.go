package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"banger/internal/system"
)

// ---- helpers ------------------------------------------------------------

// gitEnv isolates git from the user's configuration and gives host-side
// commits an identity. Guest scripts run without it (see runGuest).
func gitEnv(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	home := t.TempDir()
	cfg := filepath.Join(home, ".gitconfig")
	if err := os.WriteFile(cfg, []byte("[init]\n\tdefaultBranch = main\n[user]\n\tname = Host\n\temail = host@example.com\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	t.Setenv("GIT_CONFIG_GLOBAL", cfg)
	for _, v := range []string{"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
}

func run(t *testing.T, stdin []byte, env []string, argv ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = env
	}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func must(t *testing.T, argv ...string) string {
	t.Helper()
	out, stderr, err := run(t, nil, nil, argv...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, stderr)
	}
	return out
}

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	return must(t, append([]string{"git", "-C", dir}, args...)...)
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

func plan(t *testing.T, dir string, untracked bool) *Plan {
	t.Helper()
	p, err := NewPlan(context.Background(), &system.Exec{}, dir, untracked)
	if err != nil {
		t.Fatalf("NewPlan(%s): %v", dir, err)
	}
	return p
}

func archive(t *testing.T, p *Plan) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteArchive(context.Background(), p, &buf); err != nil {
		t.Fatalf("WriteArchive: %v", err)
	}
	return buf.Bytes()
}

// guestEnv is the environment the "guest" scripts run in: no git
// identity, an empty global config and a HOME of its own.
func guestEnv(t *testing.T) []string {
	home := t.TempDir()
	cfg := filepath.Join(home, ".gitconfig")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "GIT_") {
			env = append(env, kv)
		}
	}
	return append(env, "HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+cfg, "EMAIL=")
}

// runGuest runs a script the way the CLI does over ssh: sh -c SCRIPT with
// stdin attached.
func runGuest(t *testing.T, script string, stdin []byte) (string, string, error) {
	t.Helper()
	if stdin == nil {
		stdin = []byte{}
	}
	return run(t, stdin, guestEnv(t), "sh", "-c", script)
}

func mustGuest(t *testing.T, script string, stdin []byte) string {
	t.Helper()
	out, stderr, err := runGuest(t, script, stdin)
	if err != nil {
		t.Fatalf("guest script: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	return out
}

// state describes one path: type, mode (all permission bits when exact,
// else only whether it is executable) and content or link target.
func state(t *testing.T, full string, exact bool) string {
	t.Helper()
	fi, err := os.Lstat(full)
	if err != nil {
		return "missing"
	}
	mode := fmt.Sprintf("%04o", fi.Mode()&modeBits)
	if !exact {
		mode = "-"
		if fi.Mode()&0o100 != 0 {
			mode = "x"
		}
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(full)
		if err != nil {
			t.Fatal(err)
		}
		return "link -> " + target
	case fi.IsDir():
		if !exact {
			return "dir"
		}
		return "dir " + mode
	default:
		b, err := os.ReadFile(full)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("file %s %x", mode, sha256.Sum256(b))
	}
}

// files lists the files and symlinks under root (relative, slash), .git
// excluded.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func sameTrees(t *testing.T, a, b string, exact bool) {
	t.Helper()
	fa, fb := files(t, a), files(t, b)
	if strings.Join(fa, "\n") != strings.Join(fb, "\n") {
		t.Fatalf("file lists differ:\n%s:\n  %s\n%s:\n  %s", a, strings.Join(fa, "\n  "), b, strings.Join(fb, "\n  "))
	}
	for _, f := range fa {
		sa, sb := state(t, filepath.Join(a, f), exact), state(t, filepath.Join(b, f), exact)
		if sa != sb {
			t.Errorf("%s differs: %s vs %s", f, sa, sb)
		}
	}
}

func porcelain(t *testing.T, dir string) []string {
	t.Helper()
	out := git(t, dir, "status", "--porcelain")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	sort.Strings(lines)
	return lines
}

// hostRepo builds a repository with every kind of change git status
// knows about, and returns its path.
func hostRepo(t *testing.T) string {
	t.Helper()
	r := filepath.Join(t.TempDir(), "host repo") // a space, to keep the quoting honest
	must(t, "git", "init", "-q", r)
	git(t, r, "symbolic-ref", "HEAD", "refs/heads/work/topic")
	write(t, filepath.Join(r, "a.txt"), "a\n", 0o644)
	write(t, filepath.Join(r, "gone.txt"), "gone\n", 0o644)
	write(t, filepath.Join(r, "sub", "deep.txt"), "deep\n", 0o644)
	write(t, filepath.Join(r, "run.sh"), "#!/bin/sh\necho hi\n", 0o755)
	write(t, filepath.Join(r, "private.txt"), "secret-ish\n", 0o600)
	write(t, filepath.Join(r, "partial.txt"), "one\n", 0o644)
	write(t, filepath.Join(r, "bin.dat"), "\x00\x01\x02binary\x00\xff", 0o644)
	write(t, filepath.Join(r, "it's odd name.txt"), "quotes\n", 0o644)
	write(t, filepath.Join(r, ".gitignore"), "*.log\nbuild/\n", 0o644)
	symlink(t, "sub/deep.txt", filepath.Join(r, "link"))
	symlink(t, "/etc/hostname", filepath.Join(r, "outside"))
	write(t, filepath.Join(r, "keep.log"), "tracked although ignored\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "add", "-f", "keep.log")
	git(t, r, "commit", "-q", "-m", "first")
	write(t, filepath.Join(r, "a.txt"), "a changed\n", 0o644)
	if err := os.Remove(filepath.Join(r, "gone.txt")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(r, "staged.txt"), "staged\n", 0o644)
	git(t, r, "add", "staged.txt")
	write(t, filepath.Join(r, "partial.txt"), "two\n", 0o644)
	git(t, r, "add", "partial.txt")
	write(t, filepath.Join(r, "partial.txt"), "three\n", 0o644)
	write(t, filepath.Join(r, "bin.dat"), "\x00\x01\x03binary changed\x00\xfe", 0o644)
	write(t, filepath.Join(r, "secret.log"), "ignored\n", 0o644)
	write(t, filepath.Join(r, "build", "out.bin"), "ignored\n", 0o644)
	write(t, filepath.Join(r, "untracked.txt"), "untracked\n", 0o644)
	write(t, filepath.Join(r, "newdir", "u2.txt"), "untracked too\n", 0o644)
	return r
}

func archiveNames(t *testing.T, arc []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(arc))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Fatalf("%s is owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
		names = append(names, h.Name)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func entryPaths(p *Plan, untracked bool) []string {
	var out []string
	for _, e := range p.Entries {
		if e.Type != TypeDir && e.Untracked == untracked {
			out = append(out, e.Path)
		}
	}
	sort.Strings(out)
	return out
}

func entry(t *testing.T, p *Plan, path string) Entry {
	t.Helper()
	for _, e := range p.Entries {
		if e.Path == path {
			return e
		}
	}
	t.Fatalf("no entry %s in plan", path)
	return Entry{}
}

// ---- Plan ---------------------------------------------------------------

func TestPlanGit(t *testing.T) {
	gitEnv(t)
	r := hostRepo(t)
	for _, untracked := range []bool{false, true} {
		t.Run(fmt.Sprint("untracked=", untracked), func(t *testing.T) {
			p := plan(t, filepath.Join(r, "sub"), untracked) // a subdirectory plans the whole repository
			if p.Kind != KindGit || p.Root != r || p.Subdir != "sub" || p.Branch != "work/topic" {
				t.Fatalf("plan = kind %s root %q subdir %q branch %q", p.Kind, p.Root, p.Subdir, p.Branch)
			}
			if head := strings.TrimSpace(git(t, r, "rev-parse", "HEAD")); p.Commit != head {
				t.Fatalf("commit %s, HEAD is %s", p.Commit, head)
			}
			// Tracked entries plus deleted ones are exactly git ls-files.
			lsFiles := strings.Split(strings.TrimRight(git(t, r, "ls-files", "-z"), "\x00"), "\x00")
			got := append(entryPaths(p, false), p.Deleted...)
			sort.Strings(got)
			sort.Strings(lsFiles)
			if strings.Join(got, "|") != strings.Join(lsFiles, "|") {
				t.Fatalf("tracked entries + deleted:\n %v\ngit ls-files:\n %v", got, lsFiles)
			}
			if strings.Join(p.Deleted, "|") != "gone.txt" {
				t.Fatalf("deleted = %v", p.Deleted)
			}
			wantUntracked := ""
			if untracked {
				wantUntracked = "newdir/u2.txt|untracked.txt"
			}
			if u := strings.Join(entryPaths(p, true), "|"); u != wantUntracked {
				t.Fatalf("untracked entries = %q, want %q", u, wantUntracked)
			}
			for _, e := range p.Entries {
				if e.Path == "secret.log" || strings.HasPrefix(e.Path, "build") {
					t.Fatalf("ignored path %s planned", e.Path)
				}
			}
			entry(t, p, "keep.log") // tracked, though .gitignore matches it
			if e := entry(t, p, "run.sh"); e.Mode != 0o755 || e.Type != TypeFile {
				t.Fatalf("run.sh = %+v", e)
			}
			if e := entry(t, p, "private.txt"); e.Mode != 0o600 {
				t.Fatalf("private.txt = %+v", e)
			}
			if e := entry(t, p, "a.txt"); e.Size != int64(len("a changed\n")) {
				t.Fatalf("a.txt size %d: the working-tree version must be planned", e.Size)
			}
			if e := entry(t, p, "link"); e.Type != TypeSymlink || e.Target != "sub/deep.txt" {
				t.Fatalf("link = %+v", e)
			}
			if e := entry(t, p, "outside"); e.Type != TypeSymlink || e.Target != "/etc/hostname" {
				t.Fatalf("outside = %+v", e)
			}
			if e := entry(t, p, "sub"); e.Type != TypeDir {
				t.Fatalf("sub = %+v", e)
			}
			var total int64
			for _, e := range p.Entries {
				total += e.Size
			}
			if total != p.TotalBytes || p.TotalBytes == 0 {
				t.Fatalf("total %d, entries sum to %d", p.TotalBytes, total)
			}
			var list bytes.Buffer
			if err := p.PrintList(&list); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"run.sh", "deleted  gone.txt", "link -> sub/deep.txt", "git work/topic at"} {
				if !strings.Contains(list.String(), want) {
					t.Fatalf("listing lacks %q:\n%s", want, list.String())
				}
			}
		})
	}
}

func TestPlanNestedRepoSkipped(t *testing.T) {
	gitEnv(t)
	r := filepath.Join(t.TempDir(), "r")
	must(t, "git", "init", "-q", r)
	write(t, filepath.Join(r, "f"), "f\n", 0o644)
	must(t, "git", "init", "-q", filepath.Join(r, "inner"))
	write(t, filepath.Join(r, "inner", "x"), "x\n", 0o644)
	p := plan(t, r, true)
	if len(p.Skipped) != 1 || p.Skipped[0].Path != "inner" {
		t.Fatalf("skipped = %+v", p.Skipped)
	}
	if got := strings.Join(entryPaths(p, true), "|"); got != "f" {
		t.Fatalf("untracked = %q", got)
	}
}

func TestPlanNotGit(t *testing.T) {
	gitEnv(t)
	d := filepath.Join(t.TempDir(), "plain")
	write(t, filepath.Join(d, "a.txt"), "a\n", 0o644)
	write(t, filepath.Join(d, "x", "y.sh"), "y\n", 0o750)
	if err := os.MkdirAll(filepath.Join(d, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	symlink(t, "../../elsewhere", filepath.Join(d, "x", "up"))
	l, err := net.Listen("unix", filepath.Join(d, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	p := plan(t, d, false)
	if p.Kind != KindDir || p.Root != d || p.Commit != "" || len(p.Notes) == 0 || p.Notes[0] != NoteNotGit {
		t.Fatalf("plan = %+v", p)
	}
	var got []string
	for _, e := range p.Entries {
		got = append(got, fmt.Sprintf("%s %s %04o %s", e.Path, e.Type, e.Mode, e.Target))
	}
	want := []string{"a.txt file 0644 ", "empty dir 0700 ", "x dir 0755 ", "x/up symlink 0777 ../../elsewhere", "x/y.sh file 0750 "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("entries:\n %q\nwant\n %q", got, want)
	}
	if len(p.Skipped) != 1 || p.Skipped[0].Path != "sock" || !strings.Contains(p.Skipped[0].Reason, "socket") {
		t.Fatalf("skipped = %+v", p.Skipped)
	}
	if p.Files != 3 || p.TotalBytes != 4 {
		t.Fatalf("files %d bytes %d", p.Files, p.TotalBytes)
	}
}

func TestPlanErrors(t *testing.T) {
	gitEnv(t)
	d := t.TempDir()
	f := filepath.Join(d, "file.txt")
	write(t, f, "x", 0o644)
	if _, err := NewPlan(context.Background(), &system.Exec{}, f, false); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Fatalf("a file: err = %v", err)
	}
	if _, err := NewPlan(context.Background(), &system.Exec{}, filepath.Join(d, "nope"), false); err == nil {
		t.Fatal("a missing path: no error")
	}
	// A .git that git cannot read is an error, not a plain directory.
	broken := filepath.Join(d, "broken")
	write(t, filepath.Join(broken, ".git"), "gitdir: /nonexistent\n", 0o644)
	if _, err := NewPlan(context.Background(), &system.Exec{}, broken, false); err == nil || !strings.Contains(err.Error(), "git cannot read it") {
		t.Fatalf("broken .git: err = %v", err)
	}
	if os.Geteuid() == 0 {
		t.Log("running as root: skipping the unreadable-file cases")
		return
	}
	plain := filepath.Join(d, "plain")
	write(t, filepath.Join(plain, "locked"), "x", 0o000)
	if _, err := NewPlan(context.Background(), &system.Exec{}, plain, false); err == nil || !strings.Contains(err.Error(), filepath.Join(plain, "locked")) {
		t.Fatalf("unreadable file: err = %v", err)
	}
	r := filepath.Join(d, "repo")
	must(t, "git", "init", "-q", r)
	write(t, filepath.Join(r, "locked"), "x", 0o644)
	git(t, r, "add", "locked")
	if err := os.Chmod(filepath.Join(r, "locked"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := NewPlan(context.Background(), &system.Exec{}, r, false); err == nil || !strings.Contains(err.Error(), filepath.Join(r, "locked")) {
		t.Fatalf("unreadable tracked file: err = %v", err)
	}
}

func TestPlanNoCommits(t *testing.T) {
	gitEnv(t)
	r := filepath.Join(t.TempDir(), "fresh")
	must(t, "git", "init", "-q", r)
	write(t, filepath.Join(r, "staged.txt"), "s\n", 0o644)
	write(t, filepath.Join(r, "loose.txt"), "l\n", 0o644)
	git(t, r, "add", "staged.txt")
	p := plan(t, r, false)
	if p.Kind != KindGitEmpty || p.Commit != "" || p.Branch != "main" || len(p.Notes) == 0 || p.Notes[0] != NoteNoCommit {
		t.Fatalf("plan = %+v", p)
	}
	if got := strings.Join(entryPaths(p, false), "|"); got != "staged.txt" {
		t.Fatalf("tracked = %q", got)
	}
	p = plan(t, r, true)
	if got := strings.Join(entryPaths(p, true), "|"); got != "loose.txt" {
		t.Fatalf("untracked = %q", got)
	}
}

// ---- round trips --------------------------------------------------------

func TestRoundTripGit(t *testing.T) {
	gitEnv(t)
	host := hostRepo(t)
	guest := filepath.Join(t.TempDir(), "guest home", "repo")
	script := GuestScript(guest)

	p := plan(t, host, true)
	arc := archive(t, p)
	// The layout: manifest first, end marker last, the bundle, and only
	// the staged blobs that HEAD lacks.
	names := archiveNames(t, arc)
	if names[0] != ArchiveManifest || names[len(names)-1] != ArchiveEnd || !contains(names, ArchiveBundle) || !contains(names, "tree/sub/deep.txt") {
		t.Fatalf("archive layout: %v", names)
	}
	var blobs []string
	for _, n := range names {
		if strings.HasPrefix(n, ArchiveBlobs) {
			blobs = append(blobs, strings.TrimPrefix(n, ArchiveBlobs))
		}
	}
	sort.Strings(blobs)
	want := []string{strings.TrimSpace(git(t, host, "rev-parse", ":staged.txt")), strings.TrimSpace(git(t, host, "rev-parse", ":partial.txt"))}
	sort.Strings(want)
	if strings.Join(blobs, " ") != strings.Join(want, " ") {
		t.Fatalf("staged blobs %v, want %v", blobs, want)
	}
	out := mustGuest(t, script, arc)
	if !strings.HasPrefix(out, "banger: workspace "+guest+" ready: git work/topic at ") || strings.Count(out, "\n") != 1 {
		t.Fatalf("summary = %q", out)
	}

	// Same commit, same branch, same status, same files.
	if h, g := git(t, host, "rev-parse", "HEAD"), git(t, guest, "rev-parse", "HEAD"); h != g {
		t.Fatalf("HEAD: host %s guest %s", h, g)
	}
	if b := strings.TrimSpace(git(t, guest, "symbolic-ref", "HEAD")); b != "refs/heads/work/topic" {
		t.Fatalf("guest HEAD is %s", b)
	}
	hs, gs := porcelain(t, host), porcelain(t, guest)
	if strings.Join(hs, "\n") != strings.Join(gs, "\n") {
		t.Fatalf("git status:\nhost:\n%s\nguest:\n%s", strings.Join(hs, "\n"), strings.Join(gs, "\n"))
	}
	for _, want := range []string{" M a.txt", " D gone.txt", "A  staged.txt", "MM partial.txt", "?? untracked.txt", "?? newdir/"} {
		if !strings.Contains(strings.Join(gs, "\n"), want) {
			t.Fatalf("guest status lacks %q:\n%s", want, strings.Join(gs, "\n"))
		}
	}
	if h, g := git(t, host, "diff", "--cached"), git(t, guest, "diff", "--cached"); h != g {
		t.Fatalf("staged diff differs:\nhost:\n%s\nguest:\n%s", h, g)
	}
	if h, g := git(t, host, "diff"), git(t, guest, "diff"); h != g {
		t.Fatalf("unstaged diff differs:\nhost:\n%s\nguest:\n%s", h, g)
	}
	for _, e := range p.Entries {
		if hs, gs := state(t, filepath.Join(host, e.Path), true), state(t, filepath.Join(guest, e.Path), true); hs != gs {
			t.Errorf("%s: host %s, guest %s", e.Path, hs, gs)
		}
	}
	for _, f := range []string{"secret.log", "build/out.bin", "gone.txt"} {
		if _, err := os.Lstat(filepath.Join(guest, f)); err == nil {
			t.Errorf("%s is in the guest", f)
		}
	}
	if base, _ := os.ReadFile(filepath.Join(guest, ".git", "banger-base")); strings.TrimSpace(string(base)) != p.Commit {
		t.Fatalf("banger-base = %q", base)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(guest), ".banger-workspace.*")); len(leftovers) > 0 {
		t.Fatalf("temporary directories left: %v", leftovers)
	}

	// Idempotent: the same archive again changes nothing.
	mustGuest(t, script, arc)
	if gs2 := porcelain(t, guest); strings.Join(gs2, "\n") != strings.Join(gs, "\n") {
		t.Fatalf("second run changed the status:\n%s", strings.Join(gs2, "\n"))
	}

	// Work in the guest: a commit, an edit, a new file, a deletion, binary.
	write(t, filepath.Join(guest, "committed.txt"), "made in the guest\n", 0o644)
	git(t, guest, "add", "committed.txt")
	git(t, guest, "-c", "user.name=G", "-c", "user.email=g@example.com", "commit", "-q", "-m", "guest commit")
	write(t, filepath.Join(guest, "a.txt"), "a edited in the guest\n", 0o644)
	write(t, filepath.Join(guest, "guest-new.txt"), "new in the guest\n", 0o755)
	write(t, filepath.Join(guest, "new.bin"), "\x00\x10\x20 binary \xff\x00", 0o644)
	write(t, filepath.Join(guest, "guest.log"), "ignored in the guest\n", 0o644)
	if err := os.Remove(filepath.Join(guest, "sub", "deep.txt")); err != nil {
		t.Fatal(err)
	}
	indexBefore := git(t, guest, "ls-files", "-s")
	statusBefore := git(t, guest, "status", "--porcelain")

	patch := mustGuest(t, ExportScriptAt(guest, ""), nil)
	if !strings.Contains(patch, "GIT binary patch") || !strings.Contains(patch, "committed.txt") || !strings.Contains(patch, "guest-new.txt") {
		t.Fatalf("patch lacks the guest's work:\n%s", patch)
	}
	if strings.Contains(patch, "guest.log") {
		t.Fatal("patch carries an ignored file")
	}
	if git(t, guest, "ls-files", "-s") != indexBefore || git(t, guest, "status", "--porcelain") != statusBefore {
		t.Fatal("export changed the guest's index or status")
	}

	// The patch applies to a clean clone at the base and reproduces the
	// guest's tree (ignored files aside).
	clone := filepath.Join(t.TempDir(), "clone")
	must(t, "git", "clone", "-q", host, clone)
	git(t, clone, "checkout", "-q", "--detach", p.Commit)
	pf := filepath.Join(t.TempDir(), "ws.patch")
	if err := os.WriteFile(pf, []byte(patch), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, clone, "apply", "--check", pf)
	git(t, clone, "apply", pf)
	if err := os.Remove(filepath.Join(guest, "guest.log")); err != nil {
		t.Fatal(err)
	}
	sameTrees(t, clone, guest, false)
	write(t, filepath.Join(guest, "guest.log"), "ignored in the guest\n", 0o644)

	// An explicit base: only what changed since the guest's commit.
	patch2 := mustGuest(t, ExportScriptAt(guest, "HEAD"), nil)
	if strings.Contains(patch2, "committed.txt") || !strings.Contains(patch2, "guest-new.txt") {
		t.Fatalf("patch against HEAD:\n%s", patch2)
	}
	// Against refs/banger/synced: only the guest's own changes, which
	// apply on the host's working tree as it was shipped.
	patch3 := mustGuest(t, ExportScriptAt(guest, "refs/banger/synced"), nil)
	if strings.Contains(patch3, "staged.txt") || !strings.Contains(patch3, "guest-new.txt") {
		t.Fatalf("patch against refs/banger/synced:\n%s", patch3)
	}
	pf3 := filepath.Join(t.TempDir(), "guest-only.patch")
	if err := os.WriteFile(pf3, []byte(patch3), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, host, "apply", "--check", pf3)
	if _, stderr, err := runGuest(t, ExportScriptAt(guest, "no-such-rev"), nil); err == nil || !strings.Contains(stderr, "no-such-rev") {
		t.Fatalf("bad base: err %v, stderr %q", err, stderr)
	}

	// The host moves on: a commit that deletes a file, a changed file, a
	// deleted untracked file. A re-sync brings the guest level with it and
	// keeps the files only the guest has.
	git(t, host, "rm", "-q", "--cached", "sub/deep.txt")
	git(t, host, "commit", "-q", "-m", "second")
	if err := os.Remove(filepath.Join(host, "sub", "deep.txt")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(host, "run.sh"), "#!/bin/sh\necho changed\n", 0o755)
	if err := os.Remove(filepath.Join(host, "untracked.txt")); err != nil {
		t.Fatal(err)
	}
	p2 := plan(t, host, true)
	out = mustGuest(t, script, archive(t, p2))
	if !strings.Contains(out, "refs/banger/pre-sync") {
		t.Fatalf("re-sync summary = %q", out)
	}
	if h, g := git(t, host, "rev-parse", "HEAD"), git(t, guest, "rev-parse", "HEAD"); h != g {
		t.Fatalf("after re-sync HEAD: host %s guest %s", h, g)
	}
	guestOnly := map[string]bool{"committed.txt": true, "guest-new.txt": true, "new.bin": true, "guest.log": true}
	var gs3 []string
	for _, l := range porcelain(t, guest) {
		if !guestOnly[strings.TrimPrefix(l, "?? ")] {
			gs3 = append(gs3, l)
		}
	}
	if hs3 := porcelain(t, host); strings.Join(hs3, "\n") != strings.Join(gs3, "\n") {
		t.Fatalf("after re-sync, git status:\nhost:\n%s\nguest (guest-only files left out):\n%s", strings.Join(hs3, "\n"), strings.Join(gs3, "\n"))
	}
	for _, e := range p2.Entries {
		if hs, gs := state(t, filepath.Join(host, e.Path), true), state(t, filepath.Join(guest, e.Path), true); hs != gs {
			t.Errorf("after re-sync %s: host %s, guest %s", e.Path, hs, gs)
		}
	}
	for _, f := range []string{"sub/deep.txt", "untracked.txt"} {
		if _, err := os.Lstat(filepath.Join(guest, f)); err == nil {
			t.Errorf("%s, deleted on the host, is still in the guest", f)
		}
	}
	for f := range guestOnly {
		if _, err := os.Lstat(filepath.Join(guest, f)); err != nil {
			t.Errorf("guest-only %s was lost: %v", f, err)
		}
	}
	// Nothing the guest had is lost: its state before the re-sync is a commit.
	if got := git(t, guest, "show", "refs/banger/pre-sync:a.txt"); got != "a edited in the guest\n" {
		t.Fatalf("pre-sync a.txt = %q", got)
	}
	if got := git(t, guest, "log", "--format=%s", "refs/banger/pre-sync~1", "-1"); strings.TrimSpace(got) != "guest commit" {
		t.Fatalf("pre-sync parent = %q", got)
	}

	// A different repository at the same destination is refused.
	other := filepath.Join(t.TempDir(), "other")
	must(t, "git", "init", "-q", other)
	write(t, filepath.Join(other, "o"), "o\n", 0o644)
	git(t, other, "add", "o")
	git(t, other, "commit", "-q", "-m", "unrelated")
	if _, stderr, err := runGuest(t, script, archive(t, plan(t, other, false))); err == nil || !strings.Contains(stderr, "different repository") {
		t.Fatalf("unrelated repository: err %v, stderr %q", err, stderr)
	}
	if got := git(t, guest, "rev-parse", "HEAD"); got != git(t, host, "rev-parse", "HEAD") {
		t.Fatal("the refused sync moved HEAD")
	}
}

func TestRoundTripNoCommits(t *testing.T) {
	gitEnv(t)
	host := filepath.Join(t.TempDir(), "fresh")
	must(t, "git", "init", "-q", host)
	write(t, filepath.Join(host, "staged.txt"), "s\n", 0o644)
	write(t, filepath.Join(host, "tool.sh"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(host, "loose.txt"), "l\n", 0o644)
	git(t, host, "add", "staged.txt", "tool.sh")
	write(t, filepath.Join(host, "tool.sh"), "#!/bin/sh\necho edited\n", 0o755)

	guest := filepath.Join(t.TempDir(), "repo")
	p := plan(t, host, true)
	out := mustGuest(t, GuestScript(guest), archive(t, p))
	if !strings.Contains(out, "git main (no commits yet)") {
		t.Fatalf("summary = %q", out)
	}
	if _, _, err := run(t, nil, nil, "git", "-C", guest, "rev-parse", "-q", "--verify", "HEAD"); err == nil {
		t.Fatal("the guest has a commit")
	}
	if b := strings.TrimSpace(git(t, guest, "symbolic-ref", "HEAD")); b != "refs/heads/main" {
		t.Fatalf("guest HEAD is %s", b)
	}
	if hs, gs := porcelain(t, host), porcelain(t, guest); strings.Join(hs, "\n") != strings.Join(gs, "\n") {
		t.Fatalf("git status:\nhost:\n%s\nguest:\n%s", strings.Join(hs, "\n"), strings.Join(gs, "\n"))
	}
	sameTrees(t, host, guest, true)

	write(t, filepath.Join(guest, "more.txt"), "more\n", 0o644)
	patch := mustGuest(t, ExportScriptAt(guest, ""), nil)
	target := filepath.Join(t.TempDir(), "target")
	must(t, "git", "init", "-q", target)
	pf := filepath.Join(t.TempDir(), "p.patch")
	if err := os.WriteFile(pf, []byte(patch), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, target, "apply", "--check", pf)
	git(t, target, "apply", pf)
	sameTrees(t, target, guest, false)

	// The guest commits while the host still has none: a re-sync makes
	// the branch unborn again, as on the host (the commit is kept in
	// refs/banger/pre-sync).
	git(t, guest, "-c", "user.name=G", "-c", "user.email=g@example.com", "commit", "-q", "-m", "guest first")
	mustGuest(t, GuestScript(guest), archive(t, plan(t, host, true)))
	if _, _, err := run(t, nil, nil, "git", "-C", guest, "rev-parse", "-q", "--verify", "HEAD"); err == nil {
		t.Fatal("after a re-sync from a host without commits, the guest has a commit")
	}
	if got := git(t, guest, "log", "--format=%s", "-1", "refs/banger/pre-sync~1"); strings.TrimSpace(got) != "guest first" {
		t.Fatalf("pre-sync parent = %q", got)
	}

	// The host makes its first commit: a re-sync gives the guest history.
	git(t, host, "add", "-A")
	git(t, host, "commit", "-q", "-m", "first")
	mustGuest(t, GuestScript(guest), archive(t, plan(t, host, true)))
	if h, g := git(t, host, "rev-parse", "HEAD"), git(t, guest, "rev-parse", "HEAD"); h != g {
		t.Fatalf("HEAD: host %s guest %s", h, g)
	}
	if gs := porcelain(t, guest); strings.Join(gs, "\n") != "?? more.txt" {
		t.Fatalf("guest status after the first commit: %q", gs)
	}
}

func TestRoundTripNotGit(t *testing.T) {
	gitEnv(t)
	host := filepath.Join(t.TempDir(), "plain dir")
	write(t, filepath.Join(host, "a.txt"), "a\n", 0o644)
	write(t, filepath.Join(host, "x", "y.sh"), "y\n", 0o750)
	write(t, filepath.Join(host, "x", "priv"), "p\n", 0o600)
	if err := os.MkdirAll(filepath.Join(host, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	symlink(t, "../a.txt", filepath.Join(host, "x", "up"))
	guest := filepath.Join(t.TempDir(), "repo")
	out := mustGuest(t, GuestScript(guest), archive(t, plan(t, host, false)))
	if !strings.Contains(out, "4 files from the host (not a git repository)") {
		t.Fatalf("summary = %q", out)
	}
	sameTrees(t, host, guest, true)
	if st := state(t, filepath.Join(guest, "empty"), true); st != "dir 0700" {
		t.Fatalf("empty dir: %s", st)
	}
	if _, err := os.Lstat(filepath.Join(guest, ".git")); err == nil {
		t.Fatal("git init ran for a plain directory")
	}
	// Again, after a change: files are updated in place.
	write(t, filepath.Join(host, "a.txt"), "a2\n", 0o644)
	mustGuest(t, GuestScript(guest), archive(t, plan(t, host, false)))
	sameTrees(t, host, guest, true)
}

func TestDetachedHead(t *testing.T) {
	gitEnv(t)
	host := filepath.Join(t.TempDir(), "h")
	must(t, "git", "init", "-q", host)
	write(t, filepath.Join(host, "f"), "1\n", 0o644)
	git(t, host, "add", "f")
	git(t, host, "commit", "-q", "-m", "1")
	write(t, filepath.Join(host, "f"), "2\n", 0o644)
	git(t, host, "commit", "-q", "-am", "2")
	git(t, host, "checkout", "-q", "--detach", "HEAD~1")
	p := plan(t, host, false)
	if p.Branch != "" || p.Kind != KindGit {
		t.Fatalf("plan = %+v", p)
	}
	guest := filepath.Join(t.TempDir(), "repo")
	out := mustGuest(t, GuestScript(guest), archive(t, p))
	if !strings.Contains(out, "detached HEAD at") {
		t.Fatalf("summary = %q", out)
	}
	if h, g := git(t, host, "rev-parse", "HEAD"), git(t, guest, "rev-parse", "HEAD"); h != g {
		t.Fatalf("HEAD: host %s guest %s", h, g)
	}
	if _, _, err := run(t, nil, nil, "git", "-C", guest, "symbolic-ref", "-q", "HEAD"); err == nil {
		t.Fatal("guest HEAD is on a branch")
	}
}

func TestGuestRefusesForeignDest(t *testing.T) {
	gitEnv(t)
	host := hostRepo(t)
	arc := archive(t, plan(t, host, false))
	d := t.TempDir()
	foreign := filepath.Join(d, "foreign")
	must(t, "git", "init", "-q", foreign)
	if _, stderr, err := runGuest(t, GuestScript(foreign), arc); err == nil || !strings.Contains(stderr, "did not prepare") {
		t.Fatalf("foreign repository: err %v, stderr %q", err, stderr)
	}
	full := filepath.Join(d, "full")
	write(t, filepath.Join(full, "keep"), "mine\n", 0o644)
	if _, stderr, err := runGuest(t, GuestScript(full), arc); err == nil || !strings.Contains(stderr, "not empty") {
		t.Fatalf("non-empty directory: err %v, stderr %q", err, stderr)
	}
	// A cut-short archive touches nothing, wherever it was cut (tar
	// itself takes an archive cut at an entry boundary as complete).
	fresh := filepath.Join(d, "fresh")
	for cut := 0; cut < len(arc)-1024; cut += 512 {
		for _, n := range []int{cut, cut + 100} {
			if _, stderr, err := runGuest(t, GuestScript(fresh), arc[:n]); err == nil || !strings.Contains(stderr, "banger: ") {
				t.Fatalf("archive cut at %d of %d: err %v, stderr %q", n, len(arc), err, stderr)
			}
			if _, err := os.Lstat(fresh); err == nil {
				t.Fatalf("archive cut at %d of %d created the destination", n, len(arc))
			}
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(d, ".banger-workspace.*")); len(leftovers) > 0 {
		t.Fatalf("temporary directories left: %v", leftovers)
	}
}

// ---- limits and scripts -------------------------------------------------

func TestSizeLimit(t *testing.T) {
	gitEnv(t)
	host := hostRepo(t)
	p := plan(t, host, true)
	p.MaxBytes = p.TotalBytes - 1
	var se *SizeError
	if err := p.CheckSize(); !errors.As(err, &se) || !strings.Contains(err.Error(), "--dry-run") {
		t.Fatalf("CheckSize: %v", err)
	}
	var buf bytes.Buffer
	if err := WriteArchive(context.Background(), p, &buf); !errors.As(err, &se) {
		t.Fatalf("WriteArchive over the limit: %v", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("%d bytes written before the refusal", buf.Len())
	}
	// The files fit but the bundle and staged blobs do not.
	p.MaxBytes = p.TotalBytes
	if err := p.CheckSize(); err != nil {
		t.Fatalf("CheckSize at the limit: %v", err)
	}
	if err := WriteArchive(context.Background(), p, &buf); !errors.As(err, &se) || buf.Len() != 0 {
		t.Fatalf("WriteArchive with the bundle over the limit: %v (%d bytes written)", err, buf.Len())
	}
	// A clean repository (no staged blobs): files and index fit, the
	// bundle does not.
	clean := filepath.Join(t.TempDir(), "clean")
	must(t, "git", "init", "-q", clean)
	write(t, filepath.Join(clean, "f"), strings.Repeat("history ", 100), 0o644)
	git(t, clean, "add", "f")
	git(t, clean, "commit", "-q", "-m", "c")
	pc := plan(t, clean, false)
	pc.MaxBytes = pc.TotalBytes + int64(len(git(t, clean, "ls-files", "-s", "-z")))
	if err := WriteArchive(context.Background(), pc, &buf); !errors.As(err, &se) || buf.Len() != 0 {
		t.Fatalf("WriteArchive with only the bundle over the limit: %v (%d bytes written)", err, buf.Len())
	}
	if p.MaxBytes = 0; p.Limit() != DefaultMaxBytes || DefaultMaxBytes != 2<<30 {
		t.Fatal("default limit is not 2 GiB")
	}
	if err := WriteArchive(context.Background(), p, &buf); err != nil {
		t.Fatalf("WriteArchive under the default limit: %v", err)
	}
}

func TestScriptsQuoteDest(t *testing.T) {
	for _, s := range []string{GuestScript("/root/it's $(here)"), ExportScriptAt("/root/it's $(here)", "x'; rm -rf /")} {
		if !strings.Contains(s, `D='/root/it'\''s $(here)'`) {
			t.Fatalf("dest not quoted:\n%s", s)
		}
	}
	if !strings.Contains(ExportScriptAt("/d", "x'; rm -rf /"), `BASE='x'\''; rm -rf /'`) {
		t.Fatal("base not quoted")
	}
	if !strings.Contains(GuestScript(""), "D=/root/repo\n") || !strings.Contains(ExportScript(""), "D=/root/repo\n") || !strings.Contains(ExportScript(""), "BASE=''\n") {
		t.Fatal("default destination is not /root/repo")
	}
	for _, s := range []string{GuestScript(""), ExportScript("abc")} {
		if _, stderr, err := run(t, nil, nil, "sh", "-n", "-c", s); err != nil {
			t.Fatalf("sh -n: %v\n%s", err, stderr)
		}
	}
}

func TestBundleKeepsBranch(t *testing.T) {
	gitEnv(t)
	host := hostRepo(t)
	p := plan(t, host, false)
	f := filepath.Join(t.TempDir(), "b.bundle")
	if err := Bundle(context.Background(), &system.Exec{}, p, f); err != nil {
		t.Fatal(err)
	}
	heads := must(t, "git", "bundle", "list-heads", f)
	if want := p.Commit + " refs/heads/work/topic\n"; heads != want {
		t.Fatalf("bundle heads %q, want %q", heads, want)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	must(t, "git", "init", "-q", empty)
	if err := Bundle(context.Background(), &system.Exec{}, plan(t, empty, false), f); err == nil {
		t.Fatal("bundled a repository without commits")
	}
}

func TestOddNames(t *testing.T) {
	gitEnv(t)
	host := filepath.Join(t.TempDir(), "odd")
	must(t, "git", "init", "-q", host)
	names := []string{"new\nline.txt", "back\\slash", "-dash", "ünïcödé", "bad\xffbyte", "tab\there", "$(x)", "sp ace/in dir"}
	for _, n := range names[:4] {
		write(t, filepath.Join(host, n), "tracked "+n, 0o644)
	}
	git(t, host, "add", "-A")
	git(t, host, "commit", "-q", "-m", "odd")
	for _, n := range names {
		write(t, filepath.Join(host, n), "now "+n, 0o644)
	}
	guest := filepath.Join(t.TempDir(), "repo")
	mustGuest(t, GuestScript(guest), archive(t, plan(t, host, true)))
	if hs, gs := porcelain(t, host), porcelain(t, guest); strings.Join(hs, "\n") != strings.Join(gs, "\n") {
		t.Fatalf("git status:\nhost:\n%s\nguest:\n%s", strings.Join(hs, "\n"), strings.Join(gs, "\n"))
	}
	sameTrees(t, host, guest, true)
	write(t, filepath.Join(guest, "new\nline.txt"), "guest", 0o644)
	patch := mustGuest(t, ExportScriptAt(guest, ""), nil)
	clone := filepath.Join(t.TempDir(), "clone")
	must(t, "git", "clone", "-q", host, clone)
	pf := filepath.Join(t.TempDir(), "p")
	if err := os.WriteFile(pf, []byte(patch), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, clone, "apply", pf)
	sameTrees(t, clone, guest, false)
}

func TestEmptyRepoNoFiles(t *testing.T) {
	gitEnv(t)
	host := filepath.Join(t.TempDir(), "void")
	must(t, "git", "init", "-q", host)
	guest := filepath.Join(t.TempDir(), "repo")
	out := mustGuest(t, GuestScript(guest), archive(t, plan(t, host, true)))
	if !strings.Contains(out, "0 files") {
		t.Fatalf("summary %q", out)
	}
	if patch := mustGuest(t, ExportScriptAt(guest, ""), nil); patch != "" {
		t.Fatalf("patch of nothing: %q", patch)
	}
}
