package privops

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

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
//     contents), only to one of firecracker.JailPaths. No device node: a
//     dm root's node in the jail would be the owner's, on a persistent
//     filesystem it could hard-link it away on, and outlive the device
//     whose number a later one (someone's LUKS volume) takes.
//   - The jailer and firecracker binaries are the configuration's
//     (jailer_bin, firecracker_bin), found on root's PATH, and must be
//     root's files that only root may write; the jailer is given the
//     resolved path, whose name is the jails' directory.
//   - The jail's own directory stays root's and closed (0700) until the
//     launched process runs as the owner: the jailer hands the chroot to
//     the owner and then still makes device nodes and directories in it
//     by path, as root, which the owner must not reach meanwhile (to
//     swap a name for a hard link to a file of root's).
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

// available says whether jails can be made here, with which binaries
// (resolved: the jailer names a jail's directory after the real name of
// the binary it runs).
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

// rootsBinary finds name on PATH, checks that only root can change it
// (the name where it was found, and the file it resolves to) and returns
// the resolved path.
func rootsBinary(name, key string) (string, error) {
	path, err := system.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s %q was not found on the root helper's PATH (%v); it ships with Firecracker's release", key, name, err)
	}
	if err := rootsPath(filepath.Dir(path), true); err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	if err := rootsPath(real, false); err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	return real, nil
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

// jailDropTimeout bounds the wait for a launched jailer to run as the
// owner (it has then built the jail and execs Firecracker).
const jailDropTimeout = 10 * time.Second

// start makes the jail of req.ID, places req.Files in it and launches the
// jailer as uid:gid, its output to console. It returns the pid.
func (j *Jails) start(req firecracker.JailRequest, console *os.File, uid, gid int) (int, error) {
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
	dir := filepath.Join(j.Base, filepath.Base(fc), req.ID)
	if _, err := os.Lstat(dir); err == nil {
		if firecracker.JailedVMMRuns(req.ID, uid, 0) {
			return 0, api.Errorf(api.CodeOperationFailed, "the VMM of jail %s still runs; stop it first", req.ID)
		}
		// What a VMM that died left (the jailer would refuse its device
		// nodes).
		if err := os.RemoveAll(dir); err != nil {
			return 0, fmt.Errorf("remove a stale jail: %w", err)
		}
	}
	made, err := j.fill(dir, req, uid, gid)
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
	// The owner reaches the jail (its VMM's sockets) only once nothing
	// runs there as root.
	err = waitRunsAs(pid, uid, jailDropTimeout)
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		if start, serr := vmmcore.ProcStartTime(pid); serr == nil {
			_ = vmmcore.Kill(pid, start, func([]string) bool { return true })
		}
		_ = os.RemoveAll(dir)
		_ = firecracker.RemoveCgroups(j.CgroupRoot, j.ParentCgroup, req.ID) // the jailer may have made them
		return 0, fmt.Errorf("jail %s: %w", req.ID, err)
	}
	return pid, nil
}

// waitRunsAs waits until process pid runs as uid (real, effective, saved
// and filesystem ids all), or has exited, or limit has passed.
func waitRunsAs(pid, uid int, limit time.Duration) error {
	want := strconv.Itoa(uid)
	for deadline := time.Now().Add(limit); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return fmt.Errorf("the jailer exited before it ran Firecracker as uid %d (its output is in the VM's console log)", uid)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if ids, ok := strings.CutPrefix(line, "Uid:"); ok && slices.Equal(strings.Fields(ids), []string{want, want, want, want}) {
				return nil
			}
			if st, ok := strings.CutPrefix(line, "State:"); ok && strings.HasPrefix(strings.TrimSpace(st), "Z") {
				return fmt.Errorf("the jailer exited before it ran Firecracker as uid %d (its output is in the VM's console log)", uid)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the jailer did not run Firecracker as uid %d within %s", uid, limit)
		}
	}
}

// fill makes dir/root and puts the VM's files in it; made says whether
// it made anything to remove.
func (j *Jails) fill(dir string, req firecracker.JailRequest, uid, gid int) (made bool, err error) {
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
	// Modes set, not asked of mkdir: the helper's umask is 0077. The
	// jail's own directory stays closed until start opens it.
	if err := mkdirMode(filepath.Dir(dir), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return false, err
	}
	if err := mkdirMode(dir, 0o700); err != nil {
		return false, err
	}
	if err := mkdirMode(root, 0o755); err != nil {
		return true, err
	}
	// Firecracker makes its sockets in /run, as the owner.
	run := filepath.Join(root, "run")
	if err := mkdirMode(run, 0o755); err != nil {
		return true, err
	}
	if err := os.Chown(run, uid, gid); err != nil {
		return true, err
	}
	for _, f := range req.Files {
		if strings.HasPrefix(f.Src, "/dev/") {
			return true, refuse("jail %s: %s: a device cannot go into a jail whose VMM runs as the owner (its node there would be the owner's and outlive the device); give the VM a root disk that is a file (root_disk = \"auto\" does)", req.ID, f.Src)
		}
		if err := j.link(state, base.Dev, f.Src, filepath.Join(root, f.Dst), uid); err != nil {
			return true, fmt.Errorf("jail %s: %w", req.ID, err)
		}
	}
	return true, nil
}

// mkdirMode makes directory p with exactly mode perm.
func mkdirMode(p string, perm os.FileMode) error {
	if err := os.Mkdir(p, perm); err != nil {
		return err
	}
	return os.Chmod(p, perm)
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

// remove removes the jail and cgroups of id, whose VMM (the owner's or
// root's process: no other user's can hold it up) has exited.
func (j *Jails) remove(id string, owner int) error {
	if !firecracker.ValidID(id) {
		return refuse("jail id %q: letters, digits and hyphens only, at most 64", id)
	}
	if firecracker.JailedVMMRuns(id, owner, 0) {
		return api.Errorf(api.CodeOperationFailed, "the VMM of jail %s still runs; stop it first", id)
	}
	var errs []error
	// The jail of id under each binary's name (the binary may have
	// changed since). RemoveAll does not follow the symlinks the
	// owner's VMM may have left in its root.
	execs, _ := os.ReadDir(j.Base)
	for _, e := range execs {
		if !e.IsDir() {
			continue
		}
		if err := os.RemoveAll(filepath.Join(j.Base, e.Name(), id)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := firecracker.RemoveCgroups(j.CgroupRoot, j.ParentCgroup, id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
