package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/oci/ocitest"
	"banger/internal/system"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: unpacking images sets owners and makes device nodes")
	}
}

// testMtime is the time every test entry carries, unless it says otherwise.
var testMtime = time.Unix(1700000000, 0)

// ent is one tar entry of a test layer.
type ent struct {
	name     string
	typ      byte // tar.TypeReg when zero
	body     string
	mode     int64
	uid, gid int
	link     string
	major    int64
	minor    int64
	xattrs   map[string]string
	mtime    time.Time
}

func dir(name string, mode int64) ent { return ent{name: name, typ: tar.TypeDir, mode: mode} }
func file(name, body string, mode int64) ent {
	return ent{name: name, typ: tar.TypeReg, body: body, mode: mode}
}
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) ent { return ent{name: name, typ: tar.TypeLink, link: target} }

func tarBytes(t *testing.T, entries ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mt := e.mtime
		if mt.IsZero() {
			mt = testMtime
		}
		h := &tar.Header{
			Name: e.name, Typeflag: typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, Devmajor: e.major, Devminor: e.minor, ModTime: mt,
			Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzLayer is a gzip-compressed registry layer holding entries.
func gzLayer(t *testing.T, entries ...ent) v1.Layer {
	t.Helper()
	return ocitest.Layer(t, tarBytes(t, entries...))
}

// zstdLayer is a zstd-compressed registry layer holding entries.
func zstdLayer(t *testing.T, entries ...ent) v1.Layer {
	t.Helper()
	return ocitest.Layer(t, tarBytes(t, entries...), tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
}

func digestOf(t *testing.T, d interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// fastRetry keeps failing-registry tests quick.
var fastRetry = &remote.Backoff{Duration: 10 * time.Millisecond, Factor: 1, Steps: 2}

// pullTo pulls ref into a fresh DestFile in a temp dir, with its staging
// in its own work dir so the test can check it is left empty.
func pullTo(t *testing.T, ref string, opts Options) (Result, string, error) {
	t.Helper()
	dir := t.TempDir()
	work := dir + "/work"
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	opts.DestFile = dir + "/rootfs.ext4"
	opts.WorkDir = work
	if opts.retry == nil {
		opts.retry = fastRetry
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Pull(ctx, &system.Exec{}, ref, opts)
	left, rerr := os.ReadDir(work)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if len(left) != 0 {
		t.Errorf("staging left behind in %s: %v", work, left)
	}
	if err != nil {
		if _, serr := os.Lstat(opts.DestFile); !os.IsNotExist(serr) {
			t.Errorf("failed pull left %s behind (stat: %v)", opts.DestFile, serr)
		}
	}
	return res, opts.DestFile, err
}

// fsEntry is what debugfs says about one path of an ext4 image.
type fsEntry struct {
	Inode  int
	Type   string // regular, directory, symlink, character special, block special, FIFO
	Mode   uint32 // permission bits incl. setuid/setgid/sticky
	UID    int
	GID    int
	Size   int64
	Links  int
	Blocks int64 // 512-byte units
	Link   string
	Major  int
	Minor  int
	Mtime  int64
}

var (
	reInode = regexp.MustCompile(`Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+(\d+)`)
	reOwner = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)`)
	reLinks = regexp.MustCompile(`Links: (\d+)\s+Blockcount: (\d+)`)
	reFast  = regexp.MustCompile(`Fast link dest: "(.*)"`)
	reDev   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	reMtime = regexp.MustCompile(`(?m)^\s*mtime: 0x([0-9a-f]+)`)
)

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := (&system.Exec{}).Run(context.Background(), "debugfs", "-R", req, img)
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v", req, img, err)
	}
	return string(out)
}

// stat returns the entry at p (symlinks in it are not followed by
// debugfs for the last component), or nil when it does not exist.
func stat(t *testing.T, img, p string) *fsEntry {
	t.Helper()
	// A missing path prints only to stderr ("File not found by
	// ext2_lookup") and exits 0: stdout stays empty.
	s := debugfs(t, img, "stat "+p)
	if strings.TrimSpace(s) == "" {
		return nil
	}
	m := reInode.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("debugfs stat %s: unexpected output:\n%s", p, s)
	}
	e := &fsEntry{Type: m[2]}
	e.Inode, _ = strconv.Atoi(m[1])
	mode, _ := strconv.ParseUint(m[3], 8, 32)
	e.Mode = uint32(mode)
	if m := reOwner.FindStringSubmatch(s); m != nil {
		e.UID, _ = strconv.Atoi(m[1])
		e.GID, _ = strconv.Atoi(m[2])
		e.Size, _ = strconv.ParseInt(m[3], 10, 64)
	}
	if m := reLinks.FindStringSubmatch(s); m != nil {
		e.Links, _ = strconv.Atoi(m[1])
		e.Blocks, _ = strconv.ParseInt(m[2], 10, 64)
	}
	if m := reFast.FindStringSubmatch(s); m != nil {
		e.Link = m[1]
	}
	if m := reDev.FindStringSubmatch(s); m != nil {
		e.Major, _ = strconv.Atoi(m[1])
		e.Minor, _ = strconv.Atoi(m[2])
	}
	if m := reMtime.FindStringSubmatch(s); m != nil {
		e.Mtime, _ = strconv.ParseInt(m[1], 16, 64)
	}
	return e
}

func cat(t *testing.T, img, p string) string {
	t.Helper()
	return debugfs(t, img, "cat "+p)
}
