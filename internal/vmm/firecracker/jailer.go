package firecracker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/api"
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
// namespace, as UID:GID.
//
// The jailer requires the kernel, initrd and disks to be inside the chroot;
// Start hard-links them there, so ChrootBase must be on the same filesystem
// as banger's images and VM disks, and it gives the disks to UID:GID (a hard
// link shares its owner with the original). The tap device must be usable by
// UID (created with that owner) because the jailed Firecracker has no
// CAP_NET_ADMIN.
type JailerConfig struct {
	// Binary is the jailer executable (default "jailer" on PATH).
	Binary string
	// UID and GID are what Firecracker runs as.
	UID, GID int
	// ChrootBase defaults to DefaultChrootBase.
	ChrootBase string
}

// jailLayout fills l for a jailed start.
func (d *Driver) jailLayout(l layout, spec vmmcore.Spec) (layout, error) {
	j := d.cfg.Jailer
	bin := d.cfg.Binary
	if !filepath.IsAbs(bin) || !strings.Contains(filepath.Base(bin), "firecracker") {
		return layout{}, api.Errorf(api.CodeBadRequest,
			"the jailer needs the firecracker binary as an absolute path whose name contains \"firecracker\", got %q", bin)
	}
	if !filepath.IsAbs(j.ChrootBase) {
		return layout{}, api.Errorf(api.CodeBadRequest, "jailer chroot base %q must be an absolute path", j.ChrootBase)
	}
	l.jailDir = filepath.Join(j.ChrootBase, filepath.Base(bin), l.id)
	root := filepath.Join(l.jailDir, "root")
	var err error
	if l.apiHost, err = vmmcore.SocketPath(root, jailAPISocket); err != nil {
		return layout{}, err
	}
	if l.vsockHost, err = vmmcore.SocketPath(root, jailVsock); err != nil {
		return layout{}, err
	}
	l.guestPaths = vmPaths{kernel: "/kernel", root: "/root.img", vsock: jailVsock}
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

// prepareJail creates the chroot and hard-links the VM's files into it.
func (d *Driver) prepareJail(l layout, spec vmmcore.Spec) error {
	j := d.cfg.Jailer
	root := filepath.Join(l.jailDir, "root")
	run := filepath.Join(root, "run")
	if err := os.MkdirAll(run, 0o755); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	if err := os.Chown(run, j.UID, j.GID); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	links := []struct {
		src, dst string
		owned    bool // Firecracker writes it, so it must own it
	}{
		{spec.KernelPath, l.guestPaths.kernel, false},
		{spec.InitrdPath, l.guestPaths.initrd, false},
		{spec.RootDisk, l.guestPaths.root, true},
		{spec.WorkDisk, l.guestPaths.work, true},
		{spec.ConfigDisk, l.guestPaths.config, false},
	}
	for _, ln := range links {
		if ln.src == "" {
			continue
		}
		dst := filepath.Join(root, ln.dst)
		if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace %s in jail: %w", dst, err)
		}
		if err := os.Link(ln.src, dst); err != nil {
			if errors.Is(err, unix.EXDEV) {
				return fmt.Errorf("hard-link %s into the jail at %s: they are on different filesystems; put the jailer chroot base on the filesystem that holds banger's state", ln.src, root)
			}
			return fmt.Errorf("hard-link %s into the jail: %w", ln.src, err)
		}
		if ln.owned {
			if err := os.Chown(dst, j.UID, j.GID); err != nil {
				return fmt.Errorf("give %s to the jailed uid %d: %w", ln.src, j.UID, err)
			}
		}
	}
	return nil
}

func (d *Driver) jailerCommand(l layout) []string {
	j := d.cfg.Jailer
	return []string{j.Binary,
		"--id", l.id,
		"--exec-file", d.cfg.Binary,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.ChrootBase,
		"--",
		"--api-sock", jailAPISocket,
	}
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
