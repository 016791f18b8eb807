// Package hostnet owns banger's layer-2 plumbing on the host: the one
// bridge every VM hangs off, and one persistent TAP device per VM enslaved
// to it. It also holds the pure address arithmetic that goes with them:
// picking a free IPv4 in the bridge subnet and deriving a VM's MAC address
// from its IP, so both are deterministic and can be stored in the DB.
//
//	         host
//	┌───────────────────────────┐
//	│  bridge (bridge_name)     │  gateway address, e.g. 172.30.0.1/24
//	│   ├── bg-<vm1>  (tap) ────┼──▶ VM 1  172.30.0.2  52:54:ac:1e:00:02
//	│   └── bg-<vm2>  (tap) ────┼──▶ VM 2  172.30.0.3  52:54:ac:1e:00:03
//	└───────────────────────────┘
//
// Everything is done over rtnetlink (github.com/vishvananda/netlink) in the
// calling thread's network namespace; nothing shells out to `ip`. All
// operations are idempotent so a create can be retried or resumed.
//
// The package must not do NAT, firewalling or routing (that is hostnat),
// must not know about VMs beyond their id, and must not touch links that
// are not its own: DeleteTap refuses to delete anything that is not a TAP.
package hostnet
