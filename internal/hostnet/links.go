package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/api"
)

// TapPrefix starts the name of every TAP device banger creates.
const TapPrefix = "bg-"

// maxIfName is IFNAMSIZ-1: the longest interface name the kernel accepts.
const maxIfName = 15

// dumpRetries bounds how often a netlink dump interrupted by a concurrent
// change is repeated before giving up.
const dumpRetries = 5

// TapName returns the name of a VM's tap when it is created cold (the pool
// had none idle; Pool.Claim's fallback): "bg-" followed by the VM id when
// that id is 1–12 characters of [a-z0-9], otherwise followed by 12 hex
// digits of the id's SHA-256. The result is deterministic, unique per id in
// practice, and always a valid interface name (at most 15 bytes). A VM
// that got a warm tap from the pool has a pool name (IsPoolTap) instead.
func TapName(vmID string) string {
	short := maxIfName - len(TapPrefix)
	if len(vmID) > 0 && len(vmID) <= short && isLowerAlnum(vmID) {
		return TapPrefix + vmID
	}
	sum := sha256.Sum256([]byte(vmID))
	return TapPrefix + hex.EncodeToString(sum[:])[:short]
}

func isLowerAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// validIfName checks a name the way the kernel's dev_valid_name does.
func validIfName(kind, name string) error {
	switch {
	case name == "":
		return api.Errorf(api.CodeBadRequest, "%s name is empty", kind)
	case len(name) > maxIfName:
		return api.Errorf(api.CodeBadRequest, "%s name %q is longer than %d bytes; choose a shorter name", kind, name, maxIfName)
	case name == "." || name == "..":
		return api.Errorf(api.CodeBadRequest, "%s name %q is not a valid interface name", kind, name)
	case strings.ContainsAny(name, "/:\x00") || strings.IndexFunc(name, isSpace) >= 0:
		return api.Errorf(api.CodeBadRequest, "%s name %q contains '/', ':', NUL or whitespace; choose another name", kind, name)
	}
	return nil
}

func isSpace(r rune) bool { return r == ' ' || (r >= '\t' && r <= '\r') }

// lookupLink returns the link called name, or (nil, nil) when there is none.
func lookupLink(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	return link, nil
}

// EnsureBridge makes sure a bridge called name exists, carries the gateway
// address of cidr (for example "172.30.0.1/24"; a network address such as
// "172.30.0.0/24" means its first host, .1) and is up. It is idempotent.
// A link of that name that is not a bridge, or a bridge that already has
// the gateway address with another prefix length, is an error rather than
// something to repair silently.
func EnsureBridge(name, cidr string) error {
	if err := validIfName("bridge", name); err != nil {
		return err
	}
	sub, err := parseSubnet(cidr)
	if err != nil {
		return err
	}
	link, err := lookupLink(name)
	if err != nil {
		return err
	}
	if link == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, errExist) {
			return fmt.Errorf("create bridge %s: %w (bangerd needs CAP_NET_ADMIN)", name, err)
		}
		if link, err = lookupLink(name); err != nil {
			return err
		}
		if link == nil {
			return fmt.Errorf("create bridge %s: the kernel accepted it but it does not exist", name)
		}
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("link %s exists but is a %s, not a bridge; set bridge_name to another name or delete that link", name, link.Type())
	}

	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet == nil || !a.IP.Equal(net.IP(sub.gateway.AsSlice())) {
			continue
		}
		ones, _ := a.Mask.Size()
		if ones != sub.prefix.Bits() {
			return fmt.Errorf("bridge %s already has %s/%d but bridge_cidr is %s; make them agree (change bridge_cidr or remove the address)",
				name, a.IP, ones, cidr)
		}
		have = true
	}
	if !have {
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   net.IP(sub.gateway.AsSlice()),
			Mask: net.CIDRMask(sub.prefix.Bits(), 32),
		}}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, errExist) {
			return fmt.Errorf("add address %s to bridge %s: %w", addr.IPNet, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// DeleteBridge removes the bridge called name. A missing bridge is not an
// error; a link of that name that is not a bridge is left alone and
// reported. The kernel detaches (but does not delete) enslaved taps.
func DeleteBridge(name string) error {
	if err := validIfName("bridge", name); err != nil {
		return err
	}
	link, err := lookupLink(name)
	if err != nil || link == nil {
		return err
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("refusing to delete %s: it is a %s, not a bridge", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// CreateTap makes sure a persistent TAP device called name exists, is
// enslaved to bridge and is up. The device is single-queue, without
// packet information, with virtio-net headers, and owned by root; the VMM
// attaches to it by name. An existing TAP of that name is reused (and
// re-enslaved and set up), so the call is idempotent.
func CreateTap(name, bridge string) error {
	if err := validIfName("tap", name); err != nil {
		return err
	}
	br, err := lookupLink(bridge)
	if err != nil {
		return err
	}
	if br == nil {
		return fmt.Errorf("create tap %s: bridge %s does not exist; the daemon creates it at start (check bridge_name)", name, bridge)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("create tap %s: %s is a %s, not a bridge", name, bridge, br.Type())
	}

	link, err := lookupLink(name)
	if err != nil {
		return err
	}
	if link == nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Owner:     0,
			Group:     0,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w (bangerd needs CAP_NET_ADMIN and /dev/net/tun)", name, err)
		}
		if link, err = lookupLink(name); err != nil {
			return err
		}
		if link == nil {
			return fmt.Errorf("create tap %s: the kernel accepted it but it does not exist", name)
		}
	} else if link.Type() != "tuntap" {
		return fmt.Errorf("create tap %s: a %s link of that name exists; delete it or pick another VM id", name, link.Type())
	}

	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach tap %s to bridge %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set tap %s up: %w", name, err)
	}
	return nil
}

// DeleteTap removes the TAP device called name. A missing device is not an
// error. A link of that name that is not a TAP is left alone and reported.
func DeleteTap(name string) error {
	if err := validIfName("tap", name); err != nil {
		return err
	}
	link, err := lookupLink(name)
	if err != nil || link == nil {
		return err
	}
	if link.Type() != "tuntap" {
		return fmt.Errorf("refusing to delete %s: it is a %s, not a tap", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, errNoDevice) {
			return nil
		}
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// ListTaps returns the names of all TAP devices whose name starts with
// prefix, sorted. Pool taps start with TapPrefix too, and a VM's tap may be
// one (a claimed pool tap keeps its bg-pool-NNNN name): a sweep for
// orphaned VM taps must go by the names the VM rows record, skipping the
// idle pool taps, not by TapName alone.
func ListTaps(prefix string) ([]string, error) {
	var links []netlink.Link
	var err error
	for range dumpRetries {
		links, err = netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.Type() == "tuntap" && strings.HasPrefix(l.Attrs().Name, prefix) {
			names = append(names, l.Attrs().Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// SetTapOwner gives the existing TAP device name to uid:gid, so a process
// running as that user without CAP_NET_ADMIN (a jailed Firecracker) may
// attach to it. It attaches to the tap through /dev/net/tun (TUNSETIFF,
// with the flags CreateTap made it with) and sets TUNSETOWNER and
// TUNSETGROUP; the tap stays persistent when the descriptor closes.
func SetTapOwner(name string, uid, gid int) error {
	if err := validIfName("tap", name); err != nil {
		return err
	}
	// TUNSETIFF would create a missing tap (gone again on close).
	link, err := lookupLink(name)
	if err != nil {
		return err
	}
	if link == nil || link.Type() != "tuntap" {
		return fmt.Errorf("give tap %s to uid %d: no such tap", name, uid)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("give tap %s to uid %d: open /dev/net/tun: %w", name, uid, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("give tap %s to uid %d: %w", name, uid, err)
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("give tap %s to uid %d: attach: %w", name, uid, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("give tap %s to uid %d: %w", name, uid, err)
	}
	if gid < 0 {
		return nil // no group (the kernel refuses -1)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid); err != nil {
		return fmt.Errorf("give tap %s to gid %d: %w", name, gid, err)
	}
	return nil
}

// tapFlags are the flags CreateTap makes taps with; attaching to one
// (TUNSETIFF) must repeat them.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// OpenTap attaches to the existing TAP device name through /dev/net/tun
// and returns the descriptor, to hand to a VMM that cannot open the
// device itself (QEMU's -netdev tap,fd=N). The tap stays persistent when
// the descriptor closes.
func OpenTap(name string) (*os.File, error) {
	if err := validIfName("tap", name); err != nil {
		return nil, err
	}
	// TUNSETIFF would create a missing tap (gone again on close).
	link, err := lookupLink(name)
	if err != nil {
		return nil, err
	}
	if link == nil || link.Type() != "tuntap" {
		return nil, fmt.Errorf("open tap %s: no such tap", name)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(tapFlags)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: attach: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
