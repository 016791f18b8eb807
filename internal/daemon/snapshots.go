package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/agent"
	"banger/internal/api"
	diskpkg "banger/internal/disk"
	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/rootdisk"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/store"
	"banger/internal/version"
	"banger/internal/vmm"
)

// A snapshot is a paused guest written down: its memory and device state
// (a file under snapshots/NAME) and its disks as they were at that
// instant, frozen into read-only layers in the layers directory (shared,
// kept while any VM or snapshot stands on them; gcLayers removes the
// rest). A VM restored from it gets new copy-on-write overlays over those
// layers, a VMM that loads the state instead of booting, and then, from
// the host through its agent, its own identity before anyone can reach it.

// snapshotMeta is a snapshot's metadata (store.Snapshot.Meta).
type snapshotMeta struct {
	// Root and Work are the frozen disks: Path is the read-only layer,
	// Chain what it stands on.
	Root rootdisk.Disk `json:"root"`
	Work rootdisk.Disk `json:"work"`
	// State is the saved memory and device state; StateFiles every file
	// of it (State first; Firecracker keeps the memory beside it). Empty
	// StateFiles (snapshots saved before it existed) means [State].
	State      string   `json:"state"`
	StateFiles []string `json:"state_files,omitempty"`
	// MAC and IP are the guest's at the save; a restore replaces them.
	MAC string `json:"mac"`
	IP  string `json:"ip"`
	// ImageSHA256 and KernelID say which image and kernel were running:
	// a snapshot of another build of either is stale.
	ImageSHA256 string `json:"image_sha256"`
	KernelID    string `json:"kernel_id"`
	StateBytes  int64  `json:"state_bytes"`
	SaveMS      int64  `json:"save_ms"`
	// Jailed says the VMM ran under Firecracker's jailer: the saved
	// state names its disks by jail paths, which only a jailed VMM can
	// restore (an unjailed one names them by descriptor).
	Jailed bool `json:"jailed,omitempty"`
}

// stateFiles lists every file of the saved state.
func (m snapshotMeta) stateFiles() []string {
	if len(m.StateFiles) == 0 {
		return []string{m.State}
	}
	return m.StateFiles
}

func decodeSnapshotMeta(sn store.Snapshot) (snapshotMeta, error) {
	var m snapshotMeta
	if err := json.Unmarshal([]byte(sn.Meta), &m); err != nil {
		return m, fmt.Errorf("snapshot %s: metadata: %w", sn.Name, err)
	}
	return m, nil
}

func (d *Daemon) snapshotsDir() string { return filepath.Join(d.layout.StateDir, "snapshots") }

// Stage names of a restore (the create's others stay).
const (
	stageLayerDisks = "layer disks over the snapshot"
	stageRestoreVMM = "restore VMM"
	stageRestoreID  = "restore identity"
	stageQuiesce    = "quiesce"
	stageSave       = "save snapshot"
)

// accelOf names how drv runs guests: "kvm" or "tcg".
func accelOf(drv vmm.Driver) string {
	if k, ok := drv.(interface{ KVM() bool }); ok && !k.KVM() {
		return "tcg"
	}
	return "kvm"
}

// kernelID identifies the kernel build by its boot file's sha256.
func (d *Daemon) kernelID(ctx context.Context, name string) (string, error) {
	km, err := d.kernelFor(ctx, name)
	if err != nil {
		return "", err
	}
	f, ok := km.manifest.Files[kernel.RoleVmlinuz]
	if !ok {
		f = km.manifest.Files[kernel.RoleVmlinux]
	}
	return f.SHA256, nil
}

// snapshotStale says why sn can no longer be restored on this daemon, or
// "" when it can.
func (d *Daemon) snapshotStale(ctx context.Context, sn store.Snapshot) string {
	if sn.BangerVersion != version.Version {
		return fmt.Sprintf("it was saved by banger %s; this is banger %s (the agent and guest files it restores into changed)", sn.BangerVersion, version.Version)
	}
	m, err := decodeSnapshotMeta(sn)
	if err != nil {
		return err.Error()
	}
	im, err := d.store.GetImage(ctx, sn.Image)
	if err != nil {
		return fmt.Sprintf("its image %s is gone", sn.Image)
	}
	if im.SHA256 != m.ImageSHA256 {
		return fmt.Sprintf("its image %s changed since it was saved", sn.Image)
	}
	if id, err := d.kernelID(ctx, sn.Kernel); err != nil || id != m.KernelID {
		return fmt.Sprintf("its kernel %s changed or is gone", sn.Kernel)
	}
	for _, f := range append(append(m.stateFiles(), m.Root.Path, m.Work.Path), append(m.Root.Chain, m.Work.Chain...)...) {
		if _, err := os.Stat(f); err != nil {
			return fmt.Sprintf("its file %s is gone", f)
		}
	}
	return ""
}

// snapshotMismatch says why sn cannot be restored by drv on this host
// (another VMM or accelerator), or "".
func snapshotMismatch(sn store.Snapshot, drv vmm.Driver) string {
	if sn.VMM != drv.Name() || sn.Accel != accelOf(drv) {
		return fmt.Sprintf("it was saved under %s/%s and this host runs %s/%s", sn.VMM, sn.Accel, drv.Name(), accelOf(drv))
	}
	if _, ok := drv.(vmm.Snapshotter); !ok {
		return fmt.Sprintf("the %s driver cannot restore snapshots", drv.Name())
	}
	if m, err := decodeSnapshotMeta(sn); err == nil && m.Jailed != jailed(drv) {
		return fmt.Sprintf("it was saved by a Firecracker %s and this one runs %s (firecracker_jailer, or whether bangerd runs as root and finds the jailer, changed)", jailWord(m.Jailed), jailWord(jailed(drv)))
	}
	return ""
}

// jailed reports whether drv runs its VMMs under a jailer.
func jailed(drv vmm.Driver) bool {
	j, ok := drv.(interface{ Jailed() bool })
	return ok && j.Jailed()
}

func jailWord(j bool) string {
	if j {
		return "under its jailer"
	}
	return "unjailed"
}

// pickSnapshot chooses how a create starts: the named snapshot (refused
// with the reason when it cannot be restored), else a warm snapshot of
// the image with the same machine, else none (a cold boot).
func (d *Daemon) pickSnapshot(ctx context.Context, p api.VMCreateParams, plan *createPlan, drv vmm.Driver) (*store.Snapshot, error) {
	if p.FromSnapshot != "" {
		if p.Cold {
			return nil, api.Errorf(api.CodeBadRequest, "--cold and --from-snapshot contradict each other")
		}
		if plan.noStart {
			return nil, api.Errorf(api.CodeBadRequest, "--from-snapshot restores a running guest; it cannot be combined with --no-start")
		}
		sn, err := d.store.GetSnapshot(ctx, p.FromSnapshot)
		if err != nil {
			if api.IsCode(err, api.CodeNotFound) {
				return nil, api.Errorf(api.CodeNotFound, "snapshot %q not found; see banger snapshot list", p.FromSnapshot)
			}
			return nil, err
		}
		if why := d.snapshotStale(ctx, sn); why != "" {
			return nil, api.Errorf(api.CodeBadRequest, "snapshot %s is stale: %s; make a new one", sn.Name, why)
		}
		if why := snapshotMismatch(sn, drv); why != "" {
			return nil, api.Errorf(api.CodeBadRequest, "snapshot %s cannot be restored here: %s", sn.Name, why)
		}
		if p.Image != "" && p.Image != sn.Image {
			return nil, api.Errorf(api.CodeBadRequest, "snapshot %s is of image %s, not %s", sn.Name, sn.Image, p.Image)
		}
		if (p.VCPU != 0 && p.VCPU != sn.VCPU) || (p.MemoryMiB != 0 && p.MemoryMiB != sn.MemoryMiB) {
			return nil, api.Errorf(api.CodeBadRequest, "snapshot %s was saved with %d vCPUs and %d MiB; a restore keeps them (leave out --vcpu and --memory)", sn.Name, sn.VCPU, sn.MemoryMiB)
		}
		if p.DiskSize == "" && plan.diskSize < sn.WorkSizeBytes {
			plan.diskSize = sn.WorkSizeBytes
		}
		if plan.diskSize < sn.WorkSizeBytes {
			return nil, api.Errorf(api.CodeBadRequest, "snapshot %s's work disk is %s; --disk-size can grow it, not shrink it", sn.Name, humanSize(sn.WorkSizeBytes))
		}
		if plan.image, err = d.store.GetImage(ctx, sn.Image); err != nil {
			return nil, err
		}
		if plan.kernel, err = d.store.GetKernel(ctx, sn.Kernel); err != nil {
			return nil, err
		}
		plan.vcpu, plan.memoryMiB = sn.VCPU, sn.MemoryMiB
		return &sn, nil
	}
	if p.Cold || plan.noStart || plan.pullImage != "" {
		return nil, nil
	}
	all, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	for _, sn := range all {
		if sn.Kind != store.SnapshotWarm || sn.Image != plan.image.Name || sn.Kernel != plan.kernel.Name ||
			sn.VCPU != plan.vcpu || sn.MemoryMiB != plan.memoryMiB || sn.WorkSizeBytes > plan.diskSize {
			continue
		}
		if snapshotMismatch(sn, drv) != "" {
			continue
		}
		if why := d.snapshotStale(ctx, sn); why != "" {
			d.log.Info("a warm snapshot of the image is stale; booting cold", "snapshot", sn.Name, "why", why)
			continue
		}
		return &sn, nil
	}
	return nil, nil
}

// layerDisksSteps replace a create's root and work disk steps when it
// restores sn: each disk a new qcow2 overlay over the snapshot's frozen
// layer (the work disk grows to its size after the restore).
func (d *Daemon) layerDisksStep(plan createPlan, vm *store.VM) step {
	return step{stageLayerDisks, []journalAct{{Do: actRemovePath, Path: d.pathsFor(vm.ID).dir}}, func(ctx context.Context) (func(context.Context) error, error) {
		m, err := decodeSnapshotMeta(*plan.snapshot)
		if err != nil {
			return nil, err
		}
		paths := d.pathsFor(vm.ID)
		if err := os.MkdirAll(paths.dir, 0o700); err != nil {
			return nil, err
		}
		undo := func(context.Context) error { return os.RemoveAll(paths.dir) }
		var rd, wd rootdisk.Disk
		if d.layersLive(plan.snapshot.VMM) {
			if rd, err = rootdisk.Over(ctx, d.runner, m.Root.Path, m.Root.Format, m.Root.Chain, filepath.Join(paths.dir, "root.qcow2")); err != nil {
				return undo, spaceError(err)
			}
			if wd, err = rootdisk.Over(ctx, d.runner, m.Work.Path, m.Work.Format, m.Work.Chain, filepath.Join(paths.dir, "work.qcow2")); err != nil {
				return undo, spaceError(err)
			}
		} else {
			// Raw files only (Firecracker): each disk a copy of its
			// frozen layer, a reflink where the filesystem can.
			if rd, err = rootdisk.Create(ctx, d.runner, rootdisk.Copy, m.Root.Path, paths.root); err != nil {
				return undo, spaceError(err)
			}
			if _, err := diskpkg.CloneRoot(ctx, m.Work.Path, paths.work); err != nil {
				return undo, spaceError(err)
			}
			wd = rootdisk.NewRaw(paths.work)
		}
		vm.RootDisk, vm.WorkDisk = encodeDisk(rd), encodeDisk(wd)
		return undo, d.store.UpdateVM(context.WithoutCancel(ctx), *vm)
	}}
}

// layersLive reports whether VMs of the VMM vmmName layer their disks
// over a snapshot's frozen layers (QEMU, qcow2 overlays) rather than
// copying them (Firecracker, raw files).
func (d *Daemon) layersLive(vmmName string) bool {
	drv, err := vmm.ForHandle(vmm.Handle{Driver: vmmName})
	if err != nil {
		return false
	}
	_, ok := drv.(vmm.DiskLayerer)
	return ok
}

// restoreSpec is what the boot steps need to restore instead of boot.
type restoreSpec struct {
	snapshot store.Snapshot
	meta     snapshotMeta
}

// restoreIdentity gives a just-restored guest its own identity through
// its agent, before anything else can reach it: the work disk grown to
// the VM's size, fresh entropy, the clock, every per-VM file of the
// configuration disk (host keys, machine-id, hostname, network), sshd
// reloaded, and last the MAC and address.
func (d *Daemon) restoreIdentity(ctx context.Context, v *store.VM, h vmm.Handle, rs *restoreSpec) error {
	drv, err := vmm.ForHandle(h)
	if err != nil {
		return err
	}
	snap, ok := drv.(vmm.Snapshotter)
	if !ok {
		return fmt.Errorf("the %s driver cannot restore snapshots", drv.Name())
	}
	grow := v.DiskSizeBytes > rs.snapshot.WorkSizeBytes
	if grow {
		if err := snap.ResizeDisk(ctx, h, "work", v.DiskSizeBytes); err != nil {
			return fmt.Errorf("grow the work disk: %w", err)
		}
	}
	files, err := d.guestFiles(*v)
	if err != nil {
		return err
	}
	gw, prefix, err := hostnet.Gateway(d.cfg.BridgeCIDR)
	if err != nil {
		return err
	}
	p := agent.RestoreParams{Hostname: v.Name, OldMAC: rs.meta.MAC, MAC: v.MAC,
		Address: netip.PrefixFrom(netip.MustParseAddr(v.IP), prefix).String(), Gateway: gw,
		Entropy: make([]byte, 64), GrowWork: grow, ReloadSSHD: true}
	if _, err := rand.Read(p.Entropy); err != nil {
		return err
	}
	for _, f := range files {
		// Symbolic links and the agent itself are already in the
		// restored guest; every file it gets is under /etc.
		if f.Target != "" || !strings.HasPrefix(f.Path, "/etc/") {
			continue
		}
		mode := uint32(f.Mode)
		if mode == 0 {
			mode = 0o644
		}
		p.Files = append(p.Files, agent.RestoreFile{Path: f.Path, Data: f.Data, Mode: mode})
	}
	rctx, cancel := context.WithTimeout(ctx, agentWaitTimeout)
	defer cancel()
	var res agent.RestoreResult
	err = d.withBootingAgent(rctx, *v, func(c *agent.Client) error {
		p.UnixNano = time.Now().UnixNano()
		res, err = c.Restore(rctx, p)
		return err
	})
	if err != nil {
		return err
	}
	rpc.Logger(ctx).Info("restored guest identity", "steps", res.Steps)
	return nil
}

// snapshotVM saves the running VM v as snapshot name: it pauses the
// guest, switches each disk to a new overlay over its current top (which
// becomes a frozen layer of the snapshot), writes the memory and device
// state, and, for a user's VM, lets it run again. The caller holds v's
// lock. On failure the snapshot's files go; disks already switched stay
// switched (the VM runs on the new overlays, recorded).
func (d *Daemon) snapshotVM(ctx context.Context, v *store.VM, name, kind string) (store.Snapshot, error) {
	h := handleOf(*v)
	drv, err := vmm.ForHandle(h)
	if err != nil {
		return store.Snapshot{}, err
	}
	snap, ok := drv.(vmm.Snapshotter)
	if !ok {
		return store.Snapshot{}, api.Errorf(api.CodeBadRequest, "vm %s runs under %s, whose driver cannot save a running guest yet", v.Name, drv.Name())
	}
	rd, wd, err := d.disksOf(*v)
	if err != nil {
		return store.Snapshot{}, err
	}
	for _, disk := range []rootdisk.Disk{rd, wd} {
		if disk.Strategy == rootdisk.DM {
			want := "qcow2"
			if _, live := snap.(vmm.DiskLayerer); !live {
				want = "reflink"
			}
			return store.Snapshot{}, api.Errorf(api.CodeBadRequest, "vm %s's root is a device-mapper snapshot; snapshots need qcow2 or raw layers (root_disk = \"%s\" in config.toml for new VMs)", v.Name, want)
		}
	}
	im, err := d.store.GetImage(ctx, v.Image)
	if err != nil {
		return store.Snapshot{}, err
	}
	kid, err := d.kernelID(ctx, v.Kernel)
	if err != nil {
		return store.Snapshot{}, err
	}
	dir := filepath.Join(d.snapshotsDir(), name)
	if _, err := os.Lstat(dir); err == nil {
		return store.Snapshot{}, api.Errorf(api.CodeAlreadyExists, "%s exists though no snapshot %q is recorded; remove it first", dir, name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return store.Snapshot{}, err
	}
	if err := os.MkdirAll(d.layersDir(), 0o700); err != nil {
		return store.Snapshot{}, err
	}
	ok = false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dir)
		}
	}()
	// The layers are the GC's business too: none is collected half-made.
	d.layersMu.Lock()
	defer d.layersMu.Unlock()

	if err := snap.Pause(ctx, h); err != nil {
		return store.Snapshot{}, fmt.Errorf("pause %s: %w", v.Name, err)
	}
	defer func() {
		// A user's VM runs on whatever happens; a template is removed.
		if kind == store.SnapshotVM {
			if err := snap.Resume(context.WithoutCancel(ctx), h); err != nil {
				d.log.Error("resume a VM after its snapshot", "vm", v.Name, "err", err)
			}
		}
	}()
	var frozenRoot, frozenWork rootdisk.Disk
	layerer, live := snap.(vmm.DiskLayerer)
	if live {
		var newRoot, newWork rootdisk.Disk
		if frozenRoot, newRoot, err = d.freezeLive(ctx, layerer, h, *v, "root", rd, name); err != nil {
			return store.Snapshot{}, err
		}
		v.RootDisk = encodeDisk(newRoot)
		if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
			return store.Snapshot{}, err
		}
		if frozenWork, newWork, err = d.freezeLive(ctx, layerer, h, *v, "work", wd, name); err != nil {
			return store.Snapshot{}, err
		}
		v.WorkDisk = encodeDisk(newWork)
		if err := d.store.UpdateVM(context.WithoutCancel(ctx), *v); err != nil {
			return store.Snapshot{}, err
		}
	}
	state := filepath.Join(dir, "state.bin")
	start := time.Now()
	if err := snap.SaveState(ctx, h, state); err != nil {
		return store.Snapshot{}, fmt.Errorf("save the state of %s: %w; last console lines:\n%s", v.Name, err, tailFile(d.pathsFor(v.ID).console, 5))
	}
	if !live {
		// Copied after the state is saved, the guest still paused: a
		// disk request the VMM finished after the pause is then in the
		// copy and, at worst, done again on restore; copied before, the
		// saved state could show a write the copy lacks.
		if frozenRoot, err = d.freezeCopy(ctx, *v, "root", rd, name); err != nil {
			return store.Snapshot{}, err
		}
		if frozenWork, err = d.freezeCopy(ctx, *v, "work", wd, name); err != nil {
			_ = os.Remove(frozenRoot.Path)
			return store.Snapshot{}, err
		}
		defer func() {
			if !ok {
				_ = os.Remove(frozenRoot.Path)
				_ = os.Remove(frozenWork.Path)
			}
		}()
	}
	saveMS := time.Since(start).Milliseconds()
	var stateBytes int64
	for _, f := range snap.StateFiles(state) {
		_ = os.Chmod(f, 0o400)
		stateBytes += fileSize(f)
	}
	for _, l := range []string{frozenRoot.Path, frozenWork.Path} {
		_ = os.Chmod(l, 0o444)
	}
	m := snapshotMeta{Root: frozenRoot, Work: frozenWork, State: state, StateFiles: snap.StateFiles(state), MAC: v.MAC, IP: v.IP, ImageSHA256: im.SHA256,
		KernelID: kid, StateBytes: stateBytes, SaveMS: saveMS, Jailed: vmm.JailedHandle(h)}
	mj, err := json.Marshal(m)
	if err != nil {
		return store.Snapshot{}, err
	}
	sn := store.Snapshot{Name: name, Kind: kind, Image: v.Image, Kernel: v.Kernel, VMM: drv.Name(), Accel: d.accelFor(drv.Name()),
		VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, WorkSizeBytes: v.DiskSizeBytes, BangerVersion: version.Version, Dir: dir, Meta: string(mj)}
	if kind == store.SnapshotVM {
		sn.SourceVM = v.Name
	}
	if err := d.store.CreateSnapshot(context.WithoutCancel(ctx), &sn); err != nil {
		return store.Snapshot{}, err
	}
	ok = true
	rpc.Logger(ctx).Info("snapshot saved", "snapshot", name, "vm", v.Name, "state_bytes", m.StateBytes, "save_ms", saveMS)
	return sn, nil
}

// accelFor is how the configured driver named vmmName runs guests now.
func (d *Daemon) accelFor(vmmName string) string {
	drv, err := d.driverFor(vmmName)
	if err != nil {
		return "kvm"
	}
	return accelOf(drv)
}

// freezeCopy freezes a paused guest's raw disk for a VMM that cannot
// layer it (Firecracker): the layer is a copy of the disk as it is now
// (a reflink where the filesystem can, else a sparse copy), and the VM
// goes on writing its own file. A dm disk cannot be (snapshotVM refuses
// it first).
func (d *Daemon) freezeCopy(ctx context.Context, v store.VM, drive string, disk rootdisk.Disk, snapName string) (rootdisk.Disk, error) {
	if disk.Format != rootdisk.FormatRaw || len(disk.Chain) != 0 {
		return rootdisk.Disk{}, fmt.Errorf("freeze the %s disk: a %s %s disk over %d layers cannot be copied as one file", drive, disk.Strategy, disk.Format, len(disk.Chain))
	}
	layer := filepath.Join(d.layersDir(), snapName+"-"+drive+"-"+shortID(v.ID)+".raw")
	if err := rootdisk.CheckFree(d.layersDir(), allocatedBytes(disk.Path)); err != nil {
		return rootdisk.Disk{}, spaceError(err)
	}
	if _, err := diskpkg.CloneRoot(ctx, disk.Path, layer); err != nil {
		return rootdisk.Disk{}, spaceError(fmt.Errorf("freeze the %s disk: %w", drive, err))
	}
	return rootdisk.Disk{Strategy: rootdisk.Plain, Path: layer, Format: rootdisk.FormatRaw}, nil
}

// freezeLive makes the paused guest's drive write to a new qcow2 overlay
// from now on and returns its old top as a frozen layer (in the layers
// directory: a hard link, so the content keeps a name whatever happens)
// and the disk the VM now has. The files QEMU has open keep their names
// while it runs: it reopens them by name when it hands its disks over at
// the end of a save and takes them back at cont, so the old top's name
// in the VM's directory stays (a second name of the layer) and the new
// overlay gets a new one.
func (d *Daemon) freezeLive(ctx context.Context, snap vmm.DiskLayerer, h vmm.Handle, v store.VM, drive string, disk rootdisk.Disk, snapName string) (frozen, now rootdisk.Disk, err error) {
	ext := ".qcow2"
	if disk.Format != rootdisk.FormatQCOW2 {
		ext = ".raw"
	}
	layer := filepath.Join(d.layersDir(), snapName+"-"+drive+"-"+shortID(v.ID)+ext)
	if err := os.Link(disk.Path, layer); err != nil {
		return frozen, now, fmt.Errorf("freeze the %s disk: %w (the layers directory must be on the VMs' filesystem)", drive, err)
	}
	newPath := filepath.Join(d.pathsFor(v.ID).dir, drive+"-"+snapName+".qcow2")
	undo := func() {
		_ = os.Remove(newPath)
		_ = os.Remove(layer)
	}
	if err := rootdisk.CreateOverlayFile(ctx, d.runner, newPath, layer, disk.Format); err != nil {
		undo()
		return frozen, now, spaceError(err)
	}
	if err := snap.SnapshotDisk(ctx, h, drive, newPath); err != nil {
		undo()
		return frozen, now, fmt.Errorf("switch the %s disk to a new layer: %w", drive, err)
	}
	strategy := disk.Strategy
	if strategy != rootdisk.QCOW2 {
		strategy = rootdisk.Plain
	}
	frozen = rootdisk.Disk{Strategy: strategy, Path: layer, Format: disk.Format, Chain: disk.Chain}
	now = rootdisk.Disk{Strategy: rootdisk.QCOW2, Path: newPath, Format: rootdisk.FormatQCOW2, Chain: append([]string{layer}, disk.Chain...)}
	return frozen, now, nil
}

// snapshotChains are the layer chains snapshots stand on, for gcLayers.
func (d *Daemon) snapshotChains(ctx context.Context) ([]rootdisk.Disk, error) {
	all, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var out []rootdisk.Disk
	for _, sn := range all {
		m, err := decodeSnapshotMeta(sn)
		if err != nil {
			return nil, err
		}
		for _, f := range []rootdisk.Disk{m.Root, m.Work} {
			out = append(out, rootdisk.Disk{Chain: append([]string{f.Path}, f.Chain...)})
		}
	}
	return out, nil
}

func (d *Daemon) toAPISnapshot(ctx context.Context, sn store.Snapshot) api.Snapshot {
	vms, _ := d.store.ListVMs(ctx)
	return d.toAPISnapshotWith(ctx, sn, vms)
}

// toAPISnapshotWith is toAPISnapshot given every VM row (read once for a
// whole list).
func (d *Daemon) toAPISnapshotWith(ctx context.Context, sn store.Snapshot, vms []store.VM) api.Snapshot {
	out := api.Snapshot{Name: sn.Name, Kind: sn.Kind, Image: sn.Image, Kernel: sn.Kernel, VMM: sn.VMM, Accel: sn.Accel,
		VCPU: sn.VCPU, MemoryMiB: sn.MemoryMiB, WorkSizeBytes: sn.WorkSizeBytes, BangerVersion: sn.BangerVersion,
		SourceVM: sn.SourceVM, CreatedAt: sn.CreatedAt, VMs: []string{}}
	if m, err := decodeSnapshotMeta(sn); err == nil {
		out.StateBytes, out.SaveMS, out.GuestIP, out.GuestMAC = m.StateBytes, m.SaveMS, m.IP, m.MAC
		out.SizeBytes = allocatedBytes(m.Root.Path) + allocatedBytes(m.Work.Path)
		for _, f := range m.stateFiles() {
			out.SizeBytes += allocatedBytes(f)
		}
	}
	out.Stale = d.snapshotStale(ctx, sn)
	for _, v := range vms {
		if v.StartedFrom == "snapshot "+sn.Name && v.Purpose == "" {
			out.VMs = append(out.VMs, v.Name)
		}
	}
	return out
}

func (d *Daemon) snapshotList(ctx context.Context, _ noParams) (api.SnapshotListResult, error) {
	all, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return api.SnapshotListResult{}, err
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return api.SnapshotListResult{}, err
	}
	out := api.SnapshotListResult{Snapshots: []api.Snapshot{}}
	for _, sn := range all {
		out.Snapshots = append(out.Snapshots, d.toAPISnapshotWith(ctx, sn, vms))
	}
	return out, nil
}

// snapshotRm removes a snapshot: its row and state file; its layers stay
// while VMs restored from it stand on them.
func (d *Daemon) snapshotRm(ctx context.Context, p api.ArtifactRef) (api.Snapshot, error) {
	sn, err := d.store.GetSnapshot(ctx, p.Name)
	if err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			return api.Snapshot{}, api.Errorf(api.CodeNotFound, "snapshot %q not found; see banger snapshot list", p.Name)
		}
		return api.Snapshot{}, err
	}
	out := d.toAPISnapshot(ctx, sn)
	if err := d.removeSnapshot(ctx, sn); err != nil {
		return out, err
	}
	return out, nil
}

func (d *Daemon) removeSnapshot(ctx context.Context, sn store.Snapshot) error {
	if err := d.store.DeleteSnapshot(ctx, sn.Name); err != nil {
		return err
	}
	if isWithin(d.snapshotsDir(), sn.Dir) {
		if err := os.RemoveAll(sn.Dir); err != nil {
			return fmt.Errorf("snapshot %s is deleted but its files are not: %w", sn.Name, err)
		}
	}
	d.layersMu.Lock()
	d.gcLayers(context.WithoutCancel(ctx))
	d.layersMu.Unlock()
	return nil
}

// removeSnapshotLeftovers removes snapshot directories no row names (a
// daemon died while saving one).
func (d *Daemon) removeSnapshotLeftovers(ctx context.Context) {
	entries, err := os.ReadDir(d.snapshotsDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if _, err := d.store.GetSnapshot(ctx, e.Name()); api.IsCode(err, api.CodeNotFound) {
			p := filepath.Join(d.snapshotsDir(), e.Name())
			d.log.Warn("removing a snapshot a previous daemon left half-saved", "dir", p)
			_ = os.RemoveAll(p)
		}
	}
}

// vmSnapshot saves a user's running VM as a snapshot; the VM runs on.
func (d *Daemon) vmSnapshot(ctx context.Context, p api.VMSnapshotParams) (api.Snapshot, error) {
	if err := validateArtifactName("snapshot", p.Snapshot); err != nil {
		return api.Snapshot{}, err
	}
	if _, err := d.store.GetSnapshot(ctx, p.Snapshot); err == nil {
		return api.Snapshot{}, api.Errorf(api.CodeAlreadyExists, "snapshot %q already exists; pick another name or remove it (banger snapshot rm %s)", p.Snapshot, p.Snapshot)
	}
	v, unlock, err := d.lockVM(ctx, p.Name)
	if err != nil {
		return api.Snapshot{}, err
	}
	defer unlock()
	if v.State != store.StateRunning {
		return api.Snapshot{}, api.Errorf(api.CodeNotRunning, "vm %q is %s; a snapshot saves a running VM (start it first)", v.Name, v.State)
	}
	sn, err := d.snapshotVM(ctx, &v, p.Snapshot, store.SnapshotVM)
	if err != nil {
		return api.Snapshot{}, err
	}
	return d.toAPISnapshot(ctx, sn), nil
}

// warmName names an image's warm snapshot for a machine size.
func warmName(image string, vcpu, mem int) string {
	return fmt.Sprintf("%s.%dc-%dm", image, vcpu, mem)
}

// imageWarm boots a template VM of the image, waits for its agent,
// quiesces it and saves it as the image's warm snapshot for that machine
// size; the template is removed. It is an operation (image.warm) the
// caller waits for; leaving cancels it.
func (d *Daemon) imageWarm(ctx context.Context, p api.ImageWarmParams) (api.Snapshot, error) {
	plan, drv, err := d.planWarm(ctx, p)
	if err != nil {
		return api.Snapshot{}, err
	}
	d.allocMu.Lock()
	vm, err := d.reserveVM(ctx, plan, drv.Name(), nil)
	d.allocMu.Unlock()
	if err != nil {
		return api.Snapshot{}, err
	}
	snapName := warmName(plan.image.Name, plan.vcpu, plan.memoryMiB)
	var result store.Snapshot
	begin := d.beginVMOp(ctx, api.OpKindImageWarm, nil, vm, d.log.With("image", plan.image.Name), func(ctx context.Context, op *vmCreateOp) error {
		if err := d.runCreate(ctx, op, plan, vm); err != nil {
			return err
		}
		defer d.removeBuildVM(context.WithoutCancel(ctx), vm)
		mu := d.vmLock(vm.Name)
		mu.Lock()
		defer mu.Unlock()
		v, err := d.store.GetVM(ctx, vm.Name)
		if err != nil {
			return err
		}
		op.beginStage(stageQuiesce)
		err = d.quiesce(ctx, v)
		op.endStage(stageQuiesce)
		if err != nil {
			return fmt.Errorf("%s: %w", stageQuiesce, err)
		}
		op.beginStage(stageSave)
		// A stale snapshot of the same name makes way for the new one.
		if old, err := d.store.GetSnapshot(ctx, snapName); err == nil {
			if err := d.removeSnapshot(ctx, old); err != nil {
				return err
			}
		}
		result, err = d.snapshotVM(ctx, &v, snapName, store.SnapshotWarm)
		op.endStage(stageSave)
		if err != nil {
			return fmt.Errorf("%s: %w", stageSave, err)
		}
		return nil
	})
	op, ok := d.ops.vmCreate.Get(begin.OpID)
	if !ok {
		return api.Snapshot{}, fmt.Errorf("image warm operation %s vanished", begin.OpID)
	}
	select {
	case <-op.doneCh:
	case <-ctx.Done():
		op.Cancel()
		<-op.doneCh
		return api.Snapshot{}, ctx.Err()
	}
	if s := op.summary(); s.Error != "" {
		return api.Snapshot{}, api.Errorf(api.CodeOperationFailed, "warm image %s (operation %s): %s", plan.image.Name, begin.OpID, s.Error)
	}
	return d.toAPISnapshot(ctx, result), nil
}

// planWarm validates a warm and plans its template VM.
func (d *Daemon) planWarm(ctx context.Context, p api.ImageWarmParams) (createPlan, vmm.Driver, error) {
	cp, err := d.planCreate(ctx, api.VMCreateParams{Name: "imgwarm-" + randomHex(4), Image: p.Image, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB})
	if err != nil {
		return cp, nil, err
	}
	if p.Image == "" {
		return cp, nil, api.Errorf(api.CodeBadRequest, "missing the image to warm: banger image warm IMAGE")
	}
	if cp.pullImage != "" {
		return cp, nil, api.Errorf(api.CodeNotFound, "image %q is not installed; pull it first (banger image pull %s)", p.Image, p.Image)
	}
	drv, err := d.driverFor("")
	if err != nil {
		return cp, nil, api.Errorf(api.CodeOperationFailed, "%v", err)
	}
	if _, ok := drv.(vmm.Snapshotter); !ok {
		return cp, nil, api.Errorf(api.CodeBadRequest, "the %s driver cannot save snapshots yet", drv.Name())
	}
	name := warmName(cp.image.Name, cp.vcpu, cp.memoryMiB)
	if sn, err := d.store.GetSnapshot(ctx, name); err == nil && d.snapshotStale(ctx, sn) == "" && snapshotMismatch(sn, drv) == "" {
		return cp, nil, api.Errorf(api.CodeAlreadyExists, "image %s is already warm for %d vCPUs and %d MiB (snapshot %s); remove it first to warm it again (banger snapshot rm %s)",
			cp.image.Name, cp.vcpu, cp.memoryMiB, name, name)
	}
	cp.purpose = store.PurposeImageWarm
	cp.nat = false
	return cp, drv, nil
}

// quiesce settles the template before its save: data on disk, and the
// page cache dropped so the saved memory is the guest's own.
func (d *Daemon) quiesce(ctx context.Context, v store.VM) error {
	signer, err := sshx.EnsureKey(d.layout.SSHKey)
	if err != nil {
		return err
	}
	pub, _, err := d.hostPublicKey(v)
	if err != nil {
		return err
	}
	var out strings.Builder
	code, err := sshx.Run(ctx, sshx.ClientConfig("root", signer, ssh.FixedHostKey(pub)), v.IP+":22",
		"sync && echo 3 > /proc/sys/vm/drop_caches && sync", nil, &out, &out)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(out.String()))
	}
	return err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// maybeAutoWarm warms the image of a cold create of the default size in
// the background when config.toml says warm = true and no snapshot serves
// that size yet: the next create of it restores instead of booting.
func (d *Daemon) maybeAutoWarm(plan createPlan) {
	if !d.cfg.Warm || plan.snapshot != nil || plan.noStart || plan.purpose != "" ||
		plan.vcpu != d.cfg.VMDefaults.VCPU || plan.memoryMiB != d.cfg.VMDefaults.MemoryMiB {
		return
	}
	if size, err := parseDiskSize(d.cfg.VMDefaults.DiskSize); err != nil || size != plan.diskSize {
		return
	}
	name := warmName(plan.image.Name, plan.vcpu, plan.memoryMiB)
	if _, loaded := d.warming.LoadOrStore(name, true); loaded {
		return
	}
	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		defer d.warming.Delete(name)
		if sn, err := d.store.GetSnapshot(d.bgCtx, name); err == nil && d.snapshotStale(d.bgCtx, sn) == "" {
			return
		}
		d.log.Info("warming the image after its first cold create (warm = true)", "image", plan.image.Name)
		if _, err := d.imageWarm(d.bgCtx, api.ImageWarmParams{Image: plan.image.Name, VCPU: plan.vcpu, MemoryMiB: plan.memoryMiB}); err != nil && !api.IsCode(err, api.CodeAlreadyExists) {
			d.log.Warn("automatic warm failed", "image", plan.image.Name, "err", err)
		}
	}()
}
