package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/api"
	"banger/internal/rootdisk"
	"banger/internal/sshx"
	"banger/internal/store"
)

// Stage names of a VM clone (then the boot stages, unless --no-start).
const (
	stageCheckSource = "check source"
	stageCloneRoot   = "clone root disk"
	stageCloneWork   = "clone work disk"
)

// vmCloneBegin validates a clone and begins it as an async operation of
// kind vm.clone, followed with vm.create.status like a create. The new VM
// starts from the source's disks as they are now (copy-on-write: a qcow2
// source's layer is frozen and shared, kept until the last VM built on it
// is deleted) with its own name, address, MAC, host key and machine-id.
func (d *Daemon) vmCloneBegin(ctx context.Context, p api.VMCloneParams) (api.VMCreateBeginResult, error) {
	if p.Source == "" {
		return api.VMCreateBeginResult{}, api.Errorf(api.CodeBadRequest, "missing the source VM: banger vm clone SRC NAME")
	}
	if err := validateVMName(p.Name); err != nil {
		return api.VMCreateBeginResult{}, err
	}
	src, err := d.store.GetVM(ctx, p.Source)
	if err != nil {
		return api.VMCreateBeginResult{}, err
	}
	if src.State != store.StateStopped {
		return api.VMCreateBeginResult{}, api.Errorf(api.CodeBadRequest, "vm %q is %s; stop it first (banger vm stop %s): a clone copies disks nobody is writing", src.Name, src.State, src.Name)
	}
	if _, err := d.store.GetVM(ctx, p.Name); err == nil {
		return api.VMCreateBeginResult{}, api.Errorf(api.CodeAlreadyExists, "vm %q already exists; pick another name or delete it first", p.Name)
	}
	plan := createPlan{name: p.Name, image: store.Image{Name: src.Image}, kernel: store.Kernel{Name: src.Kernel},
		vcpu: src.VCPU, memoryMiB: src.MemoryMiB, diskSize: src.DiskSizeBytes, noStart: p.NoStart, nat: src.NAT, forwardPorts: src.ForwardPorts}
	j := d.beginJournal("", api.OpKindVMClone, plan.name)
	d.allocMu.Lock()
	vm, err := d.reserveVM(ctx, plan, src.VMM, j)
	d.allocMu.Unlock()
	if err != nil {
		j.finish(ctx)
		return api.VMCreateBeginResult{}, err
	}

	return d.beginVMOp(ctx, api.OpKindVMClone, j, vm, d.log.With("source", src.Name), func(ctx context.Context, op *vmCreateOp) error {
		return d.runClone(ctx, op, src.Name, vm, p.NoStart)
	}), nil
}

// runClone holds the source's lifecycle lock for the copy (so it cannot
// start meanwhile), then makes the new VM's identity and boots it.
func (d *Daemon) runClone(ctx context.Context, op *vmCreateOp, srcName string, vm store.VM, noStart bool) error {
	mu := d.vmLock(vm.Name)
	mu.Lock()
	defer mu.Unlock()
	srcMu := d.vmLock(srcName)
	srcLocked := false
	unlockSrc := func() {
		if srcLocked {
			srcLocked = false
			srcMu.Unlock()
		}
	}
	defer unlockSrc()

	paths := d.pathsFor(vm.ID)
	var src store.VM
	var srcRoot, srcWork rootdisk.Disk
	// cloneDisk copies one of the source's disks into the new VM, freezing
	// a qcow2 source into a shared layer; the source's row records its new
	// overlay at once.
	cloneDisk := func(ctx context.Context, which string, from rootdisk.Disk, dstPath string) (rootdisk.Disk, error) {
		d.layersMu.Lock()
		defer d.layersMu.Unlock()
		if err := rootdisk.CheckFree(d.layout.VMsDir, rootdisk.SpaceForClone(from, paths.dir, src.VMM)); err != nil {
			return rootdisk.Disk{}, spaceError(err)
		}
		layer := filepath.Join(d.layersDir(), vm.ID+"-"+which)
		// Clone may freeze the source's disk into the layer, which the
		// source's row then records: a crash in between puts it back.
		if err := op.journal.record(ctx, "clone "+which+" disk", journalAct{Do: actUnfreeze, VM: src.Name, ID: src.ID, Path: from.Path, Layer: layer}); err != nil {
			return rootdisk.Disk{}, err
		}
		newSrc, dst, err := rootdisk.Clone(ctx, d.runner, from, dstPath, layer, src.VMM)
		if err != nil {
			return rootdisk.Disk{}, spaceError(err)
		}
		prev := src
		switch which {
		case "root":
			src.RootDisk = encodeDisk(newSrc)
		default:
			src.WorkDisk = encodeDisk(newSrc)
		}
		if err := d.store.UpdateVM(context.WithoutCancel(ctx), src); err != nil {
			// The source's row still describes its old file: put that
			// back (the clone's own files go with its directory).
			src = prev
			if uerr := rootdisk.Unfreeze(context.WithoutCancel(ctx), d.runner, from.Path, layer); uerr != nil {
				err = errors.Join(err, fmt.Errorf("put %s back: %w", from.Path, uerr))
			}
			return rootdisk.Disk{}, err
		}
		switch which {
		case "root":
			srcRoot = newSrc
		default:
			srcWork = newSrc
		}
		return dst, nil
	}
	steps := []step{
		{stageCheckSource, []journalAct{{Do: actRemovePath, Path: paths.dir}}, func(ctx context.Context) (func(context.Context) error, error) {
			undo := func(ctx context.Context) error { return d.store.DeleteVM(ctx, vm.Name) }
			srcMu.Lock()
			srcLocked = true
			var err error
			if src, err = d.store.GetVM(ctx, srcName); err != nil {
				return undo, err
			}
			if src.State != store.StateStopped {
				return undo, api.Errorf(api.CodeBadRequest, "vm %q is %s now; stop it first", src.Name, src.State)
			}
			if srcRoot, srcWork, err = d.disksOf(src); err != nil {
				return undo, err
			}
			if err := mkdirLayers(d.layersDir()); err != nil {
				return undo, err
			}
			return undo, os.MkdirAll(paths.dir, 0o700)
		}},
		{stageCloneRoot, nil, func(ctx context.Context) (func(context.Context) error, error) {
			undo := func(ctx context.Context) error { return os.RemoveAll(paths.dir) }
			dst, err := cloneDisk(ctx, "root", srcRoot, rootDiskPath(paths, srcRoot.Strategy))
			if err != nil {
				return undo, err
			}
			vm.RootDisk = encodeDisk(dst)
			return undo, d.store.UpdateVM(context.WithoutCancel(ctx), vm)
		}},
		{stageCloneWork, nil, func(ctx context.Context) (func(context.Context) error, error) {
			dst, err := cloneDisk(ctx, "work", srcWork, cloneWorkPath(paths, srcWork))
			if err != nil {
				return nil, err
			}
			vm.WorkDisk = encodeDisk(dst)
			unlockSrc() // the source is free to start again
			return nil, d.store.UpdateVM(context.WithoutCancel(ctx), vm)
		}},
		{stageIdentity, []journalAct{{Do: actUnpinHosts, ID: vm.ID, Hosts: []string{vm.IP, vm.Name + ".vm"}}}, func(ctx context.Context) (func(context.Context) error, error) {
			undo := func(context.Context) error { return sshx.RemoveHost(d.layout.KnownHosts, vm.IP, vm.Name+".vm") }
			return undo, d.makeIdentity(vm)
		}},
	}
	err := d.runVMPipeline(ctx, op, &vm, steps, noStart)
	if err != nil {
		d.layersMu.Lock()
		d.gcLayers(context.WithoutCancel(ctx))
		d.layersMu.Unlock()
	}
	return err
}

// cloneWorkPath is where a clone's work disk goes; rootdisk.Clone decides
// whether it is a copy (raw) or a layer (qcow2), and records which.
func cloneWorkPath(paths vmPaths, _ rootdisk.Disk) string {
	return filepath.Join(paths.dir, "work.img")
}

func mkdirLayers(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create layers directory: %w", err)
	}
	return nil
}
