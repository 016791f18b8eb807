package hostnat

import (
	"cmp"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Chain names. The inet table has three base chains, the bridge table one.
const (
	chainPostrouting = "postrouting" // inet, nat: masquerade NAT VMs
	chainForward     = "forward"     // inet, filter: who may leave or enter the bridge
	chainInput       = "input"       // inet, filter: nothing reaches the host through a tap
	chainPrerouting  = "prerouting"  // bridge, filter: anti-spoofing per tap
)

// bridgeFilterPriority is nft's "filter" priority in the bridge family
// (NF_BR_PRI_FILTER_BRIDGED).
const bridgeFilterPriority = -200

// maxComment bounds the comment stored with a rule (nft accepts 128 bytes).
const maxComment = 100

// reg is the register every match loads into; each compare consumes it.
const reg = unix.NFT_REG_1

// Ethernet types and the fixed start of an Ethernet/IPv4 ARP header.
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
)

// ctStateOK is established|related; ctStatusDNAT is IPS_DST_NAT.
const (
	ctStateOK    = expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED
	ctStatusDNAT = 1 << 5
)

// chainDef is one chain and the rules Sync puts into it, in order.
type chainDef struct {
	chain *nftables.Chain
	rules []ruleDef
}

type ruleDef struct {
	exprs   []expr.Any
	comment string
}

func (r ruleDef) userData() []byte {
	if r.comment == "" {
		return nil
	}
	return userdata.AppendString(nil, userdata.TypeComment, r.comment)
}

// ruleset derives every chain and rule from spec, which must be valid. VMs
// are ordered by tap, so the result does not depend on the order of
// spec.VMs. See the package documentation for the listing.
func ruleset(spec Spec) []chainDef {
	tables := ownTables()
	inet, br := tables[0], tables[1]
	accept := nftables.ChainPolicyAccept
	post := chainDef{chain: &nftables.Chain{
		Name: chainPostrouting, Table: inet, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	}}
	fwd := chainDef{chain: &nftables.Chain{
		Name: chainForward, Table: inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	}}
	input := chainDef{chain: &nftables.Chain{
		Name: chainInput, Table: inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	}}
	pre := chainDef{chain: &nftables.Chain{
		Name: chainPrerouting, Table: br, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(bridgeFilterPriority), Policy: &accept,
	}}

	vms := slices.Clone(spec.VMs)
	slices.SortFunc(vms, func(a, b VM) int { return cmp.Compare(a.Tap, b.Tap) })
	bridge := spec.Bridge
	for _, vm := range vms {
		note := vmComment(vm.Name)
		if vm.NAT {
			post.add(note, ipv4(), ipSaddr(vm.IP), oifname(expr.CmpOpNeq, bridge), masquerade())
			fwd.add(note, iifname(expr.CmpOpEq, bridge), oifname(expr.CmpOpNeq, bridge), ipv4(), ipSaddr(vm.IP), verdict(expr.VerdictAccept))
		}
		if !strings.HasPrefix(vm.Tap, TapPrefix) {
			input.add(note, iifname(expr.CmpOpEq, vm.Tap), verdict(expr.VerdictDrop))
		}
		pre.add(note, iifname(expr.CmpOpEq, vm.Tap), etherSaddr(vm.MAC),
			etherType(etherTypeIPv4), ipSaddr(vm.IP), verdict(expr.VerdictAccept))
		pre.add(note, iifname(expr.CmpOpEq, vm.Tap), etherSaddr(vm.MAC),
			etherType(etherTypeARP), arpHeader(), arpSaddrEther(vm.MAC), arpSaddrIP(vm.IP), verdict(expr.VerdictAccept))
		pre.add(note, iifname(expr.CmpOpEq, vm.Tap), verdict(expr.VerdictDrop))
	}
	fwd.add("replies to VM connections", oifname(expr.CmpOpEq, bridge), ctState(ctStateOK), verdict(expr.VerdictAccept))
	fwd.add("port forwards the host set up", oifname(expr.CmpOpEq, bridge), ctStatus(ctStatusDNAT), verdict(expr.VerdictAccept))
	fwd.add("VMs without NAT stay on the bridge", iifname(expr.CmpOpEq, bridge), oifname(expr.CmpOpNeq, bridge), verdict(expr.VerdictDrop))
	fwd.add("nothing else enters the bridge", iifname(expr.CmpOpNeq, bridge), oifname(expr.CmpOpEq, bridge), verdict(expr.VerdictDrop))
	input.add("the host is reached through the bridge only", iifPrefix(TapPrefix), verdict(expr.VerdictDrop))
	pre.add("taps of no VM", iifPrefix(TapPrefix), verdict(expr.VerdictDrop))
	return []chainDef{post, fwd, input, pre}
}

func (c *chainDef) add(comment string, parts ...[]expr.Any) {
	c.rules = append(c.rules, ruleDef{exprs: slices.Concat(parts...), comment: comment})
}

// vmComment is the comment of a VM's rules: "vm NAME", cut to maxComment
// bytes of valid UTF-8.
func vmComment(name string) string {
	s := "vm " + name
	for len(s) > maxComment {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return strings.ToValidUTF8(s, "?")
}

// ifnameData is how nft compares an exact interface name: the name padded
// with NULs to IFNAMSIZ. A shorter, unterminated value is a prefix match.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func iifname(op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg},
		&expr.Cmp{Op: op, Register: reg, Data: ifnameData(name)},
	}
}

// iifPrefix matches every input interface whose name starts with prefix
// (nft: iifname "prefix*").
func iifPrefix(prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte(prefix)},
	}
}

func oifname(op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg},
		&expr.Cmp{Op: op, Register: reg, Data: ifnameData(name)},
	}
}

// ipv4 is the dependency nft adds before an IPv4 header match in the inet
// family (meta nfproto ipv4), so an IPv6 packet is never read as IPv4.
func ipv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

func load(base expr.PayloadBase, offset, length uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: base, Offset: offset, Len: length}
}

func eq(data []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data} }

func ip4(a netip.Addr) []byte { b := a.As4(); return b[:] }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// ipSaddr: ip saddr ADDR (IPv4 header bytes 12-15). The caller has made
// sure the packet is IPv4 (ipv4 or etherType).
func ipSaddr(a netip.Addr) []expr.Any {
	return []expr.Any{load(expr.PayloadBaseNetworkHeader, 12, 4), eq(ip4(a))}
}

// etherSaddr: ether saddr MAC (Ethernet header bytes 6-11).
func etherSaddr(mac net.HardwareAddr) []expr.Any {
	return []expr.Any{load(expr.PayloadBaseLLHeader, 6, 6), eq(slices.Clone(mac))}
}

// etherType: ether type T. A VLAN-tagged frame has type 0x8100 here (the
// kernel puts an offloaded tag back in place for the match), so tagged
// frames never pass as IPv4 or ARP.
func etherType(t uint16) []expr.Any {
	return []expr.Any{load(expr.PayloadBaseLLHeader, 12, 2), eq(be16(t))}
}

// arpHeader: arp htype 1 arp ptype ip arp hlen 6 arp plen 4, so the sender
// fields below are where an Ethernet/IPv4 ARP packet has them.
func arpHeader() []expr.Any {
	return []expr.Any{
		load(expr.PayloadBaseNetworkHeader, 0, 2), eq(be16(1)),
		load(expr.PayloadBaseNetworkHeader, 2, 2), eq(be16(etherTypeIPv4)),
		load(expr.PayloadBaseNetworkHeader, 4, 1), eq([]byte{6}),
		load(expr.PayloadBaseNetworkHeader, 5, 1), eq([]byte{4}),
	}
}

// arpSaddrEther: arp saddr ether MAC (sender hardware address).
func arpSaddrEther(mac net.HardwareAddr) []expr.Any {
	return []expr.Any{load(expr.PayloadBaseNetworkHeader, 8, 6), eq(slices.Clone(mac))}
}

// arpSaddrIP: arp saddr ip ADDR (sender protocol address).
func arpSaddrIP(a netip.Addr) []expr.Any {
	return []expr.Any{load(expr.PayloadBaseNetworkHeader, 14, 4), eq(ip4(a))}
}

// ctBits matches when any of bits is set in the conntrack key (a host
// byte order bitmask): ct state established,related and the like.
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: key, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: make([]byte, 4)},
	}
}

func ctState(bits uint32) []expr.Any  { return ctBits(expr.CtKeySTATE, bits) }
func ctStatus(bits uint32) []expr.Any { return ctBits(expr.CtKeySTATUS, bits) }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func masquerade() []expr.Any { return []expr.Any{&expr.Masq{}} }
