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

// Kernel is a guest kernel (and its companion files) images boot with.
type Kernel struct {
	Name      string
	Arch      string
	Source    string
	Dir       string
	Version   string
	Files     string // JSON text: map of role -> {"path": ..., "sha256": ...}; may be empty
	CreatedAt time.Time
}

const kernelColumns = `name, arch, source, dir, version, files, created_at`

func validateKernel(k *Kernel) error {
	if strings.TrimSpace(k.Name) == "" {
		return api.Errorf(api.CodeBadRequest, "kernel name must not be empty")
	}
	if k.Files != "" && !json.Valid([]byte(k.Files)) {
		return api.Errorf(api.CodeBadRequest, "kernel %q has a file list that is not valid JSON", k.Name)
	}
	return nil
}

// CreateKernel inserts k, setting CreatedAt to now when zero (written back).
func (s *Store) CreateKernel(ctx context.Context, k *Kernel) error {
	if err := validateKernel(k); err != nil {
		return err
	}
	row := *k
	if row.CreatedAt.IsZero() {
		row.CreatedAt = s.timestamp()
	}
	row.CreatedAt = row.CreatedAt.UTC()
	_, err := s.exec(ctx, `INSERT INTO kernels (`+kernelColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		row.Name, row.Arch, row.Source, row.Dir, row.Version, row.Files, formatTime(row.CreatedAt))
	if uniqueViolation(err) != "" {
		return alreadyExists("kernel", row.Name)
	}
	if err != nil {
		return fmt.Errorf("create kernel %q: %w", row.Name, err)
	}
	*k = row
	return nil
}

func scanKernel(sc scanner) (Kernel, error) {
	var k Kernel
	var created string
	if err := sc.Scan(&k.Name, &k.Arch, &k.Source, &k.Dir, &k.Version, &k.Files, &created); err != nil {
		return Kernel{}, err
	}
	var err error
	k.CreatedAt, err = parseTime(created)
	return k, err
}

// GetKernel returns the kernel called name.
func (s *Store) GetKernel(ctx context.Context, name string) (Kernel, error) {
	k, err := scanKernel(s.db.QueryRowContext(ctx, `SELECT `+kernelColumns+` FROM kernels WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Kernel{}, notFound("kernel", name)
	}
	if err != nil {
		return Kernel{}, fmt.Errorf("read kernel %q: %w", name, err)
	}
	return k, nil
}

// ListKernels returns every kernel, ordered by name.
func (s *Store) ListKernels(ctx context.Context) ([]Kernel, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+kernelColumns+` FROM kernels ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	defer rows.Close()
	var out []Kernel
	for rows.Next() {
		k, err := scanKernel(rows)
		if err != nil {
			return nil, fmt.Errorf("list kernels: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	return out, nil
}

// UpdateKernel overwrites the kernel called k.Name, keeping CreatedAt.
func (s *Store) UpdateKernel(ctx context.Context, k Kernel) error {
	if err := validateKernel(&k); err != nil {
		return err
	}
	res, err := s.exec(ctx, `UPDATE kernels SET arch = ?, source = ?, dir = ?, version = ?, files = ?
		WHERE name = ?`, k.Arch, k.Source, k.Dir, k.Version, k.Files, k.Name)
	return rowsChanged(res, err, "kernel", k.Name, "update")
}

// DeleteKernel removes the kernel record called name.
func (s *Store) DeleteKernel(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM kernels WHERE name = ?`, name)
	return rowsChanged(res, err, "kernel", name, "delete")
}
