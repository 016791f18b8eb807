// Package sshx is banger's SSH plumbing for guests.
//
// It owns the per-install client key (EnsureKey), banger's own known_hosts
// file with trust-on-first-use pinning (HostKeyCallback, RemoveHost), the
// daemon's in-process SSH client (Dial, WaitForSSH, Run, built on
// golang.org/x/crypto/ssh) and the argv for the system ssh binary that the
// CLI execs for `banger vm ssh` and `banger vm exec` (OpenSSHArgv).
//
// The daemon is the only writer of known_hosts: it pins a guest's host key
// the first time it connects (while waiting for SSH during create), so the
// CLI can run ssh with StrictHostKeyChecking=yes against the same file.
// Writes are serialised by a process-wide mutex plus an flock on a sibling
// lock file, and are atomic (O_APPEND for pins, temp + rename for removal).
//
// It must not start processes (the CLI execs ssh itself from the argv this
// package builds), touch the user's own ~/.ssh, or know about VM records.
package sshx
