package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"banger/internal/config"
	"banger/internal/hostnat"
	"banger/internal/hostnet"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/vmm/qemu"
)

// inOwnNetns re-runs the calling test in a child process that
// `unshare --net --mount --pid --fork --kill-child --mount-proc` puts in
// network, mount and pid namespaces of its own, so every thread of the
// daemon under test — not just one — works there, and the namespace, its
// bridge, taps, rules, any mount the test makes and every process it
// started (stand-in VMMs included, even when the child is killed on a
// timeout) vanish with the child. In the
// child it brings loopback up and returns true: the caller then runs the
// test body. In the parent it waits for the child and returns false.
func inOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("BANGER_TEST_NETNS_CHILD") == t.Name() {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatal(err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace with a bridge, taps and nftables)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("needs unshare (util-linux): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--", os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "BANGER_TEST_NETNS_CHILD="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in its own network namespace, %s failed (%v):\n%s", t.Name(), err, out)
	}
	return false
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.LocalAddr().(*net.UDPAddr).Port
}

// netDaemon opens a daemon whose network uses bridge bgt0 on
// 10.201.0.1/24 and the given extra config lines.
func netDaemon(t *testing.T, extra string) *Daemon {
	t.Helper()
	return netDaemonIn(t, t.TempDir(), extra)
}

// netDaemonIn is netDaemon with its files under root.
func netDaemonIn(t *testing.T, root, extra string) *Daemon {
	t.Helper()
	env := map[string]string{
		"HOME": root, "XDG_RUNTIME_DIR": filepath.Join(root, "run"), "XDG_STATE_HOME": filepath.Join(root, "state"),
		"XDG_CONFIG_HOME": filepath.Join(root, "config"), "XDG_CACHE_HOME": filepath.Join(root, "cache"),
	}
	layout, err := config.LayoutFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(layout.ConfigFile), 0o700); err != nil {
		t.Fatal(err)
	}
	body := "bridge_name = \"bgt0\"\nbridge_cidr = \"10.201.0.1/24\"\n" + extra + "\n"
	if err := os.WriteFile(layout.ConfigFile, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(layout.ConfigFile, config.DetectHost())
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(t.Context(), Options{Layout: layout, Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// serve runs d.Serve until the test ends; it returns once the socket
// answers or Serve failed (the error, then).
func serve(t *testing.T, d *Daemon) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Serve(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-errc:
			cancel()
			return err
		default:
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := (&rpc.Client{SocketPath: d.layout.SocketPath}).Call(pctx, "ping", nil, nil)
		pcancel()
		if err == nil {
			t.Cleanup(func() {
				cancel()
				if err := <-errc; err != nil {
					t.Errorf("Serve: %v", err)
				}
			})
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	t.Fatal("daemon did not answer within 10s")
	return nil
}

func query(t *testing.T, addr, name string) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Timeout: 2 * time.Second}
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s at %s: %v", name, addr, err)
	}
	return r
}

func addVMRow(t *testing.T, d *Daemon, name, ip, tap string, nat bool) store.VM {
	t.Helper()
	mac, _ := hostnet.MACFor(ip)
	v := store.VM{Name: name, Image: "img", Kernel: "k", State: store.StateStopped, VCPU: 1, MemoryMiB: 256,
		DiskSizeBytes: 1 << 30, IP: ip, MAC: mac, Tap: tap, NAT: nat, VMM: "qemu"}
	if err := d.store.CreateVM(t.Context(), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestNetworkServiceFollowsConfigAndRows: dns_listen and tap_pool_size
// change what the daemon does; names and rules follow the VM rows; the
// pool is emptied on shutdown and the bridge kept.
func TestNetworkServiceFollowsConfigAndRows(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	port := freePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	d := netDaemon(t, fmt.Sprintf("dns_listen = %q\ntap_pool_size = 3", listen))
	stopped := make(chan struct{})
	func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer func() { cancel(); <-stopped }()
		errc := make(chan error, 1)
		go func() { errc <- d.Serve(ctx); close(stopped) }()
		deadline := time.Now().Add(10 * time.Second)
		for len(mustIdle(t, d)) < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("tap pool has %v, want 3 idle taps", mustIdle(t, d))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if taps, _ := hostnet.ListTaps(hostnet.PoolTapPrefix); len(taps) != 3 {
			t.Fatalf("pool taps on the host: %v, want 3", taps)
		}

		a := addVMRow(t, d, "alpha", "10.201.0.2", "bg-alpha", true)
		d.syncNetwork(t.Context())
		if r := query(t, listen, "alpha.vm"); len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != a.IP {
			t.Fatalf("alpha.vm on dns_listen: %v", r)
		}
		if r := query(t, "10.201.0.1:53", "ALPHA.vm"); len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != a.IP {
			t.Fatalf("ALPHA.vm on the bridge listener: %v", r)
		}
		obs, err := hostnat.State()
		if err != nil {
			t.Fatal(err)
		}
		if !obs.Matches([]string{"bg-alpha"}, []netip.Addr{netip.MustParseAddr(a.IP)}) {
			t.Fatalf("rules after sync:\n%s", obs)
		}
		// Someone deletes banger's tables: the watch loop's check restores them.
		if err := hostnat.Remove(); err != nil {
			t.Fatal(err)
		}
		d.net.ensureRules(t.Context())
		if obs, _ := hostnat.State(); !obs.Matches([]string{"bg-alpha"}, []netip.Addr{netip.MustParseAddr(a.IP)}) {
			t.Fatalf("rules not restored:\n%s", obs)
		}
		if err := d.store.DeleteVM(t.Context(), "alpha"); err != nil {
			t.Fatal(err)
		}
		d.syncNetwork(t.Context())
		if r := query(t, listen, "alpha.vm"); r.Rcode != mdns.RcodeNameError {
			t.Fatalf("alpha.vm after delete: rcode %s", mdns.RcodeToString[r.Rcode])
		}
		if obs, _ := hostnat.State(); !obs.Matches(nil, nil) {
			t.Fatalf("rules after delete:\n%s", obs)
		}
	}()
	if taps, _ := hostnet.ListTaps(hostnet.PoolTapPrefix); len(taps) != 0 {
		t.Errorf("pool taps left after shutdown: %v", taps)
	}
	if _, err := netlink.LinkByName("bgt0"); err != nil {
		t.Errorf("bridge gone after shutdown (running VMs need it): %v", err)
	}
}

func mustIdle(t *testing.T, d *Daemon) []string {
	if pool := d.net.tapPool(); pool != nil {
		return pool.Idle()
	}
	return nil
}

// TestNetworkServiceRefusesBadConfig: a dns_listen in use and a bridge
// subnet that overlaps a host route stop the daemon with the key to change.
func TestNetworkServiceRefusesBadConfig(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	d := netDaemon(t, fmt.Sprintf("dns_listen = %q", busy.LocalAddr().String()))
	err = serve(t, d)
	if err == nil || !strings.Contains(err.Error(), "dns_listen") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Serve with dns_listen in use = %v", err)
	}
	if taps, _ := hostnet.ListTaps(hostnet.PoolTapPrefix); len(taps) != 0 {
		t.Errorf("a failed start left pool taps: %v", taps)
	}

	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "uplink0p"}
	if err := netlink.LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.201.0.77/16")
	if err := netlink.AddrAdd(dummy, addr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"uplink0", "uplink0p"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	d2 := netDaemon(t, fmt.Sprintf("dns_listen = \"127.0.0.1:%d\"", freePort(t)))
	err = serve(t, d2)
	if err == nil || !strings.Contains(err.Error(), "bridge_cidr") || !strings.Contains(err.Error(), "uplink0") {
		t.Fatalf("Serve with an overlapping bridge_cidr = %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func TestDescribeVMMState(t *testing.T) {
	if got := describeVMMState("web", "running"); got != "" {
		t.Errorf("running: %q", got)
	}
	if got := describeVMMState("web", "io-error"); !strings.Contains(got, "paused: a disk write failed") || !strings.Contains(got, "banger vm restart web") {
		t.Errorf("io-error: %q", got)
	}
	if got := describeVMMState("web", "paused"); got != "the VMM reports paused" {
		t.Errorf("paused: %q", got)
	}
}

// QEMU's driver answers Status, so vm show can report a paused guest.
var _ statusReporter = (*qemu.Driver)(nil)
