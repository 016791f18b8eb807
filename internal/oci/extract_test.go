package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

// hostState is what a test's host directory holds, to prove layers did
// not touch it.
func hostState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %v links=%d %d:%d size=%d mtime=%d\n", p, fi.Mode(), st.Nlink, st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func extract(t *testing.T, rootDir string, layers ...[]ent) error {
	t.Helper()
	var ls []Layer
	for i, l := range layers {
		ls = append(ls, Layer{Name: "test" + strconv.Itoa(i+1), Tar: bytes.NewReader(tarBytes(t, l...))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return ExtractLayers(ctx, ls, rootDir)
}

func readLink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Errorf("readlink %s: %v", p, err)
	}
	return s
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read %s: %v", p, err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("%s exists (lstat: %v), want it absent", p, err)
	}
}

// Each case runs hostile layers into a fresh root next to a host
// directory holding a victim file, then checks the root and that the host
// directory is exactly as it was.
func TestExtractLayersConfined(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name    string
		layers  func(host string) [][]ent
		wantErr string // "" for success
		check   func(t *testing.T, root, host string)
	}{
		{
			name:    "name with ../ in the middle",
			layers:  func(string) [][]ent { return [][]ent{{file("a/../../x", "x", 0o644)}} },
			wantErr: `entry "a/../../x" climbs out`,
		},
		{
			name:    "absolute name climbing out",
			layers:  func(string) [][]ent { return [][]ent{{file("/../x", "x", 0o644)}} },
			wantErr: "climbs out",
		},
		{
			name: "hard link target climbing out",
			layers: func(string) [][]ent {
				return [][]ent{{hardlink("x", "../../../../etc/passwd")}}
			},
			wantErr: "target climbs out",
		},
		{
			name: "hard link through an escaping symlink finds no host file",
			layers: func(host string) [][]ent {
				return [][]ent{{symlink("evil", "/")}, {hardlink("stolen", "evil"+host+"/victim")}}
			},
			wantErr: "no such file",
		},
		{
			name: "whiteouts through escaping symlinks delete nothing on the host",
			layers: func(host string) [][]ent {
				return [][]ent{
					{symlink("abs", host), symlink("rel", "../../../../../../../../.."+host)},
					{file("abs/.wh.victim", "", 0o644), file("rel/.wh.victim", "", 0o644), file("abs/.wh..wh..opq", "", 0o644)},
				}
			},
			check: func(t *testing.T, root, host string) {
				if fi, err := os.Stat(filepath.Join(root, host)); err != nil || !fi.IsDir() {
					t.Errorf("opaque marker should have made %s inside the root: %v", host, err)
				}
			},
		},
		{
			name: "writes through a symlink to a host directory stay inside",
			layers: func(host string) [][]ent {
				return [][]ent{
					{symlink("d", host)},
					{file("d/victim", "pwned", 0o644), ent{name: "d/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
						symlink("d/link", "/etc"), hardlink("d/hl", "d/victim")},
				}
			},
			check: func(t *testing.T, root, host string) {
				if got := readFile(t, filepath.Join(root, host, "victim")); got != "pwned" {
					t.Errorf("inside victim = %q", got)
				}
				if fi, err := os.Lstat(filepath.Join(root, host, "null")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
					t.Errorf("device node not inside the root: %v", err)
				}
			},
		},
		{
			name: "a dangling absolute symlink parent is made inside",
			layers: func(host string) [][]ent {
				return [][]ent{{symlink("dangle", host+"/new/deeper")}, {file("dangle/f", "f", 0o600)}}
			},
			check: func(t *testing.T, root, host string) {
				if got := readFile(t, filepath.Join(root, host, "new/deeper/f")); got != "f" {
					t.Errorf("file through dangling symlink = %q", got)
				}
			},
		},
		{
			name: "entries replace symlinks instead of writing through them",
			layers: func(host string) [][]ent {
				return [][]ent{
					{symlink("f", host+"/victim"), symlink("d", host), ent{name: "s", typ: tar.TypeSymlink, link: host + "/victim", uid: 1234, gid: 1234}},
					{file("f", "replaced", 0o600), dir("d/", 0o700), file("d/victim", "inside", 0o600), hardlink("h", "s")},
				}
			},
			check: func(t *testing.T, root, host string) {
				if got := readFile(t, filepath.Join(root, "f")); got != "replaced" {
					t.Errorf("f = %q", got)
				}
				if fi, err := os.Lstat(filepath.Join(root, "d")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
					t.Errorf("d should be a 0700 directory: %v %v", fi, err)
				}
				if got := readLink(t, filepath.Join(root, "h")); got != host+"/victim" {
					t.Errorf("hard link of a symlink should be that symlink, got %q", got)
				}
				var st syscall.Stat_t
				if err := syscall.Lstat(filepath.Join(root, "s"), &st); err != nil || st.Uid != 1234 {
					t.Errorf("symlink owner %d (%v), want 1234", st.Uid, err)
				}
			},
		},
		{
			name:    "symlink loop in a parent fails instead of spinning",
			layers:  func(string) [][]ent { return [][]ent{{symlink("a", "b"), symlink("b", "a"), file("a/f", "x", 0o644)}} },
			wantErr: `entry "a/f"`,
		},
		{
			name: "whiteout of something never there is fine",
			layers: func(string) [][]ent {
				return [][]ent{{file("keep", "k", 0o644)}, {file("nothere/.wh.x", "", 0o644), file(".wh.absent", "", 0o644)}}
			},
			check: func(t *testing.T, root, _ string) {
				if got := readFile(t, filepath.Join(root, "keep")); got != "k" {
					t.Errorf("keep = %q", got)
				}
				mustNotExist(t, filepath.Join(root, "nothere"))
			},
		},
		{
			name: "the root entry sets the root's mode and owner",
			layers: func(string) [][]ent {
				return [][]ent{{ent{name: "./", typ: tar.TypeDir, mode: 0o750, uid: 3, gid: 4}}}
			},
			check: func(t *testing.T, root, _ string) {
				var st syscall.Stat_t
				if err := syscall.Stat(root, &st); err != nil || st.Mode&0o7777 != 0o750 || st.Uid != 3 || st.Gid != 4 {
					t.Errorf("root mode %o owner %d:%d (%v), want 0750 3:4", st.Mode&0o7777, st.Uid, st.Gid, err)
				}
			},
		},
		{
			name:    "a whiteout for the parent itself is malformed",
			layers:  func(string) [][]ent { return [][]ent{{file("a/.wh...", "", 0o644)}} },
			wantErr: "malformed whiteout",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := t.TempDir()
			if err := os.WriteFile(filepath.Join(host, "victim"), []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			before := hostState(t, host)
			root := filepath.Join(t.TempDir(), "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			err := extract(t, root, tc.layers(host)...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("extract: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("extract succeeded, want an error with %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q, want %q", err, tc.wantErr)
			}
			if err != nil {
				t.Logf("error: %v", err)
				if strings.Contains(tc.wantErr, "climbs out") && !api.IsCode(err, api.CodeBadRequest) {
					t.Errorf("unsafe-entry error %v is not bad_request", err)
				}
			}
			if after := hostState(t, host); after != before {
				t.Errorf("host directory changed:\nbefore:\n%safter:\n%s", before, after)
			}
			if tc.check != nil {
				tc.check(t, root, host)
			}
		})
	}
}

func TestExtractLayersCancelled(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := ExtractLayers(ctx, []Layer{{Name: "l", Tar: bytes.NewReader(tarBytes(t, file("a", "a", 0o644)))}}, t.TempDir())
	if err != context.Canceled {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

// TestExtractLimits: a file claiming 20 GiB (its content never sent: the
// header alone is refused), too many entries, too many bytes in all.
func TestExtractLimits(t *testing.T) {
	needRoot(t)
	var bomb bytes.Buffer
	tw := tar.NewWriter(&bomb)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 20 << 30, ModTime: testMtime}); err != nil {
		t.Fatal(err)
	}
	err := ExtractLayers(context.Background(), []Layer{{Name: "bomb", Tar: bytes.NewReader(bomb.Bytes())}}, t.TempDir())
	if !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), `entry "zeros": the file is 21474836480 bytes, over the 17179869184-byte limit for one file`) {
		t.Errorf("20 GiB file: %v", err)
	}
	many := []ent{file("a", "x", 0o644), file("b", "x", 0o644), file("c", "x", 0o644), file("d", "x", 0o644)}
	err = ExtractLayersLimited(context.Background(), []Layer{{Name: "many", Tar: bytes.NewReader(tarBytes(t, many...))}}, t.TempDir(), Limits{Entries: 3})
	if !strings.Contains(err.Error(), `entry "d": the image has more than 3 entries`) {
		t.Errorf("entries: %v", err)
	}
	big := []ent{file("a", "12345678", 0o644), file("b", "12345678", 0o644)}
	err = ExtractLayersLimited(context.Background(), []Layer{
		{Name: "l1", Tar: bytes.NewReader(tarBytes(t, big[0]))},
		{Name: "l2", Tar: bytes.NewReader(tarBytes(t, big[1]))},
	}, t.TempDir(), Limits{TotalBytes: 10})
	if !strings.Contains(err.Error(), `layer 2 (l2): entry "b": the image unpacks to more than 10 bytes (the limit)`) {
		t.Errorf("total bytes across layers: %v", err)
	}
}
