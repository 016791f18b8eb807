package sshx

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestEnsureKeyCreatesThenReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ssh", "id_ed25519") // parent missing on purpose
	first, err := EnsureKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if first.PublicKey().Type() != "ssh-ed25519" {
		t.Fatalf("key type = %s, want ssh-ed25519", first.PublicKey().Type())
	}
	priv, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(priv, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Fatalf("private key is not in OpenSSH format:\n%s", priv)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode = %o, want 600", fi.Mode().Perm())
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if want := AuthorizedKeyLine(first.PublicKey()) + "\n"; string(pub) != want {
		t.Fatalf(".pub = %q, want %q", pub, want)
	}
	if !strings.HasPrefix(string(pub), "ssh-ed25519 ") || !strings.HasSuffix(string(pub), " banger\n") {
		t.Fatalf(".pub = %q, want an authorized_keys line commented banger", pub)
	}

	again, err := EnsureKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.PublicKey().Marshal(), first.PublicKey().Marshal()) {
		t.Fatal("second EnsureKey made a new key instead of loading the existing one")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 2 {
		t.Fatalf("ssh dir holds %d entries, want the key pair only (no temp files)", len(entries))
	}
}

func TestEnsureKeyRepairsPubAndPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id_ed25519")
	signer, err := EnsureKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path + ".pub"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureKey(path); err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatalf(".pub not recreated: %v", err)
	}
	if string(pub) != AuthorizedKeyLine(signer.PublicKey())+"\n" {
		t.Fatalf("recreated .pub = %q does not match the private key", pub)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode = %o after reload, want 600", fi.Mode().Perm())
	}
}

func TestEnsureKeyRefusesGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := EnsureKey(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("EnsureKey(garbage) = %v, want an error naming the file and the fix", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "not a key\n" {
		t.Fatal("EnsureKey overwrote a file it could not read")
	}
}

func TestEnsureKeyConcurrentCallersAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id_ed25519")
	const n = 6
	keys := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := EnsureKey(path)
			errs[i] = err
			if err == nil {
				keys[i] = s.PublicKey().Marshal()
			}
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("caller %d got a different key from caller 0", i)
		}
	}
}
