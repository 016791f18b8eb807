package daemon

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"banger/internal/api"
)

// Build leftovers image.cache_prune removes: work trees under
// CacheDir/build (kernel-*, image-*, oci-*), staging directories beside
// images and kernels (".NAME.partial-*", ".NAME.old-*", ".NAME.pulling")
// and half-copied kernel imports ("NAME.importing"). A pull that ends
// removes its own; a daemon killed during one leaves them, and the next
// daemon's start-up sweep (sweepScratch) removes them.
func (d *Daemon) cacheCandidates() ([]string, error) {
	var out []string
	add := func(dir string, keep func(name string) bool) error {
		entries, err := os.ReadDir(dir)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, e := range entries {
			if keep(e.Name()) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
		return nil
	}
	hidden := func(n string) bool { return strings.HasPrefix(n, ".") }
	for _, step := range []struct {
		dir  string
		keep func(string) bool
	}{
		{filepath.Join(d.layout.CacheDir, "build"), func(string) bool { return true }},
		{d.layout.ImagesDir, hidden},
		{d.layout.KernelsDir, func(n string) bool { return hidden(n) || strings.HasSuffix(n, ".importing") }},
	} {
		if err := add(step.dir, step.keep); err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

// sweepScratch removes, at start-up, the scratch a pull or build that
// died with the previous daemon left (what image cache prune would
// remove; no operation runs yet). Each removal is logged.
func (d *Daemon) sweepScratch() {
	paths, err := d.cacheCandidates()
	if err != nil {
		d.log.Warn("list pull and build leftovers", "err", err)
		return
	}
	busy := d.busyScratch()
	for _, p := range paths {
		if hasAnyPrefix(p, busy) {
			continue
		}
		if restoreReplaced(p) {
			d.log.Warn("put back an image or kernel a previous daemon died replacing", "path", p)
			continue
		}
		d.log.Warn("removing what a pull or build a previous daemon ran left", "path", p)
		if err := os.RemoveAll(p); err != nil {
			d.log.Error("remove pull or build leftovers", "path", p, "err", err)
		}
	}
}

// restoreReplaced puts back an artifact whose replacement died between
// its two renames (artifact.Staging.Publish): ".NAME.old-*/old" is then
// the only copy and NAME is missing. It reports whether it did.
func restoreReplaced(p string) bool {
	base := filepath.Base(p)
	if !strings.HasPrefix(base, ".") || !strings.Contains(base, ".old-") {
		return false
	}
	name := strings.TrimPrefix(base[:strings.LastIndex(base, ".old-")], ".")
	dest := filepath.Join(filepath.Dir(p), name)
	if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err := os.Rename(filepath.Join(p, "old"), dest); err != nil {
		return false
	}
	_ = os.Remove(p)
	return true
}

// busyScratch returns the path prefixes running pulls and imports write.
func (d *Daemon) busyScratch() []string {
	d.pulls.mu.Lock()
	defer d.pulls.mu.Unlock()
	var busy []string
	for _, op := range d.pulls.running() {
		busy = append(busy, op.scratch...)
	}
	for key := range d.pulls.claimed {
		if name, ok := strings.CutPrefix(key, "kernel/"); ok {
			busy = append(busy, d.kernelImportDir(name))
		}
	}
	return busy
}

func (d *Daemon) imageCachePrune(ctx context.Context, p api.CachePruneParams) (api.CachePruneResult, error) {
	paths, err := d.cacheCandidates()
	if err != nil {
		return api.CachePruneResult{}, err
	}
	busy := d.busyScratch()
	res := api.CachePruneResult{DryRun: p.DryRun, Removed: []api.CacheEntry{}, Skipped: []api.CacheEntry{}}
	for _, path := range paths {
		e := api.CacheEntry{Path: path, Bytes: diskUsage(path)}
		if hasAnyPrefix(path, busy) {
			res.Skipped = append(res.Skipped, e)
			continue
		}
		if !p.DryRun {
			if err := os.RemoveAll(path); err != nil {
				return res, api.Errorf(api.CodeOperationFailed, "remove %s: %v", path, err)
			}
		}
		res.Removed = append(res.Removed, e)
		res.TotalBytes += e.Bytes
	}
	return res, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// diskUsage is the space path takes on disk (allocated blocks, so sparse
// root filesystems count what they use), hard links counted once.
func diskUsage(path string) int64 {
	var total int64
	seen := map[uint64]bool{}
	_ = filepath.WalkDir(path, func(_ string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			if st.Nlink > 1 && !de.IsDir() {
				if seen[st.Ino] {
					return nil
				}
				seen[st.Ino] = true
			}
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}
