package hostnet

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/api"
)

// maxReportedRoutes bounds how many conflicting routes CheckCIDR names.
const maxReportedRoutes = 3

// CheckCIDR refuses a bridge subnet (bridge_cidr, as parseSubnet reads it)
// that overlaps an IPv4 route of the host on any other device than bridge:
// VMs would then be unreachable from the host, or shadow part of its
// network. Routes of every routing table count (main, local and any policy
// routing table), except default routes (0.0.0.0/0 overlaps everything),
// throw routes (they only end a table lookup), and routes whose only
// devices are bridge itself, which are banger's own. The bridge need not
// exist yet; if it does not, no route is considered its.
func CheckCIDR(cidr, bridge string) error {
	sub, err := parseSubnet(cidr)
	if err != nil {
		return err
	}
	routes, err := listRoutesV4()
	if err != nil {
		return err
	}
	brIndex := 0
	if bridge != "" {
		br, err := lookupLink(bridge)
		if err != nil {
			return err
		}
		if br != nil {
			brIndex = br.Attrs().Index
		}
	}

	var conflicts []netlink.Route
	for _, r := range routes {
		if r.Type == unix.RTN_THROW {
			continue
		}
		dst, ok := routeDst(r)
		if !ok || dst.Bits() == 0 || !dst.Overlaps(sub.prefix) {
			continue
		}
		if devs := routeDevs(r); brIndex != 0 && len(devs) > 0 && !slices.ContainsFunc(devs, func(i int) bool { return i != brIndex }) {
			continue // ours
		}
		conflicts = append(conflicts, r)
	}
	if len(conflicts) == 0 {
		return nil
	}
	// Name the routes a user recognises first: main table, plain unicast.
	slices.SortStableFunc(conflicts, func(a, b netlink.Route) int {
		return cmp.Or(
			cmp.Compare(tableRank(a.Table), tableRank(b.Table)),
			cmp.Compare(typeRank(a.Type), typeRank(b.Type)),
		)
	})
	var names []string
	for _, r := range conflicts[:min(len(conflicts), maxReportedRoutes)] {
		names = append(names, describeRoute(r))
	}
	what, more := "route", ""
	if len(conflicts) > 1 {
		what = "routes"
	}
	if n := len(conflicts) - maxReportedRoutes; n > 0 {
		more = fmt.Sprintf(" and %d more", n)
	}
	return api.Errorf(api.CodeBadRequest,
		"bridge_cidr %s (%s) overlaps the host %s %s%s; change bridge_cidr in config.toml to a range no host route uses (see `ip -4 route show table all`)",
		cidr, sub.prefix, what, strings.Join(names, ", "), more)
}

func listRoutesV4() ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC} // every table
	var routes []netlink.Route
	var err error
	for range dumpRetries {
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list IPv4 routes: %w", err)
	}
	return routes, nil
}

// routeDst returns the destination of an IPv4 route; a missing one is the
// default route 0.0.0.0/0.
func routeDst(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
	}
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := r.Dst.Mask.Size()
	if !a.Is4() || bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// routeDevs returns the ifindexes a route sends to: its device, or those
// of its next hops.
func routeDevs(r netlink.Route) []int {
	var devs []int
	if r.LinkIndex > 0 {
		devs = append(devs, r.LinkIndex)
	}
	for _, nh := range r.MultiPath {
		if nh != nil && nh.LinkIndex > 0 {
			devs = append(devs, nh.LinkIndex)
		}
	}
	return devs
}

func tableRank(t int) int {
	switch t {
	case unix.RT_TABLE_MAIN:
		return 0
	case unix.RT_TABLE_LOCAL:
		return 2
	}
	return 1
}

func typeRank(t int) int {
	if t == unix.RTN_UNICAST {
		return 0
	}
	return 1
}

var routeTypeNames = map[int]string{
	unix.RTN_LOCAL:       "local",
	unix.RTN_BROADCAST:   "broadcast",
	unix.RTN_ANYCAST:     "anycast",
	unix.RTN_MULTICAST:   "multicast",
	unix.RTN_BLACKHOLE:   "blackhole",
	unix.RTN_UNREACHABLE: "unreachable",
	unix.RTN_PROHIBIT:    "prohibit",
	unix.RTN_NAT:         "nat",
}

// describeRoute writes a route the way `ip route` does, e.g.
// "10.77.0.0/24 dev eth1" or "local 10.77.0.1 dev eth1 table local".
func describeRoute(r netlink.Route) string {
	var b strings.Builder
	if name, ok := routeTypeNames[r.Type]; ok {
		b.WriteString(name + " ")
	}
	dst, _ := routeDst(r)
	if dst.IsSingleIP() {
		b.WriteString(dst.Addr().String())
	} else {
		b.WriteString(dst.String())
	}
	if r.Gw != nil {
		b.WriteString(" via " + r.Gw.String())
	}
	devs := routeDevs(r)
	if len(devs) == 0 {
		b.WriteString(" (no device)")
	}
	for _, idx := range devs {
		name := fmt.Sprintf("ifindex %d", idx)
		if l, err := netlink.LinkByIndex(idx); err == nil {
			name = l.Attrs().Name
		}
		b.WriteString(" dev " + name)
	}
	switch r.Table {
	case unix.RT_TABLE_MAIN, unix.RT_TABLE_UNSPEC:
	case unix.RT_TABLE_LOCAL:
		b.WriteString(" table local")
	default:
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	return b.String()
}
