package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/guestfs"
	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/store"
	"banger/internal/vmm"
)

// Stage names of a VM create, in order (docs/ARCHITECTURE.md walks them).
const (
	stageResolve  = "resolve image and kernel"
	stageClaimIP  = "claim IP"
	stageRootDisk = "prepare root disk"
	stageWorkDisk = "prepare work disk"
	stagePatch    = "patch guest files"
	stageTap      = "claim tap"
	stageStartVMM = "start VMM"
	stageWaitSSH  = "wait for SSH"
)

// vmCreateOp is one vm.create operation: the VM being made, the stage it
// is in and the timing of each stage.
type vmCreateOp struct {
	opCore
	vmName string

	stagesMu sync.Mutex
	stages   []api.StageTiming
	vm       *api.VM
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
	st := api.VMCreateStatus{Operation: o.summary(), Stages: append([]api.StageTiming(nil), o.stages...), VM: o.vm}
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
}

func (d *Daemon) planCreate(ctx context.Context, p api.VMCreateParams) (createPlan, error) {
	plan := createPlan{name: p.Name, vcpu: p.VCPU, memoryMiB: p.MemoryMiB, noStart: p.NoStart}
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
	if plan.vcpu == 0 {
		plan.vcpu = d.cfg.VMDefaults.VCPU
	}
	if err := d.checkVCPU(plan.vcpu); err != nil {
		return plan, err
	}
	if plan.memoryMiB == 0 {
		plan.memoryMiB = d.cfg.VMDefaults.MemoryMiB
	}
	if err := d.checkMemory(plan.memoryMiB); err != nil {
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

	// Reserve the name and an IP atomically with respect to other creates.
	d.allocMu.Lock()
	vm, err := d.reserveVM(ctx, plan, drv.Name())
	d.allocMu.Unlock()
	if err != nil {
		return api.VMCreateBeginResult{}, err
	}

	opID := rpc.NewOpID()
	log := d.log.With("op_id", opID, "vm", vm.Name)
	bg, cancel := context.WithCancel(rpc.WithLogger(rpc.WithOpID(d.bgCtx, opID), log))
	op := &vmCreateOp{opCore: newOpCore(opID, api.OpKindVMCreate, vm.Name, cancel, d.now), vmName: vm.Name}
	d.ops.vmCreate.Insert(op)
	log.Info("vm create begun", "request_op_id", rpc.OpID(ctx))

	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		defer cancel()
		err := d.runCreate(bg, op, plan, vm)
		if err != nil {
			log.Warn("vm create failed", "err", err)
		} else {
			log.Info("vm create done")
		}
		op.finish(err)
	}()
	if ctx.Err() != nil {
		// The caller left before learning the op id (Ctrl-C during begin):
		// nobody can follow or cancel this create, so cancel it now.
		op.Cancel()
	}
	return api.VMCreateBeginResult{OpID: opID, Name: vm.Name}, nil
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

// reserveVM inserts the VM row in state "creating" with its IP and MAC.
func (d *Daemon) reserveVM(ctx context.Context, plan createPlan, vmmName string) (store.VM, error) {
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
		VCPU: plan.vcpu, MemoryMiB: plan.memoryMiB, DiskSizeBytes: plan.diskSize, IP: ip, MAC: mac, VMM: vmmName}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		return store.VM{}, err
	}
	vm.Dir = d.pathsFor(vm.ID).dir
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		_ = d.store.DeleteVM(context.WithoutCancel(ctx), vm.Name)
		return store.VM{}, err
	}
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
		{stageResolve, func(ctx context.Context) (func(context.Context) error, error) {
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
		{stageClaimIP, func(ctx context.Context) (func(context.Context) error, error) {
			// The IP was reserved with the row; pin nothing stale for it.
			return nil, sshx.RemoveHost(d.layout.KnownHosts, vm.IP, vm.Name+".vm")
		}},
		{stageRootDisk, func(ctx context.Context) (func(context.Context) error, error) {
			if err := os.MkdirAll(paths.dir, 0o700); err != nil {
				return nil, err
			}
			undo := func(context.Context) error { return os.RemoveAll(paths.dir) }
			method, err := disk.CloneRoot(ctx, plan.image.RootfsPath, paths.root)
			if err != nil {
				return undo, err
			}
			rpc.Logger(ctx).Info("root disk ready", "method", method)
			return undo, nil
		}},
		{stageWorkDisk, func(ctx context.Context) (func(context.Context) error, error) {
			return nil, disk.CreateWorkDisk(ctx, d.runner, paths.work, plan.diskSize)
		}},
		{stagePatch, func(ctx context.Context) (func(context.Context) error, error) {
			return nil, d.patchGuest(ctx, vm, paths.root)
		}},
	}
	if !plan.noStart {
		steps = append(steps, d.bootSteps(&vm)...)
	}
	if err := runSteps(ctx, rpc.Logger(ctx), op, steps); err != nil {
		if errors.Is(err, errVMMStillRunning) {
			d.keepUnstoppableVM(ctx, &vm, err)
			return err
		}
		// The steps' undos removed the row, unless the create was cancelled
		// before its first step: never leave a VM stuck in "creating".
		if derr := d.store.DeleteVM(context.WithoutCancel(ctx), vm.Name); derr != nil && !api.IsCode(derr, api.CodeNotFound) {
			rpc.Logger(ctx).Error("remove the row of a failed create", "err", derr)
		}
		return err
	}
	if plan.noStart {
		vm.State = store.StateStopped
		if err := d.store.UpdateVM(context.WithoutCancel(ctx), vm); err != nil {
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
func (d *Daemon) bootSteps(v *store.VM) []step {
	paths := d.pathsFor(v.ID)
	var handle vmm.Handle
	return []step{
		{stageTap, func(ctx context.Context) (func(context.Context) error, error) {
			if err := hostnet.EnsureBridge(d.cfg.BridgeName, d.cfg.BridgeCIDR); err != nil {
				return nil, err
			}
			tap := hostnet.TapName(v.ID)
			if err := hostnet.CreateTap(tap, d.cfg.BridgeName); err != nil {
				return nil, err
			}
			v.Tap = tap
			return func(context.Context) error {
				v.Tap = ""
				return hostnet.DeleteTap(tap)
			}, nil
		}},
		{stageStartVMM, func(ctx context.Context) (func(context.Context) error, error) {
			drv, err := d.driverFor(v.VMM)
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
				Cmdline: km.manifest.BootCmdline(), RootDisk: paths.root, WorkDisk: paths.work, Tap: v.Tap, MAC: v.MAC,
				RuntimeDir: paths.run, ConsoleLog: paths.console}
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
				return os.RemoveAll(paths.run)
			}
			v.PID, v.PIDStartTime, v.APISocket = handle.PID, handle.StartTime, handle.APISocket
			v.State = store.StateRunning
			v.LastError = ""
			if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
				return undo, err
			}
			return undo, nil
		}},
		{stageWaitSSH, func(ctx context.Context) (func(context.Context) error, error) {
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
			cb := sshx.HostKeyCallback(d.layout.KnownHosts, v.IP, v.Name+".vm")
			err = sshx.WaitForSSH(watch, v.IP+":22", "root", signer, cb, 250*time.Millisecond)
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
	}
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

// patchGuest writes the VM's identity into its own root disk (never the
// shared image): hostname, hosts, network, resolv.conf and SSH access.
func (d *Daemon) patchGuest(ctx context.Context, v store.VM, rootDisk string) error {
	signer, err := sshx.EnsureKey(d.layout.SSHKey)
	if err != nil {
		return err
	}
	gw, prefix, err := hostnet.Gateway(d.cfg.BridgeCIDR)
	if err != nil {
		return err
	}
	dns := d.cfg.DefaultDNS
	if len(dns) == 0 {
		dns = hostNameservers()
	}
	var resolv strings.Builder
	for _, ns := range dns {
		fmt.Fprintf(&resolv, "nameserver %s\n", ns)
	}
	network := fmt.Sprintf("[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s/%d\nGateway=%s\n", v.MAC, v.IP, prefix, gw)
	for _, ns := range dns {
		network += "DNS=" + ns + "\n"
	}
	var e guestfs.Edit
	files := []struct {
		path string
		data string
		mode os.FileMode
	}{
		{"/etc/hostname", v.Name + "\n", 0o644},
		{"/etc/hosts", fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s %s.vm\n::1\tlocalhost ip6-localhost ip6-loopback\n", v.Name, v.Name), 0o644},
		{"/etc/systemd/network/10-banger.network", network, 0o644},
		{"/etc/resolv.conf", resolv.String(), 0o644},
		// /root is the work disk's mount point, so the key lives outside it.
		{"/etc/ssh/sshd_config.d/10-banger.conf", "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n", 0o644},
		{"/etc/ssh/banger_authorized_keys", sshx.AuthorizedKeyLine(signer.PublicKey()) + "\n", 0o600},
	}
	for _, f := range files {
		if err := e.WriteFile(f.path, []byte(f.data), f.mode, 0, 0); err != nil {
			return err
		}
	}
	return guestfs.Open(d.runner, rootDisk).Apply(ctx, &e)
}

// hostNameservers returns the host's non-loopback nameservers.
func hostNameservers() []string {
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" && !strings.HasPrefix(f[1], "127.") && f[1] != "::1" {
			out = append(out, f[1])
		}
	}
	return out
}

func (d *Daemon) growWorkDisk(ctx context.Context, path string, size int64) error {
	return disk.ResizeWorkDisk(ctx, d.runner, path, size)
}

func tailFile(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no console log: " + err.Error() + ")"
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

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
