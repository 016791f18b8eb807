package hostnat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/hostnet"
)

func readIPForward() ([]byte, error) { return os.ReadFile(ipForwardPath) }

type invalidSpec struct {
	name string
	spec Spec
	want string // in the error message
}

func invalidSpecs(t testing.TB) []invalidSpec {
	with := func(edit func(s *Spec)) Spec {
		s := specA(t)
		s.VMs = append([]VM(nil), s.VMs...)
		edit(&s)
		return s
	}
	return []invalidSpec{
		{"no bridge", with(func(s *Spec) { s.Bridge = "" }), "bridge name is empty"},
		{"long bridge", with(func(s *Spec) { s.Bridge = "a-very-long-bridge" }), "longer than 15 bytes"},
		{"bridge with slash", with(func(s *Spec) { s.Bridge = "br/0" }), `bridge name "br/0" contains`},
		{"no subnet", with(func(s *Spec) { s.Subnet = netip.Prefix{} }), "not an IPv4 prefix"},
		{"IPv6 subnet", with(func(s *Spec) { s.Subnet = netip.MustParsePrefix("fd00::/64") }), "not an IPv4 prefix"},
		{"gateway outside", with(func(s *Spec) { s.Gateway = netip.MustParseAddr("10.0.0.1") }), "gateway 10.0.0.1 is outside"},
		{"no name", with(func(s *Spec) { s.VMs[1].Name = "" }), `VM #2 (tap "bg-db") has no name`},
		{"no tap", with(func(s *Spec) { s.VMs[0].Tap = "" }), `VM "web": tap name is empty`},
		{"bad tap", with(func(s *Spec) { s.VMs[0].Tap = "bg web" }), `VM "web": tap name "bg web" contains`},
		{"tap is bridge", with(func(s *Spec) { s.VMs[0].Tap = "bgt0" }), `VM "web": its tap "bgt0" is the bridge`},
		{"shared tap", with(func(s *Spec) { s.VMs[1].Tap = "bg-web" }), `VM "db": tap "bg-web" is also the tap of VM "web"`},
		{"no IP", with(func(s *Spec) { s.VMs[1].IP = netip.Addr{} }), `VM "db" has no IP address`},
		{"IPv6", with(func(s *Spec) { s.VMs[1].IP = netip.MustParseAddr("fd00::3") }), `VM "db": IP fd00::3 is not an IPv4 address`},
		{"mapped IPv4", with(func(s *Spec) { s.VMs[1].IP = netip.MustParseAddr("::ffff:172.30.9.3") }), "is not an IPv4 address"},
		{"outside subnet", with(func(s *Spec) { s.VMs[1].IP = netip.MustParseAddr("172.30.10.3") }), `VM "db": IP 172.30.10.3 is outside the bridge subnet 172.30.9.0/24`},
		{"network address", with(func(s *Spec) { s.VMs[1].IP = netip.MustParseAddr("172.30.9.0") }), "is the network address"},
		{"broadcast", with(func(s *Spec) { s.VMs[1].IP = netip.MustParseAddr("172.30.9.255") }), "is the broadcast address"},
		{"gateway", with(func(s *Spec) { s.VMs[1].IP = netip.MustParseAddr("172.30.9.1") }), "is the bridge's gateway address"},
		{"shared IP", with(func(s *Spec) { s.VMs[1].IP = s.VMs[0].IP }), `VM "db": IP 172.30.9.2 is also the IP of VM "web"`},
		{"no MAC", with(func(s *Spec) { s.VMs[1].MAC = nil }), `VM "db": MAC "" is not a 6-byte`},
		{"long MAC", with(func(s *Spec) { s.VMs[1].MAC = net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8} }), "is not a 6-byte Ethernet address"},
		{"multicast MAC", with(func(s *Spec) { s.VMs[1].MAC = mustMAC(t, "01:00:5e:00:00:01") }), "is a multicast address"},
		{"zero MAC", with(func(s *Spec) { s.VMs[1].MAC = make(net.HardwareAddr, 6) }), "is all zeros"},
		{"shared MAC", with(func(s *Spec) { s.VMs[1].MAC = s.VMs[0].MAC }), `VM "db": MAC 52:54:ac:1e:09:02 is also the MAC of VM "web"`},
	}
}

func TestValidate(t *testing.T) {
	if err := specA(t).Validate(); err != nil {
		t.Fatalf("specA: %v", err)
	}
	if err := specB(t).Validate(); err != nil {
		t.Fatalf("specB: %v", err)
	}
	for _, tc := range invalidSpecs(t) {
		err := tc.spec.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want ErrInvalidSpec mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"172.30.9.0/24": "172.30.9.255", "10.0.0.0/8": "10.255.255.255", "10.1.2.3/32": "10.1.2.3",
		"0.0.0.0/0": "255.255.255.255", "192.168.4.0/22": "192.168.7.255",
	} {
		if got := lastAddr(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestRulesetListing pins the rules Sync generates, as decoded back from
// the same expressions it sends (the root tests check that the kernel
// returns them unchanged).
func TestRulesetListing(t *testing.T) {
	want := `table inet banger {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "bgt0" oifname != "bgt0" meta nfproto ipv4 ip saddr 172.30.9.2 accept comment "vm web"
		oifname "bgt0" ct state established,related accept comment "replies to VM connections"
		oifname "bgt0" ct status dnat accept comment "port forwards the host set up"
		iifname "bgt0" oifname != "bgt0" drop comment "VMs without NAT stay on the bridge"
		iifname != "bgt0" oifname "bgt0" drop comment "nothing else enters the bridge"
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname "bg-*" drop comment "the host is reached through the bridge only"
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta nfproto ipv4 ip saddr 172.30.9.2 oifname != "bgt0" masquerade comment "vm web"
	}
}
table bridge banger {
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname "bg-db" ether saddr 52:54:ac:1e:09:03 ether type ip ip saddr 172.30.9.3 accept comment "vm db"
		iifname "bg-db" ether saddr 52:54:ac:1e:09:03 ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 52:54:ac:1e:09:03 arp saddr ip 172.30.9.3 accept comment "vm db"
		iifname "bg-db" drop comment "vm db"
		iifname "bg-web" ether saddr 52:54:ac:1e:09:02 ether type ip ip saddr 172.30.9.2 accept comment "vm web"
		iifname "bg-web" ether saddr 52:54:ac:1e:09:02 ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 52:54:ac:1e:09:02 arp saddr ip 172.30.9.2 accept comment "vm web"
		iifname "bg-web" drop comment "vm web"
		iifname "bg-*" drop comment "taps of no VM"
	}
}
`
	got := expected(specA(t)).String()
	if got != want {
		t.Errorf("listing:\n%s\nwant:\n%s", got, want)
	}

	// A tap without banger's prefix gets its own input rule.
	s := specA(t)
	s.VMs[1].Tap = "other1"
	if got := expected(s).String(); !strings.Contains(got, `iifname "other1" drop comment "vm db"`) {
		t.Errorf("no input rule for a tap without the prefix:\n%s", got)
	}
}

func TestExpectedAnalysis(t *testing.T) {
	a := specA(t)
	obs := expected(a)
	if !sameGuards(obs.Guards, guardsOf(a)) || fmt.Sprint(obs.NAT) != fmt.Sprint(natOf(a)) || obs.Bridge != "bgt0" || !obs.StrayTapsDropped {
		t.Errorf("analysis of spec A's own rules: %+v", obs)
	}
	if d := obs.Diff(a); len(d) != 0 {
		t.Errorf("Diff of spec A's own rules: %v", d)
	}
	if !obs.Matches(tapsOf(a), natOf(a)) {
		t.Error("Matches of spec A's own rules is false")
	}
	if obs.Matches(tapsOf(a)[:1], natOf(a)) || obs.Matches(tapsOf(a), nil) {
		t.Error("Matches with fewer taps or no NAT is true")
	}
	if d := obs.Diff(specB(t)); len(d) == 0 {
		t.Error("Diff against another spec is empty")
	}
}

func TestUnsupportedErrors(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT, unix.ENOENT, unix.EOPNOTSUPP} {
		raw := fmt.Errorf("conn.Receive: %w", &netlink.OpError{Op: "receive", Err: errno})
		err := wrapKernelErr("sync firewall rules", raw)
		if !errors.Is(err, ErrUnsupported) || !errors.Is(err, errno) {
			t.Errorf("%v: %v does not wrap ErrUnsupported and the errno", errno, err)
		}
		if !strings.Contains(err.Error(), "nft_masq") || !strings.Contains(err.Error(), "install nftables") {
			t.Errorf("%v: %q does not say what to do", errno, err)
		}
	}
	for _, errno := range []unix.Errno{unix.EINVAL, unix.ERANGE, unix.EPERM, unix.EBUSY} {
		err := wrapKernelErr("sync firewall rules", &netlink.OpError{Op: "receive", Err: errno})
		if errors.Is(err, ErrUnsupported) || !errors.Is(err, errno) {
			t.Errorf("%v: %v", errno, err)
		}
	}
	if err := wrapKernelErr("x", unix.EPERM); !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("EPERM: %q does not say what is needed", err)
	}
}

func TestTapPrefixIsHostnets(t *testing.T) {
	if TapPrefix != hostnet.TapPrefix {
		t.Fatalf("TapPrefix %q, hostnet.TapPrefix %q: stray taps would not be recognised", TapPrefix, hostnet.TapPrefix)
	}
	if !strings.HasPrefix(hostnet.TapName("x"), TapPrefix) {
		t.Fatal("hostnet names taps without TapPrefix")
	}
}

func TestVMComment(t *testing.T) {
	if got := vmComment("web"); got != "vm web" {
		t.Errorf("vmComment(web) = %q", got)
	}
	long := vmComment(strings.Repeat("é", 200))
	if len(long) > maxComment || !strings.HasPrefix(long, "vm é") || strings.ContainsRune(long, '\uFFFD') {
		t.Errorf("long name: %q (%d bytes)", long, len(long))
	}
}
