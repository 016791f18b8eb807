// Package hostnet owns banger's layer-2 plumbing on the host: the one
// bridge every VM hangs off, and one persistent TAP device per VM enslaved
// to it. It also holds the pure address arithmetic that goes with them:
// picking a free IPv4 in the bridge subnet and deriving a VM's MAC address
// from its IP, so both are deterministic and can be stored in the DB.
//
//	         host
//	┌────────────────────────────────┐
//	│  bridge (bridge_name)          │  gateway address, e.g. 172.30.0.1/24
//	│   ├── bg-pool-0003 (tap) ──────┼──▶ VM 1  172.30.0.2  52:54:ac:1e:00:02
//	│   └── bg-<vm2>     (tap) ──────┼──▶ VM 2  172.30.0.3  52:54:ac:1e:00:03
//	└────────────────────────────────┘
//
// A VM's tap is a pool tap (bg-pool-NNNN) when the pool had one idle, else
// one created cold under the VM's TapName (bg-<id>). Either way the daemon
// records the name in the VM's row; the rules and the VMM go by that name.
//
// Tap pool. Creating a tap cold takes a TUNSETIFF ioctl and several
// rtnetlink round trips, so a Pool keeps tap_pool_size idle taps created,
// enslaved and up under names no cold tap can have (bg-pool-NNNN; see
// IsPoolTap). Claim takes one under a mutex, checks with one lookup that it
// is still a tap on the bridge and up (repairing it if not), and hands it
// out under its pool name: no rename, so a warm claim costs about one
// rtnetlink round trip, made on a netlink socket the pool keeps open in its
// namespace. It then kicks a background refill; with the pool empty it
// creates the tap cold under the caller's fallback name (CreateTap) rather
// than wait. A claimed tap keeps its pool name for the VM's life and is
// never returned: release is DeleteTap. The refill never
// creates a pool tap over a name that exists as a link (a claimed tap) or
// that a VM on record holds; its name rotation moves on past it. Start
// leaves the pool taps the daemon's VM rows hold alone, adopts the other
// pool taps a previous daemon left (up to the size; the rest are deleted),
// and Close deletes the idle ones only. The pool needs the bridge to exist:
// the daemon calls EnsureBridge before Pool.Start.
//
//	refill (one at a time) ──▶ bg-pool-0007 ┐ idle, on the bridge, up
//	                           bg-pool-0008 ┘
//	Claim("bg-vm3")  ── take bg-pool-0008 ──▶ VM 3 (its row records bg-pool-0008)
//	                 └─ pool empty: CreateTap("bg-vm3") cold ──▶ VM 3
//
// CheckCIDR refuses a bridge_cidr that overlaps a host route on another
// device, so the daemon can say so at start instead of leaving VMs
// unreachable.
//
// Everything is done over rtnetlink (github.com/vishvananda/netlink) in the
// calling thread's network namespace (a Pool's: that of the thread that
// called NewPool); nothing shells out to `ip`. All
// operations are idempotent so a create can be retried or resumed.
//
// The package must not do NAT, firewalling or routing (that is hostnat),
// must not know about VMs beyond their id, and must not touch links that
// are not its own: DeleteTap refuses to delete anything that is not a TAP.
package hostnet
