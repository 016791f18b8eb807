// Package daemon is bangerd: the process that owns banger's state and does
// all host work on the CLI's behalf.
//
// A thin Daemon root holds what every concern shares — the store, the
// command runner, the logger, the path layout and the config — and the
// services hang off it: VMs (vm.go, vm_create.go and the steps in
// steps.go), images and kernels (pull.go, pull_oci.go, bootstrap.go,
// images.go, kernels.go, cache.go, artifacts.go), async operations
// (ops.go), and the RPC dispatch table (methods.go) that exposes them.
//
// Locks: Daemon.vmLock(name) serialises one VM's lifecycle, allocMu the
// reservation of a VM's row and IP against image deletion and kernel
// removal, pullOnce.mu the sharing of pulls. Order when nested: allocMu →
// pullOnce.mu (kernel.rm); vmLock is never held with either. Store
// transactions are always innermost.
// No lock is held across a call into another service's lock, and none
// across a VMM boot wait.
//
// The daemon must not print to a terminal or assume one; everything the user
// sees travels back through RPC results and errors.
package daemon
