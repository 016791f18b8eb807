package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Every edit of the image tree goes through an *os.Root, so that the
// tree's absolute symlinks (etc/resolv.conf -> /run/...) can never make a
// write land on the host.

// treeStep is one named edit of the image tree.
type treeStep struct {
	name string
	run  func(root *os.Root) error
}

// bangerTreeSteps turn a fresh Debian tree into a banger guest.
var bangerTreeSteps = []treeStep{
	{"machine-id", emptyMachineID},
	{"host files", writeHostDefaults},
	{"networkd", enableNetworkd},
	{"ssh", configureSSH},
	{"fstab", writeFstab},
	{"quiet units", disableUnits},
	{"root password", clearRootPassword},
}

func customizeTree(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, s := range bangerTreeSteps {
		if err := s.run(root); err != nil {
			return fmt.Errorf("prepare image tree: %s: %w", s.name, err)
		}
	}
	return nil
}

// emptyMachineID leaves /etc/machine-id empty: systemd then generates a
// fresh id on each VM's first boot instead of every VM sharing one.
func emptyMachineID(root *os.Root) error {
	if err := replaceFile(root, "etc/machine-id", nil, 0o444); err != nil {
		return err
	}
	// dbus keeps its own copy when it is not a link to /etc/machine-id.
	if fi, err := root.Lstat("var/lib/dbus/machine-id"); err == nil && fi.Mode().IsRegular() {
		return root.Remove("var/lib/dbus/machine-id")
	}
	return nil
}

// writeHostDefaults replaces what mmdebstrap copied from the build host
// (its hostname and resolv.conf) with neutral defaults; the daemon writes
// the real ones for each VM.
func writeHostDefaults(root *os.Root) error {
	files := []struct {
		name string
		data string
	}{
		{"etc/hostname", "banger\n"},
		{"etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tbanger\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		{"etc/resolv.conf", "# banger writes this file for each VM.\n"},
	}
	for _, f := range files {
		if err := replaceFile(root, f.name, []byte(f.data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// defaultNetwork applies when the daemon has written no
// 10-banger.network (an image booted by hand): DHCP on the first NIC.
const defaultNetwork = `# Fallback for an image booted outside banger; banger writes
# 10-banger.network with the VM's static address, which matches first.
[Match]
Name=en* eth*

[Network]
DHCP=yes
`

func enableNetworkd(root *os.Root) error {
	// systemd-networkd-wait-online is not enabled: nothing in the image
	// waits for network-online.target and it would only slow boots.
	for _, u := range []string{"systemd-networkd.service", "systemd-networkd.socket", "systemd-network-generator.service"} {
		if err := enableUnit(root, u); err != nil {
			return err
		}
	}
	return replaceFile(root, "etc/systemd/network/99-banger-default.network", []byte(defaultNetwork), 0o644)
}

// sshdConfig is read before Debian's own settings (sshd keeps the first
// value it sees). The second AuthorizedKeysFile lives on the root disk, so
// keys can be placed without touching /root, which is the work disk. Only
// ed25519 and ecdsa host keys: generating an RSA key at first boot takes
// minutes under QEMU's TCG.
const sshdConfig = `# banger: key-only logins, per-VM host keys.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
`

// sshKeygenUnit gives each VM its own host keys on first boot; the keys
// baked in by the package's postinst are deleted so VMs never share them.
// ($$ is a literal $ for systemd.)
const sshKeygenUnit = `[Unit]
Description=Generate this machine's SSH host keys (banger)
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for t in ed25519 ecdsa; do f=/etc/ssh/ssh_host_$${t}_key; [ -e "$$f" ] || /usr/bin/ssh-keygen -q -t "$$t" -N "" -f "$$f" || exit 1; done'
RemainAfterExit=yes

[Install]
RequiredBy=ssh.service
`

func configureSSH(root *os.Root) error {
	keys, err := fs.Glob(root.FS(), "etc/ssh/ssh_host_*")
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := root.Remove(k); err != nil {
			return err
		}
	}
	if err := replaceFile(root, "etc/ssh/sshd_config.d/10-banger.conf", []byte(sshdConfig), 0o644); err != nil {
		return err
	}
	if err := root.MkdirAll("etc/ssh/authorized_keys.d", 0o755); err != nil {
		return err
	}
	if err := replaceFile(root, "etc/systemd/system/banger-ssh-keygen.service", []byte(sshKeygenUnit), 0o644); err != nil {
		return err
	}
	return enableUnit(root, "banger-ssh-keygen.service")
}

// fstab mounts the work disk at /root. nofail keeps a VM without one
// booting; the device timeout bounds how long systemd waits for it (90 s
// by default, during which SSH sessions hang waiting on the job).
const fstab = `# banger: /dev/vda is the VM's root disk, /dev/vdb its work disk.
/dev/vda / ext4 defaults 0 1
/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=10s 0 2
`

func writeFstab(root *os.Root) error {
	return replaceFile(root, "etc/fstab", []byte(fstab), 0o644)
}

// quietUnits are enabled by Debian but only cost boot time or background
// I/O in a short-lived dev VM: apt's periodic jobs, scrubbing, trim, a
// getty on a VGA console that microVMs do not have, pstore.
var quietUnits = []string{
	"apt-daily.timer",
	"apt-daily-upgrade.timer",
	"dpkg-db-backup.timer",
	"e2scrub_all.timer",
	"e2scrub_reap.service",
	"fstrim.timer",
	"getty@tty1.service",
	"systemd-pstore.service",
}

// disableUnits removes the quiet units' enablement links (what
// `systemctl disable` does), leaving the units installed.
func disableUnits(root *os.Root) error {
	dirs, err := fs.Glob(root.FS(), "etc/systemd/system/*.wants")
	if err != nil {
		return err
	}
	more, err := fs.Glob(root.FS(), "etc/systemd/system/*.requires")
	if err != nil {
		return err
	}
	for _, d := range append(dirs, more...) {
		for _, u := range quietUnits {
			err := root.Remove(path.Join(d, u))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// clearRootPassword empties root's password so the serial console logs in
// without one. SSH still wants a key (PermitEmptyPasswords is off and
// password logins are disabled).
func clearRootPassword(root *os.Root) error {
	data, err := root.ReadFile("etc/shadow")
	if err != nil {
		return err
	}
	lines := strings.SplitAfter(string(data), "\n")
	found := false
	for i, l := range lines {
		f := strings.Split(l, ":")
		if len(f) >= 2 && f[0] == "root" {
			f[1] = ""
			lines[i] = strings.Join(f, ":")
			found = true
		}
	}
	if !found {
		return errors.New("etc/shadow has no root entry")
	}
	return replaceFile(root, "etc/shadow", []byte(strings.Join(lines, "")), 0o640)
}

// unitDirs are where units live, most specific first; the value is the
// path the guest sees.
var unitDirs = []string{"etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"}

// enableUnit does what `systemctl enable` does for a unit's [Install]
// WantedBy=, RequiredBy= and Alias=: symlinks under /etc/systemd/system.
// Also= is not followed; callers enable what they want explicitly.
func enableUnit(root *os.Root, unit string) error {
	var data []byte
	var unitPath string
	for _, d := range unitDirs {
		b, err := root.ReadFile(path.Join(d, unit))
		if err == nil {
			data, unitPath = b, "/"+path.Join(d, unit)
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if data == nil {
		return fmt.Errorf("enable %s: no such unit in %s", unit, strings.Join(unitDirs, ", "))
	}
	install, err := installSection(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("enable %s: %w", unit, err)
	}
	var links []string
	for _, t := range install["WantedBy"] {
		links = append(links, path.Join("etc/systemd/system", t+".wants", unit))
	}
	for _, t := range install["RequiredBy"] {
		links = append(links, path.Join("etc/systemd/system", t+".requires", unit))
	}
	for _, a := range install["Alias"] {
		links = append(links, path.Join("etc/systemd/system", a))
	}
	if len(links) == 0 {
		return fmt.Errorf("enable %s: its [Install] section names no WantedBy, RequiredBy or Alias", unit)
	}
	for _, l := range links {
		if err := root.MkdirAll(path.Dir(l), 0o755); err != nil {
			return err
		}
		if err := root.Remove(l); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := root.Symlink(unitPath, l); err != nil {
			return fmt.Errorf("enable %s: %w", unit, err)
		}
	}
	return nil
}

// installSection returns the [Install] keys of a unit file, each with its
// space-separated values accumulated over repeated lines.
func installSection(r io.Reader) (map[string][]string, error) {
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			in = line == "[Install]"
		case in:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("bad [Install] line %q", line)
			}
			k = strings.TrimSpace(k)
			out[k] = append(out[k], strings.Fields(v)...)
		}
	}
	return out, sc.Err()
}

// replaceFile writes name inside root, replacing a file or symlink that
// is there (without following it) and creating parent directories.
func replaceFile(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm.Perm())
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return root.Chmod(name, perm) // the full mode (setuid too), whatever the umask
}

// copyIntoRoot copies the host directory src to dst inside root:
// directories, regular files and symlinks, with their permissions.
func copyIntoRoot(root *os.Root, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := path.Join(dst, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := root.MkdirAll(target, 0o755); err != nil {
				return err
			}
			return root.Chmod(target, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return root.Symlink(link, target)
		case d.Type().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := root.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, info.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		default:
			return fmt.Errorf("copy %s: unsupported file type %v", p, d.Type())
		}
	})
}
