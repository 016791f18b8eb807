package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/privops"
	"banger/internal/rootdisk"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vmm/firecracker"
)

// A VM's disks are rootdisk.Disks recorded on its row as JSON: the root
// is a copy-on-write layer over the image (or over layers frozen by a
// clone), the work disk a raw ext4 file made at create (or a layer after
// a clone). A VM made before disks were recorded has plain raw files.

// workDiskMeta is what a fresh work disk costs on the host (mkfs with
// lazy inode tables writes little), counted before a create begins.
const workDiskMeta = 64 << 20

func (d *Daemon) layersDir() string { return filepath.Join(d.layout.StateDir, "layers") }

// rootDiskPath is where a VM's own root layer lives for a strategy.
func rootDiskPath(paths vmPaths, s rootdisk.Strategy) string {
	switch s {
	case rootdisk.QCOW2:
		return filepath.Join(paths.dir, "root.qcow2")
	case rootdisk.DM:
		return filepath.Join(paths.dir, "root.cow")
	}
	return paths.root
}

func encodeDisk(disk rootdisk.Disk) string {
	b, _ := json.Marshal(disk)
	return string(b)
}

// disksOf decodes a VM's recorded disks; a VM from before they were
// recorded has plain raw files at the legacy paths.
func (d *Daemon) disksOf(v store.VM) (root, work rootdisk.Disk, err error) {
	paths := d.pathsFor(v.ID)
	root, work = rootdisk.NewRaw(paths.root), rootdisk.NewRaw(paths.work)
	if v.RootDisk != "" {
		if err := json.Unmarshal([]byte(v.RootDisk), &root); err != nil {
			return root, work, fmt.Errorf("vm %s: recorded root disk: %w", v.Name, err)
		}
	}
	if v.WorkDisk != "" {
		if err := json.Unmarshal([]byte(v.WorkDisk), &work); err != nil {
			return root, work, fmt.Errorf("vm %s: recorded work disk: %w", v.Name, err)
		}
	}
	return root, work, nil
}

// diskRunner is the Runner rootdisk gets. In system mode it is also a
// rootdisk.Snapshotter: the root helper makes dm roots' snapshots, from
// the files the daemon opens.
func (d *Daemon) diskRunner() rootdisk.Runner {
	if d.viaHelper {
		return helperDisks{Exec: d.runner, Snapshotter: d.priv, vmsDir: d.layout.VMsDir}
	}
	return d.runner
}

type helperDisks struct {
	*system.Exec
	rootdisk.Snapshotter
	vmsDir string
	// noDevice, when set, is why the VM's VMM may not be given a device
	// (a dm root).
	noDevice string
}

// SnapshotsAvailable: the helper can make snapshots, of files where VM
// disks live (it refuses others: FUSE, NFS...), for a VMM that may hold
// a device.
func (h helperDisks) SnapshotsAvailable() error {
	if h.noDevice != "" {
		return errors.New(h.noDevice)
	}
	if err := h.Snapshotter.SnapshotsAvailable(); err != nil {
		return err
	}
	return privops.SnapshotFilesystem(h.vmsDir)
}

// chooseRootDisk picks the root disk strategy for a VM of vmmName over
// base: root_disk from the config, or the best the host can do.
//
// A Firecracker the root helper jails gets no dm root: its jail would
// hold a device node of the owner's, on a filesystem the owner could
// hard-link it away on, that outlives the device (privops.Jails).
func (d *Daemon) chooseRootDisk(vmmName, base string) (rootdisk.Strategy, error) {
	r := d.diskRunner()
	if hd, ok := r.(helperDisks); ok && vmmName == firecracker.DriverName {
		if drv, err := d.driverFor(vmmName); err == nil && jailed(drv) {
			hd.noDevice = "a Firecracker jailed by banger's root helper is given files only, not a device"
			r = hd
		}
	}
	s, err := rootdisk.Choose(d.cfg.RootDisk, vmmName, d.layout.VMsDir, base, r)
	if err != nil {
		return "", api.Errorf(api.CodeBadRequest, "%v", err)
	}
	return s, nil
}

// spaceError turns running out of space into the message the user sees
// ("no space left on DEVICE (needs ~N MB, M MB free)").
func spaceError(err error) error {
	if errors.Is(err, rootdisk.ErrNoSpace) {
		return api.Errorf(api.CodeOperationFailed, "%v; free some space or move banger's state directory", err)
	}
	return err
}

// attachDisks makes the VM's disks ready for its VMM: a dm root becomes a
// snapshot device (its handles recorded on the row as they are made, so a
// restarted daemon can tear down what a dead one made). It returns what
// the VMM opens.
func (d *Daemon) attachDisks(ctx context.Context, v *store.VM) (root, rootFmt, work, workFmt string, err error) {
	rd, wd, err := d.disksOf(*v)
	if err != nil {
		return "", "", "", "", err
	}
	record := func() error {
		v.RootDisk = encodeDisk(rd)
		return d.store.UpdateVM(context.WithoutCancel(ctx), *v)
	}
	root, rootFmt, err = rd.Attach(ctx, d.diskRunner(), privops.SnapshotPrefix+v.ID, func(h dmsnap.Handles) error {
		snapshot := rd
		snapshot.DM = &h
		if h == (dmsnap.Handles{}) {
			snapshot.DM = nil // a failed attach took down all it made
		}
		v.RootDisk = encodeDisk(snapshot)
		return d.store.UpdateVM(context.WithoutCancel(ctx), *v)
	})
	if err != nil {
		return "", "", "", "", err
	}
	if err := record(); err != nil {
		return "", "", "", "", err
	}
	return root, rootFmt, wd.Path, wd.Format, nil
}

// detachDisks undoes attachDisks (a dm root's snapshot device); the caller
// saves the row.
func (d *Daemon) detachDisks(ctx context.Context, v *store.VM) error {
	rd, _, err := d.disksOf(*v)
	if err != nil || rd.DM == nil {
		return err
	}
	if err := rd.Detach(context.WithoutCancel(ctx), d.diskRunner()); err != nil {
		return fmt.Errorf("detach the root disk of %s: %w", v.Name, err)
	}
	v.RootDisk = encodeDisk(rd)
	return nil
}

// gcLayers removes the frozen layers no VM's disks are built on. The
// caller holds layersMu, which serialises it with clones.
func (d *Daemon) gcLayers(ctx context.Context) {
	for _, l := range d.removableLayers(ctx) {
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("layers: remove an unused layer", "layer", l, "err", err)
			continue
		}
		d.log.Info("removed a layer no VM uses any more", "layer", l)
	}
}

// removableLayers lists the layers no VM row, snapshot or disk file
// stands on (none when any of those cannot be read: when in doubt, keep).
func (d *Daemon) removableLayers(ctx context.Context) []string {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil
	}
	var disks []rootdisk.Disk
	for _, v := range vms {
		rd, wd, err := d.disksOf(v)
		if err != nil {
			d.log.Warn("layers: cannot read a VM's disks; keeping every layer", "vm", v.Name, "err", err)
			return nil
		}
		disks = append(disks, rd, wd)
	}
	// Snapshots stand on their frozen layers too.
	snaps, err := d.snapshotChains(ctx)
	if err != nil {
		d.log.Warn("layers: cannot read the snapshots; keeping every layer", "err", err)
		return nil
	}
	unused, err := rootdisk.UnusedLayers(d.layersDir(), append(disks, snaps...))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("layers: list unused", "err", err)
		}
		return nil
	}
	// The files themselves have the last word: a clone interrupted between
	// freezing a layer and recording it leaves a VM whose overlay already
	// stands on a layer its row does not name yet.
	standing := map[string]bool{}
	for _, disk := range disks {
		if disk.Path == "" {
			continue
		}
		chain, err := rootdisk.BackingChain(disk.Path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("layers: cannot read a disk's backing chain; keeping every layer", "disk", disk.Path, "err", err)
			return nil
		}
		for _, c := range chain {
			standing[filepath.Clean(c)] = true
		}
	}
	var out []string
	for _, l := range unused {
		if standing[filepath.Clean(l)] {
			d.log.Warn("layers: a VM's disk stands on a layer its record does not name; keeping it", "layer", l)
			continue
		}
		out = append(out, l)
	}
	return out
}

// diskUsage is what the VM's own layers hold on the host.
func (d *Daemon) diskUsage(v store.VM) (strategy string, root, work int64) {
	rd, wd, err := d.disksOf(v)
	if err != nil {
		return "", 0, 0
	}
	root, _ = rd.Usage()
	work, _ = wd.Usage()
	strategy = string(rd.Strategy)
	if v.RootDisk == "" {
		strategy = "copy" // made before strategies were recorded
	}
	return strategy, root, work
}
