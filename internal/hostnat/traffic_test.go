package hostnat

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Bounds of every wait in the traffic tests: a check that must succeed
// gets reachTimeout (ARP and a first SYN need a moment), one that must
// fail is given blockTimeout before it counts as blocked.
const (
	reachTimeout = 5 * time.Second
	blockTimeout = 2 * time.Second
)

// testNet is a small copy of a banger host built from network namespaces:
// the test's own thread sits in the "host" namespace with the bridge
// (gateway testGateway), and each guest namespace hangs off the bridge
// through a veth pair whose host end is named like a VM tap. Optionally an
// "internet" namespace is linked to the host through a routed veth
// (TEST-NET-2, 198.51.100.0/24). All traffic stays inside these
// namespaces; they vanish with the test.
type testNet struct {
	t      *testing.T
	bridge netlink.Link
	spec   Spec
}

var (
	testSubnet   = netip.MustParsePrefix("172.30.77.0/24")
	testGateway  = netip.MustParseAddr("172.30.77.1")
	uplinkHost   = netip.MustParseAddr("198.51.100.1")
	internetAddr = netip.MustParseAddr("198.51.100.2")
)

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	inFreshNetns(t)
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("loopback: %v", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "bgt0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("create bridge: %v", err)
	}
	addAddr(t, nil, br, testGateway, testSubnet.Bits())
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	n := &testNet{t: t, bridge: br, spec: Spec{Bridge: "bgt0", Subnet: testSubnet, Gateway: testGateway}}
	if b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		t.Logf("bridge-nf-call-iptables in the host namespace: %s", strings.TrimSpace(string(b)))
	}
	return n
}

// addAddr adds ip/bits to link, through h (nil: the calling thread's
// namespace).
func addAddr(t *testing.T, h *netlink.Handle, link netlink.Link, ip netip.Addr, bits int) {
	t.Helper()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
	var err error
	if h == nil {
		err = netlink.AddrAdd(link, a)
	} else {
		err = h.AddrAdd(link, a)
	}
	if err != nil {
		t.Fatalf("add %v/%d to %s: %v", ip, bits, link.Attrs().Name, err)
	}
}

// addInternet links an "internet" namespace to the host: host side
// 198.51.100.1/24, internet side 198.51.100.2/24 with an HTTP server on
// port 80 that answers with the client address it sees. The internet has
// no route to the bridge subnet: only masqueraded traffic gets answers.
func (n *testNet) addInternet() netns.NsHandle {
	t := n.t
	t.Helper()
	ns := newNetns(t)
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bgt-up"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(up); err != nil {
		t.Fatalf("create uplink veth: %v", err)
	}
	upLink, err := netlink.LinkByName("bgt-up")
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, nil, upLink, uplinkHost, 24)
	if err := netlink.LinkSetUp(upLink); err != nil {
		t.Fatal(err)
	}
	h := guestHandle(t, ns)
	eth := mustLinkAt(t, h, "eth0")
	addAddr(t, h, eth, internetAddr, 24)
	if err := h.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	// A route back to the VMs, as a LAN router might have: so only banger's
	// rules, not the lack of a route, keep VMs without NAT off this network
	// and its traffic out of the bridge, and a missing masquerade shows as
	// the VM's own address arriving here.
	if err := h.RouteAdd(&netlink.Route{
		Dst: &net.IPNet{IP: testSubnet.Addr().AsSlice(), Mask: net.CIDRMask(testSubnet.Bits(), 32)},
		Gw:  uplinkHost.AsSlice(), LinkIndex: eth.Attrs().Index,
	}); err != nil {
		t.Fatalf("route back to the bridge subnet: %v", err)
	}

	var ln net.Listener
	if err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(internetAddr, 80).String())
		return err
	}); err != nil {
		t.Fatalf("listen in the internet namespace: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprint(w, host)
		}),
		ReadHeaderTimeout: reachTimeout,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ns
}

func guestHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in a namespace: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func mustLinkAt(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// testGuest is a namespace standing in for a VM: its eth0 carries the
// VM's MAC and IP, a default route via the gateway, and its veth peer on
// the host is a bridge port named like the VM's tap.
type testGuest struct {
	t   *testing.T
	vm  VM
	ns  netns.NsHandle
	h   *netlink.Handle
	eth netlink.Link
}

func (n *testNet) addGuest(name, tap string, ip netip.Addr, mac string) *testGuest {
	t := n.t
	t.Helper()
	g := &testGuest{t: t, vm: VM{Name: name, Tap: tap, IP: ip, MAC: mustMAC(t, mac)}, ns: newNetns(t)}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: tap, MasterIndex: n.bridge.Attrs().Index},
		PeerName:  "eth0", PeerHardwareAddr: g.vm.MAC, PeerNamespace: netlink.NsFd(int(g.ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth %s: %v", tap, err)
	}
	port, err := netlink.LinkByName(tap)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(port); err != nil {
		t.Fatal(err)
	}
	g.h = guestHandle(t, g.ns)
	g.eth = mustLinkAt(t, g.h, "eth0")
	if got := g.eth.Attrs().HardwareAddr.String(); got != mac {
		t.Fatalf("guest %s has MAC %s, want %s", name, got, mac)
	}
	addAddr(t, g.h, g.eth, ip, testSubnet.Bits())
	if err := g.h.LinkSetUp(g.eth); err != nil {
		t.Fatal(err)
	}
	if err := g.h.LinkSetUp(mustLinkAt(t, g.h, "lo")); err != nil {
		t.Fatal(err)
	}
	if err := g.h.RouteAdd(&netlink.Route{LinkIndex: g.eth.Attrs().Index, Gw: testGateway.AsSlice()}); err != nil {
		t.Fatalf("default route of %s: %v", name, err)
	}
	return g
}

// setIP replaces the guest's address (spoofing when it is another VM's).
func (g *testGuest) setIP(ip netip.Addr) {
	g.t.Helper()
	addrs, err := g.h.AddrList(g.eth, netlink.FAMILY_V4)
	if err != nil {
		g.t.Fatal(err)
	}
	for _, a := range addrs {
		if err := g.h.AddrDel(g.eth, &a); err != nil {
			g.t.Fatal(err)
		}
	}
	addAddr(g.t, g.h, g.eth, ip, testSubnet.Bits())
	if err := g.h.RouteAdd(&netlink.Route{LinkIndex: g.eth.Attrs().Index, Gw: testGateway.AsSlice()}); err != nil {
		g.t.Fatalf("default route: %v", err)
	}
	g.forgetNeighbours()
}

// setMAC changes the guest's MAC address (spoofing when it is not its VM's).
func (g *testGuest) setMAC(mac string) {
	g.t.Helper()
	if err := g.h.LinkSetHardwareAddr(g.eth, mustMAC(g.t, mac)); err != nil {
		g.t.Fatalf("set MAC %s: %v", mac, err)
	}
	g.forgetNeighbours()
}

// forgetNeighbours empties the guest's ARP cache, so its next packet to
// the gateway starts with an ARP request under its current identity. That
// request is what would poison the host's cache if it got through (the
// host learns the sender of a request for its own address), which makes a
// spoofing guest's traffic work, and its victim's fail, without the
// anti-spoofing rules.
func (g *testGuest) forgetNeighbours() {
	g.t.Helper()
	neighs, err := g.h.NeighList(g.eth.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		g.t.Fatal(err)
	}
	for _, nb := range neighs {
		if err := g.h.NeighDel(&nb); err != nil {
			g.t.Fatalf("forget neighbour %v: %v", nb.IP, err)
		}
	}
}

// dialIn opens a TCP connection from inside namespace ns.
func dialIn(ctx context.Context, ns netns.NsHandle, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// reachFrom connects from namespace ns to a serveTCP listener within
// timeout and returns the client address the listener saw.
func reachFrom(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialIn(ctx, ns, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func (g *testGuest) dial(ctx context.Context, addr string) (net.Conn, error) {
	return dialIn(ctx, g.ns, addr)
}

func (g *testGuest) reach(addr string, timeout time.Duration) (string, error) {
	return reachFrom(g.ns, addr, timeout)
}

// listen starts a serveTCP listener on the guest's address.
func (g *testGuest) listen() string {
	g.t.Helper()
	var addr string
	if err := inNetns(g.ns, func() error {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(g.vm.IP, 0).String())
		if err == nil {
			addr = serveTCP(g.t, ln)
		}
		return err
	}); err != nil {
		g.t.Fatalf("listen in %s: %v", g.vm.Name, err)
	}
	return addr
}

// get fetches url from inside the guest's namespace within timeout.
func (g *testGuest) get(url string, timeout time.Duration) (string, error) {
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return g.dial(ctx, addr) },
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(body), err
}

// serveTCP answers every connection on ln with the client's address and a
// newline, until the test ends.
func serveTCP(t *testing.T, ln net.Listener) string {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_ = c.SetDeadline(time.Now().Add(reachTimeout))
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// listenGateway starts a serveTCP listener on the bridge's gateway address
// in the host namespace (the test thread's).
func listenGateway(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(testGateway, 0).String())
	if err != nil {
		t.Fatalf("listen on the gateway: %v", err)
	}
	return serveTCP(t, ln)
}

func (n *testNet) sync(vms ...VM) {
	n.t.Helper()
	n.spec.VMs = vms
	if err := Sync(n.spec); err != nil {
		n.t.Fatalf("Sync: %v", err)
	}
}

func mustReach(t *testing.T, g *testGuest, what, addr string) string {
	t.Helper()
	seen, err := g.reach(addr, reachTimeout)
	if err != nil {
		t.Fatalf("%s cannot reach %s (%s): %v", g.vm.Name, what, addr, err)
	}
	return seen
}

func mustNotReach(t *testing.T, g *testGuest, what, addr string) {
	t.Helper()
	if seen, err := g.reach(addr, blockTimeout); err == nil {
		t.Fatalf("%s reached %s (%s), seen there as %s; want it blocked", g.vm.Name, what, addr, seen)
	}
}

// TestNATTraffic sends real traffic: a guest with NAT reaches an
// "internet" server, masqueraded to the host's uplink address; without
// NAT it cannot, but still reaches the host on the gateway address; and
// the internet never opens connections to a guest.
func TestNATTraffic(t *testing.T) {
	t.Parallel() // own namespaces; mostly waiting out blocked connections
	n := newTestNet(t)
	inet := n.addInternet()
	if _, err := EnableIPForward(); err != nil {
		t.Fatal(err)
	}
	gwAddr := listenGateway(t)
	g := n.addGuest("g1", "bg-g1", netip.MustParseAddr("172.30.77.2"), "52:54:ac:1e:4d:02")
	guestAddr := g.listen()
	url := "http://" + internetAddr.String() + "/"

	withNAT := g.vm
	withNAT.NAT = true
	n.sync(withNAT)
	body, err := g.get(url, reachTimeout)
	if err != nil {
		t.Fatalf("GET %s from a NAT guest: %v\n%s", url, err, mustState(t))
	}
	if body != uplinkHost.String() {
		t.Fatalf("the internet saw the guest as %q, want the host's uplink address %s (masqueraded)", body, uplinkHost)
	}
	if seen := mustReach(t, g, "the gateway", gwAddr); seen != g.vm.IP.String() {
		t.Errorf("the host saw the guest as %s, want its own address %s (no NAT on the bridge)", seen, g.vm.IP)
	}

	if seen, err := reachFrom(inet, guestAddr, blockTimeout); err == nil {
		t.Fatalf("the internet opened a connection to the NAT guest (seen as %s)", seen)
	}

	n.sync(g.vm) // NAT off
	if body, err := g.get(url, blockTimeout); err == nil {
		t.Fatalf("GET %s succeeded without NAT (seen as %q)", url, body)
	}
	mustReach(t, g, "the gateway", gwAddr)
	if seen, err := reachFrom(inet, guestAddr, blockTimeout); err == nil {
		t.Fatalf("the internet opened a connection to the guest (seen as %s)", seen)
	}

	n.sync(withNAT)
	if body, err := g.get(url, reachTimeout); err != nil || body != uplinkHost.String() {
		t.Fatalf("NAT on again: GET %s = %q, %v", url, body, err)
	}

	// Control: without banger's tables the same topology lets everything
	// through, unmasqueraded, both ways. What blocked it above were the rules.
	if err := Remove(); err != nil {
		t.Fatal(err)
	}
	if body, err := g.get(url, reachTimeout); err != nil || body != g.vm.IP.String() {
		t.Fatalf("without rules: GET %s = %q, %v; want success seen as %s", url, body, err, g.vm.IP)
	}
	if _, err := reachFrom(inet, guestAddr, reachTimeout); err != nil {
		t.Fatalf("without rules the internet cannot reach the guest: %v", err)
	}
}

// TestAntiSpoofTraffic: a guest that takes another VM's IP, or another
// MAC, is cut off, while the real owner keeps working; taps of no VM are
// cut off; VM-to-VM traffic with real addresses flows.
func TestAntiSpoofTraffic(t *testing.T) {
	t.Parallel() // own namespaces; mostly waiting out blocked connections
	n := newTestNet(t)
	gwAddr := listenGateway(t)
	g1 := n.addGuest("g1", "bg-g1", netip.MustParseAddr("172.30.77.2"), "52:54:ac:1e:4d:02")
	g2 := n.addGuest("g2", "bg-g2", netip.MustParseAddr("172.30.77.3"), "52:54:ac:1e:4d:03")
	stray := n.addGuest("g3", "bg-g3", netip.MustParseAddr("172.30.77.4"), "52:54:ac:1e:4d:04")
	n.sync(g1.vm, g2.vm) // g3's tap belongs to no VM

	g1Addr := g1.listen()

	if seen := mustReach(t, g1, "the gateway", gwAddr); seen != g1.vm.IP.String() {
		t.Errorf("gateway saw g1 as %s", seen)
	}
	mustReach(t, g2, "the gateway", gwAddr)
	if seen := mustReach(t, g2, "g1", g1Addr); seen != g2.vm.IP.String() {
		t.Errorf("g1 saw g2 as %s", seen)
	}
	mustNotReach(t, stray, "the gateway", gwAddr)
	mustNotReach(t, stray, "g1", g1Addr)

	// g2 poses as g1 (IP).
	g2.setIP(g1.vm.IP)
	mustNotReach(t, g2, "the gateway", gwAddr)
	if seen := mustReach(t, g1, "the gateway", gwAddr); seen != g1.vm.IP.String() {
		t.Errorf("gateway saw g1 as %s", seen)
	}
	g2.setIP(g2.vm.IP)
	mustReach(t, g2, "the gateway", gwAddr)

	// g2 takes another MAC, keeping its IP.
	g2.setMAC("52:54:ac:1e:4d:99")
	mustNotReach(t, g2, "the gateway", gwAddr)
	mustNotReach(t, g2, "g1", g1Addr)
	g2.setMAC(g2.vm.MAC.String())
	mustReach(t, g2, "the gateway", gwAddr)

	// The stray tap works once its VM is in the spec.
	n.sync(g1.vm, g2.vm, stray.vm)
	mustReach(t, stray, "the gateway", gwAddr)
}

// TestTrafficTimeoutsAreBounded guards the helpers: a blocked check must
// give up within its bound, not hang the test.
func TestTrafficTimeoutsAreBounded(t *testing.T) {
	t.Parallel() // own namespaces; mostly waiting out blocked connections
	n := newTestNet(t)
	gwAddr := listenGateway(t)
	stray := n.addGuest("g3", "bg-g3", netip.MustParseAddr("172.30.77.4"), "52:54:ac:1e:4d:04")
	n.sync()
	start := time.Now()
	_, err := stray.reach(gwAddr, blockTimeout)
	if err == nil {
		t.Fatal("a stray tap reached the gateway")
	}
	if d := time.Since(start); d > blockTimeout+time.Second {
		t.Errorf("blocked reach took %v, bound %v", d, blockTimeout)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Logf("blocked reach ended with %v (not a timeout)", err)
	}
}

// sendFrame sends one raw Ethernet frame carrying an IPv4/UDP datagram
// out of the guest's eth0, with whatever addresses the test chooses.
func (g *testGuest) sendFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload string) error {
	frame := ethernetUDP(dstMAC, srcMAC, src, dst, []byte(payload))
	return inNetns(g.ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: send only
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: g.eth.Attrs().Index, Halen: 6}
		copy(sa.Addr[:], dstMAC)
		return unix.Sendto(fd, frame, 0, sa)
	})
}

// ethernetUDP builds an Ethernet II frame with an IPv4 header (checksum
// filled in) and a UDP header (checksum 0: none, allowed over IPv4).
func ethernetUDP(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	udpLen := 8 + len(payload)
	b := make([]byte, 0, 14+20+udpLen)
	b = append(b, dstMAC...)
	b = append(b, srcMAC...)
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv4)
	ip := []byte{0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, unix.IPPROTO_UDP, 0, 0}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
	ip = append(ip, src.Addr().AsSlice()...)
	ip = append(ip, dst.Addr().AsSlice()...)
	var sum uint32
	for i := 0; i < len(ip); i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	b = append(b, ip...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(udpLen))
	b = append(b, 0, 0)
	return append(b, payload...)
}

// TestForgedFrames sends hand-made frames from a guest to a UDP socket on
// the gateway address and checks which arrive: only those with the VM's own
// MAC and IP. This covers each anti-spoofing condition on its own, without
// ARP in the way (TestAntiSpoofTraffic shows ARP itself is guarded).
//
// It also covers frames to a reserved link-local MAC (01:80:c2:00:00:0e,
// LLDP): the bridge does not forward them and skips its netfilter hooks;
// the kernel hands them to the host's stack as received on the tap
// itself. A forged IPv4 packet in one would reach a socket on the gateway
// address, past the bridge rules, but for the inet input rule that drops
// whatever arrives on a tap directly.
//
// It runs for a tap named with TapPrefix (caught by the catch-all rules
// too) and for one without (only its own rules catch it).
func TestForgedFrames(t *testing.T) {
	t.Parallel() // own namespaces; mostly waiting out blocked connections
	for _, tap := range []string{"bg-g2", "vm-g2"} {
		t.Run(tap, func(t *testing.T) {
			t.Parallel()
			testForgedFrames(t, tap)
		})
	}
}

func testForgedFrames(t *testing.T, tap string) {
	n := newTestNet(t)
	// The most permissive reverse-path setting, so a forged source is not
	// refused by rp_filter instead (hosts differ: 0, 1 or 2).
	for _, iface := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+iface+"/rp_filter", []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(testGateway, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	gw := netip.MustParseAddrPort(pc.LocalAddr().String())
	victim := n.addGuest("g1", "bg-g1", netip.MustParseAddr("172.30.77.2"), "52:54:ac:1e:4d:02")
	g := n.addGuest("g2", tap, netip.MustParseAddr("172.30.77.3"), "52:54:ac:1e:4d:03")
	n.sync(victim.vm, g.vm)

	br, err := netlink.LinkByName("bgt0")
	if err != nil {
		t.Fatal(err)
	}
	brMAC := br.Attrs().HardwareAddr
	lldp := mustMAC(t, "01:80:c2:00:00:0e")
	other := mustMAC(t, "52:54:ac:1e:4d:99")
	own := netip.AddrPortFrom(g.vm.IP, 4000)
	forged := netip.AddrPortFrom(victim.vm.IP, 4000)
	sends := []struct {
		payload string
		dst     net.HardwareAddr
		srcMAC  net.HardwareAddr
		src     netip.AddrPort
		want    bool
	}{
		{"honest", brMAC, g.vm.MAC, own, true}, // control: the raw sender works
		{"forged IP", brMAC, g.vm.MAC, forged, false},
		{"forged MAC", brMAC, other, own, false},
		{"victim's MAC and IP", brMAC, victim.vm.MAC, forged, false},
		{"link-local honest", lldp, g.vm.MAC, own, false},
		{"link-local forged", lldp, g.vm.MAC, forged, false},
	}
	// The path is ready once an honest frame gets through: a new bridge
	// port can take a moment to forward, and a loaded machine longer.
	buf := make([]byte, 1500)
	ready := false
	for i := 0; i < 50 && !ready; i++ {
		if err := g.sendFrame(brMAC, g.vm.MAC, own, gw, "warmup"); err != nil {
			t.Fatalf("send warmup frame: %v", err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if k, _, err := pc.ReadFrom(buf); err == nil && string(buf[:k]) == "warmup" {
			ready = true
		}
	}
	if !ready {
		t.Fatal("no honest frame got through to the gateway in 5 s")
	}
	for _, s := range sends {
		if err := g.sendFrame(s.dst, s.srcMAC, s.src, gw, s.payload); err != nil {
			t.Fatalf("send %s frame: %v", s.payload, err)
		}
	}
	got := map[string]bool{}
	_ = pc.SetReadDeadline(time.Now().Add(blockTimeout))
	for {
		k, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		got[string(buf[:k])] = true
	}
	for _, s := range sends {
		if got[s.payload] != s.want {
			t.Errorf("%s frame (to %v from %v, %v): received %v, want %v", s.payload, s.dst, s.srcMAC, s.src.Addr(), got[s.payload], s.want)
		}
	}
}
