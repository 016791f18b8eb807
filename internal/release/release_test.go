package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type entry struct {
	name string
	typ  byte
	body string
}

func tarball(t *testing.T, ents ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	tw := tar.NewWriter(gz)
	for _, e := range ents {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			hdr.Size, hdr.Linkname = 0, "/etc/passwd"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestExtract(t *testing.T) {
	good := []entry{{"banger", tar.TypeReg, "a"}, {"bangerd", tar.TypeReg, "b"}, {"banger-agent", tar.TypeReg, "c"}}
	dir := t.TempDir()
	if err := Extract(bytes.NewReader(tarball(t, good...)), dir); err != nil {
		t.Fatal(err)
	}
	for _, e := range good {
		b, err := os.ReadFile(filepath.Join(dir, e.name))
		if err != nil || string(b) != e.body {
			t.Fatalf("%s: %q, %v", e.name, b, err)
		}
		if st, _ := os.Stat(filepath.Join(dir, e.name)); st.Mode().Perm() != 0o755 {
			t.Fatalf("%s mode %v", e.name, st.Mode())
		}
	}
	bad := []struct {
		name string
		ents []entry
		want string
	}{
		{"extra file", append(slices.Clone(good), entry{"install.sh", tar.TypeReg, "x"}), `holds "install.sh"; a release holds only banger, bangerd, banger-agent`},
		{"traversal", append(slices.Clone(good[:2]), entry{"../banger-agent", tar.TypeReg, "x"}), `holds "../banger-agent"`},
		{"symlink", append(slices.Clone(good[:2]), entry{"banger-agent", tar.TypeSymlink, ""}), "banger-agent is not a regular file"},
		{"twice", append(slices.Clone(good), entry{"banger", tar.TypeReg, "again"}), "holds banger twice"},
		{"missing", good[:2], "lacks banger-agent"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			err := Extract(bytes.NewReader(tarball(t, c.ents...)), t.TempDir())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	if err := Extract(strings.NewReader("not gzip"), t.TempDir()); err == nil || !strings.Contains(err.Error(), "is not gzip") {
		t.Fatalf("not gzip: %v", err)
	}
}

func TestSignVerify(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	data := []byte("abc  banger-v1.0.0-linux-amd64.tar.gz\n")
	sig, err := Sign(key, data)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := EncodePublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := DecodePublicKey(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !Verify(pub, data, sig) {
		t.Fatal("own signature does not verify")
	}
	if Verify(&other.PublicKey, data, sig) {
		t.Fatal("verified against another key")
	}
	if Verify(pub, append(data, 'x'), sig) {
		t.Fatal("verified changed data")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	enc384, _ := EncodePublicKey(&p384.PublicKey)
	if _, err := DecodePublicKey(enc384); err == nil {
		t.Fatal("accepted a P-384 key")
	}
}

func TestParsePrivateKey(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(key)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	for _, blk := range []*pem.Block{{Type: "EC PRIVATE KEY", Bytes: sec1}, {Type: "PRIVATE KEY", Bytes: pkcs8}} {
		k, err := ParsePrivateKey(pem.EncodeToMemory(blk))
		if err != nil || !k.Equal(key) {
			t.Fatalf("%s: %v", blk.Type, err)
		}
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	b, _ := x509.MarshalECPrivateKey(p384)
	if _, err := ParsePrivateKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})); err == nil || !strings.Contains(err.Error(), "not P-256") {
		t.Fatalf("P-384: %v", err)
	}
	if _, err := ParsePrivateKey([]byte("hello")); err == nil {
		t.Fatal("accepted non-PEM")
	}
}

func TestParseSums(t *testing.T) {
	h := strings.Repeat("ab", 32)
	sums, err := ParseSums([]byte(h + "  banger-v1.0.0-linux-amd64.tar.gz\n"))
	if err != nil || sums["banger-v1.0.0-linux-amd64.tar.gz"] != h {
		t.Fatalf("%v, %v", sums, err)
	}
	for _, bad := range []string{
		h + " one-space.tar.gz\n",
		h + "  ../escape.tar.gz\n",
		h[:60] + "  short.tar.gz\n",
		h + "  a.tar.gz\n" + h + "  a.tar.gz\n",
	} {
		if _, err := ParseSums([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if got := string(FormatSums(map[string]string{"b": h, "a": h})); got != h+"  a\n"+h+"  b\n" {
		t.Fatalf("FormatSums: %q", got)
	}
}

func TestPack(t *testing.T) {
	bin := t.TempDir()
	for _, n := range Binaries {
		if err := os.WriteFile(filepath.Join(bin, n), []byte(n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dist := t.TempDir()
	for _, v := range []string{"v1.0.0", "v1.10.0", "v1.9.0", "v2.0.0-rc.1"} {
		if _, err := Pack(dist, v, "amd64", bin, key, 0); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dist, ManifestName))
	m, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.LatestStable != "v1.10.0" || len(m.Versions) != 4 {
		t.Fatalf("latest %s, %d versions", m.LatestStable, len(m.Versions))
	}
	sumsB, _ := os.ReadFile(filepath.Join(dist, SumsName))
	sig, _ := os.ReadFile(filepath.Join(dist, SignatureName))
	if !Verify(&key.PublicKey, sumsB, sig) {
		t.Fatal("SHA256SUMS signature does not verify")
	}
	sums, err := ParseSums(sumsB)
	if err != nil || len(sums) != 4 {
		t.Fatalf("sums %v, %v", sums, err)
	}
	for v, e := range m.Versions {
		tb, _ := os.ReadFile(filepath.Join(dist, e.URL))
		if SHA256Hex(tb) != e.SHA256 || sums[e.URL] != e.SHA256 || int64(len(tb)) != e.Size {
			t.Fatalf("%s: manifest, sums and file disagree", v)
		}
	}
	// Equal binaries, equal tarballs.
	if m.Versions["v1.0.0"].SHA256 != SHA256Hex(mustTarball(t, bin)) {
		t.Fatal("tarball is not reproducible")
	}
	if _, err := Pack(dist, "v1.9.0", "amd64", bin, key, 0); err == nil || !strings.Contains(err.Error(), "already released") {
		t.Fatalf("re-release: %v", err)
	}
	if _, err := Pack(dist, "1.9.1", "amd64", bin, key, 0); err == nil {
		t.Fatal("accepted a version without v")
	}
}

func mustTarball(t *testing.T, bin string) []byte {
	var b bytes.Buffer
	if err := WriteTarball(&b, bin, 0); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"v1.2.0", "v1.10.0", -1}, {"dev", "v0.0.1", -1}, {"v1.0.0", "v1.0.0-rc.1", 1}, {"v1.0.0", "v1.0.0", 0}} {
		if got := Compare(c.a, c.b); got != c.want {
			t.Errorf("Compare(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
