package daemon

import (
	"path/filepath"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzNames: whatever name validation accepts is safe where banger puts
// it: a VM name is one DNS label under .vm and one path component; an
// artifact name is one path component, never hidden (staging names are)
// and never a half-done import's.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"web", "a", "debian-bookworm", "x.importing", "..", ".", ".hidden", "a/b", "A_b.c-1",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "-lead", "ümlaut", "a\x00b", "k.partial-1", "img.old-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validateVMName(s) == nil {
			if !oneComponent(s) || len(s) > 63 || strings.ToLower(s) != s {
				t.Fatalf("VM name %q accepted but is not one lowercase path component of at most 63 bytes", s)
			}
			if _, ok := mdns.IsDomainName(s + ".vm."); !ok || strings.Contains(s, ".") {
				t.Fatalf("VM name %q accepted but %s.vm is not a name with one label more", s, s)
			}
		}
		if validateArtifactName("image", s) == nil {
			if !oneComponent(s) || len(s) > 63 {
				t.Fatalf("artifact name %q accepted but is not one path component of at most 63 bytes", s)
			}
			if strings.HasPrefix(s, ".") || strings.HasSuffix(s, importingSuffix) {
				t.Fatalf("artifact name %q accepted but it is a staging or half-done import name", s)
			}
		}
	})
}

// oneComponent reports whether s names exactly one entry of a directory.
func oneComponent(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") &&
		filepath.IsLocal(s) && filepath.Join("/d", s) == "/d/"+s
}
