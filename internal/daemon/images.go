package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/image"
	"banger/internal/store"
)

func (d *Daemon) getImage(ctx context.Context, name string) (store.Image, error) {
	im, err := d.store.GetImage(ctx, name)
	if api.IsCode(err, api.CodeNotFound) {
		return im, api.Errorf(api.CodeNotFound, "image %q not found; see banger image list", name)
	}
	return im, err
}

func (d *Daemon) imageShow(ctx context.Context, p api.ArtifactRef) (api.ImageDetails, error) {
	im, err := d.getImage(ctx, p.Name)
	if err != nil {
		return api.ImageDetails{}, err
	}
	vms, err := d.store.VMsUsingImage(ctx, im.Name)
	if err != nil {
		return api.ImageDetails{}, err
	}
	if vms == nil {
		vms = []string{}
	}
	return api.ImageDetails{Image: toAPIImage(im), Manifest: imageManifestOf(im), VMs: vms}, nil
}

// imageManifestOf is the recorded manifest of im. Images recorded before
// banger kept one get what their directory's manifest.json and row say.
func imageManifestOf(im store.Image) api.ImageManifest {
	var m api.ImageManifest
	if im.Manifest != "" && json.Unmarshal([]byte(im.Manifest), &m) == nil && m.Kind != "" {
		return m
	}
	if bm, err := image.LoadManifest(filepath.Dir(im.RootfsPath)); err == nil {
		return catalogManifest(bm, im.Kernel)
	}
	m = api.ImageManifest{Kind: api.ImageKindRegistered, BuiltAt: im.CreatedAt, SizeBytes: im.SizeBytes, SHA256: im.SHA256,
		Packages: -1, Kernel: im.Kernel}
	if from, ok := strings.CutPrefix(im.Source, "registered from "); ok {
		m.From = from
	}
	return m
}

// imageDelete removes an image no VM uses: its row, then its files.
func (d *Daemon) imageDelete(ctx context.Context, p api.ArtifactRef) (api.Image, error) {
	im, err := d.getImage(ctx, p.Name)
	if err != nil {
		return api.Image{}, err
	}
	// allocMu keeps a create from reserving a VM on the image meanwhile.
	d.allocMu.Lock()
	vms, err := d.store.VMsUsingImage(ctx, im.Name)
	if err == nil && len(vms) > 0 {
		err = api.Errorf(api.CodeBadRequest, "image %q is used by %s: %s; delete those VMs first", im.Name, plural(len(vms), "VM", "VMs"), strings.Join(vms, ", "))
	}
	if err == nil {
		err = d.store.DeleteImage(ctx, im.Name)
	}
	d.allocMu.Unlock()
	if err != nil {
		return api.Image{}, err
	}
	// Its snapshots go with it (no VM stands on them: none uses the image).
	if snaps, err := d.store.ListSnapshots(ctx); err == nil {
		for _, sn := range snaps {
			if sn.Image == im.Name {
				if err := d.removeSnapshot(ctx, sn); err != nil {
					d.log.Warn("remove a snapshot of a deleted image", "snapshot", sn.Name, "err", err)
				}
			}
		}
	}
	if err := d.removeImageFiles(im); err != nil {
		return api.Image{}, api.Errorf(api.CodeOperationFailed, "image %q is deleted but its files are not: %v; remove them by hand", im.Name, err)
	}
	return toAPIImage(im), nil
}

// removeImageFiles removes what banger made for im and nothing outside
// the images directory.
func (d *Daemon) removeImageFiles(im store.Image) error {
	dir := filepath.Join(d.layout.ImagesDir, im.Name)
	switch {
	case filepath.Dir(im.RootfsPath) == dir:
		return os.RemoveAll(dir)
	case isWithin(d.layout.ImagesDir, im.RootfsPath):
		if err := os.Remove(im.RootfsPath); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// isWithin reports whether p lies strictly inside dir.
func isWithin(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && filepath.IsLocal(rel)
}

func (d *Daemon) imagePromote(ctx context.Context, p api.ArtifactRef) (api.Image, error) {
	if _, err := d.getImage(ctx, p.Name); err != nil {
		return api.Image{}, err
	}
	if err := d.store.SetDefaultImage(ctx, p.Name); err != nil {
		return api.Image{}, err
	}
	im, err := d.getImage(ctx, p.Name)
	if err != nil {
		return api.Image{}, err
	}
	return toAPIImage(im), nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
