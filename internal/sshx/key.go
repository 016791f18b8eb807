package sshx

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// keyComment is written into the key pair so a user who finds the public
// key in a guest's authorized_keys knows where it came from.
const keyComment = "banger"

// EnsureKey returns the signer for the ed25519 private key at path, creating
// the pair (private key in OpenSSH format, mode 0600, and path+".pub") if it
// does not exist. An existing key is reloaded; its permissions are tightened
// to 0600 (ssh refuses a readable key) and a missing or stale .pub is
// rewritten from it. Concurrent callers, in this process or others, end up
// with the same key.
func EnsureKey(path string) (ssh.Signer, error) {
	signer, err := loadKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		signer, err = createKey(path)
	}
	if err != nil {
		return nil, err
	}
	if err := ensurePublicKey(path+".pub", signer.PublicKey()); err != nil {
		return nil, err
	}
	return signer, nil
}

// AuthorizedKeyLine is pub as one authorized_keys line (without the
// newline), commented "banger".
func AuthorizedKeyLine(pub ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + keyComment
}

func loadKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("ssh key %s is protected by a passphrase; banger needs an unencrypted key there (move it away and banger will create one)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh key %s cannot be read (%w); move it away and banger will create a new one", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("check ssh key %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("restrict ssh key %s to mode 0600 (ssh refuses keys others can read): %w", path, err)
		}
	}
	return signer, nil
}

// createKey writes a new key pair. The private key is written to a
// temporary file and hard-linked into place, which fails if another
// process got there first; that process's key is then loaded instead.
func createKey(path string) (ssh.Signer, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ssh key directory %s: %w", dir, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return nil, fmt.Errorf("encode ssh key: %w", err)
	}
	tmp, err := writeTemp(dir, filepath.Base(path), pem.EncodeToMemory(block), 0o600)
	if err != nil {
		return nil, fmt.Errorf("write ssh key %s: %w", path, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path)
		}
		return nil, fmt.Errorf("install ssh key %s: %w", path, err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("use ssh key %s: %w", path, err)
	}
	return signer, nil
}

func ensurePublicKey(path string, pub ssh.PublicKey) error {
	want := AuthorizedKeyLine(pub) + "\n"
	if got, err := os.ReadFile(path); err == nil && string(got) == want {
		return nil
	}
	if err := writeFileAtomic(path, []byte(want), 0o644); err != nil {
		return fmt.Errorf("write public key %s: %w", path, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file in dir, synced to disk,
// and returns its path.
func writeTemp(dir, base string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// writeFileAtomic replaces path with data so a reader sees either the old
// file or the new one, never a partial write.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(filepath.Dir(path), filepath.Base(path), data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// NewHostKey generates an ed25519 SSH host key for a guest: the private
// key in OpenSSH's PEM format (what sshd reads from
// /etc/ssh/ssh_host_ed25519_key) and its public key.
func NewHostKey(comment string) (privatePEM []byte, pub ssh.PublicKey, err error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate host key: %w", err)
	}
	return encodeHostKey(priv, comment)
}

// NewECDSAHostKey is NewHostKey for an ECDSA P-256 key
// (/etc/ssh/ssh_host_ecdsa_key).
func NewECDSAHostKey(comment string) (privatePEM []byte, pub ssh.PublicKey, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate host key: %w", err)
	}
	return encodeHostKey(priv, comment)
}

func encodeHostKey(priv crypto.Signer, comment string) ([]byte, ssh.PublicKey, error) {
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, nil, fmt.Errorf("encode host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(block), signer.PublicKey(), nil
}
