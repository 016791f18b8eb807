//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/system"
)

// TestBenchCatalogBuild is `make bench`'s figure for the catalog image
// built without root (system mode: mmdebstrap under fakechroot into a
// tar, the rootless conversion) against root's build (mmdebstrap into a
// directory, mkfs.ext4 -d), two rounds of each, alternating which goes
// first, both in the e2e cache directory, from the host's mirrors.
func TestBenchCatalogBuild(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	kernelDir, _ := artifacts(t)
	km, err := kernel.LoadManifest(kernelDir)
	if err != nil {
		t.Fatal(err)
	}
	var root, rootless []time.Duration
	asRoot := func() {
		// Where the rootless build works too: the same disk.
		dir, err := os.MkdirTemp(cacheDir(), "root-build-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		start := time.Now()
		if _, err := image.BuildDebianBookworm(context.Background(), &system.Exec{}, image.BuildOptions{
			WorkDir: filepath.Join(dir, "work"), DestDir: filepath.Join(dir, "image"),
			KernelModulesDir: filepath.Join(kernelDir, km.ModulesDir), KernelVersion: km.Version,
		}); err != nil {
			t.Fatal(err)
		}
		root = append(root, time.Since(start))
	}
	withoutRoot := func() {
		rootfs, took := buildRootless(t, kernelDir, km)
		rootless = append(rootless, took)
		_ = os.RemoveAll(filepath.Dir(filepath.Dir(rootfs)))
	}
	// Alternating which goes first: the mirror's cache warms for both.
	for i := 0; i < 2; i++ {
		if i%2 == 0 {
			asRoot()
			withoutRoot()
		} else {
			withoutRoot()
			asRoot()
		}
	}
	ratio := median(rootless).Seconds() / median(root).Seconds()
	fmt.Printf("\ncatalog image (debian-bookworm) as root: %.1fs median; without root (fakechroot, rootless conversion): %.1fs median; ratio %.3f\n\n",
		median(root).Seconds(), median(rootless).Seconds(), ratio)
	writeBenchResult(t, "catalog_build", map[string]any{
		"date":                   time.Now().UTC().Format(time.RFC3339),
		"root_s":                 seconds(root),
		"rootless_s":             seconds(rootless),
		"ratio_rootless_vs_root": ratio,
	})
}
