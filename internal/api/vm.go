package api

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unicode"
)

// VM is the public shape of one VM (vm.show, vm.list).
type VM struct {
	Name          string `json:"name"`
	ID            string `json:"id"`
	State         string `json:"state"`
	Image         string `json:"image"`
	Kernel        string `json:"kernel"`
	VCPU          int    `json:"vcpu"`
	MemoryMiB     int    `json:"memory_mib"`
	DiskSizeBytes int64  `json:"disk_size_bytes"`
	IP            string `json:"ip"`
	MAC           string `json:"mac"`
	Tap           string `json:"tap,omitempty"`
	NAT           bool   `json:"nat"`
	// StartedFrom says how the VM last started: "" (booted) or
	// "snapshot NAME" (restored).
	StartedFrom string `json:"started_from,omitempty"`
	// NATNote says what banger found or did on the host for NAT
	// (ip_forward already on or enabled by banger, or why rules failed).
	NATNote string `json:"nat_note,omitempty"`
	DNSName string `json:"dns_name"`
	// ForwardPorts: every new guest listener is forwarded to 127.0.0.1.
	ForwardPorts bool `json:"forward_ports"`
	// RootDisk is how the root disk is layered over the image (dm, qcow2,
	// reflink, copy); RootUsedBytes and WorkUsedBytes are what the VM's
	// own layers hold on the host.
	RootDisk      string `json:"root_disk,omitempty"`
	RootUsedBytes int64  `json:"root_used_bytes"`
	WorkUsedBytes int64  `json:"work_used_bytes"`
	// Agent is the guest agent's report (running VMs, vm show only);
	// AgentError says why it is missing.
	Agent *AgentHealth `json:"agent,omitempty"`
	// VMMState is what the VMM says of the guest when it is not simply
	// running (vm show): e.g. paused after a disk write failed.
	VMMState   string    `json:"vmm_state,omitempty"`
	AgentError string    `json:"agent_error,omitempty"`
	VMM        string    `json:"vmm"`
	PID        int       `json:"pid,omitempty"`
	Dir        string    `json:"dir"`
	LastError  string    `json:"last_error,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
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
	// NAT gives the VM a way out through the host; nil: default_nat.
	NAT *bool `json:"nat,omitempty"`
	// ForwardPorts forwards every new guest listener to 127.0.0.1 while
	// the VM runs; false: forward_ports in config.toml decides.
	ForwardPorts bool `json:"forward_ports,omitempty"`
	// Cold boots the kernel even when a warm snapshot of the image
	// matches; FromSnapshot restores that snapshot (image warm or vm
	// snapshot) instead of booting.
	Cold         bool   `json:"cold,omitempty"`
	FromSnapshot string `json:"from_snapshot,omitempty"`
}

// VMSnapshotParams save a running VM as snapshot Snapshot (vm.snapshot).
type VMSnapshotParams struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot"`
}

// ImageWarmParams warm an image (image.warm): 0 takes vm_defaults.
type ImageWarmParams struct {
	Image     string `json:"image"`
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
}

// Snapshot is the public shape of one snapshot.
type Snapshot struct {
	Name          string    `json:"name"`
	Kind          string    `json:"kind"` // "warm" or "vm"
	Image         string    `json:"image"`
	Kernel        string    `json:"kernel"`
	VMM           string    `json:"vmm"`
	Accel         string    `json:"accel"`
	VCPU          int       `json:"vcpu"`
	MemoryMiB     int       `json:"memory_mib"`
	WorkSizeBytes int64     `json:"work_size_bytes"`
	BangerVersion string    `json:"banger_version"`
	SourceVM      string    `json:"source_vm,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	// StateBytes is the saved memory and device state; SizeBytes adds the
	// frozen disk layers only this snapshot holds.
	StateBytes int64 `json:"state_bytes"`
	SizeBytes  int64 `json:"size_bytes"`
	// SaveMS is how long saving the state took.
	SaveMS int64 `json:"save_ms"`
	// GuestIP and GuestMAC are the guest's when it was saved; a restore
	// gives each VM its own.
	GuestIP  string `json:"guest_ip"`
	GuestMAC string `json:"guest_mac"`
	// Stale says why the snapshot can no longer be restored; empty when
	// it can.
	Stale string `json:"stale,omitempty"`
	// VMs lists the VMs restored from it.
	VMs []string `json:"vms"`
}

// SnapshotListResult is the result of snapshot.list.
type SnapshotListResult struct {
	Snapshots []Snapshot `json:"snapshots"`
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
	// Warnings are things the user should know that did not stop the
	// create (a root disk that had to be a full copy, say).
	Warnings []string `json:"warnings,omitempty"`
}

// VMCloneParams are the params of vm.clone.begin: a new VM Name whose
// disks start as copy-on-write copies of the stopped VM Source's.
type VMCloneParams struct {
	Source  string `json:"source"`
	Name    string `json:"name"`
	NoStart bool   `json:"no_start,omitempty"`
}

// VMRef names VMs.
type VMRef struct {
	Name string `json:"name"`
}

// VMListResult is the result of vm.list.
type VMListResult struct {
	VMs []VM `json:"vms"`
}

// VMSetParams change a VM's resources (while it is stopped) or its NAT
// (at any time). Zero values keep the current one.
type VMSetParams struct {
	Name      string `json:"name"`
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskSize  string `json:"disk_size,omitempty"`
	// NAT turns the VM's way out on or off, live; nil leaves it.
	NAT *bool `json:"nat,omitempty"`
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
	// ControlPath is where the CLI keeps one shared SSH connection to the
	// VM (closed by the daemon when the VM stops).
	ControlPath string `json:"control_path,omitempty"`
}

// VMPruneParams name the stopped VMs to delete (none: every stopped VM).
type VMPruneParams struct {
	Names []string `json:"names,omitempty"`
}

// VMPruneResult lists the VMs vm.prune deleted.
type VMPruneResult struct {
	Deleted []string `json:"deleted"`
}

// AgentHealth is what a VM's guest agent reports (vm.health, vm.show).
type AgentHealth struct {
	AgentVersion string      `json:"agent_version"`
	UptimeS      float64     `json:"uptime_s"`
	Load1        float64     `json:"load1"`
	Load5        float64     `json:"load5"`
	Load15       float64     `json:"load15"`
	MemTotal     uint64      `json:"mem_total"`
	MemAvailable uint64      `json:"mem_available"`
	Disks        []AgentDisk `json:"disks"`
	Hostname     string      `json:"hostname"`
	BootID       string      `json:"boot_id"`
	Warnings     []string    `json:"warnings,omitempty"`
}

// AgentDisk is one filesystem of the guest ("/" and "/root"), in bytes.
type AgentDisk struct {
	Path  string `json:"path"`
	Size  uint64 `json:"size"`
	Used  uint64 `json:"used"`
	Avail uint64 `json:"avail"`
}

// GuestPort is one listening socket in a guest.
type GuestPort struct {
	Proto   string `json:"proto"`
	Addr    string `json:"addr"`
	Port    uint16 `json:"port"`
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
	// URL is http://NAME.vm:PORT/ when the port answered an HTTP request.
	URL string `json:"url,omitempty"`
}

// VMPortsResult is the result of vm.ports.
type VMPortsResult struct {
	Name    string      `json:"name"`
	DNSName string      `json:"dns_name"`
	Ports   []GuestPort `json:"ports"`
}

// VMForwardParams ask the daemon to forward a guest port to 127.0.0.1
// (vm.forward), or name the forward to stop (vm.forward.stop: HostPort).
type VMForwardParams struct {
	Name      string `json:"name"`
	GuestPort uint16 `json:"guest_port,omitempty"`
	HostPort  uint16 `json:"host_port,omitempty"` // 0: a free port
	Proto     string `json:"proto,omitempty"`     // tcp (default) or udp
}

// Forward is one guest port forwarded to the host.
type Forward struct {
	Name      string    `json:"name"`
	Proto     string    `json:"proto"`
	GuestPort uint16    `json:"guest_port"`
	HostAddr  string    `json:"host_addr"`
	Started   time.Time `json:"started"`
	BytesIn   uint64    `json:"bytes_in"`
	BytesOut  uint64    `json:"bytes_out"`
	Conns     int       `json:"conns"`
}

// VMForwardListResult is the result of vm.forward.list.
type VMForwardListResult struct {
	Forwards []Forward `json:"forwards"`
}

var (
	sshUserRE  = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	sshAliasRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,252}$`)
)

// Validate checks every field the CLI hands to OpenSSH: whatever answers
// on the socket, nothing in it can become an option or a command (a user
// of "-oProxyCommand=..." would). IP must be an address, User a plain user
// name, the paths absolute, clean and free of spaces and control
// characters.
func (i VMSSHInfo) Validate() error {
	if _, err := netip.ParseAddr(i.IP); err != nil {
		return fmt.Errorf("ssh info of %q: ip %q is not an address", i.Name, i.IP)
	}
	if !sshUserRE.MatchString(i.User) {
		return fmt.Errorf("ssh info of %q: user %q is not a plain user name", i.Name, i.User)
	}
	if i.HostAlias != "" && !sshAliasRE.MatchString(i.HostAlias) {
		return fmt.Errorf("ssh info of %q: host alias %q is not a host name", i.Name, i.HostAlias)
	}
	for what, p := range map[string]string{"key path": i.KeyPath, "known hosts path": i.KnownHostsPath, "control path": i.ControlPath} {
		if p == "" && what == "control path" {
			continue
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
			return fmt.Errorf("ssh info of %q: %s %q is not a clean absolute path", i.Name, what, p)
		}
	}
	return nil
}
