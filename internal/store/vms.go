package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"banger/internal/api"
)

// VM lifecycle states stored in VM.State.
const (
	StateCreating = "creating"
	// StateStarting: a vm start is under way (from its first step until the
	// guest's agent answers). A daemon that dies then leaves what the
	// journal undoes.
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
)

// PurposeImageBuild marks the temporary VM of an image build.
const PurposeImageBuild = "image-build"

// PurposeImageWarm marks the template VM an image warm boots and saves.
const PurposeImageWarm = "image-warm"

// VM is one sandbox's record. IP and Tap, when set, are unique across VMs.
type VM struct {
	ID            string
	Name          string
	Image         string
	Kernel        string
	State         string
	VCPU          int
	MemoryMiB     int
	DiskSizeBytes int64
	IP            string
	MAC           string
	Tap           string
	NAT           bool
	VMM           string
	PID           int
	PIDStartTime  uint64 // the process start time (clock ticks since boot) that, with PID, identifies the VMM process
	APISocket     string
	Dir           string
	// RootDisk and WorkDisk describe the VM's disks (JSON the daemon owns:
	// strategy, file, format, the read-only layers below); empty for a VM
	// made before they were recorded (plain raw files in Dir).
	RootDisk string
	WorkDisk string
	// ForwardPorts forwards every new guest listener to the host's
	// loopback while the VM runs.
	ForwardPorts bool
	// Purpose is empty for a user's VM. The daemon's own temporary VMs
	// (PurposeImageBuild) are hidden from vm list and refused by the vm
	// commands, and removed whatever state a previous daemon left them in.
	Purpose string
	// StartedFrom is empty for a VM that booted, else "snapshot NAME".
	StartedFrom string
	LastError   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

const vmColumns = `id, name, image, kernel, state, vcpu, memory_mib, disk_size_bytes, ip, mac, tap, nat,
	vmm, pid, pid_start_time, api_socket, dir, root_disk, work_disk, forward_ports, purpose, started_from, last_error, created_at, updated_at`

func validateVM(v *VM) error {
	if strings.TrimSpace(v.Name) == "" {
		return api.Errorf(api.CodeBadRequest, "vm name must not be empty")
	}
	switch v.State {
	case StateCreating, StateStarting, StateRunning, StateStopped, StateError:
	default:
		return api.Errorf(api.CodeBadRequest, "vm %q has unknown state %q; use one of creating, starting, running, stopped, error", v.Name, v.State)
	}
	return nil
}

// vmConflict maps a uniqueness violation to the user-facing error.
func vmConflict(err error, v *VM) error {
	switch uniqueViolation(err) {
	case "":
		return nil
	case "vms.name":
		return alreadyExists("vm", v.Name)
	case "vms.id":
		return api.Errorf(api.CodeAlreadyExists, "vm id %q already exists", v.ID)
	case "vms.ip":
		return api.Errorf(api.CodeAlreadyExists, "ip %s is already assigned to another vm", v.IP)
	case "vms.tap":
		return api.Errorf(api.CodeAlreadyExists, "tap %q is already assigned to another vm", v.Tap)
	default:
		return api.Errorf(api.CodeAlreadyExists, "vm %q conflicts with an existing vm: %v", v.Name, err)
	}
}

// CreateVM inserts v. An empty ID is generated; CreatedAt (when zero) and
// UpdatedAt are set to now. The stored values are written back into v.
func (s *Store) CreateVM(ctx context.Context, v *VM) error {
	if err := validateVM(v); err != nil {
		return err
	}
	row := *v
	if row.ID == "" {
		id, err := newID()
		if err != nil {
			return err
		}
		row.ID = id
	}
	now := s.timestamp()
	if row.CreatedAt.IsZero() {
		row.CreatedAt = now
	}
	row.CreatedAt = row.CreatedAt.UTC()
	row.UpdatedAt = now
	_, err := s.exec(ctx, `INSERT INTO vms (`+vmColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		row.ID, row.Name, row.Image, row.Kernel, row.State, row.VCPU, row.MemoryMiB, row.DiskSizeBytes,
		row.IP, row.MAC, row.Tap, row.NAT, row.VMM, row.PID, int64(row.PIDStartTime),
		row.APISocket, row.Dir, row.RootDisk, row.WorkDisk, row.ForwardPorts, row.Purpose, row.StartedFrom, row.LastError, formatTime(row.CreatedAt), formatTime(row.UpdatedAt))
	if cerr := vmConflict(err, &row); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("create vm %q: %w", row.Name, err)
	}
	*v = row
	return nil
}

func scanVM(sc scanner) (VM, error) {
	var v VM
	var startTime int64
	var created, updated string
	err := sc.Scan(&v.ID, &v.Name, &v.Image, &v.Kernel, &v.State, &v.VCPU, &v.MemoryMiB, &v.DiskSizeBytes,
		&v.IP, &v.MAC, &v.Tap, &v.NAT, &v.VMM, &v.PID, &startTime, &v.APISocket, &v.Dir, &v.RootDisk, &v.WorkDisk, &v.ForwardPorts, &v.Purpose, &v.StartedFrom, &v.LastError,
		&created, &updated)
	if err != nil {
		return VM{}, err
	}
	v.PIDStartTime = uint64(startTime)
	if v.CreatedAt, err = parseTime(created); err != nil {
		return VM{}, err
	}
	if v.UpdatedAt, err = parseTime(updated); err != nil {
		return VM{}, err
	}
	return v, nil
}

func (s *Store) getVM(ctx context.Context, where, key string) (VM, error) {
	v, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE `+where+` = ?`, key))
	if errors.Is(err, sql.ErrNoRows) {
		if where == "id" {
			return VM{}, api.Errorf(api.CodeNotFound, "vm id %q not found", key)
		}
		return VM{}, notFound("vm", key)
	}
	if err != nil {
		return VM{}, fmt.Errorf("read vm %q: %w", key, err)
	}
	return v, nil
}

// GetVM returns the VM called name.
func (s *Store) GetVM(ctx context.Context, name string) (VM, error) {
	return s.getVM(ctx, "name", name)
}

// GetVMByID returns the VM with id.
func (s *Store) GetVMByID(ctx context.Context, id string) (VM, error) { return s.getVM(ctx, "id", id) }

// ListVMs returns every VM, ordered by name.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("list vms: %w", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return out, nil
}

// UpdateVM overwrites the VM with v.ID with v (renames included), keeping
// CreatedAt and setting UpdatedAt to now.
func (s *Store) UpdateVM(ctx context.Context, v VM) error {
	if err := validateVM(&v); err != nil {
		return err
	}
	res, err := s.exec(ctx, `UPDATE vms SET name = ?, image = ?, kernel = ?, state = ?, vcpu = ?,
		memory_mib = ?, disk_size_bytes = ?, ip = ?, mac = ?, tap = ?, nat = ?, vmm = ?, pid = ?,
		pid_start_time = ?, api_socket = ?, dir = ?, root_disk = ?, work_disk = ?, forward_ports = ?, purpose = ?, started_from = ?, last_error = ?, updated_at = ? WHERE id = ?`,
		v.Name, v.Image, v.Kernel, v.State, v.VCPU, v.MemoryMiB, v.DiskSizeBytes, v.IP, v.MAC, v.Tap,
		v.NAT, v.VMM, v.PID, int64(v.PIDStartTime), v.APISocket, v.Dir, v.RootDisk, v.WorkDisk, v.ForwardPorts, v.Purpose, v.StartedFrom, v.LastError,
		formatTime(s.timestamp()), v.ID)
	if cerr := vmConflict(err, &v); cerr != nil {
		return cerr
	}
	return rowsChanged(res, err, "vm", v.Name, "update")
}

// DeleteVM removes the VM called name.
func (s *Store) DeleteVM(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM vms WHERE name = ?`, name)
	return rowsChanged(res, err, "vm", name, "delete")
}

// VMsUsingImage returns the names of the VMs built from image, sorted.
func (s *Store) VMsUsingImage(ctx context.Context, image string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM vms WHERE image = ? ORDER BY name`, image)
	if err != nil {
		return nil, fmt.Errorf("find vms using image %q: %w", image, err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("find vms using image %q: %w", image, err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find vms using image %q: %w", image, err)
	}
	return names, nil
}
