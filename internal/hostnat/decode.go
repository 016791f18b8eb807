package hostnat

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// A rule as read back from the kernel is a list of expressions: loads into
// a register and compares of it, then a statement. decode turns that into
// named conditions (for State's analysis) and an nft-like text (for Diff
// and String). It knows the fields banger's own rules use and prints any
// other load raw (@nh,96,32 and so on), so a foreign rule still shows up,
// unrecognised. Naming is by position only: it is meant for banger's
// tables, not as a general nft decompiler.

// valueKind says how a field's value is printed.
type valueKind int

const (
	kindRaw valueKind = iota
	kindIfname
	kindNfproto
	kindMAC
	kindIPv4
	kindEtherType
	kindUint
	kindCtState
	kindCtStatus
)

// operand is what a register holds: a named field, maybe masked.
type operand struct {
	field string
	kind  valueKind
	mask  []byte
}

// cond is one compare of a decoded rule.
type cond struct {
	field string
	op    expr.CmpOp
	data  []byte
	mask  []byte
}

type decodedRule struct {
	conds   []cond
	action  string // "accept", "drop", "masquerade", "jump X", ...; "" when none
	comment string
	text    string // nft-like, the canonical form compared by Diff
}

// get returns the data of the first unmasked condition on field with op.
func (r decodedRule) get(field string, op expr.CmpOp) ([]byte, bool) {
	for _, c := range r.conds {
		if c.field == field && c.op == op && c.mask == nil {
			return c.data, true
		}
	}
	return nil, false
}

// has reports whether r has the unmasked condition field op data.
func (r decodedRule) has(field string, op expr.CmpOp, data []byte) bool {
	got, ok := r.get(field, op)
	return ok && bytes.Equal(got, data)
}

func decodeRule(exprs []expr.Any, udata []byte) decodedRule {
	var r decodedRule
	var words []string
	regs := map[uint32]operand{}
	l3 := "ip" // how network header loads are named; "arp" after ether type arp
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				words = append(words, fmt.Sprintf("meta %d set", e.Key))
				continue
			}
			regs[e.Register] = metaOperand(e.Key)
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				words = append(words, "@payload-write")
				continue
			}
			regs[e.DestRegister] = payloadOperand(l3, e.Base, e.Offset, e.Len)
		case *expr.Ct:
			if e.SourceRegister {
				words = append(words, fmt.Sprintf("ct %d set", e.Key))
				continue
			}
			regs[e.Register] = ctOperand(e.Key)
		case *expr.Bitwise:
			o := regs[e.SourceRegister]
			if !allZero(e.Xor) {
				o = operand{field: o.field + " ^ 0x" + hex.EncodeToString(e.Xor)}
			}
			o.mask = e.Mask
			regs[e.DestRegister] = o
		case *expr.Cmp:
			o, ok := regs[e.Register]
			if !ok {
				o = operand{field: fmt.Sprintf("reg %d", e.Register)}
			}
			r.conds = append(r.conds, cond{field: o.field, op: e.Op, data: e.Data, mask: o.mask})
			words = append(words, renderCond(o, e.Op, e.Data))
			if o.field == "ether type" && e.Op == expr.CmpOpEq && bytes.Equal(e.Data, be16(etherTypeARP)) {
				l3 = "arp"
			}
		case *expr.Masq:
			r.action = "masquerade"
			for _, f := range []struct {
				on   bool
				name string
			}{{e.Random, "random"}, {e.FullyRandom, "fully-random"}, {e.Persistent, "persistent"}} {
				if f.on {
					r.action += " " + f.name
				}
			}
		case *expr.Verdict:
			r.action = verdictText(e)
		case *expr.Counter:
			words = append(words, "counter")
		default:
			words = append(words, "<"+strings.TrimPrefix(fmt.Sprintf("%T", e), "*expr.")+">")
		}
	}
	if r.action != "" {
		words = append(words, r.action)
	}
	if c, ok := userdata.GetString(udata, userdata.TypeComment); ok && c != "" {
		r.comment = c
		words = append(words, "comment "+strconv.Quote(c))
	}
	r.text = strings.Join(words, " ")
	return r
}

func metaOperand(k expr.MetaKey) operand {
	switch k {
	case expr.MetaKeyIIFNAME:
		return operand{field: "iifname", kind: kindIfname}
	case expr.MetaKeyOIFNAME:
		return operand{field: "oifname", kind: kindIfname}
	case expr.MetaKeyNFPROTO:
		return operand{field: "meta nfproto", kind: kindNfproto}
	}
	return operand{field: fmt.Sprintf("meta %d", k)}
}

func ctOperand(k expr.CtKey) operand {
	switch k {
	case expr.CtKeySTATE:
		return operand{field: "ct state", kind: kindCtState}
	case expr.CtKeySTATUS:
		return operand{field: "ct status", kind: kindCtStatus}
	}
	return operand{field: fmt.Sprintf("ct %d", k)}
}

type payloadPos struct {
	base        expr.PayloadBase
	offset, len uint32
}

var linkFields = map[payloadPos]operand{
	{expr.PayloadBaseLLHeader, 0, 6}:  {field: "ether daddr", kind: kindMAC},
	{expr.PayloadBaseLLHeader, 6, 6}:  {field: "ether saddr", kind: kindMAC},
	{expr.PayloadBaseLLHeader, 12, 2}: {field: "ether type", kind: kindEtherType},
}

var ipFields = map[payloadPos]operand{
	{expr.PayloadBaseNetworkHeader, 12, 4}: {field: "ip saddr", kind: kindIPv4},
	{expr.PayloadBaseNetworkHeader, 16, 4}: {field: "ip daddr", kind: kindIPv4},
}

var arpFields = map[payloadPos]operand{
	{expr.PayloadBaseNetworkHeader, 0, 2}:  {field: "arp htype", kind: kindUint},
	{expr.PayloadBaseNetworkHeader, 2, 2}:  {field: "arp ptype", kind: kindEtherType},
	{expr.PayloadBaseNetworkHeader, 4, 1}:  {field: "arp hlen", kind: kindUint},
	{expr.PayloadBaseNetworkHeader, 5, 1}:  {field: "arp plen", kind: kindUint},
	{expr.PayloadBaseNetworkHeader, 8, 6}:  {field: "arp saddr ether", kind: kindMAC},
	{expr.PayloadBaseNetworkHeader, 14, 4}: {field: "arp saddr ip", kind: kindIPv4},
}

func payloadOperand(l3 string, base expr.PayloadBase, offset, length uint32) operand {
	pos := payloadPos{base, offset, length}
	if o, ok := linkFields[pos]; ok {
		return o
	}
	table := ipFields
	if l3 == "arp" {
		table = arpFields
	}
	if o, ok := table[pos]; ok {
		return o
	}
	name := map[expr.PayloadBase]string{
		expr.PayloadBaseLLHeader: "ll", expr.PayloadBaseNetworkHeader: "nh", expr.PayloadBaseTransportHeader: "th",
	}[base]
	if name == "" {
		name = fmt.Sprintf("base%d", base)
	}
	return operand{field: fmt.Sprintf("@%s,%d,%d", name, offset*8, length*8)}
}

var cmpOps = map[expr.CmpOp]string{
	expr.CmpOpEq: "", expr.CmpOpNeq: "!= ", expr.CmpOpLt: "< ",
	expr.CmpOpLte: "<= ", expr.CmpOpGt: "> ", expr.CmpOpGte: ">= ",
}

func renderCond(o operand, op expr.CmpOp, data []byte) string {
	if (o.kind == kindCtState || o.kind == kindCtStatus) && o.mask != nil && op == expr.CmpOpNeq && allZero(data) && len(o.mask) == 4 {
		return o.field + " " + ctBitNames(o.kind, binary.NativeEndian.Uint32(o.mask))
	}
	field := o.field
	if o.mask != nil {
		field += " & 0x" + hex.EncodeToString(o.mask)
	}
	opText, ok := cmpOps[op]
	if !ok {
		opText = fmt.Sprintf("op%d ", op)
	}
	return field + " " + opText + renderValue(o.kind, data)
}

func renderValue(kind valueKind, data []byte) string {
	switch kind {
	case kindIfname:
		name, full := ifnameFromData(data)
		if !full {
			name += "*"
		}
		return strconv.Quote(name)
	case kindNfproto:
		if len(data) == 1 {
			switch data[0] {
			case unix.NFPROTO_IPV4:
				return "ipv4"
			case unix.NFPROTO_IPV6:
				return "ipv6"
			}
		}
	case kindMAC:
		if len(data) == 6 {
			return net.HardwareAddr(data).String()
		}
	case kindIPv4:
		if len(data) == 4 {
			return netip.AddrFrom4([4]byte(data)).String()
		}
	case kindEtherType:
		if len(data) == 2 {
			switch binary.BigEndian.Uint16(data) {
			case etherTypeIPv4:
				return "ip"
			case etherTypeARP:
				return "arp"
			case 0x86dd:
				return "ip6"
			case 0x8100:
				return "vlan"
			}
			return fmt.Sprintf("0x%04x", binary.BigEndian.Uint16(data))
		}
	case kindUint:
		if len(data) <= 8 {
			var v uint64
			for _, b := range data {
				v = v<<8 | uint64(b)
			}
			return strconv.FormatUint(v, 10)
		}
	}
	return "0x" + hex.EncodeToString(data)
}

// ifnameFromData returns the interface name a compare holds and whether it
// is a whole name (NUL-terminated) rather than a prefix.
func ifnameFromData(data []byte) (string, bool) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return string(data[:i]), true
	}
	return string(data), false
}

func ctBitNames(kind valueKind, bits uint32) string {
	var names []string
	var known []struct {
		bit  uint32
		name string
	}
	if kind == kindCtState {
		known = []struct {
			bit  uint32
			name string
		}{{expr.CtStateBitINVALID, "invalid"}, {expr.CtStateBitESTABLISHED, "established"},
			{expr.CtStateBitRELATED, "related"}, {expr.CtStateBitNEW, "new"}, {expr.CtStateBitUNTRACKED, "untracked"}}
	} else {
		known = []struct {
			bit  uint32
			name string
		}{{1 << 0, "expected"}, {1 << 1, "seen-reply"}, {1 << 2, "assured"}, {1 << 3, "confirmed"},
			{1 << 4, "snat"}, {1 << 5, "dnat"}, {1 << 9, "dying"}}
	}
	for _, k := range known {
		if bits&k.bit != 0 {
			names = append(names, k.name)
			bits &^= k.bit
		}
	}
	if bits != 0 {
		names = append(names, fmt.Sprintf("0x%x", bits))
	}
	return strings.Join(names, ",")
}

func verdictText(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictContinue:
		return "continue"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

var hookNames = map[nftables.ChainHook]string{
	unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input", unix.NF_INET_FORWARD: "forward",
	unix.NF_INET_LOCAL_OUT: "output", unix.NF_INET_POST_ROUTING: "postrouting",
}

var priorityNames = map[string]map[nftables.ChainPriority]string{
	"inet":   {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 50: "security", 100: "srcnat"},
	"bridge": {-300: "dstnat", -200: "filter", 100: "out", 300: "srcnat"},
}

// chainHeader is the first line of a base chain in nft's listing; "" for
// a regular chain.
func chainHeader(family string, c *nftables.Chain) string {
	if c.Hooknum == nil {
		return ""
	}
	hook, ok := hookNames[*c.Hooknum]
	if !ok {
		hook = strconv.Itoa(int(*c.Hooknum))
	}
	prio := "?"
	if c.Priority != nil {
		if prio, ok = priorityNames[family][*c.Priority]; !ok {
			prio = strconv.Itoa(int(*c.Priority))
		}
	}
	policy := "accept"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	return fmt.Sprintf("type %s hook %s priority %s; policy %s;", c.Type, hook, prio, policy)
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprintf("family%d", f)
}
