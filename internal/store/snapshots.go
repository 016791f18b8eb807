package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"banger/internal/api"
)

// Snapshot kinds.
const (
	SnapshotWarm = "warm" // `image warm`: a booted template of an image
	SnapshotVM   = "vm"   // `vm snapshot`: a user's running VM
)

// Snapshot is a saved guest: its memory and device state and frozen disk
// layers, with what it must be restored into (the machine it was saved
// from). Meta is JSON the daemon owns (disks, state file, addresses).
type Snapshot struct {
	Name          string
	Kind          string
	Image         string
	Kernel        string
	VMM           string
	Accel         string
	VCPU          int
	MemoryMiB     int
	WorkSizeBytes int64
	BangerVersion string
	SourceVM      string
	Dir           string
	Meta          string
	CreatedAt     time.Time
}

const snapshotColumns = `name, kind, image, kernel, vmm, accel, vcpu, memory_mib, work_size_bytes, banger_version, source_vm, dir, meta, created_at`

// CreateSnapshot inserts sn (CreatedAt set to now when zero, written back).
func (s *Store) CreateSnapshot(ctx context.Context, sn *Snapshot) error {
	if strings.TrimSpace(sn.Name) == "" {
		return api.Errorf(api.CodeBadRequest, "snapshot name must not be empty")
	}
	if !json.Valid([]byte(sn.Meta)) {
		return api.Errorf(api.CodeBadRequest, "snapshot %q has metadata that is not valid JSON", sn.Name)
	}
	row := *sn
	if row.CreatedAt.IsZero() {
		row.CreatedAt = s.timestamp()
	}
	row.CreatedAt = row.CreatedAt.UTC()
	_, err := s.exec(ctx, `INSERT INTO snapshots (`+snapshotColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		row.Name, row.Kind, row.Image, row.Kernel, row.VMM, row.Accel, row.VCPU, row.MemoryMiB, row.WorkSizeBytes,
		row.BangerVersion, row.SourceVM, row.Dir, row.Meta, formatTime(row.CreatedAt))
	if uniqueViolation(err) != "" {
		return alreadyExists("snapshot", row.Name)
	}
	if err != nil {
		return fmt.Errorf("create snapshot %q: %w", row.Name, err)
	}
	*sn = row
	return nil
}

func scanSnapshot(sc scanner) (Snapshot, error) {
	var sn Snapshot
	var created string
	err := sc.Scan(&sn.Name, &sn.Kind, &sn.Image, &sn.Kernel, &sn.VMM, &sn.Accel, &sn.VCPU, &sn.MemoryMiB, &sn.WorkSizeBytes,
		&sn.BangerVersion, &sn.SourceVM, &sn.Dir, &sn.Meta, &created)
	if err != nil {
		return sn, err
	}
	sn.CreatedAt, err = parseTime(created)
	return sn, err
}

// GetSnapshot returns the snapshot called name.
func (s *Store) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	sn, err := scanSnapshot(s.db.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return sn, notFound("snapshot", name)
	}
	if err != nil {
		return sn, fmt.Errorf("read snapshot %q: %w", name, err)
	}
	return sn, nil
}

// ListSnapshots returns every snapshot, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots ORDER BY created_at, name`)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		sn, err := scanSnapshot(rows)
		if err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}

// DeleteSnapshot removes the snapshot called name.
func (s *Store) DeleteSnapshot(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM snapshots WHERE name = ?`, name)
	return rowsChanged(res, err, "snapshot", name, "delete")
}
