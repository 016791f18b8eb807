package hostnet

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"banger/internal/api"
)

var (
	errExist    = unix.EEXIST
	errNoDevice = unix.ENODEV
)

// ErrSubnetFull is wrapped by AllocateIP when every host address of the
// bridge subnet is taken.
var ErrSubnetFull = errors.New("bridge subnet is full")

// subnet is a parsed bridge_cidr: the masked prefix and the gateway
// address the bridge carries.
type subnet struct {
	prefix  netip.Prefix // masked, e.g. 172.30.0.0/24
	gateway netip.Addr   // e.g. 172.30.0.1
}

// parseSubnet accepts "172.30.0.1/24" (the gateway address with its prefix
// length) or "172.30.0.0/24" (the network; the gateway is its first host).
// Only IPv4 subnets with room for a gateway and at least one VM (/30 or
// larger) are accepted.
func parseSubnet(cidr string) (subnet, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return subnet{}, api.Errorf(api.CodeBadRequest, "bridge_cidr %q is not an IPv4 CIDR such as 172.30.0.1/24", cidr)
	}
	if !p.Addr().Is4() {
		return subnet{}, api.Errorf(api.CodeBadRequest, "bridge_cidr %q is not IPv4; use an IPv4 CIDR such as 172.30.0.1/24", cidr)
	}
	if p.Bits() > 30 {
		return subnet{}, api.Errorf(api.CodeBadRequest, "bridge_cidr %q leaves no room for VMs; use a prefix of /30 or shorter, e.g. /24", cidr)
	}
	s := subnet{prefix: p.Masked(), gateway: p.Addr()}
	if s.gateway == s.prefix.Addr() {
		s.gateway = s.gateway.Next()
	}
	if s.gateway == s.broadcast() {
		return subnet{}, api.Errorf(api.CodeBadRequest, "bridge_cidr %q puts the gateway on the broadcast address; use e.g. %s/%d",
			cidr, s.prefix.Addr().Next(), p.Bits())
	}
	return s, nil
}

// broadcast is the last address of the subnet.
func (s subnet) broadcast() netip.Addr {
	a := s.prefix.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= ^uint32(0) >> s.prefix.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Gateway returns the address the bridge carries for cidr (see
// EnsureBridge) and the prefix length, which is what a guest needs for its
// default route and netmask.
func Gateway(cidr string) (ip string, prefixLen int, err error) {
	s, err := parseSubnet(cidr)
	if err != nil {
		return "", 0, err
	}
	return s.gateway.String(), s.prefix.Bits(), nil
}

// AllocateIP returns the first host address of cidr after the gateway that
// is not in used, wrapping around to the start of the subnet; the network,
// gateway and broadcast addresses are never returned. Entries of used must
// be plain IPv4 addresses; an unparsable entry is an error (it means the
// caller's records are corrupt). When no address is free the error wraps
// ErrSubnetFull and says how to fix it.
func AllocateIP(cidr string, used []string) (string, error) {
	s, err := parseSubnet(cidr)
	if err != nil {
		return "", err
	}
	taken := make(map[netip.Addr]bool, len(used))
	for _, u := range used {
		a, err := netip.ParseAddr(u)
		if err != nil || !a.Is4() {
			return "", fmt.Errorf("allocate IP in %s: recorded address %q is not an IPv4 address", cidr, u)
		}
		taken[a] = true
	}
	first := s.prefix.Addr().Next()
	bcast := s.broadcast()
	// Walk every host address once, starting after the gateway.
	a := s.gateway
	for {
		a = a.Next()
		if a == bcast {
			a = first
		}
		if a == s.gateway {
			break
		}
		if !taken[a] {
			return a.String(), nil
		}
	}
	return "", fmt.Errorf("no free address left in %s (%d in use): delete VMs you no longer need or set a larger bridge_cidr in config.toml: %w",
		cidr, len(taken), ErrSubnetFull)
}

// MACFor derives a VM's MAC address from its IPv4 address: the locally
// administered unicast prefix 52:54 followed by the four address bytes, so
// the mapping is stable and distinct per IP.
func MACFor(ip string) (string, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return "", fmt.Errorf("derive MAC address: %q is not an IPv4 address", ip)
	}
	b := a.As4()
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3]), nil
}
