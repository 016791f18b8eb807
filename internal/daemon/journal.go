package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/rootdisk"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/store"
)

// The journal makes every multi-step operation (create, clone, start,
// delete, set, pull) crash-safe: before a step acts, the operation records
// in the database how to undo it (or, for a delete, how to finish it) as
// typed actions. When the operation ends — done, or rolled back in memory
// — its entries go. A daemon that dies mid-operation leaves them, and the
// next one replays them at start-up, newest first, before it reconciles
// the VMs with the host (adoptVMs). Every action is idempotent and reads
// what it acts on (a VMM's pid and start time, a dm device) from the VM's
// row at replay time, where the steps record it the moment it exists.

// Operation kinds the journal records besides the api.OpKind* ones.
const (
	journalVMStart  = "vm.start"
	journalVMDelete = "vm.delete"
	journalVMSet    = "vm.set"
)

// Journal actions.
const (
	// actDropRow deletes the VM's row while it is still creating.
	actDropRow = "drop_row"
	// actRemovePath removes a file or tree under banger's own directories
	// (with Prefix, every entry of its directory whose path starts with it).
	actRemovePath = "remove_path"
	// actUnpinHosts removes host keys pinned in banger's known_hosts.
	actUnpinHosts = "unpin_hosts"
	// actReleaseRuntime releases what the VM's row says it holds while it
	// runs (taps, a dm snapshot, the jail, the runtime dir), unless the VM
	// is running.
	actReleaseRuntime = "release_runtime"
	// actKillVMM kills the VMM the row records, only if that pid is still
	// the process started then (pid + start time), unless the VM is
	// running.
	actKillVMM = "kill_vmm"
	// actMarkStopped records a VM whose start never finished as stopped.
	actMarkStopped = "mark_stopped"
	// actFinishDelete rolls a delete forward: the VM goes entirely.
	actFinishDelete = "finish_delete"
	// actSetDiskSize records the work disk's new size once the disk has it.
	actSetDiskSize = "set_disk_size"
	// actUnfreeze puts a clone's source disk (Path) back as it was when
	// the source's row never learnt of the layer (Layer) it was frozen
	// into.
	actUnfreeze = "unfreeze"
)

// journalAct is one recorded action (the JSON of a journal entry).
type journalAct struct {
	Do string `json:"do"`
	VM string `json:"vm,omitempty"`
	// ID is the VM's id when it had one: a row of that name with another
	// id is another VM, made since, and never touched.
	ID     string   `json:"id,omitempty"`
	Path   string   `json:"path,omitempty"`
	Prefix bool     `json:"prefix,omitempty"`
	Hosts  []string `json:"hosts,omitempty"`
	Size   int64    `json:"size,omitempty"`
	Layer  string   `json:"layer,omitempty"`
}

// journalOp records the actions of one running operation.
type journalOp struct {
	d      *Daemon
	id     string
	kind   string
	target string
	mu     sync.Mutex
	seq    int
}

// beginJournal starts the journal of an operation of kind on target. id
// is the operation's id when it has one (empty: a new one).
func (d *Daemon) beginJournal(id, kind, target string) *journalOp {
	if id == "" {
		id = rpc.NewOpID()
	}
	return &journalOp{d: d, id: id, kind: kind, target: target}
}

// record writes acts for step before the step acts. A nil journal records
// nothing (operations the start-up sweeps own, such as image builds).
func (j *journalOp) record(ctx context.Context, step string, acts ...journalAct) error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, a := range acts {
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		j.seq++
		err = j.d.store.JournalAppend(context.WithoutCancel(ctx), store.JournalEntry{OpID: j.id, Seq: j.seq, OpKind: j.kind,
			Target: j.target, Step: step, Action: string(b)})
		if err != nil {
			return fmt.Errorf("record how to undo %q: %w", step, err)
		}
	}
	return nil
}

// finish forgets the operation's entries: it ended, and what it left is
// what it means to leave.
func (j *journalOp) finish(ctx context.Context) {
	if j == nil {
		return
	}
	if err := j.d.store.JournalFinish(context.WithoutCancel(ctx), j.id); err != nil {
		j.d.log.Error("finish the journal of an operation", "op_id", j.id, "kind", j.kind, "target", j.target, "err", err)
	}
}

// replayJournal runs, at start-up, the recorded actions of every
// operation a previous daemon left unfinished, newest first, then forgets
// them. An operation that in fact finished (its last state change landed,
// the daemon died before forgetting it) is only forgotten.
func (d *Daemon) replayJournal(ctx context.Context) {
	entries, err := d.store.Journal(ctx)
	if err != nil {
		d.log.Error("read the journal", "err", err)
		return
	}
	var order []string
	ops := map[string][]store.JournalEntry{}
	for _, e := range entries {
		if _, ok := ops[e.OpID]; !ok {
			order = append(order, e.OpID)
		}
		ops[e.OpID] = append(ops[e.OpID], e)
	}
	for _, id := range order {
		es := ops[id]
		kind, target := es[0].OpKind, es[0].Target
		log := d.log.With("op_id", id, "kind", kind, "target", target)
		failed := false
		if !d.journalPending(ctx, kind, target) {
			log.Info("journal: the operation had finished when the previous daemon stopped")
		} else {
			log.Warn("journal: replaying an operation a previous daemon left unfinished", "last_step", es[len(es)-1].Step, "actions", len(es))
			for i := len(es) - 1; i >= 0; i-- {
				var a journalAct
				if err := json.Unmarshal([]byte(es[i].Action), &a); err != nil {
					log.Error("journal: unreadable action", "step", es[i].Step, "err", err)
					failed = true
					continue
				}
				if err := d.replayAct(ctx, a); err != nil {
					log.Error("journal: action failed", "step", es[i].Step, "do", a.Do, "err", err)
					failed = true
					continue
				}
				log.Info("journal: replayed", "step", es[i].Step, "do", a.Do, "vm", a.VM, "path", a.Path)
			}
		}
		if failed {
			// Every action is idempotent: the next start replays it all
			// again (a root helper that was not up yet, say).
			log.Warn("journal: kept for the next start, as an action failed")
			continue
		}
		if err := d.store.JournalFinish(ctx, id); err != nil {
			log.Error("journal: forget a replayed operation", "err", err)
		}
	}
}

// journalPending says whether an operation of kind on target was still
// under way when its daemon died, from what its last state change leaves.
func (d *Daemon) journalPending(ctx context.Context, kind, target string) bool {
	switch kind {
	case api.OpKindVMCreate, api.OpKindVMClone:
		v, err := d.store.GetVM(ctx, target)
		return api.IsCode(err, api.CodeNotFound) || (err == nil && v.State == store.StateCreating)
	case journalVMStart:
		v, err := d.store.GetVM(ctx, target)
		return err == nil && v.State == store.StateStarting
	case journalVMDelete:
		_, err := d.store.GetVM(ctx, target)
		return err == nil
	case api.OpKindImagePull:
		_, err := d.store.GetImage(ctx, target)
		return api.IsCode(err, api.CodeNotFound)
	case api.OpKindKernelPull:
		_, err := d.store.GetKernel(ctx, target)
		return api.IsCode(err, api.CodeNotFound)
	}
	return true
}

// replayAct carries out one recorded action. Each one is idempotent: it
// may find its work done, or never begun.
func (d *Daemon) replayAct(ctx context.Context, a journalAct) error {
	switch a.Do {
	case actDropRow, actKillVMM, actReleaseRuntime, actMarkStopped, actFinishDelete, actSetDiskSize, actUnfreeze:
		if a.VM == "" {
			return fmt.Errorf("journal action %q names no VM", a.Do)
		}
	case actRemovePath, actUnpinHosts:
	default:
		return fmt.Errorf("unknown journal action %q", a.Do)
	}
	switch a.Do {
	case actRemovePath:
		return d.removeOwnPath(a.Path, a.Prefix)
	case actUnpinHosts:
		// Never a key another VM on record uses now (an address or name
		// taken since); the operation's own VM (ID) is being undone.
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			return err
		}
		inUse := map[string]bool{}
		for _, v := range vms {
			if v.ID != a.ID {
				inUse[v.IP], inUse[v.Name+".vm"] = true, true
			}
		}
		var hosts []string
		for _, h := range a.Hosts {
			if !inUse[h] {
				hosts = append(hosts, h)
			}
		}
		if len(hosts) == 0 {
			return nil
		}
		if err := sshx.RemoveHost(d.layout.KnownHosts, hosts...); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	v, err := d.store.GetVM(ctx, a.VM)
	if api.IsCode(err, api.CodeNotFound) {
		return nil // gone already: nothing of it to undo
	}
	if err != nil {
		return err
	}
	if a.ID != "" && v.ID != a.ID {
		return nil // another VM of that name, made since
	}
	switch a.Do {
	case actDropRow:
		if v.State != store.StateCreating {
			return nil
		}
		return d.store.DeleteVM(ctx, v.Name)
	case actKillVMM:
		if v.State != store.StateRunning {
			d.killOrphanVMM(ctx, v)
		}
		return nil
	case actReleaseRuntime:
		if v.State == store.StateRunning {
			return nil
		}
		d.releaseRuntime(ctx, &v)
		return d.store.UpdateVM(ctx, v)
	case actMarkStopped:
		if v.State != store.StateStarting {
			return nil
		}
		v.State = store.StateStopped
		v.PID, v.PIDStartTime, v.APISocket = 0, 0, ""
		v.LastError = "bangerd stopped while the VM was starting; start it again"
		return d.store.UpdateVM(ctx, v)
	case actFinishDelete:
		d.removeOrphanVM(ctx, v)
		return nil
	case actUnfreeze:
		for _, p := range []string{a.Path, a.Layer} {
			if err := d.checkOwnPath(p); err != nil {
				return err
			}
		}
		// A layer any record names (the source's disks, another VM's, a
		// snapshot's) is in use: recorded, never undone.
		named, err := d.layerRecorded(ctx, a.Layer)
		if err != nil || named {
			return err
		}
		return rootdisk.Unfreeze(ctx, d.runner, a.Path, a.Layer)
	case actSetDiskSize:
		_, wd, err := d.disksOf(v)
		if err != nil {
			return err
		}
		size, err := wd.VirtualSize(ctx, d.runner)
		if err != nil {
			return err
		}
		if size >= a.Size && v.DiskSizeBytes < a.Size {
			v.DiskSizeBytes = a.Size
			return d.store.UpdateVM(ctx, v)
		}
		return nil
	}
	return fmt.Errorf("unknown journal action %q", a.Do)
}

// removeOwnPath removes p (with prefix, every entry of p's directory
// whose path starts with p), refusing anything outside banger's state,
// cache and runtime directories: a journal is never a way to delete
// other files.
func (d *Daemon) removeOwnPath(p string, prefix bool) error {
	p = filepath.Clean(p)
	if err := d.checkOwnPath(p); err != nil {
		return err
	}
	if !prefix {
		return os.RemoveAll(p)
	}
	dir, base := filepath.Split(p)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), base) {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// checkOwnPath refuses a path outside banger's state, cache and runtime
// directories.
func (d *Daemon) checkOwnPath(p string) error {
	p = filepath.Clean(p)
	inside := false
	for _, root := range []string{d.layout.StateDir, d.layout.CacheDir, d.layout.RuntimeDir} {
		if root == "" {
			continue
		}
		if rel, err := filepath.Rel(filepath.Clean(root), p); err == nil && rel != "." && !strings.HasPrefix(rel, "..") && !filepath.IsAbs(rel) {
			inside = true
			break
		}
	}
	if !inside {
		return fmt.Errorf("refusing to touch %s: not under banger's state, cache or runtime directory", p)
	}
	return nil
}

// layerRecorded says whether any VM's disks or any snapshot name layer.
func (d *Daemon) layerRecorded(ctx context.Context, layer string) (bool, error) {
	quoted, err := json.Marshal(layer)
	if err != nil {
		return false, err
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return false, err
	}
	for _, v := range vms {
		if strings.Contains(v.RootDisk, string(quoted)) || strings.Contains(v.WorkDisk, string(quoted)) {
			return true, nil
		}
	}
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return false, err
	}
	for _, sn := range sns {
		if strings.Contains(sn.Meta, string(quoted)) {
			return true, nil
		}
	}
	return false, nil
}
