package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
)

// sweepUnrecorded removes, at start-up, what a daemon that died left in
// banger's own trees and no row accounts for: a VM directory whose VM is
// not recorded, an image or kernel directory moved into place but never
// recorded. Hidden entries (staging, pulls, builds) and half-done imports
// are swept by sweepScratch (what image cache prune removes), builds' and
// snapshots' by their own sweeps. Each removal is logged.
func (d *Daemon) sweepUnrecorded(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	images, err := d.store.ListImages(ctx)
	if err != nil {
		return
	}
	kernels, err := d.store.ListKernels(ctx)
	if err != nil {
		return
	}
	keep := map[string]bool{}
	for _, v := range vms {
		keep[filepath.Clean(d.pathsFor(v.ID).dir)] = true
		if v.Dir != "" {
			keep[filepath.Clean(v.Dir)] = true
		}
	}
	for _, im := range images {
		keep[filepath.Clean(filepath.Dir(im.RootfsPath))] = true
	}
	for _, k := range kernels {
		keep[filepath.Clean(k.Dir)] = true
	}
	for _, tree := range []string{d.layout.VMsDir, d.layout.ImagesDir, d.layout.KernelsDir} {
		entries, err := os.ReadDir(tree)
		if err != nil {
			continue
		}
		for _, e := range entries {
			name := e.Name()
			if !e.IsDir() || strings.HasPrefix(name, ".") || strings.HasSuffix(name, importingSuffix) {
				continue
			}
			p := filepath.Join(tree, name)
			if keep[p] {
				continue
			}
			d.log.Warn("removing a directory no record accounts for (left by a daemon that died)", "dir", p)
			if err := os.RemoveAll(p); err != nil {
				d.log.Error("remove an unrecorded directory", "dir", p, "err", err)
			}
		}
	}
}
