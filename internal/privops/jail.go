package privops

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/vmmcore"
)

// Jails is how the root helper runs Firecracker under its jailer for an
// unprivileged daemon (the jailer must be root). It makes the jail of a
// VM under Base, places the VM's files in it, launches the jailer with
// root's own binaries and the owner's uid and gid, and removes jail and
// cgroups once the VMM has exited.
//
// What it trusts of the daemon's request is only the VM id, its memory
// and which file goes where:
//   - Base is root's: every directory on its path belongs to root and
//     only root may write it (or it is sticky), so the jailer, which
//     works there as root by path, never follows a name the owner made.
//   - A file comes from the owner's state directory, opened beneath it
//     without leaving it (os.Root), must be a regular file of the owner's
//     and is hard-linked in (never copied, chowned or opened for its
//     contents); a dm root is a /dev/mapper/banger-* node, checked in
//     sysfs, made anew in the jail. Each goes only to one of
//     firecracker.JailPaths.
//   - The jailer and firecracker binaries are the configuration's
//     (jailer_bin, firecracker_bin), found on root's PATH, and must be
//     root's files that only root may write.
//
// Jailed this way, Firecracker runs as the owner, as it does unjailed in
// system mode, inside its chroot, mount namespace and cgroups. (A root
// daemon gives each VM's VMM a uid of its own; here the VMs' disks would
// then be another user's files, which the owner daemon could no longer
// grow or snapshot.)
type Jails struct {
	// Base is the jails' chroot base (config.SystemJailDir), on the
	// filesystem of StateDir: hard links cannot cross filesystems.
	Base string
	// StateDir is the owner daemon's state directory.
	StateDir string
	// Jailer and Firecracker name the binaries (names on PATH or paths).
	Jailer, Firecracker string
	// CgroupVersion (1 or 2; 0 sets no limits), ParentCgroup and
	// CgroupRoot are the jailer's cgroup settings (firecracker
	// defaults when empty).
	CgroupVersion int
	ParentCgroup  string
	CgroupRoot    string
}

// execName is the name of the firecracker binary, which names the
// directory of the jails under Base.
func (j *Jails) execName() string { return filepath.Base(j.Firecracker) }

// available says whether jails can be made here, and under which name.
func (j *Jails) available() (jailer, fc string, err error) {
	if err := rootsPath(j.Base, true); err != nil {
		return "", "", fmt.Errorf("the jails' directory: %w", err)
	}
	if jailer, err = rootsBinary(j.Jailer, "jailer_bin"); err != nil {
		return "", "", err
	}
	if fc, err = rootsBinary(j.Firecracker, "firecracker_bin"); err != nil {
		return "", "", err
	}
	if !strings.Contains(filepath.Base(fc), "firecracker") {
		return "", "", fmt.Errorf("the jailer only runs a binary whose name contains \"firecracker\", and firecracker_bin is %s", fc)
	}
	return jailer, fc, nil
}

// rootsBinary finds name on PATH and checks that only root can change it.
func rootsBinary(name, key string) (string, error) {
	path, err := system.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s %q was not found on the root helper's PATH (%v); it ships with Firecracker's release", key, name, err)
	}
	if err := rootsPath(path, false); err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	return path, nil
}

// rootsPath checks that path (after its symlinks) and every directory
// above it belong to root and that nobody else may write them (a sticky
// directory, like /tmp, is allowed above it): nobody but root can change
// what the path names. dir says whether it must be a directory (else a
// regular file).
func rootsPath(path string, dir bool) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	for p := real; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		writable := st.Mode&0o022 != 0 && !(p != real && st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&unix.S_ISVTX != 0)
		if st.Uid != 0 || writable {
			return fmt.Errorf("%s must belong to root and be writable by root only (it is %d, mode %o): chown root %s && chmod go-w %s", p, st.Uid, st.Mode&0o7777, p, p)
		}
		if p == real {
			typ := st.Mode & unix.S_IFMT
			if dir && typ != unix.S_IFDIR {
				return fmt.Errorf("%s is not a directory", p)
			}
			if !dir && typ != unix.S_IFREG {
				return fmt.Errorf("%s is not a regular file", p)
			}
		}
		if p == "/" {
			return nil
		}
	}
}

// jailDir is the jail of VM id.
func (j *Jails) jailDir(id string) string { return filepath.Join(j.Base, j.execName(), id) }

// start makes the jail of req.ID, places req.Files in it and launches the
// jailer as uid:gid, its output to console. It returns the pid.
func (j *Jails) start(p Policy, req firecracker.JailRequest, console *os.File, uid, gid int) (int, error) {
	if !firecracker.ValidID(req.ID) {
		return 0, refuse("jail id %q: letters, digits and hyphens only, at most 64", req.ID)
	}
	if req.MemoryMiB <= 0 {
		return 0, refuse("jail %s: memory %d MiB", req.ID, req.MemoryMiB)
	}
	allowed := firecracker.JailPaths()
	seen := map[string]bool{}
	for _, f := range req.Files {
		if !slices.Contains(allowed, f.Dst) || seen[f.Dst] {
			return 0, refuse("jail %s: %q is not a place for a VM's file (one of %s, once each)", req.ID, f.Dst, strings.Join(allowed, ", "))
		}
		seen[f.Dst] = true
	}
	if uid == 0 {
		return 0, refuse("jails are for an owner that is not root; a root daemon runs the jailer itself")
	}
	jailer, fc, err := j.available()
	if err != nil {
		return 0, err
	}
	dir := j.jailDir(req.ID)
	if _, err := os.Lstat(dir); err == nil {
		if firecracker.JailedVMMRuns(req.ID) {
			return 0, api.Errorf(api.CodeOperationFailed, "the VMM of jail %s still runs; stop it first", req.ID)
		}
		// What a VMM that died left (the jailer would refuse its device
		// nodes).
		if err := os.RemoveAll(dir); err != nil {
			return 0, fmt.Errorf("remove a stale jail: %w", err)
		}
	}
	made, err := j.fill(p, dir, req, uid, gid)
	if err != nil {
		if made {
			_ = os.RemoveAll(dir)
		}
		return 0, err
	}
	argv := firecracker.JailerArgv(firecracker.JailerConfig{Binary: jailer, ChrootBase: j.Base,
		CgroupVersion: j.CgroupVersion, ParentCgroup: j.ParentCgroup}, fc, req.ID, uid, gid, req.MemoryMiB)
	pid, err := vmmcore.LaunchWith(argv, console, nil)
	if err != nil {
		_ = os.RemoveAll(dir)
		return 0, fmt.Errorf("launch the jailer: %w", err)
	}
	return pid, nil
}

// fill makes dir/root and puts the VM's files in it; made says whether
// it made anything to remove.
func (j *Jails) fill(p Policy, dir string, req firecracker.JailRequest, uid, gid int) (made bool, err error) {
	var base unix.Stat_t
	if err := unix.Stat(j.Base, &base); err != nil {
		return false, err
	}
	state, err := os.OpenRoot(j.StateDir)
	if err != nil {
		return false, fmt.Errorf("open banger's state directory: %w", err)
	}
	defer state.Close()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return false, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return false, err
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		return true, err
	}
	// Firecracker makes its sockets in /run, as the owner.
	run := filepath.Join(root, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		return true, err
	}
	if err := os.Chown(run, uid, gid); err != nil {
		return true, err
	}
	for _, f := range req.Files {
		dst := filepath.Join(root, f.Dst)
		if name, ok := strings.CutPrefix(f.Src, "/dev/mapper/"); ok {
			err = placeDM(p, name, dst, uid, gid)
		} else {
			err = j.link(state, base.Dev, f.Src, dst, uid)
		}
		if err != nil {
			return true, fmt.Errorf("jail %s: %w", req.ID, err)
		}
	}
	return true, nil
}

// link hard-links the owner's file src, beneath the state directory, to
// dst.
func (j *Jails) link(state *os.Root, dev uint64, src, dst string, uid int) error {
	rel, err := filepath.Rel(j.StateDir, src)
	if !filepath.IsAbs(src) || err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return refuse("%s is not in banger's state directory %s", src, j.StateDir)
	}
	f, err := state.OpenFile(rel, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return refuse("%s: %v", src, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return refuse("%s is not a regular file", src)
	case int(st.Uid) != uid:
		return refuse("%s belongs to uid %d, not to banger's owner (%d)", src, st.Uid, uid)
	case st.Dev != dev:
		return fmt.Errorf("%s is on another filesystem than the jails (%s): a jail hard-links a VM's files, so banger's state and its jails must share one", src, j.Base)
	}
	// The descriptor, not the name: what was checked is what is linked.
	if err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW); err != nil {
		return fmt.Errorf("hard-link %s into the jail: %w", src, err)
	}
	return nil
}

// placeDM makes at dst a node of the dm device name (a banger snapshot,
// as sysfs confirms), the owner's.
func placeDM(p Policy, name, dst string, uid, gid int) error {
	if err := p.checkSnapshotName(name); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/mapper/"+name, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return refuse("/dev/mapper/%s is not a block device", name)
	}
	if got := dmName(unix.Major(st.Rdev), unix.Minor(st.Rdev)); got != name {
		return refuse("/dev/mapper/%s is device %d:%d, which is not that dm device", name, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if err := unix.Mknod(dst, unix.S_IFBLK|0o600, int(st.Rdev)); err != nil {
		return fmt.Errorf("make a node of %s in the jail: %w", name, err)
	}
	return os.Chown(dst, uid, gid)
}

// remove removes the jail and cgroups of id, whose VMM has exited.
func (j *Jails) remove(id string) error {
	if !firecracker.ValidID(id) {
		return refuse("jail id %q: letters, digits and hyphens only, at most 64", id)
	}
	if firecracker.JailedVMMRuns(id) {
		return api.Errorf(api.CodeOperationFailed, "the VMM of jail %s still runs; stop it first", id)
	}
	var errs []error
	// RemoveAll does not follow the symlinks the owner's VMM may have
	// left in its root.
	if err := os.RemoveAll(j.jailDir(id)); err != nil {
		errs = append(errs, err)
	}
	root, parent := j.CgroupRoot, j.ParentCgroup
	if root == "" {
		root = firecracker.DefaultCgroupRoot
	}
	if parent == "" {
		parent = firecracker.DefaultParentCgroup
	}
	if err := firecracker.RemoveCgroups(root, parent, id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
