package hostnet

import (
	"banger/internal/netnstest"
	"net"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

// inFreshNetns runs the rest of the test in a network namespace of its
// own (netnstest.Fresh), after checking for /dev/net/tun.
func inFreshNetns(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
	netnstest.Fresh(t)
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func isUp(l netlink.Link) bool { return l.Attrs().Flags&net.FlagUp != 0 }

func bridgeAddrs(t *testing.T, name string) []string {
	t.Helper()
	addrs, err := netlink.AddrList(mustLink(t, name), netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("addresses of %s: %v", name, err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.IPNet.String())
	}
	return out
}

func TestEnsureBridgeIdempotent(t *testing.T) {
	inFreshNetns(t)
	for i := range 2 {
		if err := EnsureBridge("bgtest0", "172.30.9.1/24"); err != nil {
			t.Fatalf("EnsureBridge (call %d): %v", i+1, err)
		}
		br := mustLink(t, "bgtest0")
		if br.Type() != "bridge" || !isUp(br) {
			t.Fatalf("call %d: bgtest0 type=%s up=%v, want an up bridge", i+1, br.Type(), isUp(br))
		}
		if got := bridgeAddrs(t, "bgtest0"); !slices.Equal(got, []string{"172.30.9.1/24"}) {
			t.Fatalf("call %d: addresses %v, want exactly [172.30.9.1/24]", i+1, got)
		}
	}

	// A bridge that was set down and lost its address is repaired.
	br := mustLink(t, "bgtest0")
	if err := netlink.LinkSetDown(br); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("172.30.9.1/24")
	if err := netlink.AddrDel(br, addr); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge("bgtest0", "172.30.9.0/24"); err != nil {
		t.Fatalf("EnsureBridge on a downed bridge: %v", err)
	}
	if br := mustLink(t, "bgtest0"); !isUp(br) {
		t.Error("bridge not set up again")
	}
	if got := bridgeAddrs(t, "bgtest0"); !slices.Equal(got, []string{"172.30.9.1/24"}) {
		t.Errorf("addresses %v, want [172.30.9.1/24]", got)
	}

	if err := DeleteBridge("bgtest0"); err != nil {
		t.Fatalf("DeleteBridge: %v", err)
	}
	if _, err := netlink.LinkByName("bgtest0"); err == nil {
		t.Error("bridge still exists after DeleteBridge")
	}
	if err := DeleteBridge("bgtest0"); err != nil {
		t.Errorf("DeleteBridge of a missing bridge: %v", err)
	}
}

func TestEnsureBridgeConflicts(t *testing.T) {
	inFreshNetns(t)
	// This kernel has no dummy driver; a veth pair serves as "some other link".
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "notabridge"}, PeerName: "notabridge-p"}); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge("notabridge", "172.30.9.1/24"); err == nil {
		t.Error("EnsureBridge accepted a veth link as a bridge")
	}
	if err := DeleteBridge("notabridge"); err == nil {
		t.Error("DeleteBridge deleted a link that is not a bridge")
	}
	if err := DeleteTap("notabridge"); err == nil {
		t.Error("DeleteTap deleted a link that is not a tap")
	}
	mustLink(t, "notabridge")

	if err := EnsureBridge("bgtest1", "10.55.0.1/16"); err != nil {
		t.Fatal(err)
	}
	if err := EnsureBridge("bgtest1", "10.55.0.1/24"); err == nil {
		t.Error("EnsureBridge accepted a prefix length that differs from the bridge's address")
	}
	for _, bad := range []string{"", "this-name-is-too-long", "has space", "a/b"} {
		if err := EnsureBridge(bad, "10.56.0.1/24"); err == nil {
			t.Errorf("EnsureBridge(%q) accepted an invalid name", bad)
		}
	}
}

func TestTapLifecycle(t *testing.T) {
	inFreshNetns(t)
	if err := CreateTap("bg-nobridge", "missingbr"); err == nil {
		t.Fatal("CreateTap succeeded without its bridge")
	}
	if _, err := netlink.LinkByName("bg-nobridge"); err == nil {
		t.Fatal("failed CreateTap left a tap behind")
	}

	if err := EnsureBridge("bgtest2", "172.30.10.1/24"); err != nil {
		t.Fatal(err)
	}
	br := mustLink(t, "bgtest2")
	taps := []string{TapName("vm1"), TapName("vm2"), TapName("some long vm id")}
	for _, name := range taps {
		for i := range 2 { // second call must be a no-op
			if err := CreateTap(name, "bgtest2"); err != nil {
				t.Fatalf("CreateTap(%s) call %d: %v", name, i+1, err)
			}
		}
		l := mustLink(t, name)
		tap, ok := l.(*netlink.Tuntap)
		if !ok {
			t.Fatalf("%s is a %s, want tuntap", name, l.Type())
		}
		if tap.Mode != netlink.TUNTAP_MODE_TAP {
			t.Errorf("%s mode %v, want tap", name, tap.Mode)
		}
		if tap.NonPersist {
			t.Errorf("%s is not persistent", name)
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("%s master index %d, want bridge %d", name, l.Attrs().MasterIndex, br.Attrs().Index)
		}
		if !isUp(l) {
			t.Errorf("%s is not up", name)
		}
	}

	// A tap that lost its master and went down is repaired by CreateTap.
	l := mustLink(t, taps[0])
	if err := netlink.LinkSetNoMaster(l); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if err := CreateTap(taps[0], "bgtest2"); err != nil {
		t.Fatal(err)
	}
	if l := mustLink(t, taps[0]); l.Attrs().MasterIndex != br.Attrs().Index || !isUp(l) {
		t.Errorf("CreateTap did not re-attach and set up an existing tap")
	}

	// Something that is not a tap with a tap's name is refused.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bg-veth"}, PeerName: "bg-veth-p"}); err != nil {
		t.Fatal(err)
	}
	if err := CreateTap("bg-veth", "bgtest2"); err == nil {
		t.Error("CreateTap reused a veth link")
	}
	// A tap outside the prefix must not be listed.
	if err := CreateTap("other0", "bgtest2"); err != nil {
		t.Fatal(err)
	}

	got, err := ListTaps(TapPrefix)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(taps)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("ListTaps = %v, want %v", got, want)
	}

	for _, name := range append(taps, "other0") {
		if err := DeleteTap(name); err != nil {
			t.Fatalf("DeleteTap(%s): %v", name, err)
		}
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s still exists after DeleteTap", name)
		}
		if err := DeleteTap(name); err != nil {
			t.Errorf("DeleteTap of missing %s: %v", name, err)
		}
	}
	if got, err := ListTaps(""); err != nil || len(got) != 0 {
		t.Errorf("ListTaps after deleting all = %v, %v; want none", got, err)
	}
	if err := DeleteBridge("bgtest2"); err != nil {
		t.Fatal(err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, l := range links {
		if !slices.Contains([]string{"lo", "bg-veth", "bg-veth-p"}, l.Attrs().Name) {
			left = append(left, l.Attrs().Name)
		}
	}
	if len(left) != 0 {
		t.Errorf("links left in the namespace: %v", left)
	}
}

// TestSetTapOwner: a tap given to a VM's uid reports it (the kernel then
// lets that uid attach without CAP_NET_ADMIN), and stays a persistent
// tap on its bridge.
func TestSetTapOwner(t *testing.T) {
	inFreshNetns(t)
	if err := EnsureBridge("bgtest3", "172.30.11.1/24"); err != nil {
		t.Fatal(err)
	}
	name := TapName("jailed")
	if err := CreateTap(name, "bgtest3"); err != nil {
		t.Fatal(err)
	}
	if err := SetTapOwner(name, 1879048197, 1879048198); err != nil {
		t.Fatal(err)
	}
	tap, ok := mustLink(t, name).(*netlink.Tuntap)
	if !ok {
		t.Fatal("not a tuntap")
	}
	if tap.Owner != 1879048197 || tap.Group != 1879048198 {
		t.Errorf("owner %d group %d, want 1879048197 1879048198", tap.Owner, tap.Group)
	}
	if tap.NonPersist || tap.Attrs().MasterIndex != mustLink(t, "bgtest3").Attrs().Index {
		t.Errorf("after SetTapOwner the tap is non-persistent (%v) or off its bridge", tap.NonPersist)
	}
	if err := SetTapOwner("bg-missing", 1, 1); err == nil {
		t.Error("SetTapOwner of a missing tap succeeded")
	}
	if _, err := netlink.LinkByName("bg-missing"); err == nil {
		t.Error("SetTapOwner created a tap")
	}
}
