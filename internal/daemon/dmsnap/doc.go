// Package dmsnap owns the lifecycle of a VM's copy-on-write root disk: a
// device-mapper snapshot of a shared, read-only base image over a sparse,
// per-VM COW file.
//
//	base image (shared)                 COW file (per VM, sparse)
//	      │ losetup --read-only               │ losetup
//	      ▼                                   ▼
//	 /dev/loopA ──── origin ───┐     ┌──── cow ──── /dev/loopB
//	                           ▼     ▼
//	        dmsetup create banger-<vmid>
//	        table: 0 <base bytes/512> snapshot /dev/loopA /dev/loopB P 8
//	                           │
//	                           ▼
//	          /dev/mapper/banger-<vmid>  ──▶  the VMM's root disk
//
// Create makes the four resources in that order (COW file, base loop, COW
// loop, dm device) and reports the Handles gathered so far through a
// record callback after each one, so the daemon can persist them before
// the next step: a daemon that dies mid-create leaves a record of
// everything that exists except, at worst, the one resource whose record
// was in flight. Cleanup tears down what a partial Create made; Remove
// tears down a complete snapshot, waiting out a device that is briefly
// busy. Both work from Handles alone, so a restarted daemon can undo what
// a dead one made.
//
// Invariants:
//   - Writes through /dev/mapper/NAME land only in the COW file; the base
//     image is attached read-only and is never modified.
//   - Create either returns complete Handles or tears down everything it
//     made (reporting, with the error, whatever it could not).
//   - Teardown runs in reverse order of creation, skips empty handles, and
//     treats a resource that is already gone as torn down, so it can be
//     repeated after a crash.
//   - Every host command runs through the caller's Runner as an argv slice,
//     never a shell string; names and device paths are validated before
//     they reach a command line.
//
// Handles are only meaningful within one boot: a reboot destroys the loop
// and dm devices, and the loop numbers are handed out again to whoever asks.
// Handles recorded before a reboot must not be passed to Cleanup or Remove
// (their losetup -d could detach someone else's device); only their COW
// file is left to delete.
//
// The package knows nothing of VMs, images or the store beyond the paths
// and the dm name it is given, and never touches a dm device, loop device
// or file that is not named in a Spec or Handles.
package dmsnap
