package vmcp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// countingWriter counts the bytes the client sends to the server.
type countingWriter struct {
	io.WriteCloser
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.WriteCloser.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// sftpPair starts pkg/sftp's server in process, talking to a client over
// two pipes: the "guest" is this machine's filesystem, reached only
// through SFTP (tests give it paths in their own temp dirs). sent counts
// the bytes the client puts on the wire.
func sftpPair(t *testing.T) (c *sftp.Client, sent *atomic.Int64) {
	t.Helper()
	clientIn, serverOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	serverIn, clientOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.WriteCloser
	}{serverIn, serverOut})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve()
	}()
	sent = new(atomic.Int64)
	c, err = sftp.NewClientPipe(clientIn, countingWriter{clientOut, sent}, sftp.UseConcurrentWrites(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The client's Close waits for the server to hang up; the server
		// stops when the client's side of the pipe closes.
		closed := make(chan struct{})
		go func() {
			c.Close()
			close(closed)
		}()
		<-done
		serverOut.Close()
		<-closed
		serverIn.Close()
		clientIn.Close()
	})
	return c, sent
}

func newCopier(t *testing.T, recursive bool) (*Copier, *atomic.Int64) {
	c, sent := sftpPair(t)
	return &Copier{Client: c, GuestName: "web", Recursive: recursive}, sent
}

func writeFile(t *testing.T, p, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

var past = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

// makeTree builds the tree the round trip copies.
func makeTree(t *testing.T, root string) {
	t.Helper()
	writeFile(t, filepath.Join(root, "regular.txt"), "hello, guest\n", 0o644)
	writeFile(t, filepath.Join(root, "bin", "run.sh"), "#!/bin/sh\necho hi\n", 0o755)
	writeFile(t, filepath.Join(root, "secret"), "token", 0o600)
	writeFile(t, filepath.Join(root, "empty"), "", 0o644)
	writeFile(t, filepath.Join(root, "old.txt"), "from long ago", 0o640)
	writeFile(t, filepath.Join(root, "nested", "a", "b", "deep.txt"), strings.Repeat("deep ", 3000), 0o644)
	if err := os.Symlink("regular.txt", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../regular.txt", filepath.Join(root, "nested", "a", "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "old.txt"), past, past); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "nested", "a"), 0o750); err != nil {
		t.Fatal(err)
	}
	// Directory times last: filling a directory changes its mtime.
	if err := os.Chtimes(filepath.Join(root, "nested", "a", "b"), past.Add(time.Hour), past.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "nested"), past.Add(2*time.Hour), past.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
}

// entry is what a copy must keep of one tree entry.
type entry struct {
	mode  fs.FileMode
	mtime int64 // seconds
	data  string
}

// snapshot describes the tree at root; link times are left out (SFTP
// cannot set them in the guest).
func snapshot(t *testing.T, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{mode: fi.Mode(), mtime: fi.ModTime().Unix()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			e.mtime = 0
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.data = "-> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.data = string(b)
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what, want, got string) {
	t.Helper()
	w, g := snapshot(t, want), snapshot(t, got)
	for name, we := range w {
		ge, ok := g[name]
		switch {
		case !ok:
			t.Errorf("%s: %s missing", what, name)
		case ge.mode != we.mode:
			t.Errorf("%s: %s mode %v, want %v", what, name, ge.mode, we.mode)
		case ge.mtime != we.mtime:
			t.Errorf("%s: %s mtime %v, want %v", what, name, time.Unix(ge.mtime, 0).UTC(), time.Unix(we.mtime, 0).UTC())
		case ge.data != we.data:
			t.Errorf("%s: %s content %.40q, want %.40q", what, name, ge.data, we.data)
		}
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			t.Errorf("%s: unexpected %s", what, name)
		}
	}
}

func TestRoundTripTree(t *testing.T) {
	cp, _ := newCopier(t, true)
	ctx := context.Background()
	tmp := t.TempDir()
	src := filepath.Join(tmp, "host", "proj")
	makeTree(t, src)
	// The top directory's own mode and time travel too.
	if err := os.Chmod(src, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(src, past, past); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(tmp, "guest", "root")
	back := filepath.Join(tmp, "back")
	for _, d := range []string{guest, back} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	var progress int64
	cp.Progress = func(n int64) { progress += n }
	m, err := cp.Measure(ctx, ToGuest, src)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cp.Copy(ctx, ToGuest, src, guest)
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Files: 6, Links: 2, Dirs: 5, Bytes: m.Bytes}
	if st != want || m != want {
		t.Errorf("copy stats %+v, measured %+v, want %+v", st, m, want)
	}
	if progress != m.Bytes {
		t.Errorf("progress added up to %d, want %d", progress, m.Bytes)
	}
	sameTree(t, "host to guest", src, filepath.Join(guest, "proj"))

	st, err = cp.Copy(ctx, ToHost, filepath.Join(guest, "proj"), back)
	if err != nil {
		t.Fatal(err)
	}
	if st != want {
		t.Errorf("copy back stats %+v, want %+v", st, want)
	}
	sameTree(t, "guest to host", src, filepath.Join(back, "proj"))
}

// TestSpecialModes: setuid and sticky bits survive both ways, though a
// write clears setuid.
func TestSpecialModes(t *testing.T) {
	cp, _ := newCopier(t, false)
	ctx := context.Background()
	tmp := t.TempDir()
	src := filepath.Join(tmp, "suid")
	writeFile(t, src, "#!/bin/sh\n", 0o755)
	if err := os.Chmod(src, 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []Direction{ToGuest, ToHost} {
		dst := filepath.Join(tmp, "out-"+dir.String())
		if _, err := cp.Copy(ctx, dir, src, dst); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o755|fs.ModeSetuid {
			t.Errorf("%s: mode %v, want %v", dir, fi.Mode(), 0o755|fs.ModeSetuid)
		}
	}
}

// allocated is how many bytes the file at p takes on disk.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the 4 MiB at %d", a, b, off)
		}
		if ea != nil {
			return
		}
		off += int64(na)
	}
}

// TestSparseRoundTrip copies a 1 GiB file that is almost all hole to the
// guest and back: the zeros never cross the wire to the guest, and both
// copies stay sparse with the exact size.
func TestSparseRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 1 GiB of zeros back from the guest")
	}
	cp, sent := newCopier(t, false)
	ctx := context.Background()
	tmp := t.TempDir()
	src := filepath.Join(tmp, "disk.img")
	const size = 1 << 30
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		off  int64
		data string
	}{{0, "head"}, {512 << 20, strings.Repeat("middle", 1000)}, {size - 4, "tail"}} {
		if _, err := f.WriteAt([]byte(w.data), w.off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if a := allocated(t, src); a > 1<<20 {
		t.Skipf("the temp filesystem does not keep %s sparse (%d bytes allocated)", src, a)
	}

	guest := filepath.Join(tmp, "guest.img")
	var progress int64
	cp.Progress = func(n int64) { progress += n }
	before := sent.Load()
	st, err := cp.Copy(ctx, ToGuest, src, guest)
	if err != nil {
		t.Fatal(err)
	}
	if wire := sent.Load() - before; wire > 1<<20 {
		t.Errorf("host to guest put %d bytes on the wire for a file with 6 KiB of data", wire)
	}
	if st.Bytes != size || progress != size {
		t.Errorf("stats say %d bytes, progress %d; want %d", st.Bytes, progress, size)
	}
	checkSparse(t, guest, size)
	sameContent(t, src, guest)

	back := filepath.Join(tmp, "back.img")
	if _, err := cp.Copy(ctx, ToHost, guest, back); err != nil {
		t.Fatal(err)
	}
	checkSparse(t, back, size)
	sameContent(t, src, back)
}

func checkSparse(t *testing.T, p string, size int64) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Errorf("%s is %d bytes, want %d", p, fi.Size(), size)
	}
	if a := allocated(t, p); a > 1<<20 {
		t.Errorf("%s has %d bytes allocated; the holes were filled", p, a)
	}
}

// TestZerosBecomeHoles: zeros that were written (not holes) are skipped
// too, both ways, and a file ending in zeros keeps its size.
func TestZerosBecomeHoles(t *testing.T) {
	cp, sent := newCopier(t, false)
	ctx := context.Background()
	tmp := t.TempDir()
	src := filepath.Join(tmp, "zeros")
	data := make([]byte, 16<<20)
	copy(data[5<<20:], "data in the middle")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(tmp, "guest")
	before := sent.Load()
	if _, err := cp.Copy(ctx, ToGuest, src, guest); err != nil {
		t.Fatal(err)
	}
	if wire := sent.Load() - before; wire > 1<<20 {
		t.Errorf("host to guest put %d bytes on the wire for 16 MiB of mostly zeros", wire)
	}
	checkSparse(t, guest, int64(len(data)))
	sameContent(t, src, guest)
	back := filepath.Join(tmp, "back")
	if _, err := cp.Copy(ctx, ToHost, guest, back); err != nil {
		t.Fatal(err)
	}
	checkSparse(t, back, int64(len(data)))
	sameContent(t, src, back)
}

func TestWriteSparseBlocks(t *testing.T) {
	// Writes land on block boundaries of the file, not of the buffer.
	var w recorder
	b := make([]byte, 3*blockSize)
	b[0] = 1             // file block [100, 4096): written
	b[2*blockSize] = 1   // file block [8192, 12288): written, and
	b[3*blockSize-1] = 1 // the partial block at 12288, in the same write
	if err := writeSparse(&w, b, 100); err != nil {
		t.Fatal(err)
	}
	want := []string{"100+3996", "8192+4196"}
	if strings.Join(w.writes, " ") != strings.Join(want, " ") {
		t.Errorf("writes %v, want %v", w.writes, want)
	}
}

type recorder struct{ writes []string }

func (r *recorder) WriteAt(b []byte, off int64) (int, error) {
	r.writes = append(r.writes, strconv.FormatInt(off, 10)+"+"+strconv.Itoa(len(b)))
	return len(b), nil
}

func TestDirectoryNeedsRecursive(t *testing.T) {
	cp, _ := newCopier(t, false)
	ctx := context.Background()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "d")
	writeFile(t, filepath.Join(dir, "f"), "x", 0o644)
	for _, d := range []Direction{ToGuest, ToHost} {
		_, err := cp.Copy(ctx, d, dir, filepath.Join(tmp, "out"))
		if err == nil || !strings.Contains(err.Error(), "is a directory; use -r") {
			t.Errorf("%s: copy of a directory without -r: %v", d, err)
		}
		if _, err := cp.Measure(ctx, d, dir); err == nil || !strings.Contains(err.Error(), "use -r") {
			t.Errorf("%s: measure of a directory without -r: %v", d, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(tmp, "out")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("something was copied: %v", err)
	}
}

func TestMissingSource(t *testing.T) {
	cp, _ := newCopier(t, true)
	ctx := context.Background()
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "nope")
	for _, c := range []struct {
		dir   Direction
		label string
	}{{ToGuest, missing}, {ToHost, "web:" + missing}} {
		_, err := cp.Copy(ctx, c.dir, missing, tmp)
		if err == nil || !strings.Contains(err.Error(), c.label+" does not exist") {
			t.Errorf("%s: %v, want it to say %s does not exist", c.dir, err, c.label)
		}
	}
}

// TestDestinationNames: cp's rules for where SRC lands.
func TestDestinationNames(t *testing.T) {
	ctx := context.Background()
	for _, dir := range []Direction{ToGuest, ToHost} {
		t.Run(dir.String(), func(t *testing.T) {
			cp, _ := newCopier(t, true)
			tmp := t.TempDir()
			src := filepath.Join(tmp, "src")
			writeFile(t, filepath.Join(src, "file"), "one", 0o644)
			writeFile(t, filepath.Join(src, "sub", "inner"), "two", 0o644)
			dst := filepath.Join(tmp, "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			copyOK := func(from, to string) {
				t.Helper()
				if _, err := cp.Copy(ctx, dir, from, to); err != nil {
					t.Fatal(err)
				}
			}
			copyFails := func(from, to, msg string) {
				t.Helper()
				_, err := cp.Copy(ctx, dir, from, to)
				if err == nil || !strings.Contains(err.Error(), msg) {
					t.Errorf("copy %s to %s: %v, want an error saying %q", from, to, err, msg)
				}
			}
			exists := func(rel, content string) {
				t.Helper()
				b, err := os.ReadFile(filepath.Join(dst, rel))
				if err != nil || string(b) != content {
					t.Errorf("%s: %q, %v; want %q", rel, b, err, content)
				}
			}

			copyOK(filepath.Join(src, "file"), dst) // into an existing dir
			exists("file", "one")
			copyOK(filepath.Join(src, "file"), dst+"/") // the same, with a slash
			copyOK(filepath.Join(src, "file"), filepath.Join(dst, "renamed"))
			exists("renamed", "one")
			copyOK(src, dst) // a directory into an existing one
			exists("src/sub/inner", "two")
			copyOK(src, filepath.Join(dst, "copy")) // a new name
			exists("copy/file", "one")
			copyOK(src, filepath.Join(dst, "copy")) // now it exists: copy/src
			exists("copy/src/file", "one")
			copyOK(src+"/.", filepath.Join(dst, "merged")) // DIR/. to a new name
			exists("merged/sub/inner", "two")
			copyOK(filepath.Join(src, "sub")+"/.", filepath.Join(dst, "merged")) // merged into
			exists("merged/inner", "two")

			// Overwriting a longer file leaves nothing of it behind.
			writeFile(t, filepath.Join(dst, "long"), strings.Repeat("x", 100000), 0o644)
			copyOK(filepath.Join(src, "file"), filepath.Join(dst, "long"))
			exists("long", "one")

			copyFails(filepath.Join(src, "file"), filepath.Join(dst, "no", "such", "x"), "does not exist; create it first")
			copyFails(filepath.Join(src, "file"), filepath.Join(dst, "nodir")+"/", "no such directory")
			copyFails(filepath.Join(src, "file"), filepath.Join(dst, "file")+"/", "is not a directory")
			copyFails(src, filepath.Join(dst, "file"), "cannot overwrite non-directory")
			// src/sub is a directory; dst/merged/sub is one too, but
			// dst/file-as-dir: a file cannot replace a directory.
			if err := os.MkdirAll(filepath.Join(dst, "clash", "file"), 0o755); err != nil {
				t.Fatal(err)
			}
			copyFails(filepath.Join(src, "file"), filepath.Join(dst, "clash"), "cannot overwrite directory")
		})
	}
}

// TestLinksAreNotFollowed: a link in the destination is replaced, never
// written through; a SRC link is followed without -r and copied with it.
func TestLinksAreNotFollowed(t *testing.T) {
	ctx := context.Background()
	for _, dir := range []Direction{ToGuest, ToHost} {
		t.Run(dir.String(), func(t *testing.T) {
			cp, _ := newCopier(t, false)
			tmp := t.TempDir()
			victim := filepath.Join(tmp, "victim")
			writeFile(t, victim, "untouched", 0o644)
			writeFile(t, filepath.Join(tmp, "src", "f"), "new", 0o644)
			dst := filepath.Join(tmp, "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, filepath.Join(dst, "f")); err != nil {
				t.Fatal(err)
			}
			if _, err := cp.Copy(ctx, dir, filepath.Join(tmp, "src", "f"), dst); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(victim); string(b) != "untouched" {
				t.Errorf("written through a link: victim holds %q", b)
			}
			if fi, err := os.Lstat(filepath.Join(dst, "f")); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("dst/f: %v, %v; want a regular file", fi, err)
			}

			// SRC a link: followed without -r, kept with it.
			link := filepath.Join(tmp, "link")
			if err := os.Symlink("victim", link); err != nil {
				t.Fatal(err)
			}
			if _, err := cp.Copy(ctx, dir, link, filepath.Join(tmp, "followed")); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Lstat(filepath.Join(tmp, "followed")); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("without -r a SRC link is followed: %v, %v", fi, err)
			}
			cp.Recursive = true
			if _, err := cp.Copy(ctx, dir, link, filepath.Join(tmp, "kept")); err != nil {
				t.Fatal(err)
			}
			if target, err := os.Readlink(filepath.Join(tmp, "kept")); err != nil || target != "victim" {
				t.Errorf("with -r a SRC link is copied as a link: %q, %v", target, err)
			}
		})
	}
}

func TestSpecialFilesSkipped(t *testing.T) {
	cp, _ := newCopier(t, true)
	var warnings []string
	cp.Warn = func(m string) { warnings = append(warnings, m) }
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	writeFile(t, filepath.Join(src, "f"), "x", 0o644)
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := cp.Copy(context.Background(), ToGuest, src, filepath.Join(tmp, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 1 || st.Files != 1 || len(warnings) != 1 || !strings.Contains(warnings[0], "FIFO") {
		t.Errorf("stats %+v, warnings %q", st, warnings)
	}
	if _, err := os.Lstat(filepath.Join(tmp, "dst", "fifo")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the FIFO was copied: %v", err)
	}
}

func TestCancelled(t *testing.T) {
	cp, _ := newCopier(t, true)
	tmp := t.TempDir()
	makeTree(t, filepath.Join(tmp, "src"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cp.Copy(ctx, ToGuest, filepath.Join(tmp, "src"), filepath.Join(tmp, "dst")); !errors.Is(err, context.Canceled) {
		t.Errorf("copy with a cancelled context: %v", err)
	}
}

func TestGuestPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "/root/",
		"~":                "/root/",
		"~/x":              "/root/x",
		"notes.txt":        "/root/notes.txt",
		"a/b/../c":         "/root/a/c",
		"../../x":          "/x",
		"../../../../../x": "/x",
		"/etc//hosts":      "/etc/hosts",
		"/../etc":          "/etc",
		"/":                "/",
		"/tmp/":            "/tmp/",
		"/tmp/.":           "/tmp/.",
		".":                "/root/.",
		"dir/":             "/root/dir/",
	} {
		if got := GuestPath(in); got != want {
			t.Errorf("GuestPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHostDataExtents: holes in a host file are found with SEEK_DATA and
// SEEK_HOLE, so they are not even read.
func TestHostDataExtents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if _, err := f.WriteAt([]byte("x"), 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if allocated(t, p) > 1<<20 {
		t.Skip("the temp filesystem does not keep files sparse")
	}
	hf, err := openHost(p)
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	start, end := hf.nextData(0, size)
	if start > 16<<20 || end <= 16<<20 || end-start > 1<<20 {
		t.Errorf("first data extent [%d, %d), want a small one around %d", start, end, 16<<20)
	}
	if start, _ := hf.nextData(end, size); start != size {
		t.Errorf("data after the only extent at %d", start)
	}
}

// TestKernelFiles: files that report size 0 but have data (procfs) are
// read to the end.
func TestKernelFiles(t *testing.T) {
	want, err := os.ReadFile("/proc/version")
	if err != nil || len(want) == 0 {
		t.Skipf("no /proc/version here: %v", err)
	}
	if fi, err := os.Stat("/proc/version"); err != nil || fi.Size() != 0 {
		t.Skipf("/proc/version has size %v (%v)", fi, err)
	}
	cp, _ := newCopier(t, false)
	tmp := t.TempDir()
	for _, d := range []Direction{ToGuest, ToHost} {
		dst := filepath.Join(tmp, d.String())
		st, err := cp.Copy(context.Background(), d, "/proc/version", dst)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(dst)
		if !bytes.Equal(got, want) || st.Bytes != int64(len(want)) {
			t.Errorf("%s: copied %q (stats %+v), want %q", d, got, st, want)
		}
	}
}
