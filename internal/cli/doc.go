// Package cli is the banger command tree. It parses flags, calls bangerd
// over JSON-RPC and renders results (tables, JSON, live progress).
//
// It must not touch host state itself: every VM, image, network or disk
// change goes through the daemon. The only things it does locally are
// starting bangerd on demand in user mode and handing the terminal to ssh.
package cli
