package hostnat

import (
	"fmt"
	"net/netip"
	"strings"
)

// maxIfName is IFNAMSIZ-1: the longest interface name the kernel accepts.
const maxIfName = 15

// Validate reports the first thing wrong with s, naming the VM and what is
// wrong, in an error wrapping ErrInvalidSpec. Sync calls it first.
//
// The bridge and every tap must be valid interface names, taps distinct
// and none the bridge; the subnet must be IPv4; every VM needs a name and
// an IPv4 address inside the subnet that is not its network, broadcast or
// gateway address; and a unicast 6-byte MAC. No two VMs may share a tap,
// an IP or a MAC: the anti-spoofing rules would let one pose as the other.
func (s Spec) Validate() error {
	if err := checkIfName("bridge", s.Bridge); err != nil {
		return err
	}
	if !s.Subnet.IsValid() || !s.Subnet.Addr().Is4() {
		return invalid("subnet %v is not an IPv4 prefix such as 172.30.0.0/24", s.Subnet)
	}
	subnet := s.Subnet.Masked()
	broadcast := lastAddr(subnet)
	if s.Gateway.IsValid() && !subnet.Contains(s.Gateway) {
		return invalid("gateway %v is outside the subnet %v", s.Gateway, subnet)
	}

	tapOwner := make(map[string]string, len(s.VMs))
	ipOwner := make(map[netip.Addr]string, len(s.VMs))
	macOwner := make(map[string]string, len(s.VMs))
	for i, vm := range s.VMs {
		if vm.Name == "" {
			return invalid("VM #%d (tap %q) has no name", i+1, vm.Tap)
		}
		who := fmt.Sprintf("VM %q", vm.Name)
		if err := checkIfName(who+": tap", vm.Tap); err != nil {
			return err
		}
		if vm.Tap == s.Bridge {
			return invalid("%s: its tap %q is the bridge itself", who, vm.Tap)
		}
		if other, dup := tapOwner[vm.Tap]; dup {
			return invalid("%s: tap %q is also the tap of VM %q", who, vm.Tap, other)
		}
		tapOwner[vm.Tap] = vm.Name

		switch {
		case !vm.IP.IsValid():
			return invalid("%s has no IP address", who)
		case !vm.IP.Is4():
			return invalid("%s: IP %v is not an IPv4 address", who, vm.IP)
		case !subnet.Contains(vm.IP):
			return invalid("%s: IP %v is outside the bridge subnet %v", who, vm.IP, subnet)
		case vm.IP == subnet.Addr():
			return invalid("%s: IP %v is the network address of %v", who, vm.IP, subnet)
		case vm.IP == broadcast && subnet.Bits() < 31:
			return invalid("%s: IP %v is the broadcast address of %v", who, vm.IP, subnet)
		case vm.IP == s.Gateway:
			return invalid("%s: IP %v is the bridge's gateway address", who, vm.IP)
		}
		if other, dup := ipOwner[vm.IP]; dup {
			return invalid("%s: IP %v is also the IP of VM %q", who, vm.IP, other)
		}
		ipOwner[vm.IP] = vm.Name

		switch {
		case len(vm.MAC) != 6:
			return invalid("%s: MAC %q is not a 6-byte Ethernet address", who, vm.MAC.String())
		case vm.MAC[0]&1 != 0:
			return invalid("%s: MAC %v is a multicast address", who, vm.MAC)
		case string(vm.MAC) == "\x00\x00\x00\x00\x00\x00":
			return invalid("%s: MAC %v is all zeros", who, vm.MAC)
		}
		if other, dup := macOwner[string(vm.MAC)]; dup {
			return invalid("%s: MAC %v is also the MAC of VM %q", who, vm.MAC, other)
		}
		macOwner[string(vm.MAC)] = vm.Name
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, args...)...)
}

// checkIfName checks a name the way the kernel's dev_valid_name does.
func checkIfName(what, name string) error {
	switch {
	case name == "":
		return invalid("%s name is empty", what)
	case len(name) > maxIfName:
		return invalid("%s name %q is longer than %d bytes", what, name, maxIfName)
	case name == "." || name == "..":
		return invalid("%s name %q is not a valid interface name", what, name)
	case strings.ContainsAny(name, "/:\x00") || strings.IndexFunc(name, isSpace) >= 0:
		return invalid("%s name %q contains '/', ':', NUL or whitespace", what, name)
	}
	return nil
}

func isSpace(r rune) bool { return r == ' ' || (r >= '\t' && r <= '\r') }

// lastAddr returns the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= ^uint32(0) >> p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
