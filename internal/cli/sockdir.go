package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// checkSocketDir refuses a daemon socket whose directory someone else
// could have made or could change: every directory from the socket's up
// to / (and, through symbolic links, the directories they lead to) must
// belong to root or to the caller, and none may be writable by others
// unless it is sticky, like /tmp (the socket's own directory never). A
// directory that does not exist yet is the daemon's to make. also are
// uids trusted besides root and the caller (a system install's owner).
func checkSocketDir(sock string, also ...int) error {
	dir := filepath.Dir(filepath.Clean(sock))
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := checkDirChain(dir, dir, also...); err != nil {
		return err
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("check the directory of %s: %w", sock, err)
	}
	if resolved != dir {
		return checkDirChain(resolved, resolved, also...)
	}
	return nil
}

func checkDirChain(dir, own string, also ...int) error {
	uid := os.Getuid()
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Lstat(d)
		if err != nil {
			return fmt.Errorf("check %s: %w", d, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("check %s: no owner information", d)
		}
		if int(st.Uid) != 0 && int(st.Uid) != uid && !slices.Contains(also, int(st.Uid)) {
			return fmt.Errorf("refusing the bangerd socket in %s: %s belongs to uid %d, neither root nor you; remove it, or set XDG_RUNTIME_DIR or BANGER_SOCKET to a directory of yours", own, d, st.Uid)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			perm := fi.Mode().Perm()
			if perm&0o022 != 0 && (d == own || fi.Mode()&fs.ModeSticky == 0) {
				return fmt.Errorf("refusing the bangerd socket in %s: %s is writable by others (mode %04o); remove it, or set XDG_RUNTIME_DIR or BANGER_SOCKET to a directory of yours", own, d, perm|stickyBit(fi.Mode()))
			}
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

func stickyBit(m fs.FileMode) fs.FileMode {
	if m&fs.ModeSticky != 0 {
		return 0o1000
	}
	return 0
}
