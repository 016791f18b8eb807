package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// entryTypes are the tar entry kinds a fuzzed entry may take.
var entryTypes = []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo}

// FuzzExtractConfined replays two fuzzed layers of three entries each
// (names, kinds, link targets: the ways out of a root are symbolic links,
// hard links, "..", absolute names and whiteouts, in any order) and checks
// that nothing outside the root changed, whatever ExtractLayers returned.
func FuzzExtractConfined(f *testing.F) {
	seeds := [][6]string{
		{"a", "../outside", "a/x", "", "a", ""},
		{"link", "/", "link/etc/passwd", "", ".wh.link", ""},
		{"d", "", "d/..", "", "../../x", ""},
		{"h", "../outside/sentinel", "h", "", "s", "/outside"},
		{"x/../../y", "", "/abs", "", ".wh..wh..opq", ""},
		{"s", "s", "s/a", "", "s/b", "../.."},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], byte(2), s[2], s[3], byte(0), s[4], s[5], byte(3), []byte("data"))
	}
	f.Fuzz(func(t *testing.T, n1, l1 string, k1 byte, n2, l2 string, k2 byte, n3, l3 string, k3 byte, body []byte) {
		if os.Geteuid() != 0 {
			t.Skip("needs root: unpacking sets owners")
		}
		base := t.TempDir()
		root := filepath.Join(base, "root")
		outside := filepath.Join(base, "outside")
		for _, d := range []string{root, outside} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(outside, "sentinel"), []byte("untouched"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := hostState(t, outside)
		if len(body) > 4096 {
			body = body[:4096]
		}
		ents := []ent{
			{name: n1, typ: entryTypes[int(k1)%len(entryTypes)], link: l1, body: string(body), mode: 0o755},
			{name: n2, typ: entryTypes[int(k2)%len(entryTypes)], link: l2, body: string(body), mode: 0o644},
			{name: n3, typ: entryTypes[int(k3)%len(entryTypes)], link: l3, body: string(body), mode: 0o600},
		}
		var layers []Layer
		for i, group := range [][]ent{ents, {ents[2], ents[0], ents[1]}} {
			data, ok := fuzzTar(group)
			if !ok {
				return // not a tar anyone could write
			}
			layers = append(layers, Layer{Name: "fuzz" + string(rune('1'+i)), Tar: bytes.NewReader(data)})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = ExtractLayers(ctx, layers, root)
		if after := hostState(t, outside); after != before {
			t.Fatalf("the extraction changed a directory outside its root:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		entries, err := os.ReadDir(base)
		if err != nil || len(entries) != 2 {
			t.Fatalf("the extraction made entries beside its root: %v %v", entries, err)
		}
	})
}

// fuzzTar writes entries as a tar stream, reporting false when the tar
// writer refuses them (empty or over-long names).
func fuzzTar(entries []ent) ([]byte, bool) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: testMtime, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if e.name == "" || tw.WriteHeader(h) != nil {
			return nil, false
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				return nil, false
			}
		}
	}
	if tw.Close() != nil {
		return nil, false
	}
	return buf.Bytes(), true
}
