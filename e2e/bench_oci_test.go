//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"banger/internal/oci"
	"banger/internal/system"
)

// TestBenchOCIConvert is `make bench`'s image conversion figure: oci.Pull of
// a three-layer image from a registry on loopback (download, decompress,
// replay, mkfs) against `tar -x` of the same content flattened, then
// `mkfs.ext4 -d` at the same size; and the rootless conversion (system
// mode's) against the root one. Content: the Go toolchain tree
// (/usr/local/go, a few hundred MB in ~15k files, present wherever banger
// is built), or BANGER_BENCH_OCI_DIR.
func TestBenchOCIConvert(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	if os.Getuid() != 0 {
		t.Skip("oci.Pull needs root")
	}
	src := os.Getenv("BANGER_BENCH_OCI_DIR")
	if src == "" {
		src = "/usr/local/go"
	}
	work := t.TempDir()

	// Three layers, split by top-level entry, plus the flattened tar.
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	groups := make([][]string, 3)
	for i, e := range entries {
		groups[i%3] = append(groups[i%3], e.Name())
	}
	var layers []v1.Layer
	for i, g := range groups {
		tarPath := filepath.Join(work, fmt.Sprintf("layer%d.tar", i))
		run(t, append([]string{"tar", "-C", src, "-cf", tarPath}, g...)...)
		l, err := tarball.LayerFromFile(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	flat := filepath.Join(work, "flat.tar")
	run(t, "tar", "-C", src, "-cf", flat, ".")
	ref := serveImage(t, "bench/gotree:1", layers...)
	st, _ := os.Stat(flat)

	var conv, rootless, base []time.Duration
	var size int64
	for i := 0; i < 3; i++ {
		dest := filepath.Join(work, fmt.Sprintf("oci-%d.ext4", i))
		start := time.Now()
		res, err := oci.Pull(context.Background(), &system.Exec{}, ref, oci.Options{DestFile: dest, WorkDir: work})
		if err != nil {
			t.Fatalf("oci.Pull: %v", err)
		}
		conv = append(conv, time.Since(start))
		size = res.SizeBytes
		os.Remove(dest)

		// The unprivileged daemon's way: unpack as itself, then set every
		// inode's owner and mode in the image (guestfs.SetInodes).
		start = time.Now()
		if _, err := oci.Pull(context.Background(), &system.Exec{}, ref, oci.Options{DestFile: dest, WorkDir: work, Rootless: true}); err != nil {
			t.Fatalf("oci.Pull rootless: %v", err)
		}
		rootless = append(rootless, time.Since(start))
		os.Remove(dest)

		tree := filepath.Join(work, fmt.Sprintf("tree-%d", i))
		out := filepath.Join(work, fmt.Sprintf("base-%d.ext4", i))
		start = time.Now()
		if err := os.Mkdir(tree, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "tar", "-C", tree, "-xpf", flat)
		run(t, "mkfs.ext4", "-F", "-q", "-d", tree, "-E", "lazy_itable_init=1,lazy_journal_init=1", out, strconv.FormatInt(size/1024, 10)+"k")
		base = append(base, time.Since(start))
		os.RemoveAll(tree)
		os.Remove(out)
	}
	ratio := median(conv).Seconds() / median(base).Seconds()
	rootlessRatio := median(rootless).Seconds() / median(conv).Seconds()
	fmt.Printf("\nOCI -> ext4 (3 layers, %d MB flattened, from a loopback registry): %.2fs median\n", st.Size()>>20, median(conv).Seconds())
	fmt.Printf("tar -x + mkfs.ext4 -d of the same content:                         %.2fs median\n", median(base).Seconds())
	fmt.Printf("ratio conversion / baseline: %.3f (target <= 1.3)\n", ratio)
	fmt.Printf("rootless (system mode) conversion: %.2fs median, %.3f × the root one\n\n", median(rootless).Seconds(), rootlessRatio)
	writeBenchResult(t, "oci_convert", map[string]any{
		"date":                   time.Now().UTC().Format(time.RFC3339),
		"content":                src,
		"content_mb":             st.Size() >> 20,
		"oci_convert_s":          seconds(conv),
		"tar_mkfs_s":             seconds(base),
		"ratio_oci_vs_tar":       ratio,
		"median_oci_s":           median(conv).Seconds(),
		"median_baseline_s":      median(base).Seconds(),
		"oci_rootless_s":         seconds(rootless),
		"ratio_rootless_vs_root": rootlessRatio,
		"filesystem_size_mb":     size >> 20,
	})
}

func run(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}
