package hostnat

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// specA has one VM with NAT and one without.
func specA(t testing.TB) Spec {
	return Spec{
		Bridge:  "bgt0",
		Subnet:  netip.MustParsePrefix("172.30.9.0/24"),
		Gateway: netip.MustParseAddr("172.30.9.1"),
		VMs: []VM{
			{Name: "web", Tap: "bg-web", IP: netip.MustParseAddr("172.30.9.2"), MAC: mustMAC(t, "52:54:ac:1e:09:02"), NAT: true},
			{Name: "db", Tap: "bg-db", IP: netip.MustParseAddr("172.30.9.3"), MAC: mustMAC(t, "52:54:ac:1e:09:03")},
		},
	}
}

// specB changes specA: web loses NAT, db gains it and a new address, and
// a third VM appears.
func specB(t testing.TB) Spec {
	s := specA(t)
	s.VMs = []VM{
		{Name: "web", Tap: "bg-web", IP: netip.MustParseAddr("172.30.9.2"), MAC: mustMAC(t, "52:54:ac:1e:09:02")},
		{Name: "db", Tap: "bg-db", IP: netip.MustParseAddr("172.30.9.13"), MAC: mustMAC(t, "52:54:ac:1e:09:0d"), NAT: true},
		{Name: "cache", Tap: "bg-cache", IP: netip.MustParseAddr("172.30.9.4"), MAC: mustMAC(t, "52:54:ac:1e:09:04")},
	}
	return s
}

func guardsOf(spec Spec) []Guard {
	var gs []Guard
	for _, vm := range spec.VMs {
		gs = append(gs, Guard{Tap: vm.Tap, MAC: vm.MAC, IP: vm.IP})
	}
	slices.SortFunc(gs, func(a, b Guard) int { return strings.Compare(a.Tap, b.Tap) })
	return gs
}

func natOf(spec Spec) []netip.Addr {
	var ips []netip.Addr
	for _, vm := range spec.VMs {
		if vm.NAT {
			ips = append(ips, vm.IP)
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips
}

func tapsOf(spec Spec) []string {
	var taps []string
	for _, vm := range spec.VMs {
		taps = append(taps, vm.Tap)
	}
	return taps
}

func mustState(t *testing.T) Observed {
	t.Helper()
	obs, err := State()
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	return obs
}

func sameGuards(a, b []Guard) bool {
	return slices.EqualFunc(a, b, func(x, y Guard) bool {
		return x.Tap == y.Tap && x.IP == y.IP && x.MAC.String() == y.MAC.String()
	})
}

// requireInstalled checks, from the kernel's own listing, that exactly
// spec's rules are installed.
func requireInstalled(t *testing.T, spec Spec) {
	t.Helper()
	obs := mustState(t)
	if d := obs.Diff(spec); len(d) > 0 {
		t.Fatalf("installed rules differ from the spec:\n  %s\ninstalled:\n%s", strings.Join(d, "\n  "), obs)
	}
	if !slices.Equal(obs.Tables, []string{"inet banger", "bridge banger"}) {
		t.Errorf("tables %v, want both of banger's", obs.Tables)
	}
	if !slices.Equal(obs.NAT, natOf(spec)) {
		t.Errorf("NAT for %v, want %v", obs.NAT, natOf(spec))
	}
	if !sameGuards(obs.Guards, guardsOf(spec)) {
		t.Errorf("guards %v, want %v", obs.Guards, guardsOf(spec))
	}
	if obs.Bridge != spec.Bridge || !obs.StrayTapsDropped {
		t.Errorf("bridge %q, stray taps dropped %v; want %q and true", obs.Bridge, obs.StrayTapsDropped, spec.Bridge)
	}
	if !obs.Matches(tapsOf(spec), natOf(spec)) {
		t.Errorf("Matches(%v, %v) is false for\n%s", tapsOf(spec), natOf(spec), obs)
	}
}

func TestSyncRuleContent(t *testing.T) {
	inFreshNetns(t)
	if obs := mustState(t); len(obs.Tables) != 0 || len(obs.NAT) != 0 || len(obs.Guards) != 0 {
		t.Fatalf("fresh namespace has banger state: %+v", obs)
	}

	a := specA(t)
	if err := Sync(a); err != nil {
		t.Fatalf("Sync(A): %v", err)
	}
	requireInstalled(t, a)
	obs := mustState(t)
	t.Logf("installed for spec A:\n%s", obs)
	if len(obs.NAT) != 1 || obs.NAT[0] != netip.MustParseAddr("172.30.9.2") {
		t.Errorf("NAT %v, want only web's 172.30.9.2", obs.NAT)
	}
	if len(obs.Guards) != 2 {
		t.Errorf("guards %v, want bg-db and bg-web", obs.Guards)
	}

	// A changed spec replaces the old rules; nothing of A stays.
	b := specB(t)
	for i := range 2 {
		if err := Sync(b); err != nil {
			t.Fatalf("Sync(B) call %d: %v", i+1, err)
		}
		requireInstalled(t, b)
	}
	obs = mustState(t)
	if len(obs.Diff(a)) == 0 {
		t.Error("Diff(A) is empty after Sync(B)")
	}
	if obs.Matches(tapsOf(a), natOf(a)) {
		t.Error("Matches(A) after Sync(B)")
	}
	if strings.Contains(obs.String(), "172.30.9.3 ") || strings.Contains(obs.String(), "52:54:ac:1e:09:03") {
		t.Errorf("db's old address or MAC still installed:\n%s", obs)
	}

	// The order of spec.VMs does not matter.
	rev := b
	rev.VMs = slices.Clone(b.VMs)
	slices.Reverse(rev.VMs)
	if d := mustState(t).Diff(rev); len(d) > 0 {
		t.Errorf("Diff of the same spec in another VM order: %v", d)
	}

	// No VMs: only the fixed rules.
	empty := Spec{Bridge: "bgt0", Subnet: a.Subnet}
	if err := Sync(empty); err != nil {
		t.Fatal(err)
	}
	requireInstalled(t, empty)

	if err := Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if obs := mustState(t); len(obs.Tables) != 0 {
		t.Fatalf("tables after Remove: %v", obs.Tables)
	}
	if err := Remove(); err != nil {
		t.Errorf("Remove without tables: %v", err)
	}
}

// TestSyncRepairsHandEdits: whatever happened to the tables by hand, the
// next Sync installs exactly the spec again, and State/Diff notice first.
func TestSyncRepairsHandEdits(t *testing.T) {
	inFreshNetns(t)
	a := specA(t)
	inet := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	bridge := &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
	edits := []struct {
		name     string
		edit     func(c *nftables.Conn)
		wantDiff string
	}{
		{"inet table deleted", func(c *nftables.Conn) { c.DelTable(inet) }, "table inet banger is missing"},
		{"bridge table deleted", func(c *nftables.Conn) { c.DelTable(bridge) }, "table bridge banger is missing"},
		{"bridge table flushed", func(c *nftables.Conn) { c.FlushTable(bridge) }, "chain bridge banger prerouting lacks rule"},
		{"inet table flushed", func(c *nftables.Conn) { c.FlushTable(inet) }, "chain inet banger postrouting lacks rule"},
		{"forward chain deleted", func(c *nftables.Conn) {
			c.FlushChain(&nftables.Chain{Table: inet, Name: chainForward})
			c.DelChain(&nftables.Chain{Table: inet, Name: chainForward})
		}, "chain inet banger forward is missing"},
		{"foreign rule added", func(c *nftables.Conn) {
			c.InsertRule(&nftables.Rule{Table: inet, Chain: &nftables.Chain{Table: inet, Name: chainForward},
				Exprs: verdict(expr.VerdictAccept)})
		}, "chain inet banger forward has unexpected rule: accept"},
		{"foreign chain added", func(c *nftables.Conn) {
			c.AddChain(&nftables.Chain{Table: bridge, Name: "extra"})
		}, "chain bridge banger extra is not banger's"},
	}
	for _, e := range edits {
		if err := Sync(a); err != nil {
			t.Fatalf("%s: Sync: %v", e.name, err)
		}
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		e.edit(c)
		if err := c.Flush(); err != nil {
			t.Fatalf("%s: editing by hand: %v", e.name, err)
		}
		obs := mustState(t)
		d := obs.Diff(a)
		if !slices.ContainsFunc(d, func(s string) bool { return strings.Contains(s, e.wantDiff) }) {
			t.Errorf("%s: Diff %q does not mention %q", e.name, d, e.wantDiff)
		}
		if e.name != "foreign rule added" && e.name != "foreign chain added" && obs.Matches(tapsOf(a), natOf(a)) {
			t.Errorf("%s: Matches is still true", e.name)
		}
		if err := Sync(a); err != nil {
			t.Fatalf("%s: Sync after the edit: %v", e.name, err)
		}
		requireInstalled(t, a)
	}
}

func TestSyncInvalidSpecKeepsState(t *testing.T) {
	inFreshNetns(t)
	a := specA(t)
	if err := Sync(a); err != nil {
		t.Fatal(err)
	}
	for _, tc := range invalidSpecs(t) {
		err := Sync(tc.spec)
		if err == nil || !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Sync error %v, want ErrInvalidSpec mentioning %q", tc.name, err, tc.want)
		}
	}
	requireInstalled(t, a)
}

// TestSyncFailureIsAtomic makes the kernel reject Sync's batch after it
// has processed the deletion of the old tables and the creation of the
// new ones; the previous state must be what remains.
func TestSyncFailureIsAtomic(t *testing.T) {
	inFreshNetns(t)
	a, b := specA(t), specB(t)
	if err := Sync(a); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testHookBatch = nil })

	// A table name longer than the kernel allows: refused (ERANGE) by the
	// last message of the batch.
	testHookBatch = func(c *nftables.Conn) {
		c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: strings.Repeat("x", 300)})
	}
	err := Sync(b)
	if err == nil {
		t.Fatal("Sync succeeded with a bad message in its batch")
	}
	if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrInvalidSpec) {
		t.Errorf("kernel refusal reported as %v", err)
	}
	t.Logf("refused batch: %v", err)
	requireInstalled(t, a)

	// A NAT chain in the bridge family does not exist: the kernel fails to
	// find the chain type (as it would without nft_chain_nat), which must
	// read as ErrUnsupported, with the remedy.
	testHookBatch = func(c *nftables.Conn) {
		c.AddChain(&nftables.Chain{
			Name: "nat", Table: &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName},
			Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		})
	}
	err = Sync(b)
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "modprobe") {
		t.Errorf("missing chain type: error %v, want ErrUnsupported with the remedy", err)
	}
	t.Logf("unsupported: %v", err)
	requireInstalled(t, a)

	testHookBatch = nil
	if err := Sync(b); err != nil {
		t.Fatal(err)
	}
	requireInstalled(t, b)
}

func TestEnableIPForward(t *testing.T) {
	inFreshNetns(t)
	// A new namespace may inherit the host's setting; start from off, here
	// and in a second namespace that must not be affected.
	other := newNetns(t)
	if err := inNetns(other, func() error { return os.WriteFile(ipForwardPath, []byte("0"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ipForwardPath, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}

	wasOn, err := EnableIPForward()
	if err != nil {
		t.Fatal(err)
	}
	if wasOn {
		t.Error("EnableIPForward says ip_forward was on; it was off")
	}
	if got, err := readIPForward(); err != nil || strings.TrimSpace(string(got)) != "1" {
		t.Errorf("ip_forward after EnableIPForward: %q, %v; want 1", got, err)
	}
	wasOn, err = EnableIPForward()
	if err != nil || !wasOn {
		t.Errorf("second call: wasOn=%v err=%v, want true, nil", wasOn, err)
	}
	// It is per namespace: the other one still has it off.
	var got []byte
	if err := inNetns(other, func() (err error) { got, err = readIPForward(); return err }); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != "0" {
		t.Errorf("ip_forward in another namespace is %q, want 0", got)
	}
}
