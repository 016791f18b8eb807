package config

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// HostInfo is what the default VM size is derived from.
type HostInfo struct {
	CPUs        int
	MemoryBytes int64
}

// DetectHost reads the host's CPU count and total memory. A value it cannot
// read is left zero, and the config falls back to built-in defaults for it.
func DetectHost() HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU()}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		h.MemoryBytes = int64(si.Totalram) * int64(si.Unit)
	}
	return h
}

// Limits of the host heuristic for VM defaults.
const (
	heuristicMaxVCPU      = 4
	heuristicMaxMemoryMiB = 8 << 10 // 8 GiB
	heuristicMinMemoryMiB = 512
)

// vcpuFor is a quarter of the host's CPUs, but at least 2 where the host
// has them (one vCPU doubles a software-emulated boot) and at most 4.
func vcpuFor(h HostInfo) (int, bool) {
	if h.CPUs <= 0 {
		return 0, false
	}
	return min(max(h.CPUs/4, 2), heuristicMaxVCPU, h.CPUs), true
}

// memoryMiBFor is an eighth of the host's memory, between 512 MiB and 8 GiB.
func memoryMiBFor(h HostInfo) (int, bool) {
	if h.MemoryBytes <= 0 {
		return 0, false
	}
	mib := h.MemoryBytes / 8 >> 20
	return int(min(max(mib, heuristicMinMemoryMiB), heuristicMaxMemoryMiB)), true
}
