package dns

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseResolvConf(t *testing.T) {
	got := parseResolvConf([]byte(`# generated
search example.internal
nameserver 127.0.0.53
nameserver ::1
nameserver 0.0.0.0
nameserver   10.1.1.1   # the office
; nameserver 10.9.9.9
nameserver 10.1.1.1
nameserver not-an-ip
nameserver
options edns0 trust-ad
nameserver 2001:db8::1
nameserver ::ffff:10.2.2.2
nameserver 10.3.3.3
`))
	want := []string{"10.1.1.1:53", "[2001:db8::1]:53", "10.2.2.2:53"}
	if !slices.Equal(got, want) {
		t.Fatalf("parseResolvConf = %q, want %q", got, want)
	}
	// As glibc, a comment may follow the address without a space.
	if got := parseResolvConf([]byte("nameserver 10.5.5.5;x\nnameserver 10.6.6.6#y\n")); !slices.Equal(got, []string{"10.5.5.5:53", "10.6.6.6:53"}) {
		t.Fatalf("comments after the address: %q", got)
	}
	if got := parseResolvConf([]byte("nameserver fe80::1%eth0\n")); !slices.Equal(got, []string{"[fe80::1%eth0]:53"}) {
		t.Fatalf("link-local with zone: %q", got)
	}
}

func TestHostUpstreamsPrefersTheFirstUsableFile(t *testing.T) {
	dir := t.TempDir()
	resolved := filepath.Join(dir, "resolved.conf")
	etc := filepath.Join(dir, "resolv.conf")
	writeFile(t, etc, "nameserver 127.0.0.53\nnameserver 10.0.0.1\n")

	// Only the second exists.
	h := NewHostUpstreams(resolved, etc)
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.1:53"}) {
		t.Fatalf("Upstreams() = %q, want [10.0.0.1:53]", got)
	}

	// Both exist: the first wins.
	writeFile(t, resolved, "nameserver 192.168.1.1\nnameserver ::1\n")
	h = NewHostUpstreams(resolved, etc)
	if got := h.Upstreams(); !slices.Equal(got, []string{"192.168.1.1:53"}) {
		t.Fatalf("Upstreams() = %q, want [192.168.1.1:53]", got)
	}

	// The first names only the local stub: the second is used.
	writeFile(t, resolved, "nameserver 127.0.0.53\n")
	h = NewHostUpstreams(resolved, etc)
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.1:53"}) {
		t.Fatalf("Upstreams() = %q, want [10.0.0.1:53]", got)
	}

	// Nothing usable anywhere.
	h = NewHostUpstreams(filepath.Join(dir, "missing"))
	if got := h.Upstreams(); len(got) != 0 {
		t.Fatalf("Upstreams() = %q from a missing file", got)
	}
	if got := NewHostUpstreams(); !slices.Equal(got.paths, DefaultResolvConfPaths) {
		t.Fatalf("default paths = %q", got.paths)
	}
}

func TestHostUpstreamsFollowsChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	writeFile(t, path, "nameserver 10.0.0.1\n")
	h := NewHostUpstreams(path)
	h.checkEvery = 0
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.1:53"}) {
		t.Fatalf("Upstreams() = %q", got)
	}

	// Rewritten in place.
	writeFile(t, path, "nameserver 10.0.0.22\n")
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.22:53"}) {
		t.Fatalf("after a rewrite Upstreams() = %q, want [10.0.0.22:53]", got)
	}

	// Replaced by rename, same size, mtime forced equal: the inode tells.
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "new")
	writeFile(t, tmp, "nameserver 10.0.0.33\n")
	if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.33:53"}) {
		t.Fatalf("after a rename Upstreams() = %q, want [10.0.0.33:53]", got)
	}

	// Removed.
	os.Remove(path)
	if got := h.Upstreams(); len(got) != 0 {
		t.Fatalf("after removal Upstreams() = %q", got)
	}

	// The result is the caller's to keep.
	writeFile(t, path, "nameserver 10.0.0.44\n")
	got := h.Upstreams()
	got[0] = "mangled"
	if again := h.Upstreams(); again[0] != "10.0.0.44:53" {
		t.Fatalf("a caller's change leaked into the cache: %q", again)
	}
}

func TestHostUpstreamsChecksAtMostOncePerInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	writeFile(t, path, "nameserver 10.0.0.1\n")
	h := NewHostUpstreams(path)
	if h.checkEvery != time.Second {
		t.Fatalf("check interval %v, want 1s", h.checkEvery)
	}
	h.checkEvery = time.Hour
	h.Upstreams()
	writeFile(t, path, "nameserver 10.0.0.2\n")
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.1:53"}) {
		t.Fatalf("re-read within the interval: %q", got)
	}
	h.mu.Lock()
	h.checked = time.Now().Add(-2 * time.Hour) // the interval has passed
	h.mu.Unlock()
	if got := h.Upstreams(); !slices.Equal(got, []string{"10.0.0.2:53"}) {
		t.Fatalf("not re-read after the interval: %q", got)
	}
}
