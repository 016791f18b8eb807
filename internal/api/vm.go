package api

import "time"

// VM is the public shape of one VM (vm.show, vm.list).
type VM struct {
	Name          string    `json:"name"`
	ID            string    `json:"id"`
	State         string    `json:"state"`
	Image         string    `json:"image"`
	Kernel        string    `json:"kernel"`
	VCPU          int       `json:"vcpu"`
	MemoryMiB     int       `json:"memory_mib"`
	DiskSizeBytes int64     `json:"disk_size_bytes"`
	IP            string    `json:"ip"`
	MAC           string    `json:"mac"`
	Tap           string    `json:"tap,omitempty"`
	VMM           string    `json:"vmm"`
	PID           int       `json:"pid,omitempty"`
	Dir           string    `json:"dir"`
	LastError     string    `json:"last_error,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// VMCreateParams are the params of vm.create.begin. Zero values take the
// configured defaults.
type VMCreateParams struct {
	Name      string `json:"name,omitempty"`
	Image     string `json:"image,omitempty"`
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskSize  string `json:"disk_size,omitempty"`
	NoStart   bool   `json:"no_start,omitempty"`
}

// VMCreateBeginResult is returned by vm.create.begin.
type VMCreateBeginResult struct {
	OpID string `json:"op_id"`
	Name string `json:"name"`
}

// OpRef names one async operation.
type OpRef struct {
	OpID string `json:"op_id"`
}

// StageTiming is one create stage: when it started and how long it took.
type StageTiming struct {
	Name       string    `json:"name"`
	StartedAt  time.Time `json:"started_at"`
	DurationMS int64     `json:"duration_ms"`
	Done       bool      `json:"done"`
}

// VMCreateStatus is the result of vm.create.status and vm.create.cancel.
type VMCreateStatus struct {
	Operation OperationSummary `json:"operation"`
	Stages    []StageTiming    `json:"stages"`
	VM        *VM              `json:"vm,omitempty"`
}

// VMRef names VMs.
type VMRef struct {
	Name string `json:"name"`
}

// VMListResult is the result of vm.list.
type VMListResult struct {
	VMs []VM `json:"vms"`
}

// VMSetParams change a stopped VM's resources. Zero values keep the current one.
type VMSetParams struct {
	Name      string `json:"name"`
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskSize  string `json:"disk_size,omitempty"`
}

// VMLogsParams ask for the console log from Offset on (at most MaxBytes).
type VMLogsParams struct {
	Name     string `json:"name"`
	Offset   int64  `json:"offset"`
	Tail     int64  `json:"tail,omitempty"`
	MaxBytes int64  `json:"max_bytes,omitempty"`
}

// VMLogsResult carries a chunk of the console log.
type VMLogsResult struct {
	Data       string `json:"data"`
	NextOffset int64  `json:"next_offset"`
	Running    bool   `json:"running"`
}

// VMSSHInfo tells the CLI how to reach a VM with OpenSSH.
type VMSSHInfo struct {
	Name           string `json:"name"`
	IP             string `json:"ip"`
	User           string `json:"user"`
	KeyPath        string `json:"key_path"`
	KnownHostsPath string `json:"known_hosts_path"`
	HostAlias      string `json:"host_alias"`
}

// VMPruneParams name the stopped VMs to delete (none: every stopped VM).
type VMPruneParams struct {
	Names []string `json:"names,omitempty"`
}

// VMPruneResult lists the VMs vm.prune deleted.
type VMPruneResult struct {
	Deleted []string `json:"deleted"`
}
