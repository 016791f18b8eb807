package guestfs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"banger/internal/api"
)

type opKind int

const (
	opWrite opKind = iota
	opMkdir
	opSymlink
	opRemove
)

type op struct {
	kind    opKind
	path    string
	content []byte // opWrite
	target  string // opSymlink
	perm    uint32 // opWrite, opMkdir: st_mode permission bits
	uid     uint32
	gid     uint32
}

// Edit is a batch of changes to one image, applied together by
// Image.Apply in the order they were added. Each adding method validates
// its arguments and returns a bad_request error for anything debugfs could
// misread; the first such error is also kept and returned by Apply, so an
// ignored error cannot silently drop a change. An Edit is not safe for
// concurrent use.
type Edit struct {
	ops []op
	err error
}

// Len is the number of operations in the edit.
func (e *Edit) Len() int { return len(e.ops) }

func (e *Edit) fail(err error) error {
	if e.err == nil {
		e.err = err
	}
	return err
}

func checkOwner(p string, uid, gid int) error {
	const maxID = 1<<32 - 2 // (uint32)-1 means "no id"
	if uid < 0 || uid > maxID || gid < 0 || gid > maxID {
		return api.Errorf(api.CodeBadRequest, "owner %d:%d for guest path %q is out of range", uid, gid, p)
	}
	return nil
}

func checkMode(p string, mode fs.FileMode, allow fs.FileMode) error {
	if mode&^(permMask|allow) != 0 {
		return api.Errorf(api.CodeBadRequest, "mode %v for guest path %q has type bits; give permission bits only (e.g. 0644)", mode, p)
	}
	return nil
}

// WriteFile creates or replaces the regular file p with content, mode
// (permission bits, setuid/setgid/sticky allowed) and owner. A symlink or
// other non-directory already at p is replaced, not followed (so writing
// /etc/resolv.conf over a symlink leaves a plain file). Missing parent
// directories are created 0755 root:root.
func (e *Edit) WriteFile(p string, content []byte, mode fs.FileMode, uid, gid int) error {
	if err := checkGuestPath("file", p); err != nil {
		return e.fail(err)
	}
	if err := checkMode(p, mode, 0); err != nil {
		return e.fail(err)
	}
	if err := checkOwner(p, uid, gid); err != nil {
		return e.fail(err)
	}
	e.ops = append(e.ops, op{kind: opWrite, path: p, content: bytes.Clone(content),
		perm: permBits(mode), uid: uint32(uid), gid: uint32(gid)})
	return nil
}

// MkdirAll makes sure p is a directory (following symlinks in the image),
// creating it and any missing parents, and sets p's mode and owner whether
// or not it already existed. Parents it creates get 0755 root:root.
func (e *Edit) MkdirAll(p string, mode fs.FileMode, uid, gid int) error {
	if err := checkGuestPath("directory", p); err != nil {
		return e.fail(err)
	}
	if err := checkMode(p, mode, fs.ModeDir); err != nil {
		return e.fail(err)
	}
	if err := checkOwner(p, uid, gid); err != nil {
		return e.fail(err)
	}
	e.ops = append(e.ops, op{kind: opMkdir, path: p, perm: permBits(mode), uid: uint32(uid), gid: uint32(gid)})
	return nil
}

// Symlink makes linkpath a symlink to target, replacing a non-directory
// already there. target is stored as given (relative or absolute; it is
// resolved by the guest, not here). Missing parents are created.
func (e *Edit) Symlink(target, linkpath string) error {
	if err := checkGuestPath("symlink", linkpath); err != nil {
		return e.fail(err)
	}
	switch {
	case target == "":
		return e.fail(api.Errorf(api.CodeBadRequest, "symlink %q has an empty target", linkpath))
	case strings.ContainsAny(target, "\x00\n\r"):
		return e.fail(api.Errorf(api.CodeBadRequest, "symlink target %q contains NUL, newline or carriage return, which debugfs cannot be given safely", target))
	case len(target) > maxPath:
		return e.fail(api.Errorf(api.CodeBadRequest, "symlink target for %q is %d bytes long; the limit is %d", linkpath, len(target), maxPath))
	}
	e.ops = append(e.ops, op{kind: opSymlink, path: linkpath, target: target})
	return nil
}

// Remove deletes p: a file, symlink or other non-directory, or an empty
// directory. A missing p is not an error. Removing a directory that is
// not empty fails when the edit is applied.
func (e *Edit) Remove(p string) error {
	if err := checkGuestPath("path", p); err != nil {
		return e.fail(err)
	}
	e.ops = append(e.ops, op{kind: opRemove, path: p})
	return nil
}

// WriteFile is a one-operation Apply; see Edit.WriteFile.
func (im *Image) WriteFile(ctx context.Context, p string, content []byte, mode fs.FileMode, uid, gid int) error {
	var e Edit
	if err := e.WriteFile(p, content, mode, uid, gid); err != nil {
		return err
	}
	return im.Apply(ctx, &e)
}

// MkdirAll is a one-operation Apply; see Edit.MkdirAll.
func (im *Image) MkdirAll(ctx context.Context, p string, mode fs.FileMode, uid, gid int) error {
	var e Edit
	if err := e.MkdirAll(p, mode, uid, gid); err != nil {
		return err
	}
	return im.Apply(ctx, &e)
}

// Symlink is a one-operation Apply; see Edit.Symlink.
func (im *Image) Symlink(ctx context.Context, target, linkpath string) error {
	var e Edit
	if err := e.Symlink(target, linkpath); err != nil {
		return err
	}
	return im.Apply(ctx, &e)
}

// Remove is a one-operation Apply; see Edit.Remove.
func (im *Image) Remove(ctx context.Context, p string) error {
	var e Edit
	if err := e.Remove(p); err != nil {
		return err
	}
	return im.Apply(ctx, &e)
}

// ancestors lists the proper ancestors of p below "/", outermost first:
// /a/b/c → /a, /a/b.
func ancestors(p string) []string {
	var out []string
	for i := 1; i < len(p); i++ {
		if p[i] == '/' {
			out = append(out, p[:i])
		}
	}
	return out
}

// within is p written so that debugfs resolves its parent directory even
// when the parent is a symlink: "/lib/x" becomes "/lib/./x". debugfs's
// mkdir, write, symlink, rm and rmdir split their argument at the last '/'
// and look the parent up without following a final symlink; for rm and
// rmdir that would drop the inode's link count and then fail to unlink
// the entry, corrupting the file system. The trailing "." makes the
// parent a non-final component, which is followed.
func within(p string) string {
	dir, base := path.Split(p)
	return dir + "./" + base
}

// resolved names directory p with p itself followed if it is a symlink.
func resolved(p string) string { return p + "/." }

// entry is the planner's view of one path.
type entry int

const (
	absent entry = iota
	isDir
	isFile
	isLink // symlink whose target the planner knows nothing about
	isLinkToDir
	isOther
)

func (en entry) String() string {
	return [...]string{"missing", "a directory", "a regular file", "a symlink", "a symlink to a directory", "a special file"}[en]
}

// expectation is what the verify pass checks for one path.
type expectation struct {
	path   string
	entry  entry // absent, isDir, isFile or isLink
	strict bool  // isDir: also check perm/uid/gid
	perm   uint32
	uid    uint32
	gid    uint32
	data   []byte
	target string
	host   string // isFile: host file the verify pass dumps into
}

type planner struct {
	lstat   map[string]*FileInfo // probe: path not followed
	follow  map[string]*FileInfo // probe: path + "/." (directories through links)
	overlay map[string]entry     // changes made by earlier ops of this edit
	cmds    []string
	expect  map[string]*expectation
	order   []string
	tmp     string
	nfile   int
}

func (pl *planner) state(p string) entry {
	if en, ok := pl.overlay[p]; ok {
		return en
	}
	fi := pl.lstat[p]
	switch {
	case fi == nil:
		return absent
	case fi.Mode.IsDir():
		return isDir
	case fi.Mode.IsRegular():
		return isFile
	case fi.Mode&fs.ModeSymlink != 0:
		if f := pl.follow[p]; f != nil && f.Mode.IsDir() {
			return isLinkToDir
		}
		return isLink
	default:
		return isOther
	}
}

// set records that p is now en; whatever was known below p no longer
// holds (it was removed or replaced).
func (pl *planner) set(p string, en entry) {
	prefix := p + "/"
	for q := range pl.lstat {
		if strings.HasPrefix(q, prefix) {
			pl.overlay[q] = absent
		}
	}
	for q := range pl.overlay {
		if strings.HasPrefix(q, prefix) {
			pl.overlay[q] = absent
		}
	}
	for q := range pl.expect {
		if strings.HasPrefix(q, prefix) {
			delete(pl.expect, q)
		}
	}
	pl.overlay[p] = en
}

func (pl *planner) add(verb string, args ...string) error {
	c, err := command(verb, args...)
	if err != nil {
		return err
	}
	pl.cmds = append(pl.cmds, c)
	return nil
}

func (pl *planner) expectFor(x expectation) {
	if _, ok := pl.expect[x.path]; !ok {
		pl.order = append(pl.order, x.path)
	}
	pl.expect[x.path] = &x
}

// ensureParents creates the missing ancestors of p.
func (pl *planner) ensureParents(p string) error {
	for _, a := range ancestors(p) {
		switch st := pl.state(a); st {
		case isDir, isLinkToDir:
		case absent:
			if err := pl.add("mkdir", within(a)); err != nil {
				return err
			}
			pl.set(a, isDir)
			pl.expectFor(expectation{path: a, entry: isDir})
		case isLink:
			if _, made := pl.overlay[a]; made {
				return api.Errorf(api.CodeBadRequest, "cannot use %s as a directory for %s: it is a symlink made by the same edit; give the path it points to", a, p)
			}
			return fmt.Errorf("cannot create %s: %s is a symlink that does not lead to a directory in the image", p, a)
		default:
			return fmt.Errorf("cannot create %s: %s is %s, not a directory", p, a, st)
		}
	}
	return nil
}

// removeExisting emits the request that unlinks a non-directory at p (a
// symlink, even one leading to a directory, is a plain entry to replace).
func (pl *planner) removeExisting(p, why string) error {
	switch pl.state(p) {
	case absent:
		return nil
	case isDir:
		return fmt.Errorf("cannot %s %s: a directory is in the way", why, p)
	default:
		return pl.add("rm", within(p))
	}
}

func (pl *planner) plan(o op) error {
	p := o.path
	switch o.kind {
	case opWrite:
		if err := pl.ensureParents(p); err != nil {
			return err
		}
		if err := pl.removeExisting(p, "write file"); err != nil {
			return err
		}
		pl.nfile++
		src := filepath.Join(pl.tmp, "in"+strconv.Itoa(pl.nfile))
		if err := os.WriteFile(src, o.content, 0o600); err != nil {
			return fmt.Errorf("stage content for %s: %w", p, err)
		}
		if err := pl.add("write", src, within(p)); err != nil {
			return err
		}
		if err := pl.setAttrs(p, 0o100000|o.perm, o.uid, o.gid); err != nil {
			return err
		}
		pl.set(p, isFile)
		pl.expectFor(expectation{path: p, entry: isFile, perm: o.perm, uid: o.uid, gid: o.gid, data: o.content,
			host: filepath.Join(pl.tmp, "check"+strconv.Itoa(pl.nfile))})

	case opMkdir:
		if err := pl.ensureParents(p); err != nil {
			return err
		}
		switch st := pl.state(p); st {
		case isDir, isLinkToDir:
		case absent:
			if err := pl.add("mkdir", within(p)); err != nil {
				return err
			}
			pl.set(p, isDir)
		default:
			return fmt.Errorf("cannot make directory %s: it exists as %s", p, st)
		}
		if err := pl.setAttrs(resolved(p), 0o040000|o.perm, o.uid, o.gid); err != nil {
			return err
		}
		pl.expectFor(expectation{path: p, entry: isDir, strict: true, perm: o.perm, uid: o.uid, gid: o.gid})

	case opSymlink:
		if err := pl.ensureParents(p); err != nil {
			return err
		}
		if err := pl.removeExisting(p, "make symlink"); err != nil {
			return err
		}
		if err := pl.add("symlink", within(p), o.target); err != nil {
			return err
		}
		pl.set(p, isLink)
		pl.expectFor(expectation{path: p, entry: isLink, target: o.target})

	case opRemove:
		switch pl.state(p) {
		case absent:
		case isDir:
			if err := pl.add("rmdir", within(p)); err != nil {
				return err
			}
		default:
			if err := pl.add("rm", within(p)); err != nil {
				return err
			}
		}
		pl.set(p, absent)
		pl.expectFor(expectation{path: p, entry: absent})
	}
	return nil
}

func (pl *planner) setAttrs(ref string, mode, uid, gid uint32) error {
	for _, kv := range [][2]string{
		{"mode", "0" + strconv.FormatUint(uint64(mode), 8)},
		{"uid", strconv.FormatUint(uint64(uid), 10)},
		{"gid", strconv.FormatUint(uint64(gid), 10)},
	} {
		if err := pl.add("sif", ref, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// Apply carries out e on the image: probe, write, verify (see the package
// comment). It returns an error if any operation did not take effect. On
// error the image may hold some of the changes; callers that need
// all-or-nothing should apply the edit to a copy (or a fresh clone).
func (im *Image) Apply(ctx context.Context, e *Edit) error {
	if e.err != nil {
		return e.err
	}
	if len(e.ops) == 0 {
		return nil
	}
	tmp, err := im.tempDir()
	if err != nil {
		return fmt.Errorf("guestfs: temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	pl := &planner{
		lstat:   map[string]*FileInfo{},
		follow:  map[string]*FileInfo{},
		overlay: map[string]entry{},
		expect:  map[string]*expectation{},
		tmp:     tmp,
	}
	if err := im.probe(ctx, e, pl); err != nil {
		return err
	}
	pl.cmds = []string{rootSentinel}
	for _, o := range e.ops {
		if err := pl.plan(o); err != nil {
			return fmt.Errorf("edit %s: %w", im.path, err)
		}
	}
	if _, err := im.runScript(ctx, tmp, true, pl.cmds); err != nil {
		return err
	}
	return im.verify(ctx, pl)
}

// probe stats every path the edit touches and all their ancestors, both
// as themselves and followed as directories.
func (im *Image) probe(ctx context.Context, e *Edit, pl *planner) error {
	seen := map[string]bool{}
	var paths []string
	for _, o := range e.ops {
		for _, p := range append(ancestors(o.path), o.path) {
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	cmds := []string{rootSentinel}
	for _, p := range paths {
		a, err := command("stat", p)
		if err != nil {
			return err
		}
		b, err := command("stat", resolved(p))
		if err != nil {
			return err
		}
		cmds = append(cmds, a, b)
	}
	sec, err := im.runScript(ctx, pl.tmp, false, cmds)
	if err != nil {
		return err
	}
	for i, p := range paths {
		pl.lstat[p] = parseStat(sec[1+2*i])
		pl.follow[p] = parseStat(sec[2+2*i])
	}
	return nil
}

// verify reads back every path the edit meant to change and compares.
func (im *Image) verify(ctx context.Context, pl *planner) error {
	cmds := []string{rootSentinel}
	type probeAt struct{ stat, dump int }
	at := map[string]probeAt{}
	for _, p := range pl.order {
		x, ok := pl.expect[p]
		if !ok {
			continue
		}
		ref := p
		if x.entry == isDir {
			ref = resolved(p)
		}
		c, err := command("stat", ref)
		if err != nil {
			return err
		}
		cmds = append(cmds, c)
		pa := probeAt{stat: len(cmds) - 1, dump: -1}
		if x.entry == isFile {
			c, err := command("dump", p, x.host)
			if err != nil {
				return err
			}
			cmds = append(cmds, c)
			pa.dump = len(cmds) - 1
		}
		at[p] = pa
	}
	sec, err := im.runScript(ctx, pl.tmp, false, cmds)
	if err != nil {
		return err
	}
	var problems []string
	for _, p := range pl.order {
		x, ok := pl.expect[p]
		if !ok {
			continue
		}
		if msg := x.check(parseStat(sec[at[p].stat])); msg != "" {
			problems = append(problems, p+": "+msg)
		}
	}
	if len(problems) > 0 {
		const maxShown = 5
		more := ""
		if len(problems) > maxShown {
			more = fmt.Sprintf(" (and %d more)", len(problems)-maxShown)
			problems = problems[:maxShown]
		}
		return fmt.Errorf("editing %s did not take effect: %s%s; debugfs reports such failures only on stderr, so check free space and inodes in the image (dumpe2fs -h) and that nothing else has it open",
			im.path, strings.Join(problems, "; "), more)
	}
	return nil
}

// check compares what debugfs found with the expectation and returns a
// description of the difference, or "".
func (x *expectation) check(fi *FileInfo) string {
	if x.entry == absent {
		if fi != nil {
			what := "still exists"
			if fi.IsDir() {
				what = "still exists (a directory that is not empty?)"
			}
			return what
		}
		return ""
	}
	if fi == nil {
		return "missing after the edit"
	}
	switch x.entry {
	case isDir:
		if !fi.IsDir() {
			return fmt.Sprintf("is %v, want a directory", fi.Mode.Type())
		}
		if x.strict {
			return x.checkAttrs(fi)
		}
	case isLink:
		if fi.Mode&fs.ModeSymlink == 0 {
			return fmt.Sprintf("is %v, want a symlink", fi.Mode.Type())
		}
		if fi.Size != int64(len(x.target)) || (fi.LinkTarget != "" && fi.LinkTarget != x.target) {
			return fmt.Sprintf("points to %q (%d bytes), want %q", fi.LinkTarget, fi.Size, x.target)
		}
	case isFile:
		if !fi.Mode.IsRegular() {
			return fmt.Sprintf("is %v, want a regular file", fi.Mode.Type())
		}
		if msg := x.checkAttrs(fi); msg != "" {
			return msg
		}
		if fi.Size != int64(len(x.data)) {
			return fmt.Sprintf("has %d bytes, want %d", fi.Size, len(x.data))
		}
		got, err := os.ReadFile(x.host)
		if err != nil {
			return fmt.Sprintf("could not be read back: %v", err)
		}
		if !bytes.Equal(got, x.data) {
			return "content differs from what was written"
		}
	}
	return ""
}

func (x *expectation) checkAttrs(fi *FileInfo) string {
	if got := permBits(fi.Mode); got != x.perm || fi.UID != x.uid || fi.GID != x.gid {
		return fmt.Sprintf("has mode %04o owner %d:%d, want %04o %d:%d", got, fi.UID, fi.GID, x.perm, x.uid, x.gid)
	}
	return ""
}
