package sshx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func runEcho(ctx context.Context, cfg *ssh.ClientConfig, addr string) error {
	var out strings.Builder
	code, err := Run(ctx, cfg, addr, "echo ok", nil, &out, nil)
	if err != nil {
		return err
	}
	if code != 0 || out.String() != "ok\n" {
		return fmt.Errorf("echo ok gave status %d and %q", code, out.String())
	}
	return nil
}

func TestTOFUPinsThenRefusesChangedKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kh := filepath.Join(t.TempDir(), "known_hosts")
	client := newSigner(t)
	hostA, hostB := newSigner(t), newSigner(t)

	srvA := listenSSH(t, hostA, client.PublicKey(), 2)
	cfg := ClientConfig("root", client, HostKeyCallback(kh, "web.vm"))

	if err := runEcho(ctx, cfg, srvA.Addr); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	_, port, _ := net.SplitHostPort(srvA.Addr)
	wantLine := knownhosts.Line([]string{"[127.0.0.1]:" + port, "web.vm"}, hostA.PublicKey()) + "\n"
	if got := readFile(t, kh); got != wantLine {
		t.Fatalf("known_hosts after first use =\n%q\nwant\n%q", got, wantLine)
	}
	if err := runEcho(ctx, cfg, srvA.Addr); err != nil {
		t.Fatalf("second connection with the pinned key: %v", err)
	}
	if got := readFile(t, kh); got != wantLine {
		t.Fatalf("a known key was pinned again:\n%s", got)
	}

	// The "VM" is recreated: same address, new host key.
	srvA.close()
	ln, err := net.Listen("tcp", srvA.Addr)
	if err != nil {
		t.Fatalf("re-listen on %s: %v", srvA.Addr, err)
	}
	srvB := serveSSH(t, ln, hostB, client.PublicKey(), 2)
	err = runEcho(ctx, cfg, srvB.Addr)
	var changed *HostKeyChangedError
	if !errors.As(err, &changed) {
		t.Fatalf("connection with a changed host key = %v, want a *HostKeyChangedError", err)
	}
	for _, want := range []string{
		"host key for web.vm ([127.0.0.1]:" + port + ") changed",
		ssh.FingerprintSHA256(hostA.PublicKey()),
		ssh.FingerprintSHA256(hostB.PublicKey()),
		"if you recreated the VM, run `ssh-keygen -f " + kh + " -R [127.0.0.1]:" + port + "`",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if got := readFile(t, kh); got != wantLine {
		t.Fatalf("a refused key changed known_hosts:\n%s", got)
	}

	// Forgetting the host lets the new key be pinned.
	if err := RemoveHost(kh, "web.vm"); err != nil {
		t.Fatal(err)
	}
	if err := runEcho(ctx, cfg, srvB.Addr); err != nil {
		t.Fatalf("connection after RemoveHost: %v", err)
	}
	wantLine = knownhosts.Line([]string{"[127.0.0.1]:" + port, "web.vm"}, hostB.PublicKey()) + "\n"
	if got := readFile(t, kh); got != wantLine {
		t.Fatalf("known_hosts after re-pin =\n%q\nwant\n%q", got, wantLine)
	}
}

// callback invokes a HostKeyCallback as the ssh client would for a guest
// on port 22 of ip.
func callback(cb ssh.HostKeyCallback, ip string, key ssh.PublicKey) error {
	return cb(net.JoinHostPort(ip, "22"), &net.TCPAddr{IP: net.ParseIP(ip), Port: 22}, key)
}

func TestHostKeyCallbackAliasMismatchIsRefused(t *testing.T) {
	kh := filepath.Join(t.TempDir(), "known_hosts")
	old, fresh := newSigner(t).PublicKey(), newSigner(t).PublicKey()
	if err := callback(HostKeyCallback(kh, "web.vm"), "172.30.0.2", old); err != nil {
		t.Fatal(err)
	}
	if got, want := readFile(t, kh), knownhosts.Line([]string{"172.30.0.2", "web.vm"}, old)+"\n"; got != want {
		t.Fatalf("known_hosts = %q, want %q", got, want)
	}
	// web.vm now answers from a new address with a new key.
	err := callback(HostKeyCallback(kh, "web.vm"), "172.30.0.9", fresh)
	var changed *HostKeyChangedError
	if !errors.As(err, &changed) {
		t.Fatalf("err = %v, want *HostKeyChangedError", err)
	}
	if changed.Address != "172.30.0.9" || changed.PinnedAs != "web.vm" || changed.Name != "web.vm" {
		t.Fatalf("error fields = %+v", changed)
	}
	if !strings.Contains(err.Error(), "host key for web.vm (172.30.0.9) changed") ||
		!strings.HasSuffix(changed.Remedy(), "-R web.vm") {
		t.Fatalf("error %q / remedy %q do not point at the pinned alias", err, changed.Remedy())
	}
}

func TestHostKeyCallbackPinsMissingAliases(t *testing.T) {
	kh := filepath.Join(t.TempDir(), "known_hosts")
	key := newSigner(t).PublicKey()
	if err := callback(HostKeyCallback(kh), "172.30.0.2", key); err != nil {
		t.Fatal(err)
	}
	if err := callback(HostKeyCallback(kh, "web.vm"), "172.30.0.2", key); err != nil {
		t.Fatal(err)
	}
	want := knownhosts.Line([]string{"172.30.0.2"}, key) + "\n" + knownhosts.Line([]string{"web.vm"}, key) + "\n"
	if got := readFile(t, kh); got != want {
		t.Fatalf("known_hosts = %q, want %q", got, want)
	}
}

func TestHostKeyCallbackConcurrentPins(t *testing.T) {
	kh := filepath.Join(t.TempDir(), "known_hosts")
	const n = 16
	keys := make([]ssh.PublicKey, n)
	for i := range keys {
		keys[i] = newSigner(t).PublicKey()
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := fmt.Sprintf("172.30.0.%d", i+2)
			errs[i] = callback(HostKeyCallback(kh, fmt.Sprintf("vm%d.vm", i)), ip, keys[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pin %d: %v", i, err)
		}
	}
	if lines := strings.Count(readFile(t, kh), "\n"); lines != n {
		t.Fatalf("known_hosts has %d lines, want %d", lines, n)
	}
	check, err := knownhosts.New(kh)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ip := fmt.Sprintf("172.30.0.%d", i+2)
		if err := check(ip+":22", &net.TCPAddr{IP: net.ParseIP(ip), Port: 22}, keys[i]); err != nil {
			t.Errorf("%s not pinned with its key: %v", ip, err)
		}
	}
}

func TestRemoveHost(t *testing.T) {
	k := func() string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(newSigner(t).PublicKey()))) }
	lines := map[string]string{
		"comment":  "# banger known hosts",
		"web":      "172.30.0.2,web.vm " + k(),
		"db":       "172.30.0.3,db.vm " + k(),
		"port":     "[127.0.0.1]:2222 " + k(),
		"hashed":   knownhosts.HashHostname("172.30.0.5") + " " + k(),
		"wildcard": "*.vm " + k(),
		"prefix":   "172.30.0.20 " + k(),
		"revoked":  "@revoked 172.30.0.6 " + k(),
	}
	order := []string{"comment", "web", "db", "port", "hashed", "wildcard", "prefix", "revoked"}
	tests := []struct {
		name   string
		remove []string
		keep   []string
	}{
		{"by address", []string{"172.30.0.2"}, []string{"comment", "db", "port", "hashed", "wildcard", "prefix", "revoked"}},
		{"by alias", []string{"db.vm"}, []string{"comment", "web", "port", "hashed", "wildcard", "prefix", "revoked"}},
		{"address with port 22", []string{"172.30.0.2:22"}, []string{"comment", "db", "port", "hashed", "wildcard", "prefix", "revoked"}},
		{"non-default port", []string{"127.0.0.1:2222"}, []string{"comment", "web", "db", "hashed", "wildcard", "prefix", "revoked"}},
		{"hashed entry", []string{"172.30.0.5"}, []string{"comment", "web", "db", "port", "wildcard", "prefix", "revoked"}},
		{"several at once", []string{"web.vm", "172.30.0.3", "172.30.0.6"}, []string{"comment", "port", "hashed", "wildcard", "prefix"}},
		{"unknown host changes nothing", []string{"10.0.0.1", "other.vm"}, order},
		{"no wildcard or prefix matching", []string{"x.vm", "172.30.0.2"}, []string{"comment", "db", "port", "hashed", "wildcard", "prefix", "revoked"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kh := filepath.Join(t.TempDir(), "known_hosts")
			var body strings.Builder
			for _, name := range order {
				body.WriteString(lines[name] + "\n")
			}
			if err := os.WriteFile(kh, []byte(body.String()), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := RemoveHost(kh, tt.remove...); err != nil {
				t.Fatal(err)
			}
			var want strings.Builder
			for _, name := range tt.keep {
				want.WriteString(lines[name] + "\n")
			}
			if got := readFile(t, kh); got != want.String() {
				t.Fatalf("after RemoveHost(%v):\n%s\nwant:\n%s", tt.remove, got, want.String())
			}
			fi, err := os.Stat(kh)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o640 {
				t.Errorf("mode changed to %o", fi.Mode().Perm())
			}
			if entries, _ := os.ReadDir(filepath.Dir(kh)); len(entries) != 2 { // file + lock
				t.Errorf("directory holds %d entries; a temp file was left behind", len(entries))
			}
		})
	}
}

func TestRemoveHostMissingFile(t *testing.T) {
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := RemoveHost(kh, "172.30.0.2"); err != nil {
		t.Fatalf("RemoveHost on a missing file = %v, want nil", err)
	}
	if _, err := os.Stat(kh); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RemoveHost created %s", kh)
	}
}

func TestPinHostKeyReplacesEveryLineForTheHosts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	_, old, err := NewHostKey("old")
	if err != nil {
		t.Fatal(err)
	}
	priv, pub, err := NewHostKey("new")
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := NewHostKey("other")
	// A stale key for the address and one for another VM.
	if err := PinHostKey(path, old, "172.30.0.2", "web.vm"); err != nil {
		t.Fatal(err)
	}
	if err := PinHostKey(path, other, "172.30.0.3", "db.vm"); err != nil {
		t.Fatal(err)
	}
	if err := PinHostKey(path, pub, "172.30.0.2", "web.vm"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), "\n"); n != 2 {
		t.Fatalf("known_hosts has %d lines, want 2:\n%s", n, data)
	}
	// The pinned key is accepted under both names, the old one refused.
	cb, err := knownhosts.New(path)
	if err != nil {
		t.Fatal(err)
	}
	addr := &net.TCPAddr{IP: net.ParseIP("172.30.0.2"), Port: 22}
	for _, host := range []string{"172.30.0.2:22", "web.vm:22"} {
		if err := cb(host, addr, pub); err != nil {
			t.Errorf("pinned key refused for %s: %v", host, err)
		}
		if err := cb(host, addr, old); err == nil {
			t.Errorf("old key still accepted for %s", host)
		}
	}
	if err := cb("db.vm:22", addr, other); err != nil {
		t.Errorf("another VM's key was dropped: %v", err)
	}
	// The private half is what sshd reads.
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(signer.PublicKey().Marshal(), pub.Marshal()) || signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("private key does not match its public key (%s)", signer.PublicKey().Type())
	}
	if bytes.Equal(old.Marshal(), pub.Marshal()) {
		t.Fatal("two generated host keys are equal")
	}
}
