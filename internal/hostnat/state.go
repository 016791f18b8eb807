package hostnat

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// stateRetries bounds how often State starts over when a table or chain
// vanishes while it reads (a concurrent Sync replaced it).
const stateRetries = 3

// Observed is what banger's tables hold, read back from the kernel by
// State. The exported fields are a lenient analysis (a rule counts when it
// has the expected conditions and verdict, wherever it sits); Diff is the
// strict comparison with a Spec, rule by rule and in order.
type Observed struct {
	// Tables lists banger's tables that exist: "inet banger", "bridge banger".
	Tables []string
	// Bridge is the bridge the forward chain keeps VMs without NAT on
	// ("iifname BRIDGE oifname != BRIDGE drop"); "" when that rule is missing.
	Bridge string
	// NAT lists, sorted, the VM addresses that are both masqueraded and
	// allowed out of the bridge: the VMs with working NAT.
	NAT []netip.Addr
	// Guards lists, sorted by tap, the taps whose frames are checked: the
	// tap's IPv4 and ARP frames pass only from MAC and IP, everything else
	// from it is dropped.
	Guards []Guard
	// StrayTapsDropped is true when frames from TapPrefix ports of no VM
	// are dropped and no packet reaches the host's stack through such a
	// port directly (the two catch-all rules are in place).
	StrayTapsDropped bool

	chains []chainState
}

// Guard is one tap's anti-spoofing rules: frames from Tap pass only with
// source MAC and (IPv4 and ARP sender) address IP.
type Guard struct {
	Tap string
	MAC net.HardwareAddr
	IP  netip.Addr
}

type chainState struct {
	family string // "inet" or "bridge"
	name   string
	header string // "type filter hook forward priority filter; policy accept;"
	rules  []decodedRule
}

func (c chainState) title() string { return c.family + " " + TableName + " " + c.name }

// State reads banger's tables in the calling thread's network namespace.
// Missing tables are no error: they are simply absent from Tables and
// contribute nothing. A kernel without nf_tables gives an error wrapping
// ErrUnsupported.
func State() (Observed, error) {
	c, err := nftables.New()
	if err != nil {
		return Observed{}, fmt.Errorf("read firewall rules: %w", err)
	}
	for attempt := 1; ; attempt++ {
		obs, err := readState(c)
		if err == nil {
			return obs, nil
		}
		// A table or chain deleted between listing and reading it: a Sync
		// ran concurrently; read again.
		if errors.Is(err, unix.ENOENT) && !errors.Is(err, ErrUnsupported) && attempt < stateRetries {
			continue
		}
		return Observed{}, err
	}
}

func readState(c *nftables.Conn) (Observed, error) {
	present, err := presentTables(c)
	if err != nil {
		return Observed{}, fmt.Errorf("read firewall rules: %w", err)
	}
	var obs Observed
	for _, t := range present {
		fam := familyName(t.Family)
		obs.Tables = append(obs.Tables, fam+" "+TableName)
		chains, err := c.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return Observed{}, fmt.Errorf("read firewall rules: list %s chains: %w", fam, err)
		}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != TableName {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return Observed{}, fmt.Errorf("read firewall rules: chain %s %s %s: %w", fam, TableName, ch.Name, err)
			}
			cs := chainState{family: fam, name: ch.Name, header: chainHeader(fam, ch)}
			for _, r := range rules {
				cs.rules = append(cs.rules, decodeRule(r.Exprs, r.UserData))
			}
			obs.chains = append(obs.chains, cs)
		}
	}
	obs.analyse()
	return obs, nil
}

// expected is the Observed that Sync(spec) installs, built from the same
// expressions Sync sends, so Diff compares like with like.
func expected(spec Spec) Observed {
	var obs Observed
	for _, t := range ownTables() {
		obs.Tables = append(obs.Tables, familyName(t.Family)+" "+TableName)
	}
	for _, def := range ruleset(spec) {
		fam := familyName(def.chain.Table.Family)
		cs := chainState{family: fam, name: def.chain.Name, header: chainHeader(fam, def.chain)}
		for _, r := range def.rules {
			cs.rules = append(cs.rules, decodeRule(r.exprs, r.userData()))
		}
		obs.chains = append(obs.chains, cs)
	}
	obs.analyse()
	return obs
}

// analyse fills the exported fields from the decoded chains and puts the
// chains in a fixed order.
func (o *Observed) analyse() {
	famRank := func(f string) int { return map[string]int{"inet": 0, "bridge": 1}[f] }
	slices.SortStableFunc(o.chains, func(a, b chainState) int {
		return cmp.Or(cmp.Compare(famRank(a.family), famRank(b.family)), cmp.Compare(a.name, b.name))
	})

	masq := map[netip.Addr]bool{}
	out := map[netip.Addr]bool{}
	type guardRule struct {
		mac net.HardwareAddr
		ip  netip.Addr
	}
	ipOK := map[string]guardRule{}
	arpOK := map[string]guardRule{}
	tapDrop := map[string]bool{}
	strayBridge, strayInput := false, false
	neq, eqOp := expr.CmpOpNeq, expr.CmpOpEq

	for _, ch := range o.chains {
		for _, r := range ch.rules {
			switch {
			case ch.family == "inet" && ch.name == chainPostrouting && r.action == "masquerade":
				if ip, ok := addrOf(r, "ip saddr"); ok && r.has("meta nfproto", eqOp, []byte{unix.NFPROTO_IPV4}) {
					masq[ip] = true
				}
			case ch.family == "inet" && ch.name == chainForward && r.action == "accept":
				ip, ok := addrOf(r, "ip saddr")
				in, okIn := r.get("iifname", eqOp)
				if ok && okIn && r.has("oifname", neq, in) && r.has("meta nfproto", eqOp, []byte{unix.NFPROTO_IPV4}) {
					out[ip] = true
				}
			case ch.family == "inet" && ch.name == chainForward && r.action == "drop" && len(r.conds) == 2:
				in, okIn := r.get("iifname", eqOp)
				if name, full := ifnameFromData(in); okIn && full && r.has("oifname", neq, in) {
					o.Bridge = name
				}
			case ch.family == "inet" && ch.name == chainInput && r.action == "drop" && len(r.conds) == 1:
				strayInput = strayInput || r.has("iifname", eqOp, []byte(TapPrefix))
			case ch.family == "bridge" && ch.name == chainPrerouting:
				in, okIn := r.get("iifname", eqOp)
				tap, full := ifnameFromData(in)
				if !okIn {
					continue
				}
				if !full {
					strayBridge = strayBridge || (r.action == "drop" && len(r.conds) == 1 && tap == TapPrefix)
					continue
				}
				mac, okMAC := r.get("ether saddr", eqOp)
				switch {
				case r.action == "drop" && len(r.conds) == 1:
					tapDrop[tap] = true
				case r.action != "accept" || !okMAC || len(mac) != 6:
				case r.has("ether type", eqOp, be16(etherTypeIPv4)):
					if ip, ok := addrOf(r, "ip saddr"); ok {
						ipOK[tap] = guardRule{mac: net.HardwareAddr(mac), ip: ip}
					}
				case r.has("ether type", eqOp, be16(etherTypeARP)):
					ip, ok := addrOf(r, "arp saddr ip")
					if ok && r.has("arp saddr ether", eqOp, mac) && r.has("arp htype", eqOp, be16(1)) &&
						r.has("arp ptype", eqOp, be16(etherTypeIPv4)) && r.has("arp hlen", eqOp, []byte{6}) &&
						r.has("arp plen", eqOp, []byte{4}) {
						arpOK[tap] = guardRule{mac: net.HardwareAddr(mac), ip: ip}
					}
				}
			}
		}
	}

	o.NAT = nil
	for ip := range masq {
		if out[ip] {
			o.NAT = append(o.NAT, ip)
		}
	}
	slices.SortFunc(o.NAT, netip.Addr.Compare)
	o.Guards = nil
	for tap, g := range ipOK {
		a, ok := arpOK[tap]
		if ok && tapDrop[tap] && a.ip == g.ip && bytes.Equal(a.mac, g.mac) {
			o.Guards = append(o.Guards, Guard{Tap: tap, MAC: g.mac, IP: g.ip})
		}
	}
	slices.SortFunc(o.Guards, func(a, b Guard) int { return cmp.Compare(a.Tap, b.Tap) })
	o.StrayTapsDropped = strayBridge && strayInput
}

// addrOf returns the IPv4 address an unmasked "field == ADDR" holds.
func addrOf(r decodedRule, field string) (netip.Addr, bool) {
	b, ok := r.get(field, expr.CmpOpEq)
	if !ok || len(b) != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(b)), true
}

// Matches reports whether both tables are complete (forward isolation and
// the stray-tap rules in place) and exactly taps are guarded and exactly
// natIPs have NAT, in any order. It ignores which MAC and IP a guard
// enforces and what else the tables hold; Diff is the exact check.
func (o Observed) Matches(taps []string, natIPs []netip.Addr) bool {
	if len(o.Tables) != 2 || o.Bridge == "" || !o.StrayTapsDropped {
		return false
	}
	var guarded []string
	for _, g := range o.Guards {
		guarded = append(guarded, g.Tap)
	}
	taps = slices.Clone(taps)
	slices.Sort(taps)
	natIPs = slices.Clone(natIPs)
	slices.SortFunc(natIPs, netip.Addr.Compare)
	return slices.Equal(guarded, taps) && slices.Equal(o.NAT, natIPs)
}

// Diff lists, one sentence each, how the installed state differs from
// what Sync(spec) would install: missing or extra tables, chains and rules,
// a wrong chain hook or policy, rules out of order. Empty means identical.
func (o Observed) Diff(spec Spec) []string {
	if err := spec.Validate(); err != nil {
		return []string{err.Error()}
	}
	want := expected(spec)
	var diffs []string
	for _, t := range want.Tables {
		if !slices.Contains(o.Tables, t) {
			diffs = append(diffs, "table "+t+" is missing")
		}
	}
	have := map[string]chainState{}
	for _, c := range o.chains {
		have[c.title()] = c
	}
	for _, w := range want.chains {
		g, ok := have[w.title()]
		delete(have, w.title())
		if !ok {
			if slices.Contains(o.Tables, w.family+" "+TableName) {
				diffs = append(diffs, "chain "+w.title()+" is missing")
			}
			continue
		}
		if g.header != w.header {
			diffs = append(diffs, fmt.Sprintf("chain %s is %q, want %q", w.title(), g.header, w.header))
		}
		diffs = append(diffs, diffRules(w.title(), w.rules, g.rules)...)
	}
	for _, c := range o.chains {
		if _, extra := have[c.title()]; extra {
			diffs = append(diffs, "chain "+c.title()+" is not banger's")
		}
	}
	return diffs
}

func diffRules(title string, want, got []decodedRule) []string {
	text := func(rs []decodedRule) []string {
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.text
		}
		return out
	}
	w, g := text(want), text(got)
	if slices.Equal(w, g) {
		return nil
	}
	left := map[string]int{}
	for _, s := range g {
		left[s]++
	}
	var diffs []string
	for _, s := range w {
		if left[s] > 0 {
			left[s]--
			continue
		}
		diffs = append(diffs, "chain "+title+" lacks rule: "+s)
	}
	for _, s := range g {
		if left[s] > 0 {
			left[s]--
			diffs = append(diffs, "chain "+title+" has unexpected rule: "+s)
		}
	}
	if len(diffs) == 0 {
		diffs = append(diffs, "chain "+title+" has its rules out of order")
	}
	return diffs
}

// String lists the tables in nft's syntax (values decoded from the rules'
// expressions), for diagnostics.
func (o Observed) String() string {
	var b strings.Builder
	for _, t := range o.Tables {
		fam, _, _ := strings.Cut(t, " ")
		fmt.Fprintf(&b, "table %s {\n", t)
		first := true
		for _, c := range o.chains {
			if c.family != fam {
				continue
			}
			if !first {
				b.WriteString("\n")
			}
			first = false
			fmt.Fprintf(&b, "\tchain %s {\n", c.name)
			if c.header != "" {
				fmt.Fprintf(&b, "\t\t%s\n", c.header)
			}
			for _, r := range c.rules {
				fmt.Fprintf(&b, "\t\t%s\n", r.text)
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}
