package agent

// Health is the agent's answer to "health": a snapshot of the guest.
type Health struct {
	// AgentVersion is the banger-agent build's version string.
	AgentVersion string `json:"agent_version"`
	// UptimeS is the guest's uptime in seconds (/proc/uptime).
	UptimeS float64 `json:"uptime_s"`
	// Load1, Load5 and Load15 are the load averages (/proc/loadavg).
	Load1  float64 `json:"load1"`
	Load5  float64 `json:"load5"`
	Load15 float64 `json:"load15"`
	// MemTotal and MemAvailable are in bytes (/proc/meminfo).
	MemTotal     uint64 `json:"mem_total"`
	MemAvailable uint64 `json:"mem_available"`
	// Disks holds "/" and, when it is a mount point of its own, "/root".
	Disks    []Disk `json:"disks"`
	Hostname string `json:"hostname"`
	// BootID is the kernel's random boot id; it changes on every boot.
	BootID string `json:"boot_id"`
	// Warnings lists what the agent could not read; the other fields are
	// still filled as far as possible.
	Warnings []string `json:"warnings,omitempty"`
}

// Disk is the usage of one filesystem in the guest, in bytes, as df counts
// it: Used is Size minus free blocks, Avail what an unprivileged user can
// still write.
type Disk struct {
	Path  string `json:"path"`
	Size  uint64 `json:"size"`
	Used  uint64 `json:"used"`
	Avail uint64 `json:"avail"`
}

// Port is one listening socket in the guest.
type Port struct {
	// Proto is "tcp", "tcp6", "udp" or "udp6": the /proc/net file it is in.
	Proto string `json:"proto"`
	// Addr is the local address, e.g. "0.0.0.0", "127.0.0.1", "::", "::1".
	Addr string `json:"addr"`
	Port uint16 `json:"port"`
	// PID and Process name the owning process, when the agent found it
	// (0 and "" otherwise).
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
}
