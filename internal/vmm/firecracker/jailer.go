package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/disk"
	"banger/internal/vmm/vmmcore"
)

// Jailer defaults, as documented by Firecracker's jailer.
const (
	DefaultJailerBinary = "jailer"
	DefaultChrootBase   = "/srv/jailer"

	// jailAPISocket and jailVsock are where Firecracker, chrooted, puts
	// its sockets; on the host they are under <jail>/root.
	jailAPISocket = "/run/firecracker.socket"
	jailVsock     = "/run/vsock.sock"
)

// JailerConfig runs Firecracker under its jailer: chrooted in
// <ChrootBase>/<firecracker binary name>/<VM id>/root, in its own mount
// namespace, as the VM's own uid and gid (Spec.RunAs, else UID:GID), in a
// cgroup of its own under ParentCgroup that bounds its memory and tasks.
//
// The jailer closes every inherited descriptor but stdio, so the jailed
// VMM is given files by path, inside the chroot: Start hard-links the
// kernel, initrd and disks there (ChrootBase must be on the filesystem of
// banger's images and VM disks), makes a device node for a block-device
// disk (a dm root), and gives the disks and the configuration disk to the
// VM's uid (a hard link shares its owner with the original). The tap must
// belong to that uid too (the jailed Firecracker has no CAP_NET_ADMIN):
// the caller sets its owner before Start.
type JailerConfig struct {
	// Binary is the jailer executable (default "jailer" on PATH).
	Binary string
	// UID and GID are what Firecracker runs as when the Spec names no
	// RunAs.
	UID, GID int
	// ChrootBase defaults to DefaultChrootBase.
	ChrootBase string
	// CgroupVersion is 1 or 2 (the host's hierarchy); 0 sets no limits.
	CgroupVersion int
	// ParentCgroup is where the jailer makes each VM's cgroup (default
	// DefaultParentCgroup), relative to each controller's root.
	ParentCgroup string
	// CgroupRoot is where cgroups are mounted (default /sys/fs/cgroup);
	// Cleanup removes the VM's cgroups there.
	CgroupRoot string
	// Helper, when set, does the jail's root work in the daemon's stead
	// (system mode: bangerd runs as its owner, and the jailer must be
	// root): it makes the jail, places the VM's files in it and launches
	// the jailer with its own binaries as the owner, and removes the jail
	// and cgroups once the VMM has exited. Binary, UID, GID and the cgroup
	// settings are then the helper's; ExecName is the name of its
	// firecracker binary, which names the jails' directory.
	Helper   JailHelper
	ExecName string
}

// JailHelper does what a jail needs root for, for a daemon that is not
// root: banger's root helper (package privops) in a system install.
type JailHelper interface {
	// StartJail makes the jail of req.ID under the chroot base, places
	// req.Files in it and launches the jailer there, its output appended
	// to console. It returns the jailer's pid, which becomes
	// Firecracker's (the jailer execs it).
	StartJail(req JailRequest, console *os.File) (pid int, err error)
	// RemoveJail removes the jail and cgroups of id; it refuses while a
	// VMM of that id runs.
	RemoveJail(id string) error
}

// JailRequest is what a JailHelper is asked to put in a VM's jail.
type JailRequest struct {
	ID        string `json:"id"`
	MemoryMiB int    `json:"memory_mib"`
	// Files are the host files and where each goes in the jail: one of
	// JailPaths.
	Files []JailFile `json:"files"`
}

// JailFile is one file placed in a jail.
type JailFile struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// JailPaths are the paths inside a jail at which Start places a VM's
// files; a JailHelper places nothing anywhere else.
func JailPaths() []string {
	return []string{"/kernel", "/initrd", "/root.img", "/work.img", "/config.img", jailIncoming, jailIncoming + MemFileSuffix}
}

// Cgroup defaults: the parent of every VM's cgroup, the mount point, and
// what a VM may use besides its guest memory (Firecracker's own memory
// and the page cache of its disk I/O, which the kernel reclaims before
// the limit bites) and how many tasks (threads) its VMM may have.
const (
	DefaultParentCgroup = "banger"
	DefaultCgroupRoot   = "/sys/fs/cgroup"
	cgroupMemSlackMiB   = 256
	cgroupPidsMax       = 256
)

// jailLayout fills l for a jailed start.
func (d *Driver) jailLayout(l layout, spec vmmcore.Spec) (layout, error) {
	j := d.cfg.Jailer
	exec := j.ExecName
	if j.Helper == nil {
		bin := d.cfg.Binary
		if !filepath.IsAbs(bin) || !strings.Contains(filepath.Base(bin), "firecracker") {
			return layout{}, api.Errorf(api.CodeBadRequest,
				"the jailer needs the firecracker binary as an absolute path whose name contains \"firecracker\", got %q", bin)
		}
		exec = filepath.Base(bin)
	} else if exec == "" {
		exec = DefaultBinary
	}
	if !filepath.IsAbs(j.ChrootBase) {
		return layout{}, api.Errorf(api.CodeBadRequest, "jailer chroot base %q must be an absolute path", j.ChrootBase)
	}
	l.jailDir = filepath.Join(j.ChrootBase, exec, l.id)
	root := filepath.Join(l.jailDir, "root")
	var err error
	if l.apiHost, err = vmmcore.SocketPath(root, jailAPISocket); err != nil {
		return layout{}, err
	}
	if l.vsockHost, err = vmmcore.SocketPath(root, jailVsock); err != nil {
		return layout{}, err
	}
	l.uid, l.gid = j.UID, j.GID
	if spec.RunAs != "" {
		if l.uid, l.gid, err = parseRunAs(spec.RunAs); err != nil {
			return layout{}, err
		}
	}
	l.memMiB = spec.MemoryMiB
	l.guestPaths = vmPaths{kernel: "/kernel", root: "/root.img", vsock: jailVsock}
	if spec.IncomingState != "" {
		l.guestPaths.state, l.guestPaths.mem = jailIncoming, jailIncoming+MemFileSuffix
	}
	if spec.InitrdPath != "" {
		l.guestPaths.initrd = "/initrd"
	}
	if spec.WorkDisk != "" {
		l.guestPaths.work = "/work.img"
	}
	if spec.ConfigDisk != "" {
		l.guestPaths.config = "/config.img"
	}
	return l, nil
}

// jailIncoming is where a jailed restore finds its copy (its hard link,
// when the root helper made the jail) of the snapshot it loads (removed once loaded: Firecracker maps the memory privately
// and keeps the mapping); jailSave is where a jailed save writes one
// before it is moved out. They differ so that a save of a restored VM
// never truncates a file its guest memory is mapped from.
const (
	jailIncoming = "/incoming.state"
	jailSave     = "/save.state"
)

// parseRunAs parses Spec.RunAs, "UID:GID".
func parseRunAs(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(s, ":")
	if ok {
		if uid, err = strconv.Atoi(u); err == nil {
			gid, err = strconv.Atoi(g)
		}
	}
	if !ok || err != nil || uid <= 0 || gid <= 0 {
		return 0, 0, api.Errorf(api.CodeBadRequest, "run-as identity %q is not UID:GID of an unprivileged user", s)
	}
	return uid, gid, nil
}

// prepareJail creates the chroot and puts the VM's files into it. What a
// VMM that died left there (the jailer refuses to make its device nodes
// and pid file over old ones) is removed first: Start runs only for a VM
// whose VMM does not run.
func (d *Driver) prepareJail(l layout, spec vmmcore.Spec) error {
	if err := os.RemoveAll(l.jailDir); err != nil {
		return fmt.Errorf("remove a stale jail: %w", err)
	}
	root := filepath.Join(l.jailDir, "root")
	run := filepath.Join(root, "run")
	if err := os.MkdirAll(run, 0o755); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	if err := os.Chown(run, l.uid, l.gid); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	files := []struct {
		src, dst string
		owned    bool // the VM's own file: Firecracker must open it
	}{
		{spec.KernelPath, l.guestPaths.kernel, false},
		{spec.InitrdPath, l.guestPaths.initrd, false},
		{spec.RootDisk, l.guestPaths.root, true},
		{spec.WorkDisk, l.guestPaths.work, true},
		{spec.ConfigDisk, l.guestPaths.config, true},
	}
	for _, f := range files {
		if f.src == "" {
			continue
		}
		dst := filepath.Join(root, f.dst)
		if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace %s in jail: %w", dst, err)
		}
		if err := placeInJail(f.src, dst, root); err != nil {
			return err
		}
		if f.owned {
			if err := os.Chown(dst, l.uid, l.gid); err != nil {
				return fmt.Errorf("give %s to the jailed uid %d: %w", f.src, l.uid, err)
			}
		}
	}
	if spec.IncomingState != "" {
		// The snapshot's files are shared by every VM restored from it:
		// each jail gets copies (reflinks where the filesystem can) that
		// only its own uid may read.
		for i, src := range d.StateFiles(spec.IncomingState) {
			dst := filepath.Join(root, []string{l.guestPaths.state, l.guestPaths.mem}[i])
			if _, err := disk.CloneRoot(context.Background(), src, dst); err != nil {
				return fmt.Errorf("copy the snapshot into the jail: %w", err)
			}
			if err := os.Chown(dst, l.uid, l.gid); err != nil {
				return fmt.Errorf("give the snapshot copy to the jailed uid %d: %w", l.uid, err)
			}
		}
	}
	return nil
}

// placeInJail makes dst name src inside the jail: a hard link for a
// regular file, a device node of the same device for a block device (a
// node in /dev cannot be linked across filesystems).
func placeInJail(src, dst, root string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("put %s into the jail: %w", src, err)
	}
	if st.Mode()&os.ModeDevice != 0 {
		if st.Mode()&os.ModeCharDevice != 0 {
			return fmt.Errorf("put %s into the jail: a character device is not a disk", src)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if err := unix.Mknod(dst, unix.S_IFBLK|0o600, int(sys.Rdev)); err != nil {
			return fmt.Errorf("make a node of %s in the jail: %w", src, err)
		}
		return nil
	}
	if err := os.Link(src, dst); err != nil {
		if errors.Is(err, unix.EXDEV) {
			return fmt.Errorf("hard-link %s into the jail at %s: they are on different filesystems; put the jailer chroot base on the filesystem that holds banger's state", src, root)
		}
		return fmt.Errorf("hard-link %s into the jail: %w", src, err)
	}
	return nil
}

// jailRequest is what a JailHelper is asked to put in l's jail: the
// files prepareJail would place, at the same paths.
func (d *Driver) jailRequest(l layout, spec vmmcore.Spec) JailRequest {
	req := JailRequest{ID: l.id, MemoryMiB: spec.MemoryMiB}
	for _, f := range []JailFile{
		{spec.KernelPath, l.guestPaths.kernel},
		{spec.InitrdPath, l.guestPaths.initrd},
		{spec.RootDisk, l.guestPaths.root},
		{spec.WorkDisk, l.guestPaths.work},
		{spec.ConfigDisk, l.guestPaths.config},
	} {
		if f.Src != "" {
			req.Files = append(req.Files, f)
		}
	}
	if spec.IncomingState != "" {
		files := d.StateFiles(spec.IncomingState)
		req.Files = append(req.Files, JailFile{files[0], l.guestPaths.state}, JailFile{files[1], l.guestPaths.mem})
	}
	return req
}

func (d *Driver) jailerCommand(l layout) []string {
	return JailerArgv(*d.cfg.Jailer, d.cfg.Binary, l.id, l.uid, l.gid, l.memMiB)
}

// JailerArgv is the jailer's command line that runs the firecracker
// binary exec for VM id as uid:gid in j's chroot base, with the VM's
// cgroups (when j.CgroupVersion says which) bounding memory to memMiB
// and the slack, and tasks.
func JailerArgv(j JailerConfig, exec, id string, uid, gid, memMiB int) []string {
	if j.ParentCgroup == "" {
		j.ParentCgroup = DefaultParentCgroup
	}
	argv := []string{j.Binary,
		"--id", id,
		"--exec-file", exec,
		"--uid", strconv.Itoa(uid),
		"--gid", strconv.Itoa(gid),
		"--chroot-base-dir", j.ChrootBase,
	}
	if v := j.CgroupVersion; v == 1 || v == 2 {
		mem := "memory.max"
		if v == 1 {
			mem = "memory.limit_in_bytes"
		}
		argv = append(argv,
			"--cgroup-version", strconv.Itoa(v),
			"--parent-cgroup", j.ParentCgroup,
			"--cgroup", fmt.Sprintf("%s=%d", mem, int64(memMiB+cgroupMemSlackMiB)<<20),
			"--cgroup", fmt.Sprintf("pids.max=%d", cgroupPidsMax))
	}
	return append(argv, "--", "--api-sock", jailAPISocket)
}

// RemoveCgroups removes the cgroups the jailer made for VM id under
// root (the cgroup mount) and parent (empty: the defaults), once its VMM
// has exited.
func RemoveCgroups(root, parent, id string) error { return removeCgroups(root, parent, id) }

// JailedVMMRuns reports whether a jailed Firecracker (or the jailer
// about to become one) of VM id runs on this host: a process whose
// command line carries the id and the jail's API socket, and, when uids
// are given, that runs as one of them (another user's process cannot
// hold a jail up).
func JailedVMMRuns(id string, uids ...int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true // cannot tell: say it may
	}
	match := jailMatcher(id)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// The command line first: Matches takes a process that is
		// exiting for the one its pid and start time name, whatever
		// it runs.
		argv, err := vmmcore.ProcCmdline(pid)
		if err != nil || !match(argv) {
			continue
		}
		if len(uids) > 0 {
			var st unix.Stat_t
			if unix.Stat("/proc/"+e.Name(), &st) != nil || !slices.Contains(uids, int(st.Uid)) {
				continue
			}
		}
		st, err := vmmcore.ProcStartTime(pid)
		if err == nil && vmmcore.Matches(pid, st, match) {
			return true
		}
	}
	return false
}

func jailMatcher(id string) func([]string) bool {
	return func(argv []string) bool { return hasID(argv, id) && vmmcore.ArgMentions(jailAPISocket)(argv) }
}

// ValidID reports whether id is a jail id Start makes (instanceID's
// alphabet, at most 64 characters).
func ValidID(id string) bool { return id != "" && instanceID(id) == id }

// cgroupDirs are the directories the jailer makes for VM id: under the
// unified root (v2), or under each controller banger limits (v1).
func cgroupDirs(root, parent, id string) []string {
	return []string{
		filepath.Join(root, parent, id),
		filepath.Join(root, "memory", parent, id),
		filepath.Join(root, "pids", parent, id),
	}
}

// removeCgroups removes the cgroups of the exited VMM id (the jailer
// leaves them behind) under root and parent (empty: the defaults). A
// cgroup that still has tasks cannot go.
func removeCgroups(root, parent, id string) error {
	if root == "" {
		root = DefaultCgroupRoot
	}
	if parent == "" {
		parent = DefaultParentCgroup
	}
	var errs []error
	for _, dir := range cgroupDirs(root, parent, id) {
		err := unix.Rmdir(dir)
		// A cgroup whose last task just exited can be busy for a moment.
		for i := 0; i < 20 && errors.Is(err, unix.EBUSY); i++ {
			time.Sleep(10 * time.Millisecond)
			err = unix.Rmdir(dir)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// JailedHandle reports whether h is a jailed Firecracker's (its API
// socket is inside a jail).
func JailedHandle(h vmmcore.Handle) bool {
	_, _, ok := jailOf(h.APISocket)
	return ok
}

// jailOf recognises the API socket of a jailed Firecracker
// (<jail>/root/run/firecracker.socket) and returns the jail directory and
// the VM id.
func jailOf(apiSocket string) (jailDir, id string, ok bool) {
	suffix := "/root" + jailAPISocket
	if !strings.HasSuffix(apiSocket, suffix) {
		return "", "", false
	}
	jailDir = strings.TrimSuffix(apiSocket, suffix)
	id = filepath.Base(jailDir)
	if id == "" || id == "/" || id == "." || instanceID(id) != id {
		return "", "", false
	}
	return jailDir, id, true
}
