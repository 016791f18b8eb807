// Package hostnat owns banger's firewall and NAT state on the host: which
// VMs may reach beyond the bridge (masqueraded out of whatever uplink the
// host routes through), and that every VM sends only from its own MAC and
// IPv4 address. It is done with nftables over netlink
// (github.com/google/nftables) in the calling thread's network namespace;
// nothing shells out to `nft` or `iptables`.
//
// The package owns two tables and nothing else: "inet banger" and
// "bridge banger" (TableName). Their whole content is derived from a Spec,
// the complete desired state (bridge, subnet, and every VM's tap, IP, MAC
// and NAT flag); no handle or other memory of an earlier call is used. Sync
// replaces both tables in one netlink batch (add, delete, add again, then
// every chain and rule), which the kernel applies as one transaction: the
// result is exactly the Spec whatever was there before (an older state, a
// table flushed or deleted by hand, someone's extra rule), and on any error
// the previous state stays, never a partial one. A restarted daemon that
// calls Sync with the Spec built from its records converges on the right
// rules. State reads the tables back from the kernel; Observed.Diff
// compares them with a Spec rule by rule. Remove deletes both tables.
//
//	table inet banger
//	  chain postrouting   nat, hook postrouting, priority srcnat, policy accept
//	    for each VM with NAT:  ip saddr VM oifname != BRIDGE masquerade
//	  chain forward       filter, hook forward, priority filter, policy accept
//	    for each VM with NAT:  iifname BRIDGE oifname != BRIDGE ip saddr VM accept
//	    oifname BRIDGE ct state established,related accept   (replies)
//	    oifname BRIDGE ct status dnat accept                 (host's port forwards)
//	    iifname BRIDGE oifname != BRIDGE drop                (no NAT: stay on the bridge)
//	    iifname != BRIDGE oifname BRIDGE drop                (nothing else gets in)
//	  chain input         filter, hook input, priority filter, policy accept
//	    iifname "bg-*" drop   (and each VM tap without that prefix)
//
//	table bridge banger
//	  chain prerouting    filter, hook prerouting, priority filter, policy accept
//	    for each VM:
//	      iifname TAP ether saddr MAC ip saddr IP accept
//	      iifname TAP ether saddr MAC arp (Ethernet/IPv4) saddr ether MAC saddr ip IP accept
//	      iifname TAP drop
//	    iifname "bg-*" drop   (taps of no VM)
//
//	  VM ──tap──▶ [bridge prerouting: own MAC+IP?] ──▶ bridge ──┬─▶ other VMs (bridged, allowed)
//	                                                            ├─▶ host (INPUT, allowed)
//	                                                            └─▶ routed out [forward: NAT VM?] ─▶ [postrouting: masquerade] ─▶ uplink
//
// Invariants and choices:
//
//   - Every base chain has policy accept and every drop names the bridge or a
//     tap, so banger never decides about the host's other traffic.
//   - A VM without NAT reaches the host (the gateway address is INPUT, not
//     FORWARD) and the other VMs (bridged, not routed), nothing beyond. With
//     NAT it reaches anything the host routes to, masqueraded. Nothing from
//     another network may open a connection to a VM, unless the host's
//     administrator DNATs it there (ct status dnat); the host itself can (its
//     own traffic is OUTPUT, not FORWARD).
//   - From its tap a VM may send only IPv4 with its own source address and
//     Ethernet/IPv4 ARP with its own sender addresses, all from its own MAC.
//     Everything else is dropped: other MACs and IPs, 0.0.0.0 (no DHCP; banger
//     assigns addresses statically), ARP probes with sender 0.0.0.0, IPv6,
//     VLAN-tagged frames. VM-to-VM traffic with real addresses passes.
//   - A bridge port named with TapPrefix that belongs to no VM of the Spec (a
//     leaked tap, an idle pool tap, a tap claimed but not yet synced) sends
//     nothing: fail closed. So Sync must run after a VM's tap has its final
//     name and before the VM boots.
//   - Reserved link-local frames (01:80:c2:00:00:0X) are not bridged and skip
//     the bridge hooks; the kernel hands them to the host's stack on the tap
//     itself. The input chain drops anything arriving on a tap directly, so
//     such frames cannot carry a forged packet to the host.
//
// The rules only ever accept into banger's own chains; an accept does not
// override another table's drop. A host whose FORWARD policy is drop (Docker
// sets the iptables FORWARD policy to DROP; ufw and firewalld do similar)
// drops NAT VMs' traffic there and needs its own accept for the bridge. With
// br_netfilter loaded (bridge-nf-call-iptables=1), bridged VM-to-VM traffic
// also passes the IPv4 forward hooks, with the bridge as both input and output
// interface: banger's rules let it through, a foreign drop policy does not.
//
// A kernel without nf_tables, or without a part banger needs, makes Sync and
// State fail with an error wrapping ErrUnsupported that says what to install.
// The package must not manage links or addresses (that is hostnet) and must
// not touch tables that are not its own.
package hostnat
