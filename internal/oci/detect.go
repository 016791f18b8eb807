package oci

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// features is what an unpacked image holds that decides its first-boot
// bootstrap.
type features struct {
	systemd    bool
	sshd       bool
	pkgManager string
}

// Package managers in the order they are looked for: dnf before yum,
// since newer Fedora and RHEL ship yum as a link to dnf.
var pkgManagers = []struct{ name, path string }{
	{"apt", "/usr/bin/apt-get"},
	{"apk", "/sbin/apk"},
	{"apk", "/usr/sbin/apk"},
	{"dnf", "/usr/bin/dnf"},
	{"yum", "/usr/bin/yum"},
}

// detect looks inside the unpacked tree, resolving symlinks the way the
// guest will (inside the root: merged-usr /lib -> usr/lib included).
func detect(rootDir string) (features, error) {
	r, err := openRoot(rootDir)
	if err != nil {
		return features{}, err
	}
	defer r.close()
	var f features
	for _, p := range []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd"} {
		if f.systemd, err = r.isExecutable(p); err != nil || f.systemd {
			break
		}
	}
	if err != nil {
		return features{}, err
	}
	if f.sshd, err = r.isExecutable("/usr/sbin/sshd"); err != nil {
		return features{}, err
	}
	for _, pm := range pkgManagers {
		ok, err := r.isExecutable(pm.path)
		if err != nil {
			return features{}, err
		}
		if ok {
			f.pkgManager = pm.name
			break
		}
	}
	return f, nil
}

// isExecutable reports whether p, resolved inside the root, is a regular
// file with an execute bit.
func (r *root) isExecutable(p string) (bool, error) {
	fd, err := r.resolve(p, unix.O_PATH)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look for %s in the image: %w", p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("look for %s in the image: %w", p, err)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0, nil
}
