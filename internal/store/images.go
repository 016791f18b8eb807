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

// Image is a root filesystem VMs are created from. At most one image is the
// default.
type Image struct {
	Name       string
	Kernel     string // the kernel it boots with by default; may be empty
	RootfsPath string
	Source     string
	SHA256     string
	Manifest   string // JSON text, may be empty
	SizeBytes  int64
	IsDefault  bool
	CreatedAt  time.Time
}

const imageColumns = `name, kernel, rootfs_path, source, sha256, manifest, size_bytes, is_default, created_at`

func validateImage(im *Image) error {
	if strings.TrimSpace(im.Name) == "" {
		return api.Errorf(api.CodeBadRequest, "image name must not be empty")
	}
	if im.Manifest != "" && !json.Valid([]byte(im.Manifest)) {
		return api.Errorf(api.CodeBadRequest, "image %q has a manifest that is not valid JSON", im.Name)
	}
	return nil
}

// clearDefaultsExcept makes name the only possible default.
func clearDefaultsExcept(ctx context.Context, tx *sql.Tx, name string) error {
	_, err := tx.ExecContext(ctx, `UPDATE images SET is_default = 0 WHERE is_default = 1 AND name <> ?`, name)
	if err != nil {
		return fmt.Errorf("clear default image: %w", err)
	}
	return nil
}

// CreateImage inserts im, setting CreatedAt to now when zero (written back).
// If im.IsDefault, any other default is cleared in the same transaction.
func (s *Store) CreateImage(ctx context.Context, im *Image) error {
	if err := validateImage(im); err != nil {
		return err
	}
	row := *im
	if row.CreatedAt.IsZero() {
		row.CreatedAt = s.timestamp()
	}
	row.CreatedAt = row.CreatedAt.UTC()
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		if row.IsDefault {
			if err := clearDefaultsExcept(ctx, tx, row.Name); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			row.Name, row.Kernel, row.RootfsPath, row.Source, row.SHA256, row.Manifest, row.SizeBytes,
			row.IsDefault, formatTime(row.CreatedAt))
		if uniqueViolation(err) != "" {
			return alreadyExists("image", row.Name)
		}
		if err != nil {
			return fmt.Errorf("create image %q: %w", row.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	*im = row
	return nil
}

func scanImage(sc scanner) (Image, error) {
	var im Image
	var created string
	err := sc.Scan(&im.Name, &im.Kernel, &im.RootfsPath, &im.Source, &im.SHA256, &im.Manifest,
		&im.SizeBytes, &im.IsDefault, &created)
	if err != nil {
		return Image{}, err
	}
	im.CreatedAt, err = parseTime(created)
	return im, err
}

// GetImage returns the image called name.
func (s *Store) GetImage(ctx context.Context, name string) (Image, error) {
	im, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, notFound("image", name)
	}
	if err != nil {
		return Image{}, fmt.Errorf("read image %q: %w", name, err)
	}
	return im, nil
}

// DefaultImage returns the default image, or a not_found error when none is set.
func (s *Store) DefaultImage(ctx context.Context) (Image, error) {
	im, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE is_default = 1`))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, api.Errorf(api.CodeNotFound, "no default image is set; pull an image or set one as default")
	}
	if err != nil {
		return Image{}, fmt.Errorf("read default image: %w", err)
	}
	return im, nil
}

// ListImages returns every image, ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	var out []Image
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		out = append(out, im)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

// UpdateImage overwrites the image called im.Name, keeping CreatedAt. If
// im.IsDefault, any other default is cleared in the same transaction.
func (s *Store) UpdateImage(ctx context.Context, im Image) error {
	if err := validateImage(&im); err != nil {
		return err
	}
	return s.withTx(ctx, func(tx *sql.Tx) error {
		if im.IsDefault {
			if err := clearDefaultsExcept(ctx, tx, im.Name); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE images SET kernel = ?, rootfs_path = ?, source = ?, sha256 = ?,
			manifest = ?, size_bytes = ?, is_default = ? WHERE name = ?`,
			im.Kernel, im.RootfsPath, im.Source, im.SHA256, im.Manifest, im.SizeBytes, im.IsDefault, im.Name)
		return rowsChanged(res, err, "image", im.Name, "update")
	})
}

// SetDefaultImage makes name the one default image.
func (s *Store) SetDefaultImage(ctx context.Context, name string) error {
	return s.withTx(ctx, func(tx *sql.Tx) error {
		if err := clearDefaultsExcept(ctx, tx, name); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE images SET is_default = 1 WHERE name = ?`, name)
		return rowsChanged(res, err, "image", name, "set default")
	})
}

// DeleteImage removes the image record called name. Callers check
// VMsUsingImage first; the store does not refuse an image in use.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM images WHERE name = ?`, name)
	return rowsChanged(res, err, "image", name, "delete")
}
