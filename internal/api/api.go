// Package api holds the public shapes that cross the banger RPC boundary:
// method names, parameter and result records, and the typed error codes.
//
// It owns no behaviour. Both the daemon and the CLI import it; it must not
// import either of them (or anything that touches the host).
package api

import "time"

// ProtocolVersion is carried by every request. A daemon answers a request
// whose version differs with CodeBadVersion, so an old CLI talking to a new
// daemon (or the reverse) fails with a clear sentence instead of misreading
// fields.
const ProtocolVersion = 1

// Operation kinds. The Kind field of OperationSummary takes one of these.
const (
	OpKindVMCreate   = "vm.create"
	OpKindVMClone    = "vm.clone"
	OpKindImagePull  = "image.pull"
	OpKindKernelPull = "kernel.pull"
	OpKindImageBuild = "image.build"
	OpKindImageWarm  = "image.warm"
	OpKindVMSnapshot = "vm.snapshot"
)

// OperationSummary is the public shape of one async operation, as listed by
// daemon.operations.list and printed by `banger ops`.
type OperationSummary struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Target    string    `json:"target"`
	Stage     string    `json:"stage"`
	Done      bool      `json:"done"`
	Error     string    `json:"error,omitempty"`
	StartedAt time.Time `json:"started_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// ProgressDone and ProgressTotal count the bytes of the current stage
	// when it reports them (an image pull's layer download); both are 0
	// otherwise.
	ProgressDone  int64 `json:"progress_done,omitempty"`
	ProgressTotal int64 `json:"progress_total,omitempty"`
}

// OperationsListResult is the result of daemon.operations.list. Done
// operations are included; callers filter.
type OperationsListResult struct {
	Operations []OperationSummary `json:"operations"`
}

// Leak is one host resource banger could have made that no VM, image,
// kernel, snapshot or operation accounts for.
type Leak struct {
	// Kind is process, tap, rule, loop, dm, mount, file, host key,
	// forward or row.
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Detail string `json:"detail"`
}

// LeaksResult is the result of daemon.leaks.
type LeaksResult struct {
	Leaks []Leak `json:"leaks"`
	// InFlight counts operations not done: what they are making is
	// accounted for where it can be told apart, but may show.
	InFlight int `json:"in_flight"`
}

// PingResult is the result of ping.
type PingResult struct {
	Version         string    `json:"version"`
	ProtocolVersion int       `json:"protocol_version"`
	PID             int       `json:"pid"`
	StartedAt       time.Time `json:"started_at"`
	// Goroutines and OpenFDs are the daemon's own, for watching it for
	// leaks over time (the soak test does).
	Goroutines int `json:"goroutines"`
	OpenFDs    int `json:"open_fds"`
	// DBConnections and DBInUse are the database connections open and
	// checked out at the moment of the ping.
	DBConnections int `json:"db_connections"`
	DBInUse       int `json:"db_in_use"`
}

// VersionResult is the result of daemon.version.
type VersionResult struct {
	Version         string `json:"version"`
	Commit          string `json:"commit"`
	ProtocolVersion int    `json:"protocol_version"`
	SchemaVersion   int    `json:"schema_version"`
}
