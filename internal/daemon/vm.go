package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"banger/internal/agent"
	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/hostnet"
	"banger/internal/rootdisk"
	"banger/internal/sshx"
	"banger/internal/store"
	"banger/internal/vmm"
)

// Timeouts of the VM lifecycle. They are variables only so that the
// lifecycle tests, which play a guest that never answers or never powers
// off, need not wait minutes; nothing else changes them.
var (
	// sshWaitTimeout bounds how long a boot may take to answer SSH. QEMU
	// under TCG boots Debian in ~25 s on the CI machines; leave room.
	sshWaitTimeout = 180 * time.Second
	// stopTimeout is how long a guest gets to power off before it is killed.
	stopTimeout = 60 * time.Second
)

func toAPIVM(v store.VM) api.VM {
	return api.VM{Name: v.Name, ID: v.ID, State: v.State, Image: v.Image, Kernel: v.Kernel, VCPU: v.VCPU,
		MemoryMiB: v.MemoryMiB, DiskSizeBytes: v.DiskSizeBytes, IP: v.IP, MAC: v.MAC, Tap: v.Tap, NAT: v.NAT,
		DNSName: v.Name + ".vm", VMM: v.VMM, ForwardPorts: v.ForwardPorts, StartedFrom: v.StartedFrom,
		PID: v.PID, Dir: v.Dir, LastError: v.LastError, CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt}
}

func handleOf(v store.VM) vmm.Handle {
	return vmm.Handle{Driver: v.VMM, PID: v.PID, StartTime: v.PIDStartTime, APISocket: v.APISocket}
}

// vmPaths are the files of one VM.
type vmPaths struct {
	dir, root, work, console, run string
	// config is the configuration disk written at every boot; hostKey and
	// machineID are the VM's identity, made once at create.
	config, hostKey, hostKeyECDSA, machineID string
}

func (d *Daemon) pathsFor(id string) vmPaths {
	dir := filepath.Join(d.layout.VMsDir, id)
	return vmPaths{
		dir:          dir,
		root:         filepath.Join(dir, "root.ext4"),
		work:         filepath.Join(dir, "work.ext4"),
		console:      filepath.Join(dir, "console.log"),
		config:       filepath.Join(dir, "config.img"),
		hostKey:      filepath.Join(dir, "ssh_host_ed25519_key"),
		hostKeyECDSA: filepath.Join(dir, "ssh_host_ecdsa_key"),
		machineID:    filepath.Join(dir, "machine-id"),
		// Unix socket paths are limited to 108 bytes: keep the VMM's
		// sockets under the short runtime dir, not the state dir.
		run: filepath.Join(d.layout.RuntimeDir, "vms", shortID(id)),
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// driverFor returns the VMM driver a VM was started with (or, for a VM that
// has not run yet, the one the config selects).
func (d *Daemon) driverFor(name string) (vmm.Driver, error) {
	if d.driverOverride != nil {
		return d.driverOverride, nil
	}
	pref := d.cfg.VMM
	if name != "" {
		pref = name
	}
	return vmm.SelectWith(vmm.Options{Pref: pref, FirecrackerBin: d.cfg.FirecrackerBin, QEMUBin: d.cfg.QEMUBin,
		Jailer: d.cfg.Jailer, JailerBin: d.cfg.JailerBin, JailBase: d.jailBase(), RootJails: d.rootJails(),
		QEMUAccel: d.cfg.QEMUAccel, KVMVerdictFile: filepath.Join(d.layout.StateDir, "kvm-stalled")})
}

// driverForVM is driverFor(v.VMM) for starting v. A VM whose root is a
// dm device (made before the root helper could jail Firecracker here)
// runs its Firecracker unjailed: a jail through the helper holds files
// only (privops.Jails).
func (d *Daemon) driverForVM(v store.VM) (vmm.Driver, error) {
	drv, err := d.driverFor(v.VMM)
	if err != nil || d.driverOverride != nil {
		return drv, err
	}
	rd, _, err := d.disksOf(v)
	if err != nil {
		return nil, err
	}
	unjail, err := jailsRefuseRoot(v.Name, rd.Strategy, d.rootJails() != nil && jailed(drv), d.cfg.Jailer)
	if err != nil || !unjail {
		return drv, err
	}
	return vmm.SelectWith(vmm.Options{Pref: v.VMM, FirecrackerBin: d.cfg.FirecrackerBin, QEMUBin: d.cfg.QEMUBin,
		Jailer: "off", QEMUAccel: d.cfg.QEMUAccel, KVMVerdictFile: filepath.Join(d.layout.StateDir, "kvm-stalled")})
}

// jailsRefuseRoot says whether VM name, whose root disk is of strategy s,
// must run unjailed because its Firecracker would be jailed by the root
// helper (helperJailed), which takes no device; with firecracker_jailer
// = "on" (jailer) that is an error.
func jailsRefuseRoot(name string, s rootdisk.Strategy, helperJailed bool, jailer string) (bool, error) {
	if !helperJailed || s != rootdisk.DM {
		return false, nil
	}
	if jailer == "on" {
		return false, api.Errorf(api.CodeBadRequest, "vm %s has a dm root disk, which a Firecracker jailed by banger's root helper cannot hold (it is given files only); recreate the VM (it then gets a file root) or set firecracker_jailer = \"auto\", which runs this one unjailed", name)
	}
	return true, nil
}

// rootJails is the root helper that jails Firecracker for this daemon
// when it is not root (system mode), else nil.
func (d *Daemon) rootJails() vmm.RootJails {
	if !d.viaHelper {
		return nil
	}
	j, _ := d.priv.(vmm.RootJails)
	return j
}

// jailBase is where jailed Firecracker VMs get their chroots, on the
// filesystem of their disks (hard-linked in): in the state directory, or
// root's beside it in system mode (config.Layout.JailDir).
func (d *Daemon) jailBase() string {
	if d.layout.JailDir != "" {
		return d.layout.JailDir
	}
	return filepath.Join(d.layout.StateDir, "jail")
}

// refresh reconciles one VM's record with the host: a VM recorded as
// running whose VMM is gone is marked stopped and its tap released.
func (d *Daemon) refresh(ctx context.Context, v store.VM) (store.VM, error) {
	if v.State != store.StateRunning {
		return v, nil
	}
	// Liveness needs no VMM binary: pid, start time and socket identify
	// the process, whatever PATH or config say now.
	if vmm.Alive(handleOf(v)) {
		return v, nil
	}
	d.log.Warn("VMM of running VM is gone; marking stopped", "vm", v.Name, "pid", v.PID)
	d.releaseRuntime(ctx, &v)
	v.State = store.StateStopped
	v.LastError = fmt.Sprintf("VMM (pid %d) exited without banger stopping it; see `banger vm logs %s`", v.PID, v.Name)
	if err := d.store.UpdateVM(ctx, v); err != nil {
		return v, err
	}
	d.syncNetwork(ctx)
	return d.store.GetVM(ctx, v.Name)
}

// syncNetwork brings DNS records and network rules in line with the VM
// rows after a change; a failure is logged (the VMs that need NAT report
// it themselves, and the watch loop retries).
func (d *Daemon) syncNetwork(ctx context.Context) {
	if err := d.net.sync(context.WithoutCancel(ctx)); err != nil {
		d.log.Warn("sync network rules", "err", err)
	}
}

// releaseRuntime removes what only a running VM holds: its tap and VMM
// runtime directory. The caller saves the record.
func (d *Daemon) releaseRuntime(ctx context.Context, v *store.VM) {
	// The recorded tap (a pool tap keeps its pool name), and the one named
	// after the VM's id: a tap created cold is released even when a daemon
	// died between creating it and recording it.
	for _, tap := range []string{v.Tap, hostnet.TapName(v.ID)} {
		if tap == "" {
			continue
		}
		if err := d.priv.DeleteTap(tap); err != nil {
			d.log.Warn("delete tap", "vm", v.Name, "tap", tap, "err", err)
		}
	}
	// Its forwards end with it, before its address can go to another VM.
	if n := d.fwd.StopVM(v.Name); n > 0 {
		d.log.Info("forwards ended with their VM", "vm", v.Name, "count", n)
	}
	// The shared SSH connection the CLI kept to the guest ends with it.
	if ctl := d.pathsFor(v.ID).sshControl(); fileExists(ctl) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		if _, err := d.runner.Run(cctx, "ssh", "-F", "/dev/null", "-o", "ControlPath="+ctl, "-O", "exit", "banger-vm"); err != nil {
			d.log.Debug("close the shared SSH connection", "vm", v.Name, "err", err)
		}
		cancel()
	}
	// A dm root's snapshot device goes with the VMM.
	if err := d.detachDisks(ctx, v); err != nil {
		d.log.Warn("detach disks", "vm", v.Name, "err", err)
	}
	// The driver removes what it keeps outside the runtime dir (a
	// Firecracker jail); it refuses while the VMM still runs.
	if v.PID != 0 {
		if err := vmm.CleanupVia(handleOf(*v), d.rootJails()); err != nil {
			d.log.Warn("clean up after the VMM", "vm", v.Name, "err", err)
		}
	}
	_ = os.RemoveAll(d.pathsFor(v.ID).run)
	v.Tap = ""
	v.PID = 0
	v.PIDStartTime = 0
	v.APISocket = ""
}

func (d *Daemon) getVM(ctx context.Context, name string) (store.VM, error) {
	if name == "" {
		return store.VM{}, api.Errorf(api.CodeBadRequest, "missing VM name")
	}
	v, err := d.store.GetVM(ctx, name)
	if err == nil {
		err = usersVM(v)
	}
	if err != nil || v.State != store.StateRunning {
		return v, err
	}
	// Reconcile only when no lifecycle change holds the VM: a stop or
	// restart in progress must not be overwritten by a stale read.
	mu := d.vmLock(name)
	if !mu.TryLock() {
		return v, nil
	}
	defer mu.Unlock()
	if v, err = d.store.GetVM(ctx, name); err != nil {
		return v, err
	}
	return d.refresh(ctx, v)
}

// usersVM refuses the daemon's own temporary VMs to the vm commands:
// they belong to an operation, which removes them when it ends.
func usersVM(v store.VM) error {
	switch v.Purpose {
	case "":
		return nil
	case store.PurposeImageWarm:
		return api.Errorf(api.CodeBadRequest, "vm %q is the template VM of an image warm; it goes away with the warm (banger ops shows it, banger ops cancel stops it)", v.Name)
	default:
		return api.Errorf(api.CodeBadRequest, "vm %q is the temporary VM of an image build; it goes away with the build (banger ops shows it, banger ops cancel stops it)", v.Name)
	}
}

// lockVM takes the VM's lifecycle lock and loads its (refreshed) record;
// the caller runs unlock when done.
func (d *Daemon) lockVM(ctx context.Context, name string) (store.VM, func(), error) {
	if name == "" {
		return store.VM{}, nil, api.Errorf(api.CodeBadRequest, "missing VM name")
	}
	// A create holds the lock for minutes: answer at once instead.
	if v, err := d.store.GetVM(ctx, name); err != nil {
		return v, nil, err
	} else if err := usersVM(v); err != nil {
		return v, nil, err
	} else if v.State == store.StateCreating {
		return v, nil, api.Errorf(api.CodeBadRequest, "vm %q is still being created; wait for its create to finish or cancel it (banger ops shows it)", name)
	}
	mu := d.vmLock(name)
	mu.Lock()
	v, err := d.store.GetVM(ctx, name)
	if err == nil {
		v, err = d.refresh(ctx, v)
	}
	if err != nil {
		mu.Unlock()
		return v, nil, err
	}
	return v, mu.Unlock, nil
}

func (d *Daemon) vmList(ctx context.Context, _ noParams) (api.VMListResult, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return api.VMListResult{}, err
	}
	out := api.VMListResult{VMs: []api.VM{}}
	for _, v := range vms {
		if v.Purpose != "" {
			continue
		}
		if v, err = d.refresh(ctx, v); err != nil {
			return out, err
		}
		out.VMs = append(out.VMs, d.apiVM(v))
	}
	return out, nil
}

func (d *Daemon) vmShow(ctx context.Context, p api.VMRef) (api.VM, error) {
	v, err := d.getVM(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	out := d.apiVM(v)
	if v.State == store.StateRunning {
		out.VMMState = vmmStateNote(ctx, v)
		actx, cancel := context.WithTimeout(ctx, agentCallTimeout)
		defer cancel()
		err := d.withAgent(actx, v, func(c *agent.Client) error {
			h, err := c.Health(actx)
			out.Agent = toAPIHealth(h)
			return err
		})
		if err != nil {
			out.Agent, out.AgentError = nil, err.Error()
		}
	}
	return out, nil
}

func (d *Daemon) vmStart(ctx context.Context, p api.VMRef) (api.VM, error) {
	v, unlock, err := d.lockVM(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	switch v.State {
	case store.StateRunning:
		return toAPIVM(v), nil
	case store.StateCreating:
		return api.VM{}, api.Errorf(api.CodeBadRequest, "vm %q is still being created; wait for its create to finish", v.Name)
	}
	if err := d.boot(ctx, &v); err != nil {
		return api.VM{}, err
	}
	return toAPIVM(v), nil
}

// boot claims a tap, starts the VMM and waits for SSH, recording progress
// in op when one is given. On failure everything it made is undone and the
// VM is left stopped with the reason in LastError.
func (d *Daemon) boot(ctx context.Context, v *store.VM) error {
	// The VM is starting from the first step on, and a crash before the
	// last leaves it stopped (the boot steps record the rest).
	j := d.beginJournal("", journalVMStart, v.Name)
	err := d.bootJournaled(ctx, v, j)
	j.finish(ctx) // not deferred: see runVMPipelineFrom
	return err
}

func (d *Daemon) bootJournaled(ctx context.Context, v *store.VM, j *journalOp) error {
	if err := j.record(ctx, "begin", journalAct{Do: actMarkStopped, VM: v.Name, ID: v.ID}); err != nil {
		return err
	}
	v.StartedFrom = ""
	v.State = store.StateStarting
	if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
		return err
	}
	err := runSteps(ctx, d.log.With("vm", v.Name), nil, j, d.bootSteps(v))
	if errors.Is(err, errVMMStillRunning) {
		d.keepUnstoppableVM(ctx, v, err)
		return err
	}
	if err != nil {
		v.State = store.StateStopped
		v.LastError = err.Error()
		v.PID, v.PIDStartTime, v.APISocket = 0, 0, "" // the undo ended it
		if uerr := d.store.UpdateVM(context.WithoutCancel(ctx), *v); uerr != nil {
			d.log.Error("record failed boot", "vm", v.Name, "err", uerr)
		}
		d.syncNetwork(ctx)
		return err
	}
	return nil
}

// keepUnstoppableVM records a VM whose failed create or start left a VMM
// that would not die as running, with the reason, so the watch loop, vm
// kill and vm delete can still reach it.
func (d *Daemon) keepUnstoppableVM(ctx context.Context, v *store.VM, cause error) {
	v.State = store.StateRunning
	v.LastError = fmt.Sprintf("%v; the VM is kept so it can be killed or deleted (banger vm kill %s)", cause, v.Name)
	if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
		d.log.Error("record a VM whose VMM would not stop", "vm", v.Name, "err", err)
	}
}

func (d *Daemon) vmStop(ctx context.Context, p api.VMRef) (api.VM, error) {
	v, unlock, err := d.lockVM(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if v.State != store.StateRunning {
		return toAPIVM(v), nil
	}
	if err := d.stop(ctx, &v, false); err != nil {
		return api.VM{}, err
	}
	return toAPIVM(v), nil
}

// stop powers the guest off (or kills the VMM when force) and releases the
// runtime resources.
func (d *Daemon) stop(ctx context.Context, v *store.VM, force bool) error {
	h := handleOf(*v)
	// The driver of the handle, not the configured one: stopping needs no
	// binary lookup, and a config change must not strand running VMs.
	drv, err := vmm.ForHandle(h)
	if err != nil {
		return err
	}
	// Once the guest is asked to power off the stop is under way: finish it
	// even if the caller goes away, so the record matches the host.
	ctx = context.WithoutCancel(ctx)
	log := d.log.With("vm", v.Name, "pid", v.PID)
	note := ""
	if force {
		if err := drv.Kill(h); err != nil {
			return api.Errorf(api.CodeOperationFailed, "kill VMM of %s: %v", v.Name, err)
		}
	} else {
		if err := drv.Shutdown(ctx, h); err != nil {
			log.Warn("graceful shutdown request failed; killing", "err", err)
			note = fmt.Sprintf("graceful shutdown failed (%v); killed", err)
			_ = drv.Kill(h)
		} else {
			wctx, cancel := context.WithTimeout(ctx, stopTimeout)
			err := vmm.WaitExit(wctx, h, 200*time.Millisecond)
			cancel()
			if err != nil {
				log.Warn("guest did not power off in time; killing", "timeout", stopTimeout)
				note = fmt.Sprintf("guest did not power off within %s; killed", stopTimeout)
				_ = drv.Kill(h)
			}
		}
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	err = vmm.WaitExit(wctx, h, 50*time.Millisecond)
	cancel()
	if err != nil {
		return api.Errorf(api.CodeOperationFailed, "VMM of %s (pid %d) is still running after SIGKILL", v.Name, v.PID)
	}
	if err := faultAfter(stageStopExited); err != nil {
		return err
	}
	d.releaseRuntime(ctx, v)
	if err := faultAfter(stageStopReleased); err != nil {
		return err
	}
	v.State = store.StateStopped
	v.LastError = note
	if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
		return err
	}
	d.syncNetwork(ctx)
	return nil
}

func (d *Daemon) vmRestart(ctx context.Context, p api.VMRef) (api.VM, error) {
	if _, err := d.vmStop(ctx, p); err != nil {
		return api.VM{}, err
	}
	return d.vmStart(ctx, p)
}

func (d *Daemon) vmKill(ctx context.Context, p api.VMRef) (api.VM, error) {
	v, unlock, err := d.lockVM(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if v.State != store.StateRunning {
		return api.VM{}, api.Errorf(api.CodeNotRunning, "vm %q is not running (state %s)", v.Name, v.State)
	}
	if err := d.stop(ctx, &v, true); err != nil {
		return api.VM{}, err
	}
	return toAPIVM(v), nil
}

func (d *Daemon) vmDelete(ctx context.Context, p api.VMRef) (api.VM, error) {
	v, _, err := d.deleteVM(ctx, p.Name, false)
	return v, err
}

// Points of a stop and a delete the fault-injection tests break at.
const (
	stageStopExited   = "stop: VMM exited"
	stageStopReleased = "stop: runtime released"

	stageDeleteStop  = "delete: stop"
	stageDeleteFiles = "delete: remove files"
	stageDeleteRow   = "delete: remove row"
)

// deleteVM deletes a VM under its lock. With onlyStopped it leaves a VM
// that is running by the time the lock is held (prune must not delete a
// VM someone just started) and reports deleted=false.
func (d *Daemon) deleteVM(ctx context.Context, name string, onlyStopped bool) (api.VM, bool, error) {
	v, unlock, err := d.lockVM(ctx, name)
	if err != nil {
		return api.VM{}, false, err
	}
	defer unlock()
	if onlyStopped && v.State == store.StateRunning {
		return toAPIVM(v), false, nil
	}
	// Once begun, a delete is finished by the next daemon if this one
	// dies on the way; a delete that fails here is over (the VM stays).
	j := d.beginJournal("", journalVMDelete, v.Name)
	av, err := d.deleteJournaled(ctx, v, j)
	j.finish(ctx) // not deferred: see runVMPipelineFrom
	return av, err == nil, err
}

func (d *Daemon) deleteJournaled(ctx context.Context, v store.VM, j *journalOp) (api.VM, error) {
	if err := j.record(ctx, "begin", journalAct{Do: actFinishDelete, VM: v.Name, ID: v.ID}); err != nil {
		return api.VM{}, err
	}
	if v.State == store.StateRunning {
		if err := d.stop(ctx, &v, false); err != nil {
			return api.VM{}, err
		}
	}
	if err := faultAfter(stageDeleteStop); err != nil {
		return api.VM{}, err
	}
	if err := d.removeVMFiles(v); err != nil {
		return api.VM{}, err
	}
	if err := faultAfter(stageDeleteFiles); err != nil {
		return api.VM{}, err
	}
	if err := d.store.DeleteVM(context.WithoutCancel(ctx), v.Name); err != nil {
		return api.VM{}, err
	}
	if err := faultAfter(stageDeleteRow); err != nil {
		return api.VM{}, err
	}
	d.syncNetwork(ctx)
	// Layers it shared with clones stay until the last of them goes.
	d.layersMu.Lock()
	d.gcLayers(context.WithoutCancel(ctx))
	d.layersMu.Unlock()
	v.State = "deleted"
	return toAPIVM(v), nil
}

// removeVMFiles deletes a VM's disks, logs, runtime dir and pinned host keys.
func (d *Daemon) removeVMFiles(v store.VM) error {
	paths := d.pathsFor(v.ID)
	if err := os.RemoveAll(paths.run); err != nil {
		return fmt.Errorf("remove %s: %w", paths.run, err)
	}
	if err := os.RemoveAll(paths.dir); err != nil {
		return fmt.Errorf("remove %s: %w", paths.dir, err)
	}
	hosts := []string{v.Name + ".vm"}
	if v.IP != "" {
		hosts = append(hosts, v.IP)
	}
	if err := sshx.RemoveHost(d.layout.KnownHosts, hosts...); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pinned host keys of %s: %w", v.Name, err)
	}
	return nil
}

func (d *Daemon) vmSet(ctx context.Context, p api.VMSetParams) (api.VM, error) {
	v, unlock, err := d.lockVM(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	resources := p.VCPU != 0 || p.MemoryMiB != 0 || p.DiskSize != ""
	if !resources && p.NAT == nil {
		return api.VM{}, api.Errorf(api.CodeBadRequest, "nothing to change: pass --vcpu, --memory, --disk-size, --nat or --no-nat")
	}
	if resources && v.State != store.StateStopped {
		return api.VM{}, api.Errorf(api.CodeBadRequest, "vm %q is %s; stop it first to change --vcpu, --memory or --disk-size (banger vm stop %s); --nat and --no-nat work on a running VM", v.Name, v.State, v.Name)
	}
	if p.NAT != nil && *p.NAT != v.NAT {
		if err := d.setNAT(ctx, &v, *p.NAT); err != nil {
			return api.VM{}, err
		}
	}
	if !resources {
		return d.apiVM(v), nil
	}
	if p.VCPU != 0 {
		if err := d.checkVCPU(p.VCPU); err != nil {
			return api.VM{}, err
		}
		v.VCPU = p.VCPU
	}
	if p.MemoryMiB != 0 {
		if err := d.checkMemory(p.MemoryMiB); err != nil {
			return api.VM{}, err
		}
		v.MemoryMiB = p.MemoryMiB
	}
	var grow *journalOp // a disk grow's, once it begins
	if p.DiskSize != "" {
		size, err := parseDiskSize(p.DiskSize)
		if err != nil {
			return api.VM{}, err
		}
		if size < v.DiskSizeBytes {
			return api.VM{}, api.Errorf(api.CodeBadRequest, "disk size %s is smaller than the current %d bytes; work disks only grow", p.DiskSize, v.DiskSizeBytes)
		}
		if size > v.DiskSizeBytes {
			// A crash between growing the disk and recording it records
			// it at the next start-up.
			grow = d.beginJournal("", journalVMSet, v.Name)
			if err := grow.record(ctx, "grow work disk", journalAct{Do: actSetDiskSize, VM: v.Name, ID: v.ID, Size: size}); err != nil {
				return api.VM{}, err
			}
			if err := d.growWorkDisk(ctx, v, size); err != nil {
				// It may have grown before failing (or being cancelled):
				// the journal records what the disk has at the next start.
				return api.VM{}, err
			}
			v.DiskSizeBytes = size
		}
	}
	// Recorded even when the caller left: the disk has grown. Should
	// this fail, the journal records the size at the next start-up.
	if err := d.store.UpdateVM(context.WithoutCancel(ctx), v); err != nil {
		return api.VM{}, err
	}
	grow.finish(ctx)
	v, err = d.store.GetVM(ctx, v.Name)
	return d.apiVM(v), err
}

// setNAT turns a VM's way out on or off, live: the rules follow the row at
// once. When the rules cannot be installed the change is undone and the
// reason returned.
func (d *Daemon) setNAT(ctx context.Context, v *store.VM, on bool) error {
	v.NAT = on
	if err := d.store.UpdateVM(ctx, *v); err != nil {
		return err
	}
	if err := d.net.sync(ctx); err != nil {
		v.NAT = !on
		if uerr := d.store.UpdateVM(context.WithoutCancel(ctx), *v); uerr != nil {
			d.log.Error("restore NAT setting", "vm", v.Name, "err", uerr)
		}
		d.syncNetwork(ctx)
		return natError(err)
	}
	return nil
}

// apiVM is the public shape of v with what the network service knows.
func (d *Daemon) apiVM(v store.VM) api.VM {
	out := toAPIVM(v)
	out.NATNote = d.net.natNote(v)
	out.RootDisk, out.RootUsedBytes, out.WorkUsedBytes = d.diskUsage(v)
	return out
}

func (d *Daemon) vmLogs(ctx context.Context, p api.VMLogsParams) (api.VMLogsResult, error) {
	v, err := d.getVM(ctx, p.Name)
	if err != nil {
		return api.VMLogsResult{}, err
	}
	res := api.VMLogsResult{Running: v.State == store.StateRunning || v.State == store.StateCreating || v.State == store.StateStarting}
	f, err := os.Open(d.pathsFor(v.ID).console)
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return res, err
	}
	size := st.Size()
	max := p.MaxBytes
	if max <= 0 || max > 1<<20 {
		max = 256 << 10
	}
	off := p.Offset
	if p.Tail > 0 && off == 0 {
		off = size - p.Tail
	}
	if off < 0 {
		off = 0
	}
	if off > size {
		off = size // the log was truncated; restart from its end
	}
	n := size - off
	if n > max {
		n = max
	}
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return res, err
	}
	res.Data = string(buf)
	res.NextOffset = off + n
	return res, nil
}

func (d *Daemon) vmSSHInfo(ctx context.Context, p api.VMRef) (api.VMSSHInfo, error) {
	v, err := d.getVM(ctx, p.Name)
	if err != nil {
		return api.VMSSHInfo{}, err
	}
	if v.State != store.StateRunning {
		return api.VMSSHInfo{}, api.Errorf(api.CodeNotRunning, "vm %q is not running (state %s); start it with banger vm start %s", v.Name, v.State, v.Name)
	}
	return api.VMSSHInfo{Name: v.Name, IP: v.IP, User: "root", KeyPath: d.layout.SSHKey,
		KnownHostsPath: d.layout.KnownHosts, HostAlias: v.IP, ControlPath: d.pathsFor(v.ID).sshControl()}, nil
}

// vmPrune deletes stopped VMs: the ones named (those the user confirmed),
// or every stopped one when none is named. A VM that is running by the
// time its lock is held is left alone.
func (d *Daemon) vmPrune(ctx context.Context, p api.VMPruneParams) (api.VMPruneResult, error) {
	names := p.Names
	if len(names) == 0 {
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			return api.VMPruneResult{}, err
		}
		for _, v := range vms {
			if v.Purpose == "" && (v.State == store.StateStopped || v.State == store.StateError) {
				names = append(names, v.Name)
			}
		}
	}
	res := api.VMPruneResult{Deleted: []string{}}
	for _, name := range names {
		_, deleted, err := d.deleteVM(ctx, name, true)
		if err != nil {
			return res, fmt.Errorf("prune %s: %w", name, err)
		}
		if deleted {
			res.Deleted = append(res.Deleted, name)
		}
	}
	return res, nil
}

func (d *Daemon) checkVCPU(n int) error {
	if n < 1 || n > d.host.CPUs {
		return api.Errorf(api.CodeBadRequest, "vcpu %d out of range: this host allows 1 to %d", n, d.host.CPUs)
	}
	return nil
}

func (d *Daemon) checkMemory(mib int) error {
	hostMiB := int(d.host.MemoryBytes >> 20)
	if mib < 128 || mib > hostMiB {
		return api.Errorf(api.CodeBadRequest, "memory %d MiB out of range: use 128 to %d MiB (the host's memory)", mib, hostMiB)
	}
	return nil
}

func parseDiskSize(s string) (int64, error) {
	n, err := config.ParseSize(s)
	if err != nil {
		return 0, api.Errorf(api.CodeBadRequest, "disk size: %v", err)
	}
	if n < 64<<20 {
		return 0, api.Errorf(api.CodeBadRequest, "disk size %s is below the 64M minimum", s)
	}
	return n, nil
}

// adoptVMs runs at daemon start: first the journal's undos of operations
// the previous daemon left unfinished, then every VM is reconciled with
// the host: VMs whose VMM survived keep running; the others are marked
// stopped and cleaned up.
func (d *Daemon) adoptVMs(ctx context.Context) {
	d.replayJournal(ctx)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.log.Error("list VMs for adoption", "err", err)
		return
	}
	for _, v := range vms {
		if v.Purpose != "" {
			// The build that owned it died with the previous daemon.
			d.log.Warn("removing the temporary VM of an image build a previous daemon left", "vm", v.Name)
			d.removeOrphanVM(ctx, v)
			continue
		}
		switch v.State {
		case store.StateRunning:
			nv, err := d.refresh(ctx, v)
			if err != nil {
				d.log.Error("adopt VM", "vm", v.Name, "err", err)
			} else if nv.State == store.StateRunning {
				d.log.Info("re-adopted running VM", "vm", v.Name, "pid", v.PID)
			}
		case store.StateCreating:
			// Left half-created, and no journal accounted for it (one
			// written by a daemon from before the journal): undo what the
			// record says exists.
			d.log.Warn("removing VM left half-created by a previous daemon", "vm", v.Name)
			d.removeOrphanVM(ctx, v)
		case store.StateStarting:
			d.log.Warn("stopping a VM whose start a previous daemon left half done", "vm", v.Name)
			d.abortOrphanStart(ctx, v)
		}
	}
	d.syncNetwork(ctx)
	d.removeBuildLeftovers()
	d.sweepScratch()
	d.removeSnapshotLeftovers(ctx)
	d.sweepUnrecorded(ctx)
	d.sweepJails(ctx)
	d.layersMu.Lock()
	d.gcLayers(ctx)
	d.layersMu.Unlock()
}

// removeOrphanVM undoes, at daemon start, a VM whose operation died with
// the previous daemon: its VMM (only if the recorded pid is still that
// process), runtime, files and row.
func (d *Daemon) removeOrphanVM(ctx context.Context, v store.VM) {
	d.killOrphanVMM(ctx, v)
	d.releaseRuntime(ctx, &v)
	if err := d.removeVMFiles(v); err != nil {
		d.log.Error("clean orphaned VM", "vm", v.Name, "err", err)
	}
	if err := d.store.DeleteVM(ctx, v.Name); err != nil {
		d.log.Error("delete orphaned VM", "vm", v.Name, "err", err)
	}
}

// killOrphanVMM ends the VMM a dead daemon's record names, only if the
// recorded pid (with its start time) is still that process.
func (d *Daemon) killOrphanVMM(ctx context.Context, v store.VM) {
	if v.PID == 0 {
		return
	}
	drv, err := vmm.ForHandle(handleOf(v))
	if err != nil {
		return
	}
	h := handleOf(v)
	if drv.Alive(h) {
		_ = drv.Kill(h)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = vmm.WaitExit(wctx, h, 50*time.Millisecond)
		cancel()
	}
}

// abortOrphanStart rolls back, at daemon start, a vm start that died with
// the previous daemon: its VMM ends, its tap and runtime go, the VM is
// stopped with the reason (its disks are the VM's and stay).
func (d *Daemon) abortOrphanStart(ctx context.Context, v store.VM) {
	d.killOrphanVMM(ctx, v)
	d.releaseRuntime(ctx, &v)
	v.State = store.StateStopped
	v.PID, v.PIDStartTime, v.APISocket = 0, 0, ""
	v.LastError = "bangerd stopped while the VM was starting; start it again"
	if err := d.store.UpdateVM(ctx, v); err != nil {
		d.log.Error("record an interrupted start", "vm", v.Name, "err", err)
	}
}

// watchLoop notices VMMs that exit behind the daemon's back.
func (d *Daemon) watchLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			vms, err := d.store.ListVMs(ctx)
			if err != nil {
				continue
			}
			ids := make([]string, 0, len(vms))
			for _, v := range vms {
				ids = append(ids, v.ID)
			}
			d.capConsoles(ids)
			for _, v := range vms {
				if v.State != store.StateRunning {
					continue
				}
				mu := d.vmLock(v.Name)
				if !mu.TryLock() {
					continue // a lifecycle change is in progress
				}
				if cur, err := d.store.GetVM(ctx, v.Name); err == nil {
					_, _ = d.refresh(ctx, cur)
				}
				mu.Unlock()
			}
			d.net.ensureRules(ctx)
			d.autoForward(ctx)
		}
	}
}

// sshControl is the socket of the CLI's shared SSH connection to the VM;
// it lives in the runtime dir, which goes when the VM stops.
func (p vmPaths) sshControl() string { return filepath.Join(p.run, "ssh.ctl") }

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// statusReporter is a VMM driver that can say how its guest runs (QEMU,
// over QMP).
type statusReporter interface {
	Status(ctx context.Context, h vmm.Handle) (string, error)
}

// vmmStateNote asks the VMM of a running VM how the guest runs, and says
// what to do when it is not running normally. A guest whose copy-on-write
// layer could not grow (the host filesystem is full) is paused by QEMU
// (werror=stop) instead of corrupted: vm show says so.
func vmmStateNote(ctx context.Context, v store.VM) string {
	drv, err := vmm.ForHandle(handleOf(v))
	if err != nil {
		return ""
	}
	sr, ok := drv.(statusReporter)
	if !ok {
		return ""
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := sr.Status(sctx, handleOf(v))
	if err != nil {
		return ""
	}
	return describeVMMState(v.Name, st)
}

// describeVMMState turns a QEMU run state into what vm show prints ("" for
// a guest that runs normally).
func describeVMMState(name, st string) string {
	switch st {
	case "running", "":
		return ""
	case "io-error":
		return fmt.Sprintf("paused: a disk write failed (QEMU io-error), usually because the filesystem holding the VM's disk layers is full; free space there, then banger vm restart %s", name)
	default:
		return "the VMM reports " + st
	}
}
