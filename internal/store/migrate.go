package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

type migration struct {
	id   int
	name string
	sql  string
}

// migrations is the schema's history, in order. Append only: never edit or
// reorder an entry that has shipped. Each runs in one transaction, so it must
// not contain statements SQLite refuses inside a transaction (VACUUM,
// PRAGMA foreign_keys, journal_mode changes).
var migrations = []migration{
	{1, "create vms, images, kernels", `
CREATE TABLE kernels (
	name       TEXT PRIMARY KEY,
	arch       TEXT NOT NULL,
	source     TEXT NOT NULL,
	dir        TEXT NOT NULL,
	version    TEXT NOT NULL,
	files      TEXT NOT NULL,
	created_at TEXT NOT NULL
);
CREATE TABLE images (
	name        TEXT PRIMARY KEY,
	kernel      TEXT NOT NULL,
	rootfs_path TEXT NOT NULL,
	source      TEXT NOT NULL,
	sha256      TEXT NOT NULL,
	manifest    TEXT NOT NULL,
	size_bytes  INTEGER NOT NULL,
	is_default  INTEGER NOT NULL CHECK (is_default IN (0, 1)),
	created_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX images_one_default ON images (is_default) WHERE is_default = 1;
CREATE TABLE vms (
	id              TEXT PRIMARY KEY,
	name            TEXT NOT NULL UNIQUE,
	image           TEXT NOT NULL,
	kernel          TEXT NOT NULL,
	state           TEXT NOT NULL CHECK (state IN ('creating', 'running', 'stopped', 'error')),
	vcpu            INTEGER NOT NULL,
	memory_mib      INTEGER NOT NULL,
	disk_size_bytes INTEGER NOT NULL,
	ip              TEXT NOT NULL,
	mac             TEXT NOT NULL,
	tap             TEXT NOT NULL,
	nat             INTEGER NOT NULL CHECK (nat IN (0, 1)),
	vmm             TEXT NOT NULL,
	pid             INTEGER NOT NULL,
	pid_start_time  INTEGER NOT NULL,
	api_socket      TEXT NOT NULL,
	dir             TEXT NOT NULL,
	last_error      TEXT NOT NULL,
	created_at      TEXT NOT NULL,
	updated_at      TEXT NOT NULL
);
CREATE UNIQUE INDEX vms_ip ON vms (ip) WHERE ip <> '';
CREATE UNIQUE INDEX vms_tap ON vms (tap) WHERE tap <> '';
CREATE INDEX vms_image ON vms (image);
`},
	{2, "record how each VM's root and work disks are layered", `
ALTER TABLE vms ADD COLUMN root_disk TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN work_disk TEXT NOT NULL DEFAULT '';
`},
	{3, "forward each new guest listener automatically, per VM", `
ALTER TABLE vms ADD COLUMN forward_ports INTEGER NOT NULL DEFAULT 0 CHECK (forward_ports IN (0, 1));
`},
	{4, "mark the daemon's own temporary VMs (image builds), which users never see", `
ALTER TABLE vms ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
`},
	{5, "snapshots of booted guests, and how each VM started", `
CREATE TABLE snapshots (
	name            TEXT PRIMARY KEY,
	kind            TEXT NOT NULL CHECK (kind IN ('warm', 'vm')),
	image           TEXT NOT NULL,
	kernel          TEXT NOT NULL,
	vmm             TEXT NOT NULL,
	accel           TEXT NOT NULL,
	vcpu            INTEGER NOT NULL,
	memory_mib      INTEGER NOT NULL,
	work_size_bytes INTEGER NOT NULL,
	banger_version  TEXT NOT NULL,
	source_vm       TEXT NOT NULL DEFAULT '',
	dir             TEXT NOT NULL,
	meta            TEXT NOT NULL,
	created_at      TEXT NOT NULL
);
ALTER TABLE vms ADD COLUMN started_from TEXT NOT NULL DEFAULT '';
`},
	{6, "a starting state: a VM booting is not running until SSH answers", `
CREATE TABLE vms_new (
	id              TEXT PRIMARY KEY,
	name            TEXT NOT NULL UNIQUE,
	image           TEXT NOT NULL,
	kernel          TEXT NOT NULL,
	state           TEXT NOT NULL CHECK (state IN ('creating', 'starting', 'running', 'stopped', 'error')),
	vcpu            INTEGER NOT NULL,
	memory_mib      INTEGER NOT NULL,
	disk_size_bytes INTEGER NOT NULL,
	ip              TEXT NOT NULL,
	mac             TEXT NOT NULL,
	tap             TEXT NOT NULL,
	nat             INTEGER NOT NULL CHECK (nat IN (0, 1)),
	vmm             TEXT NOT NULL,
	pid             INTEGER NOT NULL,
	pid_start_time  INTEGER NOT NULL,
	api_socket      TEXT NOT NULL,
	dir             TEXT NOT NULL,
	last_error      TEXT NOT NULL,
	created_at      TEXT NOT NULL,
	updated_at      TEXT NOT NULL,
	root_disk       TEXT NOT NULL DEFAULT '',
	work_disk       TEXT NOT NULL DEFAULT '',
	forward_ports   INTEGER NOT NULL DEFAULT 0 CHECK (forward_ports IN (0, 1)),
	purpose         TEXT NOT NULL DEFAULT '',
	started_from    TEXT NOT NULL DEFAULT ''
);
INSERT INTO vms_new (id, name, image, kernel, state, vcpu, memory_mib, disk_size_bytes, ip, mac, tap, nat, vmm, pid,
	pid_start_time, api_socket, dir, last_error, created_at, updated_at, root_disk, work_disk, forward_ports, purpose, started_from)
SELECT id, name, image, kernel, state, vcpu, memory_mib, disk_size_bytes, ip, mac, tap, nat, vmm, pid,
	pid_start_time, api_socket, dir, last_error, created_at, updated_at, root_disk, work_disk, forward_ports, purpose, started_from
FROM vms;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
CREATE UNIQUE INDEX vms_ip ON vms (ip) WHERE ip <> '';
CREATE UNIQUE INDEX vms_tap ON vms (tap) WHERE tap <> '';
CREATE INDEX vms_image ON vms (image);
`},
	{7, "a journal of the undos of multi-step operations, replayed at start-up after a crash", `
CREATE TABLE journal (
	op_id      TEXT NOT NULL,
	seq        INTEGER NOT NULL,
	op_kind    TEXT NOT NULL,
	target     TEXT NOT NULL,
	step       TEXT NOT NULL,
	action     TEXT NOT NULL,
	created_at TEXT NOT NULL,
	PRIMARY KEY (op_id, seq)
);
`},
}

// LatestSchemaVersion is the id of the newest migration this binary knows.
func LatestSchemaVersion() int { return migrations[len(migrations)-1].id }

// SchemaState says how a database's schema relates to this binary's.
type SchemaState string

const (
	UpToDate SchemaState = "up_to_date"
	Pending  SchemaState = "pending" // migrations to apply
	Newer    SchemaState = "newer"   // written by a newer banger; refuse it
)

// MigrationStatus is a database's schema version against the binary's.
type MigrationStatus struct {
	Applied int // highest applied migration id, 0 for a fresh database
	Latest  int // LatestSchemaVersion()
	State   SchemaState
}

func statusOf(applied int) MigrationStatus {
	st := MigrationStatus{Applied: applied, Latest: LatestSchemaVersion(), State: UpToDate}
	switch {
	case applied < st.Latest:
		st.State = Pending
	case applied > st.Latest:
		st.State = Newer
	}
	return st
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// appliedVersion reads the highest recorded migration id without creating
// anything; a database without schema_migrations is at version 0.
func appliedVersion(ctx context.Context, q querier) (int, error) {
	var n int
	err := q.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n)
	if err != nil || n == 0 {
		return 0, err
	}
	var v int
	err = q.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// Status reports the database's schema version against this binary's.
func (s *Store) Status(ctx context.Context) (MigrationStatus, error) {
	v, err := appliedVersion(ctx, s.db)
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("read schema version of %s: %w", s.path, err)
	}
	return statusOf(v), nil
}

func newerError(path string, st MigrationStatus) error {
	return fmt.Errorf("database %s has schema version %d but this banger knows only up to %d: upgrade banger, or restore the database that came with this version",
		path, st.Applied, st.Latest)
}

// Migrate applies every pending migration, each in its own transaction with
// its schema_migrations row. It refuses a database newer than this binary.
func (s *Store) Migrate(ctx context.Context) error {
	_, err := s.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	id         INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at TEXT NOT NULL
)`)
	if err != nil {
		return fmt.Errorf("create schema_migrations in %s: %w", s.path, err)
	}
	st, err := s.Status(ctx)
	if err != nil {
		return err
	}
	if st.State == Newer {
		return newerError(s.path, st)
	}
	for _, m := range migrations {
		if m.id <= st.Applied {
			continue
		}
		if err := s.apply(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) apply(ctx context.Context, m migration) error {
	return s.withTx(ctx, func(tx *sql.Tx) error {
		// Another process may have applied it since Status; the immediate
		// transaction holds the write lock, so this check is final.
		var done int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE id = ?`, m.id).Scan(&done); err != nil {
			return fmt.Errorf("migration %d (%s): %w", m.id, m.name, err)
		}
		if done > 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("migration %d (%s) failed and was rolled back: %w", m.id, m.name, err)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (id, name, applied_at) VALUES (?, ?, ?)`,
			m.id, m.name, formatTime(s.timestamp()))
		if err != nil {
			return fmt.Errorf("record migration %d (%s): %w", m.id, m.name, err)
		}
		return nil
	})
}

// Exit codes of CheckMigrations (and bangerd --check-migrations).
const (
	CheckUpToDate     = 0
	CheckPending      = 1
	CheckIncompatible = 2
)

// CheckMigrations reports, without modifying or creating the database,
// whether the database at path suits this binary: CheckUpToDate,
// CheckPending (also for an absent or empty database) or CheckIncompatible
// (its schema is newer). A database that cannot be read at all is also
// CheckIncompatible, since this binary cannot use it; msg says why.
func CheckMigrations(path string) (code int, msg string) {
	latest := LatestSchemaVersion()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return CheckPending, fmt.Sprintf("database %s does not exist yet; migrations 1..%d will be applied", path, latest)
	} else if err != nil {
		return CheckIncompatible, fmt.Sprintf("cannot read database %s: %v", path, err)
	}
	d, err := dsn(path, true)
	if err != nil {
		return CheckIncompatible, err.Error()
	}
	db, err := sql.Open("sqlite", d)
	if err != nil {
		return CheckIncompatible, fmt.Sprintf("cannot open database %s: %v", path, err)
	}
	defer db.Close()
	v, err := appliedVersion(context.Background(), db)
	if err != nil {
		return CheckIncompatible, fmt.Sprintf("cannot read schema version of %s: %v", path, err)
	}
	st := statusOf(v)
	switch st.State {
	case Pending:
		return CheckPending, fmt.Sprintf("database %s is at schema version %d; migrations %d..%d are pending", path, v, v+1, latest)
	case Newer:
		return CheckIncompatible, newerError(path, st).Error()
	}
	return CheckUpToDate, fmt.Sprintf("database %s is up to date (schema version %d)", path, v)
}
