// Package daemon is bangerd: the process that owns banger's state and does
// all host work on the CLI's behalf.
//
// A thin Daemon root holds what every concern shares — the store, the
// command runner, the logger, the path layout and the config — and the
// services hang off it: VMs (vm.go and the create steps), async operations
// (ops.go), and the RPC dispatch table (methods.go) that exposes them.
//
// Lock order (outermost first): Daemon.vmLocks[name] → store transactions.
// No lock is held across a call into another service's lock, and none
// across a VMM boot wait.
//
// The daemon must not print to a terminal or assume one; everything the user
// sees travels back through RPC results and errors.
package daemon
