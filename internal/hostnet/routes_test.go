package hostnet

import (
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/api"
)

// addOtherLink adds an up link called name that is not the bridge: a dummy
// where the kernel has the dummy driver, else one end of a veth pair (both
// ends up, so it has carrier).
func addOtherLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
	if err != nil {
		t.Logf("no dummy link (%v); using a veth pair", err)
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(mustLink(t, name+"p")); err != nil {
			t.Fatal(err)
		}
	}
	l := mustLink(t, name)
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

func addAddr(t *testing.T, l netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, l.Attrs().Name, err)
	}
}

func addRoute(t *testing.T, r *netlink.Route) {
	t.Helper()
	if err := netlink.RouteAdd(r); err != nil {
		t.Fatalf("add route %v: %v", r, err)
	}
}

func mustNet(t *testing.T, cidr string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func wantConflict(t *testing.T, cidr, bridge string, mentions ...string) {
	t.Helper()
	err := CheckCIDR(cidr, bridge)
	if err == nil {
		t.Errorf("CheckCIDR(%q, %q) passed, want an overlap error", cidr, bridge)
		return
	}
	t.Logf("CheckCIDR(%q, %q): %v", cidr, bridge, err)
	if !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("CheckCIDR(%q, %q): %v is not a bad_request", cidr, bridge, err)
	}
	for _, m := range append([]string{"bridge_cidr", "config.toml"}, mentions...) {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("CheckCIDR(%q, %q) error %q does not mention %q", cidr, bridge, err, m)
		}
	}
}

func wantNoConflict(t *testing.T, cidr, bridge string) {
	t.Helper()
	if err := CheckCIDR(cidr, bridge); err != nil {
		t.Errorf("CheckCIDR(%q, %q): %v", cidr, bridge, err)
	}
}

func TestCheckCIDR(t *testing.T) {
	inFreshNetns(t)
	if err := netlink.LinkSetUp(mustLink(t, "lo")); err != nil {
		t.Fatal(err)
	}
	ext := addOtherLink(t, "ext0")
	addAddr(t, ext, "10.77.0.1/24")

	// The bridge does not exist yet.
	wantConflict(t, "10.77.0.1/16", "banger0", "10.77.0.0/24 dev ext0")
	wantConflict(t, "10.77.0.0/24", "banger0", "10.77.0.0/24 dev ext0")
	wantConflict(t, "10.77.0.129/25", "banger0", "10.77.0.0/24 dev ext0") // inside the route
	wantNoConflict(t, "10.88.0.1/24", "banger0")
	wantNoConflict(t, "10.77.1.1/24", "banger0") // next to it
	wantConflict(t, "127.0.0.1/16", "banger0", "dev lo")

	// Routes on the bridge itself are banger's own.
	if err := EnsureBridge("banger0", "10.88.0.1/24"); err != nil {
		t.Fatal(err)
	}
	br := mustLink(t, "banger0")
	routes, err := netlink.RouteList(br, netlink.FAMILY_V4)
	if err != nil || len(routes) == 0 {
		t.Fatalf("the bridge has no route (%v); the next check would prove nothing", err)
	}
	wantNoConflict(t, "10.88.0.1/24", "banger0")
	addRoute(t, &netlink.Route{LinkIndex: br.Attrs().Index, Dst: mustNet(t, "10.66.0.0/24"), Scope: netlink.SCOPE_LINK})
	wantNoConflict(t, "10.66.0.1/16", "banger0")
	// …but not for a bridge of another name.
	wantConflict(t, "10.88.0.1/24", "banger1", "10.88.0.0/24 dev banger0")

	// A default route overlaps everything and does not count.
	addRoute(t, &netlink.Route{LinkIndex: ext.Attrs().Index, Dst: mustNet(t, "0.0.0.0/0"), Scope: netlink.SCOPE_LINK})
	if rs, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: ext.Attrs().Index}, netlink.RT_FILTER_OIF); len(rs) < 2 {
		t.Fatalf("default route missing: %v", rs)
	}
	wantNoConflict(t, "10.88.0.1/24", "banger0")
	wantNoConflict(t, "10.99.0.1/24", "banger0")

	// Routes in other tables count (policy routing: VPNs, tailscale …).
	addRoute(t, &netlink.Route{LinkIndex: ext.Attrs().Index, Dst: mustNet(t, "10.99.0.0/16"), Scope: netlink.SCOPE_LINK, Table: 100})
	wantConflict(t, "10.99.5.1/24", "banger0", "10.99.0.0/16 dev ext0 table 100")
	// A device-less route too.
	addRoute(t, &netlink.Route{Dst: mustNet(t, "10.55.0.0/24"), Type: unix.RTN_BLACKHOLE})
	wantConflict(t, "10.55.0.1/24", "banger0", "blackhole 10.55.0.0/24")

	if err := CheckCIDR("10.88.0.1", "banger0"); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("CheckCIDR of a bad CIDR: %v, want bad_request", err)
	}
}
