package release

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/semver"
)

// Pack adds binDir's release binaries to dist as version's tarball, then
// rewrites SHA256SUMS over every tarball in dist, signs it with key, and
// records the version in manifest.json (latest_stable: the highest
// version without a pre-release part). A version already in the manifest
// is refused: a published release never changes.
func Pack(dist, version, arch, binDir string, key *ecdsa.PrivateKey, mtime int64) (Entry, error) {
	if !ValidVersion(version) {
		return Entry{}, fmt.Errorf("version %q is not a release version like v1.2.3", version)
	}
	if err := os.MkdirAll(dist, 0o755); err != nil {
		return Entry{}, err
	}
	m := &Manifest{SchemaVersion: SchemaVersion}
	if b, err := os.ReadFile(filepath.Join(dist, ManifestName)); err == nil {
		if m, err = ParseManifest(b); err != nil {
			return Entry{}, fmt.Errorf("%s: %w", filepath.Join(dist, ManifestName), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return Entry{}, err
	}
	if m.Versions == nil {
		m.Versions = map[string]Entry{}
	}
	if _, ok := m.Versions[version]; ok {
		return Entry{}, fmt.Errorf("%s is already released in %s; a published version never changes (pick a new one)", version, dist)
	}

	var tgz bytes.Buffer
	if err := WriteTarball(&tgz, binDir, mtime); err != nil {
		return Entry{}, err
	}
	name := TarballName(version, arch)
	if err := writeAtomic(filepath.Join(dist, name), tgz.Bytes()); err != nil {
		return Entry{}, err
	}
	e := Entry{URL: name, SHA256: SHA256Hex(tgz.Bytes()), Size: int64(tgz.Len()), Arch: arch}
	m.Versions[version] = e
	m.LatestStable = ""
	for v := range m.Versions {
		if semver.Prerelease(v) == "" && (m.LatestStable == "" || semver.Compare(v, m.LatestStable) > 0) {
			m.LatestStable = v
		}
	}

	// SHA256SUMS covers every tarball dist serves, hashed afresh.
	sums := map[string]string{}
	ents, err := os.ReadDir(dist)
	if err != nil {
		return Entry{}, err
	}
	for _, de := range ents {
		if de.Type().IsRegular() && strings.HasPrefix(de.Name(), "banger-") && strings.HasSuffix(de.Name(), ".tar.gz") {
			b, err := os.ReadFile(filepath.Join(dist, de.Name()))
			if err != nil {
				return Entry{}, err
			}
			sums[de.Name()] = SHA256Hex(b)
		}
	}
	sumsBytes := FormatSums(sums)
	sig, err := Sign(key, sumsBytes)
	if err != nil {
		return Entry{}, err
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Entry{}, err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{SumsName, sumsBytes}, {SignatureName, sig}, {ManifestName, append(mb, '\n')}} {
		if err := writeAtomic(filepath.Join(dist, f.name), f.data); err != nil {
			return Entry{}, err
		}
	}
	return e, nil
}

// writeAtomic replaces path by rename, so a server never serves half a file.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
