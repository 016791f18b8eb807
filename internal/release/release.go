// Package release is banger's release format, shared by the tool that
// makes releases (make release) and the updater that installs them
// (banger update).
//
// A release directory (dist/), servable by any static HTTP server, holds:
//
//	banger-vX.Y.Z-linux-ARCH.tar.gz   exactly banger, bangerd, banger-agent
//	SHA256SUMS                         "HEX  NAME" for every tarball
//	SHA256SUMS.sig                     ECDSA P-256 over SHA256SUMS (ASN.1 DER)
//	manifest.json                      versions, their tarball URL, sha256, size
//
// Trust comes from the signature alone: the binaries embed the public half
// of the signing key, SHA256SUMS must verify against it, and a tarball
// must hash to its line in SHA256SUMS. The manifest only says where
// things are; its sha256 must agree with the signed sums too.
package release

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/semver"
)

// Binaries are the files a release tarball holds: exactly these.
var Binaries = []string{"banger", "bangerd", "banger-agent"}

// File names in a release directory.
const (
	ManifestName  = "manifest.json"
	SumsName      = "SHA256SUMS"
	SignatureName = "SHA256SUMS.sig"
)

// Size caps on what the updater downloads.
const (
	MaxManifest  = 1 << 20
	MaxSums      = 16 << 10
	MaxSignature = 1 << 10
	MaxTarball   = 256 << 20
	// MaxBinary bounds one binary inside a tarball (gzip can expand).
	MaxBinary = 256 << 20
)

// SchemaVersion is the manifest format this code reads and writes.
const SchemaVersion = 1

// Manifest lists the releases a directory serves.
type Manifest struct {
	SchemaVersion int              `json:"schema_version"`
	LatestStable  string           `json:"latest_stable"`
	Versions      map[string]Entry `json:"versions"`
}

// Entry is one version's tarball.
type Entry struct {
	// URL is absolute, or relative to the manifest's own URL.
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Arch is the GOARCH the binaries are built for.
	Arch string `json:"arch"`
}

// ParseManifest decodes and checks a manifest.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest is not valid JSON: %w", err)
	}
	if m.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("manifest schema_version %d; this banger reads %d", m.SchemaVersion, SchemaVersion)
	}
	for v, e := range m.Versions {
		if !ValidVersion(v) {
			return nil, fmt.Errorf("manifest lists %q, which is not a version like v1.2.3", v)
		}
		if len(e.SHA256) != 64 || strings.Trim(strings.ToLower(e.SHA256), "0123456789abcdef") != "" {
			return nil, fmt.Errorf("manifest: %s has a malformed sha256 %q", v, e.SHA256)
		}
		if e.URL == "" || e.Size <= 0 {
			return nil, fmt.Errorf("manifest: %s has no url or size", v)
		}
	}
	if m.LatestStable != "" {
		if _, ok := m.Versions[m.LatestStable]; !ok {
			return nil, fmt.Errorf("manifest: latest_stable %s is not among its versions", m.LatestStable)
		}
	}
	return &m, nil
}

// ValidVersion reports whether v is a release version: vMAJOR.MINOR.PATCH
// with an optional pre-release, no build metadata.
func ValidVersion(v string) bool {
	return semver.IsValid(v) && semver.Canonical(v) == v
}

// Compare orders versions as semver does; a version that is not one
// (a dev build) sorts before every release.
func Compare(a, b string) int {
	switch {
	case !ValidVersion(a) && !ValidVersion(b):
		return 0
	case !ValidVersion(a):
		return -1
	case !ValidVersion(b):
		return 1
	}
	return semver.Compare(a, b)
}

// TarballName is the file name of version's tarball for arch.
func TarballName(version, arch string) string {
	return "banger-" + version + "-linux-" + arch + ".tar.gz"
}

var sumLine = regexp.MustCompile(`^([0-9a-f]{64})  ([A-Za-z0-9._+-]+)$`)

// ParseSums reads SHA256SUMS: "HEX  NAME" lines (sha256sum's format),
// names without directories, each once.
func ParseSums(b []byte) (map[string]string, error) {
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		m := sumLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("SHA256SUMS line %d is not \"HEX  NAME\": %q", n, line)
		}
		if _, dup := sums[m[2]]; dup {
			return nil, fmt.Errorf("SHA256SUMS names %s twice", m[2])
		}
		sums[m[2]] = m[1]
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return sums, nil
}

// FormatSums writes sums in ParseSums's format, names sorted.
func FormatSums(sums map[string]string) []byte {
	names := make([]string, 0, len(sums))
	for n := range sums {
		names = append(names, n)
	}
	slices.Sort(names)
	var b bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&b, "%s  %s\n", sums[n], n)
	}
	return b.Bytes()
}

// ParsePrivateKey reads a PEM ECDSA P-256 private key, SEC 1 ("EC PRIVATE
// KEY", openssl ecparam -genkey) or PKCS #8 ("PRIVATE KEY", openssl genpkey).
func ParsePrivateKey(pemBytes []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, errors.New("signing key is not PEM")
	}
	var key *ecdsa.PrivateKey
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("signing key: %w", err)
		}
		key = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("signing key: %w", err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("signing key is a %T, not ECDSA P-256", k)
		}
		key = ek
	default:
		return nil, fmt.Errorf("signing key is a PEM %q block; want an ECDSA P-256 private key", blk.Type)
	}
	if key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("signing key is on %s, not P-256", key.Curve.Params().Name)
	}
	return key, nil
}

// EncodePublicKey is the form binaries embed: base64 of the PKIX DER.
func EncodePublicKey(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(der), nil
}

// DecodePublicKey reverses EncodePublicKey, accepting only P-256.
func DecodePublicKey(s string) (*ecdsa.PublicKey, error) {
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("embedded update key is not base64: %w", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("embedded update key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("embedded update key is not ECDSA P-256")
	}
	return ek, nil
}

// Sign signs data (SHA-256, ASN.1 DER signature).
func Sign(key *ecdsa.PrivateKey, data []byte) ([]byte, error) {
	h := sha256.Sum256(data)
	return ecdsa.SignASN1(nil, key, h[:])
}

// Verify checks sig over data.
func Verify(pub *ecdsa.PublicKey, data, sig []byte) bool {
	h := sha256.Sum256(data)
	return ecdsa.VerifyASN1(pub, h[:], sig)
}

// SHA256Hex hashes b.
func SHA256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// WriteTarball writes a gzipped tar of the release binaries found in
// binDir to w, with fixed owners and mtime so that equal binaries make
// equal tarballs.
func WriteTarball(w io.Writer, binDir string, mtime int64) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, name := range Binaries {
		b, err := os.ReadFile(filepath.Join(binDir, name))
		if err != nil {
			return fmt.Errorf("release: %w", err)
		}
		hdr := &tar.Header{Name: name, Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg,
			Uname: "root", Gname: "root", Format: tar.FormatPAX}
		hdr.ModTime = time.Unix(mtime, 0)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// Extract unpacks a release tarball into dir (which must exist): exactly
// the release binaries, each a regular file under MaxBinary, each once.
// Anything else in the tarball refuses the whole of it.
func Extract(r io.Reader, dir string) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("release tarball is not gzip: %w", err)
	}
	tr := tar.NewReader(gz)
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("release tarball: %w", err)
		}
		if !isBinary(hdr.Name) {
			return fmt.Errorf("release tarball holds %q; a release holds only %s", hdr.Name, strings.Join(Binaries, ", "))
		}
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("release tarball: %s is not a regular file", hdr.Name)
		}
		if seen[hdr.Name] {
			return fmt.Errorf("release tarball holds %s twice", hdr.Name)
		}
		seen[hdr.Name] = true
		if hdr.Size > MaxBinary {
			return fmt.Errorf("release tarball: %s is %d bytes, over the %d limit", hdr.Name, hdr.Size, MaxBinary)
		}
		f, err := os.OpenFile(filepath.Join(dir, hdr.Name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
		if err != nil {
			return err
		}
		_, cerr := io.Copy(f, io.LimitReader(tr, MaxBinary))
		if err := f.Close(); cerr == nil {
			cerr = err
		}
		if cerr != nil {
			return fmt.Errorf("release tarball: %s: %w", hdr.Name, cerr)
		}
	}
	for _, b := range Binaries {
		if !seen[b] {
			return fmt.Errorf("release tarball lacks %s", b)
		}
	}
	return nil
}

func isBinary(name string) bool {
	for _, b := range Binaries {
		if name == b {
			return true
		}
	}
	return false
}
