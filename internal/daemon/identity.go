package daemon

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"

	"banger/internal/configdisk"
	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/sshx"
	"banger/internal/store"
	"banger/internal/vmm"
)

// A VM's identity is made once, at create, by the host: an ed25519 SSH
// host key (pinned in banger's known_hosts before the VM first boots, so
// no other VM on the bridge can answer in its place) and a machine-id. It
// lives in the VM's directory and reaches the guest, with everything else
// that makes the VM itself, on the configuration disk written at every
// boot (writeConfigDisk). The host never writes into the VM's disks.

// makeIdentity creates the VM's host key and machine-id (replacing any it
// had: a clone gets its own) and pins the key under its address and name.
func (d *Daemon) makeIdentity(v store.VM) error {
	paths := d.pathsFor(v.ID)
	priv, pub, err := sshx.NewHostKey(v.Name + ".vm")
	if err != nil {
		return err
	}
	if err := os.WriteFile(paths.hostKey, priv, 0o600); err != nil {
		return fmt.Errorf("write host key of %s: %w", v.Name, err)
	}
	// The image's sshd also serves an ECDSA key: the VM gets its own of
	// that too, or clones and VMs of a built image would share one.
	ecPriv, _, err := sshx.NewECDSAHostKey(v.Name + ".vm")
	if err != nil {
		return err
	}
	if err := os.WriteFile(paths.hostKeyECDSA, ecPriv, 0o600); err != nil {
		return fmt.Errorf("write host key of %s: %w", v.Name, err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	if err := os.WriteFile(paths.machineID, []byte(hex.EncodeToString(id)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write machine-id of %s: %w", v.Name, err)
	}
	return sshx.PinHostKey(d.layout.KnownHosts, pub, v.IP, v.Name+".vm")
}

// hostPublicKey is the public half of the VM's host key.
func (d *Daemon) hostPublicKey(v store.VM) (ssh.PublicKey, []byte, error) {
	priv, err := os.ReadFile(d.pathsFor(v.ID).hostKey)
	if err != nil {
		return nil, nil, err
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("host key of %s: %w", v.Name, err)
	}
	return signer.PublicKey(), priv, nil
}

// sshdDropIn is read before the image's own settings (sshd keeps the first
// value it sees): banger's key, no passwords, the host-made key first.
const sshdDropIn = `# banger: key-only logins with banger's key; the VM's own host keys.
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
`

// growfsUnit grows /root to the size of its disk at boot, online, inside
// the guest: `vm set --disk-size` only grows the file on the host, which
// never runs fsck or resize2fs on a filesystem the guest wrote.
const growfsUnit = `[Unit]
Description=Grow /root to the size of its disk (banger)
After=root.mount
ConditionPathIsMountPoint=/root

[Service]
Type=oneshot
ExecStart=/sbin/resize2fs /dev/vdb

[Install]
WantedBy=local-fs.target
`

// guestFiles are the files of the VM's configuration disk.
func (d *Daemon) guestFiles(v store.VM) ([]configdisk.File, error) {
	signer, err := sshx.EnsureKey(d.layout.SSHKey)
	if err != nil {
		return nil, err
	}
	gw, prefix, err := hostnet.Gateway(d.cfg.BridgeCIDR)
	if err != nil {
		return nil, err
	}
	pub, priv, err := d.hostPublicKey(v)
	if err != nil {
		return nil, err
	}
	machineID, err := os.ReadFile(d.pathsFor(v.ID).machineID)
	if err != nil {
		return nil, err
	}
	files, err := agentFiles()
	if err != nil {
		return nil, err
	}
	// VMs made before banger gave each its ECDSA key keep the image's.
	if ec, err := os.ReadFile(d.pathsFor(v.ID).hostKeyECDSA); err == nil {
		ecSigner, err := ssh.ParsePrivateKey(ec)
		if err != nil {
			return nil, fmt.Errorf("ecdsa host key of %s: %w", v.Name, err)
		}
		files = append(files,
			configdisk.File{Path: "/etc/ssh/ssh_host_ecdsa_key", Data: ec, Mode: 0o600},
			configdisk.File{Path: "/etc/ssh/ssh_host_ecdsa_key.pub", Data: []byte(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ecSigner.PublicKey()))) + " " + v.Name + ".vm\n")})
	}
	return append(files, []configdisk.File{
		{Path: "/etc/hostname", Data: []byte(v.Name + "\n")},
		{Path: "/etc/hosts", Data: []byte(fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s %s.vm\n::1\tlocalhost ip6-localhost ip6-loopback\n", v.Name, v.Name))},
		// The bridge address is the guest's only nameserver: banger's DNS
		// server answers NAME.vm there and forwards every other name to the
		// host's resolvers (or default_dns).
		{Path: "/etc/resolv.conf", Data: []byte("# banger: NAME.vm and, through the host's resolvers, every other name.\nnameserver " + gw + "\n")},
		{Path: "/etc/systemd/network/10-banger.network", Data: []byte(guestNetworkd(v.MAC, v.IP, prefix, gw))},
		// The initrd has configured the link (banger.net=) before systemd
		// starts; networkd would only add seconds before network.target,
		// which sshd waits for (5 s of a 12 s TCG userspace boot here).
		{Path: "/etc/systemd/system/systemd-networkd.service", Target: "/dev/null"},
		{Path: "/etc/systemd/system/systemd-networkd.socket", Target: "/dev/null"},
		{Path: "/etc/systemd/system/systemd-networkd-wait-online.service", Target: "/dev/null"},
		{Path: "/etc/ssh/sshd_config.d/10-banger.conf", Data: []byte(sshdDropIn)},
		// /root is the work disk's mount point, so the key lives outside it.
		{Path: "/etc/ssh/banger_authorized_keys", Data: []byte(sshx.AuthorizedKeyLine(signer.PublicKey()) + "\n"), Mode: 0o600},
		{Path: "/etc/ssh/ssh_host_ed25519_key", Data: priv, Mode: 0o600},
		{Path: "/etc/ssh/ssh_host_ed25519_key.pub", Data: []byte(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + v.Name + ".vm\n")},
		{Path: "/etc/machine-id", Data: machineID, Mode: 0o444},
		{Path: "/etc/systemd/system/banger-growfs.service", Data: []byte(growfsUnit)},
		{Path: "/etc/systemd/system/local-fs.target.wants/banger-growfs.service", Target: "/etc/systemd/system/banger-growfs.service"},
	}...), nil
}

// writeConfigDisk writes the VM's configuration disk for this boot. A VM
// made before identities were (no host key yet) gets one now.
func (d *Daemon) writeConfigDisk(ctx context.Context, v store.VM, km kernel.Manifest) error {
	if !km.HasInitrdFeature(kernel.FeatureConfigDisk) {
		return fmt.Errorf("kernel %s was built before banger's initrd applied per-VM configuration disks; rebuild it (banger kernel rm %s && banger kernel pull %s, or import a newer build)", v.Kernel, v.Kernel, v.Kernel)
	}
	paths := d.pathsFor(v.ID)
	if _, err := os.Stat(paths.hostKey); errors.Is(err, os.ErrNotExist) {
		if err := d.makeIdentity(v); err != nil {
			return err
		}
	}
	files, err := d.guestFiles(v)
	if err != nil {
		return err
	}
	return configdisk.Write(paths.config, files)
}

// vmmUIDBase starts the uids banger's VMMs run as, one per VM:
// 0x70000000, the start of a range systemd's uid conventions leave unused
// (1879048192…2147483647), away from users, services and containers.
const vmmUIDBase = 0x70000000

// vmmIdentity is the "UID:GID" a VM's VMM drops to when the daemon runs as
// root: vmmUIDBase plus the VM's host number in the bridge subnet, unique
// among VMs (as their addresses are), so no VMM can open another's files
// by sharing its identity. Not root: "" (the VMM is the daemon's user).
func (d *Daemon) vmmIdentity(ip string) (string, error) {
	if os.Geteuid() != 0 {
		return "", nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return "", fmt.Errorf("vm address %q is not IPv4", ip)
	}
	p, err := netip.ParsePrefix(d.cfg.BridgeCIDR)
	if err != nil || !p.Contains(a) {
		return "", fmt.Errorf("vm address %s is outside bridge_cidr %s", ip, d.cfg.BridgeCIDR)
	}
	host, net := a.As4(), p.Masked().Addr().As4()
	idx := binary.BigEndian.Uint32(host[:]) - binary.BigEndian.Uint32(net[:])
	uid := uint32(vmmUIDBase) + idx
	return fmt.Sprintf("%d:%d", uid, uid), nil
}

// giveTapToJailedVMM hands the VM's tap to the uid its VMM will run as
// when the driver jails it (a jailed Firecracker has no CAP_NET_ADMIN and
// can attach only to a tap it owns). The tap is deleted when the VM
// stops, and its ownership with it.
//
// In system mode the jailed VMM runs as the owner, whose taps the root
// helper already made.
func (d *Daemon) giveTapToJailedVMM(drv vmm.Driver, spec vmm.Spec) error {
	if !jailed(drv) || spec.Tap == "" || (d.viaHelper && spec.RunAs == "") {
		return nil
	}
	var uid, gid int
	if _, err := fmt.Sscanf(spec.RunAs, "%d:%d", &uid, &gid); err != nil || uid <= 0 {
		return fmt.Errorf("the jailed VMM of %s needs an identity of its own, got %q", spec.Name, spec.RunAs)
	}
	return hostnet.SetTapOwner(spec.Tap, uid, gid)
}
