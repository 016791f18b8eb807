package agent

import (
	"context"
	"encoding/json"
	"fmt"
)

// MethodRestore gives a guest restored from a snapshot its own identity.
const MethodRestore = "restore"

// RestoreParams is everything that makes a VM restored from a snapshot
// itself, made on the host: the same memory image is restored into many
// VMs, so each must get its own before anyone talks to it.
type RestoreParams struct {
	Hostname string `json:"hostname"`
	// Interface is the guest's one NIC, found by OldMAC (the snapshot's);
	// it gets MAC and Address (CIDR) with a default route via Gateway.
	OldMAC  string `json:"old_mac"`
	MAC     string `json:"mac"`
	Address string `json:"address"`
	Gateway string `json:"gateway"`
	// Files are written (atomically, parents made) before the network
	// changes: host keys, machine-id, /etc/hostname and the like.
	Files []RestoreFile `json:"files"`
	// Entropy is fresh host randomness mixed into the kernel's pool and
	// credited, after which the CRNG is reseeded: no two restored VMs
	// share RNG output.
	Entropy []byte `json:"entropy"`
	// UnixNano is the host's clock when the request was made; the guest's
	// realtime clock is stepped to it.
	UnixNano int64 `json:"unix_nano"`
	// GrowWork grows the filesystem on the work disk (/dev/vdb, mounted
	// on /root) to its disk's new size.
	GrowWork bool `json:"grow_work"`
	// ReloadSSHD makes sshd re-read its host keys (SIGHUP).
	ReloadSSHD bool `json:"reload_sshd"`
}

// RestoreFile is one file RestoreParams writes.
type RestoreFile struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
	Mode uint32 `json:"mode"`
}

// RestoreResult says what the agent did, with the time each step took.
type RestoreResult struct {
	Steps []RestoreStep `json:"steps"`
}

// RestoreStep is one step of a restore.
type RestoreStep struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// Restore asks the agent to take on p's identity.
func (c *Client) Restore(ctx context.Context, p RestoreParams) (RestoreResult, error) {
	var r RestoreResult
	raw, err := json.Marshal(p)
	if err != nil {
		return r, err
	}
	if err := c.callWith(ctx, MethodRestore, raw, &r); err != nil {
		return r, fmt.Errorf("restore identity: %w", err)
	}
	return r, nil
}
