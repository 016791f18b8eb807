package hostnat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// TableName names both of banger's tables: "inet banger" (NAT and
// forwarding) and "bridge banger" (anti-spoofing). banger owns them whole:
// Sync and Remove replace or delete them without looking at what is inside.
const TableName = "banger"

// TapPrefix starts the name of every TAP device banger creates (it is
// hostnet.TapPrefix; this package does not import hostnet). Frames from a
// bridge port with this prefix that no VM of the Spec owns are dropped, and
// no packet may reach the host's IP stack through such a port directly.
const TapPrefix = "bg-"

// ErrUnsupported is wrapped by the errors of Sync, State and Remove when the
// running kernel cannot do what banger needs: no nf_tables, or a missing
// piece of it (NAT chains, masquerade, conntrack, the inet or bridge family).
var ErrUnsupported = errors.New("the kernel lacks nf_tables support banger needs")

// ErrInvalidSpec is wrapped by Sync's error when the Spec itself is wrong;
// nothing is sent to the kernel then.
var ErrInvalidSpec = errors.New("invalid network spec")

// unsupportedHint says how to get what ErrUnsupported says is missing.
const unsupportedHint = "install nftables and load the nf_tables, nft_chain_nat, nft_masq and nft_ct " +
	"kernel modules (modprobe -a nf_tables nft_chain_nat nft_masq nft_ct); the kernel needs " +
	"CONFIG_NF_TABLES_INET and CONFIG_NF_TABLES_BRIDGE"

// ipForwardPath is the IPv4 forwarding switch of the calling thread's
// network namespace.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// VM is one VM as far as the firewall is concerned.
type VM struct {
	Name string           // for error messages and rule comments
	Tap  string           // its TAP device, a port of Spec.Bridge
	IP   netip.Addr       // its only IPv4 address, inside Spec.Subnet
	MAC  net.HardwareAddr // its only MAC address
	NAT  bool             // may reach beyond the bridge, masqueraded
}

// Spec is the complete desired state: Sync derives every rule from it and
// from nothing else.
type Spec struct {
	Bridge string       // the bridge every VM tap is a port of
	Subnet netip.Prefix // the bridge's IPv4 subnet; every VM IP must lie in it
	// Gateway, when set, is the bridge's own address: no VM may use it.
	Gateway netip.Addr
	VMs     []VM
}

// testHookBatch, when set by a test, runs after Sync has queued its batch
// and before it is sent, so a test can append a message that fails.
var testHookBatch func(c *nftables.Conn)

// Sync makes banger's two tables in the calling thread's network namespace
// exactly what spec describes, whatever they hold now (nothing, an older
// state, a table flushed or deleted by hand, rules added by someone else).
// It sends one netlink batch that deletes both tables if present and
// creates them anew; the kernel applies it as one transaction, so on any
// error the previous state stays in force untouched. An invalid spec is
// refused before anything is sent, with an error wrapping ErrInvalidSpec.
// Callers serialise Syncs: the last one to reach the kernel wins.
func Sync(spec Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("sync firewall rules: %w", err)
	}
	for _, t := range ownTables() {
		// "add" then "delete" never fails on a missing table; the second
		// add starts the new, empty one. All in the same transaction.
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
	}
	for _, ch := range ruleset(spec) {
		c.AddChain(ch.chain)
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: ch.chain.Table, Chain: ch.chain, Exprs: r.exprs, UserData: r.userData()})
		}
	}
	if testHookBatch != nil {
		testHookBatch(c)
	}
	if err := c.Flush(); err != nil {
		return wrapKernelErr("sync firewall rules", err)
	}
	return nil
}

// Remove deletes banger's tables from the calling thread's network
// namespace in one transaction. Tables that are not there are fine, and so
// is a kernel without nf_tables (it cannot hold any).
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("remove firewall rules: %w", err)
	}
	present, err := presentTables(c)
	if err != nil {
		if errors.Is(err, ErrUnsupported) {
			return nil
		}
		return fmt.Errorf("remove firewall rules: %w", err)
	}
	if len(present) == 0 {
		return nil
	}
	for _, t := range present {
		c.AddTable(t) // so a table deleted meanwhile is no error
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return wrapKernelErr("remove firewall rules", err)
	}
	return nil
}

// EnableIPForward turns on IPv4 forwarding (net.ipv4.ip_forward) in the
// calling thread's network namespace and says whether it was on already,
// so a caller can tell the user what it changed. It never turns it off.
func EnableIPForward() (wasOn bool, err error) {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return false, fmt.Errorf("read IPv4 forwarding setting: %w", err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return true, nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return false, fmt.Errorf("enable IPv4 forwarding (%s): %w", ipForwardPath, err)
	}
	return false, nil
}

// ownTables returns fresh descriptions of banger's two tables.
func ownTables() []*nftables.Table {
	return []*nftables.Table{
		{Family: nftables.TableFamilyINet, Name: TableName},
		{Family: nftables.TableFamilyBridge, Name: TableName},
	}
}

// presentTables lists which of banger's tables exist.
func presentTables(c *nftables.Conn) ([]*nftables.Table, error) {
	var out []*nftables.Table
	for _, t := range ownTables() {
		ts, err := c.ListTablesOfFamily(t.Family)
		if err != nil {
			return nil, wrapKernelErr("list nftables tables", err)
		}
		for _, have := range ts {
			if have.Name == TableName {
				out = append(out, t)
				break
			}
		}
	}
	return out, nil
}

// wrapKernelErr adds what failed to a netlink error and, when the errno
// means a missing kernel feature, ErrUnsupported and how to get it. Sync's
// batches only reference objects they create themselves, so ENOENT from one
// means a missing module (an expression, chain type or family the kernel
// could not load), not a missing table or chain.
func wrapKernelErr(what string, err error) error {
	switch {
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT),
		errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%s: %w (%w); %s", what, ErrUnsupported, err, unsupportedHint)
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s: %w (needs root or CAP_NET_ADMIN)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
