package daemon

import (
	"context"
	"os"
	"path/filepath"

	"banger/internal/store"
	"banger/internal/vmm/firecracker"
)

// Jailed Firecracker VMs each have a chroot under jailBase()/EXEC/ID and
// cgroups the jailer made under the cgroup root's banger/ID (per
// controller on a v1 host). The driver removes both when a VM stops;
// these find what a daemon that died, or a VMM killed behind its back,
// left: the jail or cgroup of any ID no running VM has.

// jailLeftovers lists jail directories and cgroups that belong to no VM
// in vms that is running or starting.
func (d *Daemon) jailLeftovers(vms []store.VM) []string {
	live := map[string]bool{}
	for _, v := range vms {
		if v.State == store.StateRunning || v.State == store.StateStarting || v.State == store.StateCreating {
			live[shortID(v.ID)] = true
		}
	}
	var out []string
	execs, _ := os.ReadDir(d.jailBase())
	for _, ex := range execs {
		dir := filepath.Join(d.jailBase(), ex.Name())
		ids, _ := os.ReadDir(dir)
		for _, id := range ids {
			if !live[id.Name()] {
				out = append(out, filepath.Join(dir, id.Name()))
			}
		}
	}
	for _, parent := range []string{"", "memory", "pids"} {
		dir := filepath.Join(d.cgroupRoot, parent, firecracker.DefaultParentCgroup)
		ids, _ := os.ReadDir(dir)
		for _, id := range ids {
			if id.IsDir() && !live[id.Name()] {
				out = append(out, filepath.Join(dir, id.Name()))
			}
		}
	}
	return out
}

// sweepJails removes the jails and cgroups of VMs that do not run, at
// start-up (after adoption decided which do).
func (d *Daemon) sweepJails(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	jails := d.rootJails()
	asked := map[string]bool{}
	for _, p := range d.jailLeftovers(vms) {
		if jails != nil && (asked[filepath.Base(p)] || isWithin(d.cgroupRoot, p)) {
			// The helper removes a jail with its cgroups, once; a
			// cgroup without a jail of the helper's is not its own.
			continue
		}
		d.log.Warn("removing a jail or cgroup of a VM that does not run", "path", p)
		var err error
		switch {
		case jails != nil:
			asked[filepath.Base(p)] = true
			err = jails.RemoveJail(filepath.Base(p))
		case isWithin(d.cgroupRoot, p):
			err = os.Remove(p) // a cgroup: rmdir, refused while it has tasks
		default:
			err = os.RemoveAll(p)
		}
		if err != nil {
			d.log.Error("remove a leftover jail or cgroup", "path", p, "err", err)
		}
	}
}
