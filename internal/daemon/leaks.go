package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/store"
)

// findLeaks lists every host resource this daemon could have made that no
// VM, image, kernel, snapshot or operation in flight accounts for: VMM
// processes, taps, firewall rules, loop and device-mapper devices, mounts,
// files and directories under banger's trees, forwards and rows. It only
// reads. `banger doctor --leaks` prints it; the tests that break things on
// purpose assert it comes back empty.
func (d *Daemon) findLeaks(ctx context.Context) (api.LeaksResult, error) {
	var res api.LeaksResult
	add := func(kind, name, format string, args ...any) {
		res.Leaks = append(res.Leaks, api.Leak{Kind: kind, Name: name, Detail: fmt.Sprintf(format, args...)})
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return res, err
	}
	images, err := d.store.ListImages(ctx)
	if err != nil {
		return res, err
	}
	kernels, err := d.store.ListKernels(ctx)
	if err != nil {
		return res, err
	}
	snaps, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return res, err
	}
	inFlight := map[string]bool{} // targets of operations not done
	var busyOps []string          // their ids
	for _, op := range d.ListOperations(ctx).Operations {
		if !op.Done {
			inFlight[op.Target] = true
			busyOps = append(busyOps, op.ID)
			res.InFlight++
		}
	}

	// Rows: a VM left "creating" with no operation making it.
	for _, v := range vms {
		if v.State == store.StateCreating && !inFlight[v.Name] && !d.hiddenInFlight(v) {
			add("row", v.Name, "VM row in state creating, and no operation is making it")
		}
	}

	// VMM processes that run from banger's trees but are not a VM's.
	pids := map[int]bool{}
	for _, v := range vms {
		if v.PID > 0 {
			pids[v.PID] = true
		}
	}
	for _, p := range d.vmmProcesses() {
		if !pids[p.pid] {
			add("process", strconv.Itoa(p.pid), "%s running for %s, which no VM records", p.argv0, p.dir)
		}
	}

	// Taps: every banger-named tap is a VM's (the name its row records)
	// or an idle pool tap.
	if d.net != nil && d.net.isLive() {
		taps, err := hostnet.ListTaps(hostnet.TapPrefix)
		if err != nil {
			return res, err
		}
		owned := map[string]bool{}
		for _, v := range vms {
			if v.Tap != "" {
				owned[v.Tap] = true
			}
		}
		if pool := d.net.tapPool(); pool != nil {
			// Idle, or being made or claimed right now.
			for _, t := range pool.Owned() {
				owned[t] = true
			}
		}
		for _, t := range taps {
			if !owned[t] {
				add("tap", t, "tap no VM records and not an idle pool tap")
			}
		}
		// Firewall rules: what the kernel holds against what the rows ask.
		if _, spec, _, err := d.net.desired(ctx); err == nil {
			if diff, err := d.priv.NATDiff(spec); err == nil {
				for _, line := range diff {
					add("rule", "", "%s", line)
				}
			}
		}
	}

	// Loop and device-mapper devices over banger's files.
	recorded := strings.Builder{}
	for _, v := range vms {
		recorded.WriteString(v.RootDisk)
		recorded.WriteString(v.WorkDisk)
	}
	for _, dev := range d.bangerBlockDevices() {
		if !strings.Contains(recorded.String(), "\""+dev.name+"\"") {
			add(dev.kind, dev.name, "%s", dev.detail)
		}
	}

	// Pinned host keys of VMs that are gone.
	if b, err := os.ReadFile(d.layout.KnownHosts); err == nil {
		names := map[string]bool{}
		for _, v := range vms {
			names[v.IP] = true
			names[v.Name+".vm"] = true
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || strings.HasPrefix(f[0], "#") {
				continue
			}
			if !slices.ContainsFunc(strings.Split(f[0], ","), func(h string) bool { return names[h] }) {
				add("host key", f[0], "pinned in %s for no VM", d.layout.KnownHosts)
			}
		}
	}

	// Mounts under banger's trees (banger itself never mounts).
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 5 {
				continue
			}
			mp := f[4]
			for _, root := range []string{d.layout.StateDir, d.layout.CacheDir, d.layout.RuntimeDir} {
				if root != "" && (mp == root || strings.HasPrefix(mp, root+"/")) {
					add("mount", mp, "mounted under %s", root)
				}
			}
		}
	}

	// Files and directories under banger's trees.
	keep := map[string]bool{}
	for _, v := range vms {
		keep[d.pathsFor(v.ID).dir] = true
		keep[d.pathsFor(v.ID).run] = true
		if v.Dir != "" {
			keep[filepath.Clean(v.Dir)] = true
		}
	}
	for _, im := range images {
		keep[filepath.Dir(im.RootfsPath)] = true
	}
	for _, k := range kernels {
		keep[filepath.Clean(k.Dir)] = true
	}
	for _, s := range snaps {
		keep[filepath.Clean(s.Dir)] = true
	}
	for _, tree := range []string{d.layout.VMsDir, filepath.Join(d.layout.RuntimeDir, "vms"), d.layout.ImagesDir, d.layout.KernelsDir, d.snapshotsDir()} {
		entries, err := os.ReadDir(tree)
		if err != nil {
			continue
		}
		for _, e := range entries {
			p := filepath.Join(tree, e.Name())
			if keep[p] {
				continue
			}
			// A build or import in flight owns its staging entry.
			if res.InFlight > 0 && (strings.HasPrefix(e.Name(), ".") || strings.HasSuffix(e.Name(), importingSuffix)) {
				if slices.ContainsFunc(busyOps, func(id string) bool { return strings.Contains(e.Name(), id) }) || strings.HasSuffix(e.Name(), importingSuffix) {
					continue
				}
			}
			add("file", p, "no VM, image, kernel or snapshot accounts for it")
		}
	}
	// Work trees of pulls and builds in the cache that no running
	// operation writes (their staging beside images and kernels is
	// counted above).
	if entries, err := os.ReadDir(filepath.Join(d.layout.CacheDir, "build")); err == nil {
		busy := d.busyScratch()
		for _, e := range entries {
			if p := filepath.Join(d.layout.CacheDir, "build", e.Name()); !hasAnyPrefix(p, busy) {
				add("file", p, "work tree of a pull or build no operation is running")
			}
		}
	}
	for _, p := range d.jailLeftovers(vms) {
		add("file", p, "a Firecracker jail or cgroup of no running VM")
	}
	for _, l := range d.removableLayers(ctx) {
		add("file", l, "a layer no disk or snapshot stands on")
	}

	// Forwards of VMs that are gone or not running.
	running := map[string]bool{}
	for _, v := range vms {
		if v.State == store.StateRunning {
			running[v.Name] = true
		}
	}
	for _, f := range d.fwd.List("") {
		if !running[f.VM] {
			add("forward", fmt.Sprintf("%s %s/%d", f.VM, f.Proto, f.HostPort), "forward of a VM that is not running")
		}
	}
	return res, nil
}

// hiddenInFlight: a hidden VM (an image build's or warm's) is made by an
// operation whose target is the image, not the VM's own name.
func (d *Daemon) hiddenInFlight(v store.VM) bool {
	if v.Purpose == "" {
		return false
	}
	for _, op := range d.ListOperations(context.Background()).Operations {
		if !op.Done && (op.Kind == api.OpKindImageBuild || op.Kind == api.OpKindImageWarm) {
			return true
		}
	}
	return false
}

type vmmProc struct {
	pid   int
	argv0 string
	dir   string
}

// vmmProcesses finds QEMU and Firecracker processes whose command line
// names a path in this daemon's VM or runtime trees.
func (d *Daemon) vmmProcesses() []vmmProc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	roots := []string{d.layout.VMsDir + "/", filepath.Join(d.layout.RuntimeDir, "vms") + "/"}
	var out []vmmProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		base := filepath.Base(argv[0])
		if !strings.HasPrefix(base, "qemu-system") && base != "firecracker" && base != "jailer" {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				continue
			}
		}
		cmd := strings.Join(argv, " ")
		for _, r := range roots {
			if i := strings.Index(cmd, r); i >= 0 {
				rest := cmd[i+len(r):]
				if j := strings.IndexAny(rest, "/ ,"); j >= 0 {
					rest = rest[:j]
				}
				out = append(out, vmmProc{pid: pid, argv0: base, dir: r + rest})
				break
			}
		}
	}
	return out
}

type blockDev struct {
	kind, name, detail string
}

// bangerBlockDevices lists loop devices backed by files in banger's state
// dir, and device-mapper devices named banger-*, from /sys.
func (d *Daemon) bangerBlockDevices() []blockDev {
	var out []blockDev
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range loops {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		file := strings.TrimSpace(string(b))
		if strings.HasPrefix(file, d.layout.StateDir+"/") || strings.HasPrefix(file, d.layout.CacheDir+"/") {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
			out = append(out, blockDev{"loop", dev, "loop device over " + file + ", which no VM's disk records"})
		}
	}
	dms, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, p := range dms {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(b))
		if !strings.HasPrefix(name, "banger-") {
			continue
		}
		// Another user's banger names its devices the same way: only
		// those over this daemon's files are its own.
		slaves, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(p)), "slaves", "loop*", "loop", "backing_file"))
		for _, sp := range slaves {
			if bf, err := os.ReadFile(sp); err == nil && strings.HasPrefix(strings.TrimSpace(string(bf)), d.layout.StateDir+"/") {
				out = append(out, blockDev{"dm", name, "device-mapper device no VM's disk records"})
				break
			}
		}
	}
	return out
}
