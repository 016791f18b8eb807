package daemon

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"banger/internal/api"
)

func TestImageCachePrune(t *testing.T) {
	d := openArtifactDaemon(t)
	importTestKernel(t, d, "k1", kernelSpec{version: "6.1.0-test"})
	im := registerTestImage(t, d, "base", "k1")

	leftovers := map[string]int{ // path -> bytes of its one file
		filepath.Join(d.layout.CacheDir, "build", "oci-alpine-3.20"):     1 << 20,
		filepath.Join(d.layout.CacheDir, "build", "kernel-debian-6.1"):   64 << 10,
		filepath.Join(d.layout.ImagesDir, ".debian-bookworm.partial-42"): 256 << 10,
		filepath.Join(d.layout.KernelsDir, "k2.importing"):               4 << 10,
	}
	for dir, n := range leftovers {
		writeFileOf(t, filepath.Join(dir, "data"), n)
	}
	// A running pull's scratch is not a leftover.
	busy := filepath.Join(d.layout.CacheDir, "build", "oci-busy")
	writeFileOf(t, filepath.Join(busy, "data"), 4096)
	release := make(chan struct{})
	op, _, err := d.startPull(pullSpec{kind: api.OpKindImagePull, key: "example/busy:1", name: "busy", kernel: "k1",
		scratch: []string{busy}, reg: d.ops.imagePull, work: func(context.Context, *pullOp) error { <-release; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { close(release); waitPull(t, d, op.ID()) }()

	var want []string
	for p := range leftovers {
		want = append(want, p)
	}
	sort.Strings(want)

	dry, err := d.imageCachePrune(t.Context(), api.CachePruneParams{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	checkPrune(t, dry, want, busy, leftovers)
	for p := range leftovers {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dry run removed %s: %v", p, err)
		}
	}

	real, err := d.imageCachePrune(t.Context(), api.CachePruneParams{})
	if err != nil {
		t.Fatal(err)
	}
	checkPrune(t, real, want, busy, leftovers)
	for p := range leftovers {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("prune left %s (stat: %v)", p, err)
		}
	}
	for _, keep := range []string{busy, im.RootfsPath, d.layout.DBPath} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("prune removed %s: %v", keep, err)
		}
	}
	again, err := d.imageCachePrune(t.Context(), api.CachePruneParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Removed) != 0 || again.TotalBytes != 0 {
		t.Errorf("second prune removed %+v", again.Removed)
	}
}

func checkPrune(t *testing.T, res api.CachePruneResult, want []string, busy string, sizes map[string]int) {
	t.Helper()
	var got []string
	var total int64
	for _, e := range res.Removed {
		got = append(got, e.Path)
		// Allocated bytes: at least the data, at most a few blocks more.
		if n := int64(sizes[e.Path]); e.Bytes < n || e.Bytes > n+64<<10 {
			t.Errorf("%s: %d bytes reported, its file holds %d", e.Path, e.Bytes, n)
		}
		total += e.Bytes
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("removed %v, want %v", got, want)
	}
	if total != res.TotalBytes {
		t.Errorf("total %d, entries sum to %d", res.TotalBytes, total)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].Path != busy {
		t.Errorf("skipped %+v, want only %s", res.Skipped, busy)
	}
}

func writeFileOf(t *testing.T, p string, n int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i%251 + 1)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
