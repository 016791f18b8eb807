package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/rootdisk"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/store"
	"banger/internal/vmm"
	"banger/internal/vmm/qemu"
	"banger/internal/vmm/vmmcore"
)

// Stage names of a VM create, in order (docs/ARCHITECTURE.md walks them).
const (
	stageResolve  = "resolve image and kernel"
	stageClaimIP  = "claim IP"
	stageRootDisk = "prepare root disk"
	stageWorkDisk = "prepare work disk"
	stageIdentity = "make identity"
	stageConfig   = "write config disk"
	stageTap      = "claim tap"
	stageAttach   = "attach disks"
	stageStartVMM = "start VMM"
	// stageVMMLaunched is no step of its own: the fault-injection tests
	// break the start at the moment the VMM process exists.
	stageVMMLaunched = "start VMM: launched"
	stageWaitSSH     = "wait for SSH"
	stageAgent       = "wait for agent"
)

// vmCreateOp is one vm.create operation: the VM being made, the stage it
// is in and the timing of each stage.
type vmCreateOp struct {
	opCore
	vmName string
	// journal records how to undo each step (nil: the start-up sweeps
	// own what the operation makes, as for an image warm's template).
	journal *journalOp

	stagesMu sync.Mutex
	stages   []api.StageTiming
	vm       *api.VM
	warnings []string
}

// warn records something the user should know that does not stop the create.
func (o *vmCreateOp) warn(msg string) {
	o.stagesMu.Lock()
	o.warnings = append(o.warnings, msg)
	o.stagesMu.Unlock()
}

func (o *vmCreateOp) beginStage(name string) {
	o.setStage(name)
	o.stagesMu.Lock()
	o.stages = append(o.stages, api.StageTiming{Name: name, StartedAt: o.now()})
	o.stagesMu.Unlock()
}

func (o *vmCreateOp) endStage(name string) {
	o.stagesMu.Lock()
	defer o.stagesMu.Unlock()
	for i := len(o.stages) - 1; i >= 0; i-- {
		if o.stages[i].Name == name && !o.stages[i].Done {
			o.stages[i].Done = true
			o.stages[i].DurationMS = o.now().Sub(o.stages[i].StartedAt).Milliseconds()
			return
		}
	}
}

func (o *vmCreateOp) status() api.VMCreateStatus {
	o.stagesMu.Lock()
	defer o.stagesMu.Unlock()
	st := api.VMCreateStatus{Operation: o.summary(), Stages: append([]api.StageTiming(nil), o.stages...), VM: o.vm,
		Warnings: append([]string(nil), o.warnings...)}
	return st
}

// createPlan is a validated create request.
type createPlan struct {
	name   string
	image  store.Image
	kernel store.Kernel
	kman   kernel.Manifest
	// pullImage names a catalog image that is not installed yet: the
	// create builds it first (joining a pull already running).
	pullImage string
	vcpu      int
	memoryMiB int
	diskSize  int64
	noStart   bool
	nat       bool
	// forwardPorts: every new guest listener forwarded to the host.
	forwardPorts bool
	// purpose marks the daemon's own VMs (store.PurposeImageBuild).
	purpose string
	// snapshot, when set, is restored instead of booting.
	snapshot *store.Snapshot
}

// machineSize fills vCPUs and memory from vm_defaults where zero and
// checks both against the host.
func (d *Daemon) machineSize(vcpu, memMiB int) (int, int, error) {
	if vcpu == 0 {
		vcpu = d.cfg.VMDefaults.VCPU
	}
	if err := d.checkVCPU(vcpu); err != nil {
		return vcpu, memMiB, err
	}
	if memMiB == 0 {
		memMiB = d.cfg.VMDefaults.MemoryMiB
	}
	return vcpu, memMiB, d.checkMemory(memMiB)
}

func (d *Daemon) planCreate(ctx context.Context, p api.VMCreateParams) (createPlan, error) {
	plan := createPlan{name: p.Name, vcpu: p.VCPU, memoryMiB: p.MemoryMiB, noStart: p.NoStart, nat: d.cfg.DefaultNAT}
	if p.NAT != nil {
		plan.nat = *p.NAT
	}
	plan.forwardPorts = p.ForwardPorts || d.cfg.ForwardPorts == "auto"
	if plan.name == "" {
		for i := 0; i < 20; i++ {
			plan.name = randomVMName()
			if _, err := d.store.GetVM(ctx, plan.name); api.IsCode(err, api.CodeNotFound) {
				break
			}
		}
	}
	if err := validateVMName(plan.name); err != nil {
		return plan, err
	}
	if _, err := d.store.GetVM(ctx, plan.name); err == nil {
		return plan, api.Errorf(api.CodeAlreadyExists, "vm %q already exists; pick another --name or delete it first", plan.name)
	}
	var err error
	if plan.vcpu, plan.memoryMiB, err = d.machineSize(plan.vcpu, plan.memoryMiB); err != nil {
		return plan, err
	}
	sizeStr := p.DiskSize
	if sizeStr == "" {
		sizeStr = d.cfg.VMDefaults.DiskSize
	}
	size, err := parseDiskSize(sizeStr)
	if err != nil {
		return plan, err
	}
	plan.diskSize = size

	imageName := p.Image
	if imageName == "" {
		if im, err := d.store.DefaultImage(ctx); err == nil {
			imageName = im.Name
		} else {
			imageName = d.cfg.DefaultImage
		}
	}
	plan.image, err = d.store.GetImage(ctx, imageName)
	if entry, inCatalog := imageCatalog[imageName]; api.IsCode(err, api.CodeNotFound) && inCatalog {
		// First use of a catalog image: the create pulls it.
		if err := d.checkPullKernel(ctx, entry.kernel); err != nil {
			return plan, err
		}
		plan.pullImage = imageName
		plan.image = store.Image{Name: imageName, Kernel: entry.kernel}
		plan.kernel = store.Kernel{Name: entry.kernel}
		return plan, nil
	}
	if err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			return plan, api.Errorf(api.CodeNotFound, "image %q not found; see banger image list, or register one with banger image register", imageName)
		}
		return plan, err
	}
	plan.kernel, err = d.store.GetKernel(ctx, plan.image.Kernel)
	if err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			return plan, api.Errorf(api.CodeNotFound, "kernel %q of image %q not found; import it with banger kernel import", plan.image.Kernel, plan.image.Name)
		}
		return plan, err
	}
	plan.kman, err = kernel.LoadManifest(plan.kernel.Dir)
	if err != nil {
		return plan, api.Errorf(api.CodeOperationFailed, "kernel %q: %v", plan.kernel.Name, err)
	}
	if !plan.kman.HasInitrdFeature(kernel.FeatureConfigDisk) {
		return plan, api.Errorf(api.CodeBadRequest, "kernel %q of image %q was built before banger's initrd applied per-VM configuration disks; rebuild it (banger kernel rm %s && banger kernel pull %s, or import a newer build)",
			plan.kernel.Name, plan.image.Name, plan.kernel.Name, plan.kernel.Name)
	}
	return plan, nil
}

func (d *Daemon) vmCreateBegin(ctx context.Context, p api.VMCreateParams) (api.VMCreateBeginResult, error) {
	// Validation happens before the operation exists, so bad input is a
	// plain bad_request and nothing is registered.
	plan, err := d.planCreate(ctx, p)
	if err != nil {
		return api.VMCreateBeginResult{}, err
	}
	drv, err := d.driverFor("")
	if err != nil {
		return api.VMCreateBeginResult{}, api.Errorf(api.CodeOperationFailed, "%v", err)
	}
	if plan.snapshot, err = d.pickSnapshot(ctx, p, &plan, drv); err != nil {
		return api.VMCreateBeginResult{}, err
	}

	// Reserve the name and an IP atomically with respect to other creates.
	j := d.beginJournal("", api.OpKindVMCreate, plan.name)
	d.allocMu.Lock()
	vm, err := d.reserveVM(ctx, plan, drv.Name(), j)
	d.allocMu.Unlock()
	if err != nil {
		j.finish(ctx)
		return api.VMCreateBeginResult{}, err
	}

	return d.beginVMOp(ctx, api.OpKindVMCreate, j, vm, d.log, func(ctx context.Context, op *vmCreateOp) error {
		if accelOf(drv) == "tcg" && !plan.noStart {
			op.warn("this host has no usable KVM: the guest runs under QEMU's TCG emulation, which QEMU does not count as a security boundary (see SECURITY.md)")
		}
		if err := d.runCreate(ctx, op, plan, vm); err != nil {
			return err
		}
		d.maybeAutoWarm(plan)
		return nil
	}), nil
}

// beginVMOp registers an operation of kind (vm.create, vm.clone) making
// vm and runs it in the background under the daemon's context; the caller
// follows it with vm.create.status. The operation takes j's id and
// records its steps' undos there (j may be nil).
func (d *Daemon) beginVMOp(ctx context.Context, kind string, j *journalOp, vm store.VM, log *slog.Logger, run func(context.Context, *vmCreateOp) error) api.VMCreateBeginResult {
	opID := rpc.NewOpID()
	if j != nil {
		opID = j.id
	}
	log = log.With("op_id", opID, "vm", vm.Name)
	bg, cancel := context.WithCancel(rpc.WithLogger(rpc.WithOpID(d.bgCtx, opID), log))
	op := &vmCreateOp{opCore: newOpCore(opID, kind, vm.Name, cancel, d.now), vmName: vm.Name, journal: j}
	d.ops.vmCreate.Insert(op)
	log.Info(kind+" begun", "request_op_id", rpc.OpID(ctx))
	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		defer cancel()
		err := run(bg, op)
		if err != nil {
			log.Warn(kind+" failed", "err", err)
		} else {
			log.Info(kind + " done")
		}
		op.finish(err)
	}()
	if ctx.Err() != nil {
		// The caller left before learning the op id (Ctrl-C during begin):
		// nobody can follow or cancel this operation, so cancel it now.
		op.Cancel()
	}
	return api.VMCreateBeginResult{OpID: opID, Name: vm.Name}
}

// pullForCreate builds the catalog image a create needs (or waits for the
// pull already building it), showing the pull's progress as the create's
// stage, then loads the image and kernel records into plan.
func (d *Daemon) pullForCreate(ctx context.Context, op *vmCreateOp, plan *createPlan) error {
	pop, _, err := d.startCatalogImagePull(plan.pullImage)
	if err != nil {
		return err
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		if stage := pop.summary().Stage; stage != "" {
			op.setStage(stageResolve + ": pulling " + plan.pullImage + ": " + stage)
		}
		select {
		case <-pop.doneCh:
			done = true
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	if s := pop.summary(); s.Error != "" {
		return fmt.Errorf("pull image %s (operation %s): %s", plan.pullImage, pop.ID(), s.Error)
	}
	var err2 error
	if plan.image, err2 = d.store.GetImage(ctx, plan.pullImage); err2 != nil {
		return err2
	}
	if plan.kernel, err2 = d.store.GetKernel(ctx, plan.image.Kernel); err2 != nil {
		return err2
	}
	plan.kman, err2 = kernel.LoadManifest(plan.kernel.Dir)
	return err2
}

// reserveVM inserts the VM row in state "creating" with its IP and MAC,
// recording in j (when non-nil) that a crash drops it.
func (d *Daemon) reserveVM(ctx context.Context, plan createPlan, vmmName string, j *journalOp) (store.VM, error) {
	// Validated before allocMu was taken: make sure an image.delete or
	// kernel.rm did not remove them since (both check for VMs under it).
	if plan.pullImage == "" {
		if _, err := d.store.GetImage(ctx, plan.image.Name); err != nil {
			return store.VM{}, err
		}
		if _, err := d.store.GetKernel(ctx, plan.kernel.Name); err != nil {
			return store.VM{}, err
		}
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return store.VM{}, err
	}
	var used []string
	for _, v := range vms {
		if v.IP != "" {
			used = append(used, v.IP)
		}
	}
	ip, err := hostnet.AllocateIP(d.cfg.BridgeCIDR, used)
	if err != nil {
		return store.VM{}, err
	}
	mac, err := hostnet.MACFor(ip)
	if err != nil {
		return store.VM{}, err
	}
	vm := store.VM{Name: plan.name, Image: plan.image.Name, Kernel: plan.kernel.Name, State: store.StateCreating,
		VCPU: plan.vcpu, MemoryMiB: plan.memoryMiB, DiskSizeBytes: plan.diskSize, IP: ip, MAC: mac, VMM: vmmName, NAT: plan.nat,
		ForwardPorts: plan.forwardPorts, Purpose: plan.purpose}
	if plan.snapshot != nil {
		vm.StartedFrom = "snapshot " + plan.snapshot.Name
	}
	if err := j.record(ctx, "reserve", journalAct{Do: actDropRow, VM: vm.Name}); err != nil {
		return store.VM{}, err
	}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		return store.VM{}, err
	}
	vm.Dir = d.pathsFor(vm.ID).dir
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		_ = d.store.DeleteVM(context.WithoutCancel(ctx), vm.Name)
		return store.VM{}, err
	}
	// NAME.vm resolves from the moment the VM has its address.
	d.syncNetwork(ctx)
	return vm, nil
}

// runCreate executes the create pipeline for a reserved VM. On failure
// everything is undone, including the VM's row.
func (d *Daemon) runCreate(ctx context.Context, op *vmCreateOp, plan createPlan, vm store.VM) error {
	mu := d.vmLock(vm.Name)
	mu.Lock()
	defer mu.Unlock()
	paths := d.pathsFor(vm.ID)
	steps := []step{
		{stageResolve, nil, func(ctx context.Context) (func(context.Context) error, error) {
			// The row exists from reserveVM; undoing the create removes it.
			undo := func(ctx context.Context) error { return d.store.DeleteVM(ctx, vm.Name) }
			if plan.pullImage != "" {
				if err := d.pullForCreate(ctx, op, &plan); err != nil {
					return undo, err
				}
			}
			if _, err := os.Stat(plan.image.RootfsPath); err != nil {
				return undo, fmt.Errorf("image %s rootfs: %w", plan.image.Name, err)
			}
			return undo, nil
		}},
		{stageClaimIP, nil, func(ctx context.Context) (func(context.Context) error, error) {
			// The IP was reserved with the row; pin nothing stale for it.
			return nil, sshx.RemoveHost(d.layout.KnownHosts, vm.IP, vm.Name+".vm")
		}},
		{stageRootDisk, []journalAct{{Do: actRemovePath, Path: paths.dir}}, func(ctx context.Context) (func(context.Context) error, error) {
			// Never a copy of the image where the host can do better: a
			// copy-on-write layer over it, chosen by what the host can do.
			base := plan.image.RootfsPath
			strategy, err := d.chooseRootDisk(vm.VMM, base)
			if err != nil {
				return nil, err
			}
			if strategy == rootdisk.DM && plan.purpose == store.PurposeImageWarm {
				// A snapshot freezes files, not a dm device: the
				// template gets the best layering that can be frozen.
				strategy = rootdisk.Copy
				if d.layersLive(vm.VMM) {
					strategy = rootdisk.QCOW2
				}
			}
			if err := rootdisk.CheckFree(d.layout.VMsDir, rootdisk.SpaceForCreate(strategy, base)+workDiskMeta); err != nil {
				return nil, spaceError(err)
			}
			if err := os.MkdirAll(paths.dir, 0o700); err != nil {
				return nil, err
			}
			undo := func(context.Context) error { return os.RemoveAll(paths.dir) }
			rd, err := rootdisk.Create(ctx, d.runner, strategy, base, rootDiskPath(paths, strategy))
			if err != nil {
				return undo, spaceError(err)
			}
			if strategy == rootdisk.Copy {
				op.warn(fmt.Sprintf("the root disk is a full copy of image %s: no copy-on-write strategy works on this host (reflink: %v)",
					plan.image.Name, rootdisk.Check(rootdisk.Reflink, vm.VMM, d.layout.VMsDir, base, d.runner)))
			}
			vm.RootDisk = encodeDisk(rd)
			rpc.Logger(ctx).Info("root disk ready", "strategy", strategy, "path", rd.Path)
			return undo, d.store.UpdateVM(context.WithoutCancel(ctx), vm)
		}},
		{stageWorkDisk, nil, func(ctx context.Context) (func(context.Context) error, error) {
			if seed := workSeedOf(plan.image); seed != "" {
				// The image carries a /root: the work disk starts as it.
				wd, err := d.seedWorkDisk(ctx, vm, seed, plan.diskSize)
				if err != nil {
					return nil, err
				}
				vm.WorkDisk = encodeDisk(wd)
				return nil, d.store.UpdateVM(context.WithoutCancel(ctx), vm)
			}
			if err := disk.CreateWorkDisk(ctx, d.runner, paths.work, plan.diskSize); err != nil {
				return nil, spaceError(err)
			}
			vm.WorkDisk = encodeDisk(rootdisk.NewRaw(paths.work))
			return nil, d.store.UpdateVM(context.WithoutCancel(ctx), vm)
		}},
		{stageIdentity, []journalAct{{Do: actUnpinHosts, ID: vm.ID, Hosts: []string{vm.IP, vm.Name + ".vm"}}}, func(ctx context.Context) (func(context.Context) error, error) {
			// The files go with the VM dir; the pinned key is undone here.
			undo := func(context.Context) error { return sshx.RemoveHost(d.layout.KnownHosts, vm.IP, vm.Name+".vm") }
			return undo, d.makeIdentity(vm)
		}},
	}
	if plan.snapshot != nil {
		m, err := decodeSnapshotMeta(*plan.snapshot)
		if err != nil {
			return err
		}
		// The disks come from the snapshot, not the image.
		restoring := []step{steps[0], steps[1], d.layerDisksStep(plan, &vm)}
		for _, s := range steps {
			if s.name == stageIdentity {
				restoring = append(restoring, s)
			}
		}
		return d.runVMPipelineFrom(ctx, op, &vm, restoring, false, &restoreSpec{snapshot: *plan.snapshot, meta: m})
	}
	return d.runVMPipeline(ctx, op, &vm, steps, plan.noStart)
}

// runVMPipeline runs the steps that make a new VM (a create's or a
// clone's), then boots it unless noStart. On failure everything is undone,
// including the VM's row; on success the op carries the VM.
func (d *Daemon) runVMPipeline(ctx context.Context, op *vmCreateOp, v *store.VM, steps []step, noStart bool) error {
	return d.runVMPipelineFrom(ctx, op, v, steps, noStart, nil)
}

// runVMPipelineFrom is runVMPipeline that restores rs instead of booting
// when rs is set.
func (d *Daemon) runVMPipelineFrom(ctx context.Context, op *vmCreateOp, v *store.VM, steps []step, noStart bool, rs *restoreSpec) error {
	err := d.pipeline(ctx, op, v, steps, noStart, rs)
	// Whatever the outcome, once it is recorded the journal has nothing
	// left to undo. (Not deferred: a daemon that dies before this line
	// leaves the journal to the next one, and so does the tests' crash.)
	op.journal.finish(ctx)
	return err
}

func (d *Daemon) pipeline(ctx context.Context, op *vmCreateOp, v *store.VM, steps []step, noStart bool, rs *restoreSpec) error {
	vm := v
	if !noStart {
		steps = append(steps, d.bootStepsFrom(vm, rs)...)
	}
	if err := runSteps(ctx, rpc.Logger(ctx), op, op.journal, steps); err != nil {
		if errors.Is(err, errVMMStillRunning) {
			d.keepUnstoppableVM(ctx, vm, err)
			return err
		}
		// The steps' undos removed the row, unless the create was cancelled
		// before its first step: never leave a VM stuck in "creating".
		if derr := d.store.DeleteVM(context.WithoutCancel(ctx), vm.Name); derr != nil && !api.IsCode(derr, api.CodeNotFound) {
			rpc.Logger(ctx).Error("remove the row of a failed create", "err", derr)
		}
		d.syncNetwork(context.WithoutCancel(ctx))
		return err
	}
	if noStart {
		vm.State = store.StateStopped
		if err := d.store.UpdateVM(context.WithoutCancel(ctx), *vm); err != nil {
			return err
		}
	}
	final, err := d.store.GetVM(context.WithoutCancel(ctx), vm.Name)
	if err != nil {
		return err
	}
	av := toAPIVM(final)
	op.stagesMu.Lock()
	op.vm = &av
	op.stagesMu.Unlock()
	return nil
}

// bootSteps claim a tap, start the VMM and wait for SSH. v is updated in
// place and saved as running once the VMM is up.
func (d *Daemon) bootSteps(v *store.VM) []step { return d.bootStepsFrom(v, nil) }

// bootStepsFrom are bootSteps that, with rs, start the VMM from rs's saved
// state and give the restored guest its identity before waiting for SSH.
func (d *Daemon) bootStepsFrom(v *store.VM, rs *restoreSpec) []step {
	paths := d.pathsFor(v.ID)
	var handle vmm.Handle
	var rootDev, rootFmt, workDev, workFmt string
	steps := []step{
		{stageConfig, nil, func(ctx context.Context) (func(context.Context) error, error) {
			km, err := d.kernelFor(ctx, v.Kernel)
			if err != nil {
				return nil, err
			}
			return nil, d.writeConfigDisk(ctx, *v, km.manifest)
		}},
		// A crash after this releases what the row records of the VM's
		// runtime: its taps (a cold one is named after the VM), a dm
		// snapshot attach records as it makes it, its jail, its runtime dir.
		{stageTap, []journalAct{{Do: actReleaseRuntime, VM: v.Name, ID: v.ID}}, func(ctx context.Context) (func(context.Context) error, error) {
			tap, err := d.net.claimTap(hostnet.TapName(v.ID))
			if err != nil {
				return nil, err
			}
			undo := func(ctx context.Context) error {
				v.Tap = ""
				err := d.priv.DeleteTap(tap)
				if uerr := d.store.UpdateVM(ctx, *v); uerr != nil && !api.IsCode(uerr, api.CodeNotFound) {
					err = errors.Join(err, uerr)
				}
				d.syncNetwork(ctx)
				return err
			}
			// The tap is recorded, and its anti-spoofing (and NAT) rules are
			// in place, before the guest can send its first packet.
			v.Tap = tap
			if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
				return undo, err
			}
			if err := d.net.sync(ctx); err != nil {
				if v.NAT {
					return undo, natError(err)
				}
				rpc.Logger(ctx).Warn("network rules for the VM's tap could not be installed", "err", err)
			}
			return undo, nil
		}},
		{stageAttach, nil, func(ctx context.Context) (func(context.Context) error, error) {
			var err error
			rootDev, rootFmt, workDev, workFmt, err = d.attachDisks(ctx, v)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				if err := d.detachDisks(ctx, v); err != nil {
					return err
				}
				return d.store.UpdateVM(ctx, *v)
			}, nil
		}},
		// The VMM is recorded on the row the moment it exists (Launched).
		{stageStartVMM, []journalAct{{Do: actKillVMM, VM: v.Name, ID: v.ID}}, func(ctx context.Context) (func(context.Context) error, error) {
			drv, err := d.driverForVM(*v)
			if err != nil {
				return nil, err
			}
			km, err := d.kernelFor(ctx, v.Kernel)
			if err != nil {
				return nil, err
			}
			role := kernel.RoleVmlinuz
			if drv.KernelKind() == "vmlinux" {
				role = kernel.RoleVmlinux
			}
			kpath, err := km.manifest.Path(km.dir, role)
			if err != nil {
				return nil, err
			}
			initrd, err := km.manifest.Path(km.dir, kernel.RoleInitrd)
			if err != nil {
				return nil, err
			}
			if err := os.MkdirAll(paths.run, 0o700); err != nil {
				return nil, err
			}
			spec := vmm.Spec{Name: v.Name, VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, KernelPath: kpath, InitrdPath: initrd,
				Cmdline: km.manifest.BootCmdline() + " " + guestNetArg(*v, d.cfg.BridgeCIDR), RootDisk: rootDev, RootFormat: rootFmt,
				WorkDisk: workDev, WorkFormat: workFmt, ConfigDisk: paths.config, Tap: v.Tap, MAC: v.MAC,
				RuntimeDir: paths.run, ConsoleLog: paths.console}
			if rs != nil {
				// The device is the saved one until the agent moves the
				// guest to the VM's own MAC.
				spec.IncomingState, spec.MAC = rs.meta.State, rs.meta.MAC
			}
			if spec.RunAs, err = d.vmmIdentity(v.IP); err != nil {
				return nil, err
			}
			spec.ID = shortID(v.ID)
			if err := d.giveTapToJailedVMM(drv, spec); err != nil {
				return nil, err
			}
			// The VMM is recorded the moment it exists, before the driver
			// waits for it: a daemon that dies in the middle of Start
			// leaves a VMM the next one identifies (pid, start time,
			// socket) and kills. The row stays creating or starting.
			spec.Launched = func(h vmm.Handle) error {
				v.PID, v.PIDStartTime, v.APISocket = h.PID, h.StartTime, h.APISocket
				if v.State != store.StateCreating {
					v.State = store.StateStarting
				}
				if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
					return err
				}
				return faultAfter(stageVMMLaunched)
			}
			if d.viaHelper && v.Tap != "" && drv.Name() == qemu.DriverName {
				// This daemon may not attach to a tap: the root helper
				// does, and QEMU inherits the descriptor.
				tf, err := d.priv.OpenTap(v.Tap)
				if err != nil {
					return nil, fmt.Errorf("open tap %s through the root helper: %w", v.Tap, err)
				}
				defer tf.Close()
				spec.TapFile = tf
			}
			handle, err = drv.Start(ctx, spec)
			if err != nil {
				_ = os.RemoveAll(paths.run)
				return nil, err
			}
			undo := func(ctx context.Context) error {
				if err := drv.Kill(handle); err != nil {
					return fmt.Errorf("%w: kill pid %d: %v", errVMMStillRunning, handle.PID, err)
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if err := vmm.WaitExit(wctx, handle, 50*time.Millisecond); err != nil {
					return fmt.Errorf("%w: pid %d still runs 10s after SIGKILL", errVMMStillRunning, handle.PID)
				}
				// What the VMM keeps outside the runtime dir (a jail and
				// its cgroups) goes with it.
				return errors.Join(vmm.CleanupVia(handle, d.rootJails()), os.RemoveAll(paths.run))
			}
			// Recorded before the guest answers, so that a daemon that dies
			// now leaves a VMM the next one can identify and kill; the VM
			// is running only once its agent answered (the last step).
			v.PID, v.PIDStartTime, v.APISocket = handle.PID, handle.StartTime, handle.APISocket
			if v.State != store.StateCreating {
				v.State = store.StateStarting
			}
			v.LastError = ""
			if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
				return undo, err
			}
			return undo, nil
		}},
		{stageRestoreID, nil, func(ctx context.Context) (func(context.Context) error, error) {
			if rs == nil {
				return nil, nil
			}
			return nil, d.restoreIdentity(ctx, v, handle, rs)
		}},
		{stageWaitSSH, nil, func(ctx context.Context) (func(context.Context) error, error) {
			signer, err := sshx.EnsureKey(d.layout.SSHKey)
			if err != nil {
				return nil, err
			}
			wctx, cancel := context.WithTimeout(ctx, sshWaitTimeout)
			defer cancel()
			// Fail fast when the VMM dies during boot, with its log tail.
			watch, stopWatch := context.WithCancelCause(wctx)
			defer stopWatch(nil)
			go func() {
				if err := vmm.WaitExit(watch, handle, 250*time.Millisecond); err == nil {
					stopWatch(fmt.Errorf("the VMM exited during boot; last console lines:\n%s", tailFile(paths.console, 20)))
				}
			}()
			// Only the key made for this VM is accepted: it was pinned before
			// the guest booted, so nothing else on the bridge can answer.
			pub, _, err := d.hostPublicKey(*v)
			if err != nil {
				return nil, err
			}
			err = sshx.WaitForSSH(watch, v.IP+":22", "root", signer, ssh.FixedHostKey(pub), 250*time.Millisecond)
			if err != nil {
				if cause := context.Cause(watch); cause != nil && cause != context.Canceled && cause != context.DeadlineExceeded {
					return nil, cause
				}
				if wctx.Err() != nil && ctx.Err() == nil {
					return nil, fmt.Errorf("guest did not answer SSH on %s within %s; last console lines:\n%s", v.IP, sshWaitTimeout, tailFile(paths.console, 20))
				}
				return nil, err
			}
			return nil, nil
		}},
		{stageAgent, nil, func(ctx context.Context) (func(context.Context) error, error) {
			h, err := d.waitAgent(ctx, *v)
			if err != nil {
				if ctx.Err() != nil {
					return nil, err
				}
				return nil, fmt.Errorf("the guest agent did not report health within %s: %w; last console lines:\n%s", agentWaitTimeout, err, tailFile(paths.console, 20))
			}
			rpc.Logger(ctx).Info("guest agent healthy", "agent_version", h.AgentVersion, "uptime_s", h.UptimeS)
			v.State = store.StateRunning
			return nil, d.store.UpdateVM(context.WithoutCancel(ctx), *v)
		}},
	}
	if rs == nil {
		// A boot has no identity to restore.
		out := steps[:0]
		for _, s := range steps {
			if s.name != stageRestoreID {
				out = append(out, s)
			}
		}
		return out
	}
	for i := range steps {
		if steps[i].name == stageStartVMM {
			steps[i].name = stageRestoreVMM
		}
	}
	return steps
}

type kernelFiles struct {
	dir      string
	manifest kernel.Manifest
}

func (d *Daemon) kernelFor(ctx context.Context, name string) (kernelFiles, error) {
	k, err := d.store.GetKernel(ctx, name)
	if err != nil {
		return kernelFiles{}, err
	}
	m, err := kernel.LoadManifest(k.Dir)
	if err != nil {
		return kernelFiles{}, err
	}
	return kernelFiles{dir: k.Dir, manifest: m}, nil
}

// guestNetworkd is the VM's systemd-networkd file. Under systemd, banger
// masks networkd (the initrd put the same address on the link before
// systemd started, see guestNetArg); banger-init, on images without
// systemd, reads its Address=, Gateway= and MACAddress= to configure the
// link.
// KeepConfiguration keeps networkd from dropping that address, and without
// IPv6 autoconfiguration or link-local addressing it has nothing to wait for.
func guestNetworkd(mac, ip string, prefix int, gw string) string {
	return fmt.Sprintf("[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s/%d\nGateway=%s\nDNS=%s\n"+
		"LinkLocalAddressing=no\nIPv6AcceptRA=no\nKeepConfiguration=static\n", mac, ip, prefix, gw, gw)
}

// guestNetArg is the kernel argument with which banger's initrd brings the
// VM's interface up before the root's init runs.
func guestNetArg(v store.VM, bridgeCIDR string) string {
	gw, prefix, err := hostnet.Gateway(bridgeCIDR)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("banger.net=%s/%d,%s,%s", v.IP, prefix, gw, v.MAC)
}

// seedWorkDisk makes a VM's work disk a copy-on-write layer over an
// image's work seed (a full copy where no layer works; never dm, which
// only roots attach), grown to size. The guest grows /root to fill it at
// boot (banger-growfs).
func (d *Daemon) seedWorkDisk(ctx context.Context, vm store.VM, seed string, size int64) (rootdisk.Disk, error) {
	paths := d.pathsFor(vm.ID)
	strategy, err := d.chooseRootDisk(vm.VMM, seed)
	if err != nil || strategy == rootdisk.DM {
		strategy = rootdisk.Copy
	}
	if err := rootdisk.CheckFree(d.layout.VMsDir, rootdisk.SpaceForCreate(strategy, seed)); err != nil {
		return rootdisk.Disk{}, spaceError(err)
	}
	p := paths.work
	if strategy == rootdisk.QCOW2 {
		p = filepath.Join(paths.dir, "work.qcow2")
	}
	wd, err := rootdisk.Create(ctx, d.runner, strategy, seed, p)
	if err != nil {
		return rootdisk.Disk{}, spaceError(err)
	}
	cur, err := wd.VirtualSize(ctx, d.runner)
	if err == nil && size > cur {
		err = wd.Grow(ctx, d.runner, size)
	}
	if err != nil {
		_ = rootdisk.Remove(context.WithoutCancel(ctx), d.runner, wd)
		return rootdisk.Disk{}, spaceError(err)
	}
	return wd, nil
}

// growWorkDisk grows the file (or qcow2 layer) of a stopped VM's work
// disk. The host never runs e2fsck or resize2fs on a filesystem the guest
// wrote: the guest grows /root online at its next boot (banger-growfs).
func (d *Daemon) growWorkDisk(ctx context.Context, v store.VM, size int64) error {
	_, wd, err := d.disksOf(v)
	if err != nil {
		return err
	}
	return spaceError(wd.Grow(ctx, d.runner, size))
}

// tailFile is the last lines of a console log: at most its last 64 KiB
// read, the guest's control characters removed (it ends up in errors the
// CLI prints to a terminal).
func tailFile(path string, lines int) string { return vmmcore.ConsoleTail(path, lines) }

func (d *Daemon) vmCreateStatus(ctx context.Context, p api.OpRef) (api.VMCreateStatus, error) {
	op, ok := d.ops.vmCreate.Get(p.OpID)
	if !ok {
		return api.VMCreateStatus{}, api.Errorf(api.CodeNotFound, "operation %q not found (finished operations are forgotten after %s)", p.OpID, time.Duration(d.cfg.OpsRetention))
	}
	return op.status(), nil
}

func (d *Daemon) vmCreateCancel(ctx context.Context, p api.OpRef) (api.VMCreateStatus, error) {
	op, ok := d.ops.vmCreate.Get(p.OpID)
	if !ok {
		return api.VMCreateStatus{}, api.Errorf(api.CodeNotFound, "operation %q not found", p.OpID)
	}
	op.Cancel()
	// Wait (bounded by the caller's context) for the rollback to finish so
	// the CLI can report that nothing is left.
	select {
	case <-op.doneCh:
	case <-ctx.Done():
	}
	return op.status(), nil
}
