package oci

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// root is a directory that all writes are confined to. Every path given to
// its methods is resolved by the kernel (openat2 with RESOLVE_IN_ROOT) as
// if the directory were "/": absolute symlinks and ".." stay inside it.
// Only parent directories are resolved that way; the last component of an
// entry is always acted on with the *at calls and never followed.
type root struct {
	fd   int
	path string // host path, for messages and for mkfs
	// own, when set, records what a rootless unpack makes (see owners).
	own *owners
}

// maxResolveSteps bounds the directories and symlinks a single parent
// lookup may create or follow, like the kernel's own symlink limit.
const maxResolveSteps = 64

func openRoot(dir string) (*root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open staging root %s: %w", dir, err)
	}
	r := &root{fd: fd, path: dir}
	// Fail early, with a clear message, on kernels without openat2.
	probe, err := r.resolve(".", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENOSYS) {
			return nil, errors.New("this kernel lacks openat2 (Linux 5.6 or newer is needed to unpack images safely); upgrade the host kernel")
		}
		return nil, fmt.Errorf("open staging root %s: %w", dir, err)
	}
	unix.Close(probe)
	return r, nil
}

func (r *root) close() { unix.Close(r.fd) }

// resolve opens p inside the root, following symlinks but never leaving it.
func (r *root) resolve(p string, flags int) (int, error) {
	if p == "" {
		p = "."
	}
	for {
		fd, err := unix.Openat2(r.fd, p, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
}

// openDir opens directory p inside the root as an O_PATH descriptor.
// With create, missing directories are made (0755, root-owned; rootless,
// recorded so), including
// the target of a dangling symlink on the way, the way tar and container
// runtimes do.
func (r *root) openDir(p string, create bool) (int, error) {
	steps := maxResolveSteps
	return r.openDirSteps(p, create, &steps)
}

func (r *root) openDirSteps(p string, create bool, steps *int) (int, error) {
	for {
		fd, err := r.resolve(p, unix.O_PATH|unix.O_DIRECTORY)
		if err != unix.ENOENT || !create {
			return fd, err
		}
		*steps--
		if *steps < 0 {
			return -1, fmt.Errorf("directory %q: %w", p, unix.ELOOP)
		}
		parent, base := splitRaw(p)
		pfd, err := r.openDirSteps(parent, true, steps)
		if err != nil {
			return -1, err
		}
		err = unix.Mkdirat(pfd, base, 0o755)
		if err == nil && r.own != nil {
			err = r.own.record(pfd, base, owned{mode: fs.ModeDir | 0o755})
		}
		if err == unix.EEXIST {
			// Something is there yet the lookup failed: a symlink whose
			// target is missing. Make the target, inside the root.
			if target, lerr := readlinkAt(pfd, base); lerr == nil {
				next := target
				if !strings.HasPrefix(target, "/") && parent != "" {
					next = parent + "/" + target
				}
				nfd, nerr := r.openDirSteps(next, true, steps)
				if nerr != nil {
					unix.Close(pfd)
					return -1, nerr
				}
				unix.Close(nfd)
			}
			err = nil
		}
		unix.Close(pfd)
		if err != nil {
			return -1, fmt.Errorf("make directory %q: %w", p, err)
		}
	}
}

// splitRaw splits p at its last slash without cleaning it: ".." inside p
// must be resolved by the kernel after the symlinks before it.
func splitRaw(p string) (parent, base string) {
	p = strings.TrimRight(p, "/")
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	parent = p[:i]
	if parent == "" {
		parent = "/"
	}
	return parent, p[i+1:]
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) >= 1<<16 {
			return "", unix.ENAMETOOLONG
		}
		buf = make([]byte, 2*len(buf))
	}
}

func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// removeAt removes name in dirfd and, if it is a directory, everything
// below it, without following symlinks. A missing name is not an error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := clearDir(fd); err != nil {
		unix.Close(fd)
		return err
	}
	unix.Close(fd)
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// clearDir removes every entry of the directory open at fd (O_RDONLY).
func clearDir(fd int) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeAt(fd, n); err != nil {
			return fmt.Errorf("remove %s: %w", n, err)
		}
	}
	return nil
}

// readDirNames lists a directory open at fd (O_RDONLY) without closing fd.
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}
