// Package privops is the boundary between bangerd and the host operations
// that need root: the bridge, taps, the firewall rules, IPv4 forwarding,
// the DNS port guests ask, the routing of the host's NAME.vm lookups
// through systemd-resolved, and the loop and device-mapper devices of dm
// root disks. The daemon asks an Ops for each one and never does them
// itself. Local does them in-process, for a daemon that runs as root
// (user mode, today's default). In system mode bangerd runs as its owner,
// unprivileged, and Client asks banger's root helper (`bangerd
// root-helper`, Serve), a small root process that does only these typed
// operations, only on banger's own bridge, taps, tables, domain and
// banger- snapshots (built from files the daemon passes open, never from
// a path it names), and answers only root and the owner's uid.
//
// Why a hand-written protocol: one JSON request and one JSON answer per
// connection, with descriptors (a tap, the DNS sockets; a snapshot's
// files the other way) passed beside them with SCM_RIGHTS — which
// JSON-RPC over net/rpc or gRPC would not carry without wrapping the
// socket anyway.
package privops

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/dns"
	"banger/internal/hostnat"
	"banger/internal/hostnet"
	"banger/internal/resolved"
	"banger/internal/system"
)

// Ops are the privileged host operations bangerd needs.
type Ops interface {
	// EnsureBridge makes the bridge name with the gateway address of cidr,
	// up (idempotent).
	EnsureBridge(name, cidr string) error
	// CreateTap makes (or repairs) a persistent tap attached to bridge.
	CreateTap(name, bridge string) error
	// DeleteTap removes a tap (a missing one is fine).
	DeleteTap(name string) error
	// OpenTap attaches to an existing tap and returns the descriptor a VMM
	// is handed (QEMU's -netdev tap,fd=N), so a VMM that may not open
	// /dev/net/tun still gets its network.
	OpenTap(name string) (*os.File, error)
	// SyncNAT makes banger's firewall tables exactly spec.
	SyncNAT(spec hostnat.Spec) error
	// NATDiff lists how the kernel's banger tables differ from spec
	// (nothing: in place).
	NATDiff(spec hostnat.Spec) ([]string, error)
	// EnableIPForward turns IPv4 forwarding on, saying whether it was.
	EnableIPForward() (wasOn bool, err error)
	// ListenDNS binds UDP and TCP on addr (the bridge's gateway, port 53).
	ListenDNS(addr string) (net.PacketConn, net.Listener, error)
	// RouteDNS sends the host's lookups of domain to server over link
	// through systemd-resolved (resolved.Route); where resolved does not
	// manage the host's DNS the error wraps resolved.ErrNotManaged.
	RouteDNS(link, server, domain string) error
	// UnrouteDNS drops what RouteDNS set on link.
	UnrouteDNS(link string) error
	// SnapshotsAvailable says whether AttachSnapshot can work on this
	// host (dmsnap.Available).
	SnapshotsAvailable() error
	// AttachSnapshot makes the device-mapper snapshot name of a VM's root
	// disk from open files: base (read-only) as the origin, cow (open
	// read-write) as its exception store, each on an autoclearing loop
	// device (dmsnap.CreateFromFiles). Files, not paths: nothing is opened
	// on a caller's word.
	AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error)
	// DetachSnapshot removes the dm device (retried while busy); its
	// loops clear themselves.
	DetachSnapshot(h dmsnap.Handles) error
}

// HelperOps are what the root helper does: Ops, and giving the taps it
// makes to the owner (SetTapOwner: a VMM running as that user may then
// attach to one by name, as Firecracker does). Callers never ask it.
type HelperOps interface {
	Ops
	SetTapOwner(name string, uid, gid int) error
	// SetDeviceOwner gives the block device dev (a /dev/mapper link) to
	// uid:gid, mode 0600, so the owner's VMM may open it.
	SetDeviceOwner(dev string, uid, gid int) error
}

// Local does the operations in this process; it needs root (or
// CAP_NET_ADMIN and CAP_NET_BIND_SERVICE).
type Local struct{}

func (Local) EnsureBridge(name, cidr string) error { return hostnet.EnsureBridge(name, cidr) }
func (Local) CreateTap(name, bridge string) error  { return hostnet.CreateTap(name, bridge) }
func (Local) DeleteTap(name string) error          { return hostnet.DeleteTap(name) }
func (Local) SetTapOwner(name string, uid, gid int) error {
	return hostnet.SetTapOwner(name, uid, gid)
}
func (Local) SyncNAT(spec hostnat.Spec) error { return hostnat.Sync(spec) }
func (Local) EnableIPForward() (bool, error)  { return hostnat.EnableIPForward() }

func (Local) NATDiff(spec hostnat.Spec) ([]string, error) {
	obs, err := hostnat.State()
	if err != nil {
		return nil, err
	}
	return obs.Diff(spec), nil
}

func (Local) OpenTap(name string) (*os.File, error) { return hostnet.OpenTap(name) }

func (Local) ListenDNS(addr string) (net.PacketConn, net.Listener, error) { return dns.BindPair(addr) }

// resolvectlTimeout bounds the resolvectl commands of RouteDNS and
// UnrouteDNS.
const resolvectlTimeout = 10 * time.Second

func (Local) RouteDNS(link, server, domain string) error {
	if err := resolved.SystemHost.Check(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolvectlTimeout)
	defer cancel()
	return resolved.Route(ctx, &system.Exec{}, link, server, domain)
}

// snapshotTimeout bounds the dmsetup commands of one snapshot operation:
// well inside the client's 30 s, so an answer is never made for a caller
// that has given up.
const snapshotTimeout = 20 * time.Second

func (Local) SnapshotsAvailable() error { return dmsnap.AvailableFromFiles() }

func (Local) AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error) {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	return dmsnap.CreateFromFiles(ctx, &system.Exec{}, name, base, cow)
}

func (Local) DetachSnapshot(h dmsnap.Handles) error {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	h.COWPath = "" // the COW file is the VM's: never deleted here
	return dmsnap.Remove(ctx, &system.Exec{}, h)
}

// sysfs is where the kernel's block device attributes are read (tests
// point it at a tree of their own).
var sysfs = "/sys"

// SetDeviceOwner gives /dev/mapper/NAME's node to uid:gid, mode 0600,
// once sysfs confirms the node's device number is the dm device NAME (a
// name removed and a number reused meanwhile is refused), through a
// descriptor of the node so the check holds for what is changed.
func (Local) SetDeviceOwner(dev string, uid, gid int) error {
	name := filepath.Base(dev)
	node, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return fmt.Errorf("give %s to uid %d: %w", dev, uid, err)
	}
	fd, err := unix.Open(node, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("give %s to uid %d: %w", dev, uid, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("give %s to uid %d: %w", dev, uid, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fmt.Errorf("give %s to uid %d: %s is not a block device", dev, uid, node)
	}
	if got := dmName(unix.Major(st.Rdev), unix.Minor(st.Rdev)); got != name {
		return fmt.Errorf("give %s to uid %d: %s is not the device-mapper device %s (sysfs says %q)", dev, uid, node, name, got)
	}
	// Mode first, while the node is still root's (after the chown it
	// would take CAP_FOWNER); through the descriptor's /proc link, as
	// fchmod does not take an O_PATH descriptor.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), 0o600); err != nil {
		return fmt.Errorf("give %s to uid %d: %w", dev, uid, err)
	}
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("give %s to uid %d: %w", dev, uid, err)
	}
	return nil
}

// dmName is the device-mapper name of block device major:minor ("": not
// a dm device).
func dmName(major, minor uint32) string {
	b, err := os.ReadFile(fmt.Sprintf("%s/dev/block/%d:%d/dm/name", sysfs, major, minor))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// madeByHelper says whether the dm device name, if it exists, is one the
// helper made: every device under it a loop that clears itself. A
// snapshot a root daemon made (loops it detaches itself) is not the
// helper's to remove.
func madeByHelper(name string) error {
	names, _ := filepath.Glob(sysfs + "/block/dm-*/dm/name")
	for _, p := range names {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Dir(filepath.Dir(p))
		slaves, _ := filepath.Glob(filepath.Join(dev, "slaves", "*"))
		if len(slaves) == 0 {
			// A device whose table never loaded (dmsetup create cut
			// short) holds nothing: it may go.
			if size, err := os.ReadFile(filepath.Join(dev, "size")); err == nil && strings.TrimSpace(string(size)) == "0" {
				return nil
			}
			return refuse("%s has no loop devices under it; it is not a snapshot the helper made", name)
		}
		for _, sl := range slaves {
			ac, err := os.ReadFile(filepath.Join(sl, "loop", "autoclear"))
			if err != nil || strings.TrimSpace(string(ac)) != "1" {
				return refuse("%s stands on %s, which is not an autoclearing loop: not a snapshot the helper made", name, filepath.Base(sl))
			}
		}
		return nil
	}
	return nil // gone already: removing it is a no-op
}

func (Local) UnrouteDNS(link string) error {
	ctx, cancel := context.WithTimeout(context.Background(), resolvectlTimeout)
	defer cancel()
	return resolved.Unroute(ctx, &system.Exec{}, link)
}

// Policy is what the root helper lets its callers touch: banger's bridge
// (name and subnet from the configuration), taps named like banger's, its
// own firewall tables (always), and the DNS port on the bridge's gateway.
type Policy struct {
	Bridge     string
	BridgeCIDR string
	gateway    netip.Addr
	subnet     netip.Prefix
}

// NewPolicy checks bridge and cidr the way the daemon does.
func NewPolicy(bridge, cidr string) (Policy, error) {
	gw, bits, err := hostnet.Gateway(cidr)
	if err != nil {
		return Policy{}, err
	}
	if bridge == "" {
		return Policy{}, fmt.Errorf("root helper: no bridge name configured")
	}
	g := netip.MustParseAddr(gw)
	return Policy{Bridge: bridge, BridgeCIDR: cidr, gateway: g, subnet: netip.PrefixFrom(g, bits).Masked()}, nil
}

func refuse(format string, args ...any) error {
	return api.Errorf(api.CodeBadRequest, "root helper refuses: "+format, args...)
}

func (p Policy) checkBridge(name string) error {
	if name != p.Bridge {
		return refuse("bridge %q is not banger's (%q, bridge_name)", name, p.Bridge)
	}
	return nil
}

// checkTap accepts only names banger gives taps (hostnet.TapPrefix and
// a valid interface name): never the host's own interfaces.
func (p Policy) checkTap(name string) error {
	if !strings.HasPrefix(name, hostnet.TapPrefix) || len(name) <= len(hostnet.TapPrefix) || len(name) > unix.IFNAMSIZ-1 ||
		strings.ContainsAny(name, "/: \t\n\x00") {
		return refuse("%q is not a banger tap name (%sNAME, at most %d bytes)", name, hostnet.TapPrefix, unix.IFNAMSIZ-1)
	}
	return nil
}

func (p Policy) checkSpec(spec hostnat.Spec) error {
	if err := p.checkBridge(spec.Bridge); err != nil {
		return err
	}
	if spec.Subnet != p.subnet || spec.Gateway != p.gateway {
		return refuse("rules for %s via %s: banger's subnet is %s via %s (bridge_cidr)", spec.Subnet, spec.Gateway, p.subnet, p.gateway)
	}
	for _, vm := range spec.VMs {
		if err := p.checkTap(vm.Tap); err != nil {
			return err
		}
	}
	return spec.Validate()
}

// SnapshotPrefix begins the name of every device-mapper device banger
// makes (banger-<vmid>): the only ones the helper makes or removes.
const SnapshotPrefix = "banger-"

func (p Policy) checkSnapshotName(name string) error {
	if !strings.HasPrefix(name, SnapshotPrefix) || len(name) == len(SnapshotPrefix) {
		return refuse("device-mapper name %q is not banger's (%sID)", name, SnapshotPrefix)
	}
	if err := dmsnap.CheckName(name); err != nil {
		return refuse("%v", err)
	}
	return nil
}

// snapshotFilesystems are where the files of a snapshot may live: the
// local filesystems banger's state is on. Not FUSE, NFS, procfs or the
// like, whose I/O the owner could stall or steer under root's loop.
var snapshotFilesystems = map[uint32]string{
	unix.EXT4_SUPER_MAGIC:      "ext2/3/4",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
	unix.BCACHEFS_SUPER_MAGIC:  "bcachefs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	zfsSuperMagic:              "zfs",
}

// zfsSuperMagic is OpenZFS's statfs type (out of tree, so not in x/sys).
const zfsSuperMagic = 0x2fc12fc1

// SnapshotFilesystem says whether files in dir may back a snapshot the
// helper makes (the daemon asks before it picks dm for a VM there).
func SnapshotFilesystem(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	return snapshotFilesystem(st)
}

func snapshotFilesystem(st unix.Statfs_t) error {
	if _, ok := snapshotFilesystems[uint32(st.Type)]; !ok {
		names := slices.Sorted(maps.Values(snapshotFilesystems))
		return fmt.Errorf("the root helper builds snapshots only of files on %s, not on file system type %#x", strings.Join(names, ", "), uint32(st.Type))
	}
	return nil
}

// checkSnapshotFiles: each is a regular file on a local filesystem,
// owned by root or the owner (banger's images and disks are); the
// exception store must come open read-write — the caller's own right to
// write it, not the helper's.
func (p Policy) checkSnapshotFiles(base, cow *os.File, owner int) error {
	for _, f := range []*os.File{base, cow} {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return refuse("a snapshot is made of regular files (%v)", err)
		}
		if int(st.Uid) != 0 && int(st.Uid) != owner {
			return refuse("a snapshot's files are banger's, owned by root or uid %d; this one is uid %d's", owner, st.Uid)
		}
		var fsst unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &fsst); err != nil {
			return refuse("a snapshot's file system: %v", err)
		}
		if err := snapshotFilesystem(fsst); err != nil {
			return refuse("%v", err)
		}
	}
	fl, err := unix.FcntlInt(cow.Fd(), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_ACCMODE != unix.O_RDWR {
		return refuse("the COW file must come open read-write (the caller's right to write it)")
	}
	return nil
}

// checkSnapshotRemoval: only a dm device of banger's, made by the helper
// (its loops clear themselves, so none is detached by number), and no
// file to delete.
func (p Policy) checkSnapshotRemoval(h dmsnap.Handles) error {
	if err := p.checkSnapshotName(h.DMName); err != nil {
		return err
	}
	if !h.AutoClear || h.COWPath != "" {
		return refuse("removing %s: the helper removes only snapshots it made (autoclearing loops) and never deletes files", h.DMName)
	}
	return madeByHelper(h.DMName)
}

// DNSDomain is the domain banger's DNS server answers for (NAME.vm): the
// only one the helper routes.
const DNSDomain = "vm"

// checkRoute accepts routing only banger's domain, over its bridge, to
// its DNS server on the gateway.
func (p Policy) checkRoute(link, server, domain string) error {
	if err := p.checkBridge(link); err != nil {
		return err
	}
	if domain != DNSDomain {
		return refuse("DNS routing of ~%s: banger routes only ~%s", domain, DNSDomain)
	}
	return p.checkDNS(server)
}

func (p Policy) checkDNS(addr string) error {
	want := netip.AddrPortFrom(p.gateway, 53)
	if ap, err := netip.ParseAddrPort(addr); err != nil || ap != want {
		return refuse("DNS listener %q: banger's is %s (the bridge's gateway, port 53)", addr, want)
	}
	return nil
}

// DefaultSocket is where the root helper of a system install listens
// (bangerd-root.service's RuntimeDirectory).
const DefaultSocket = "/run/banger-root/helper.sock"
