package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"banger/internal/api"
	"banger/internal/rootdisk"
)

// busyTimeoutMS is how long a connection waits for another writer's lock
// before giving up with SQLITE_BUSY.
const busyTimeoutMS = 5000

// Store is an open banger database. It is safe for concurrent use.
type Store struct {
	db   *sql.DB
	path string
	now  func() time.Time // the clock; tests replace it
}

// dsn builds a modernc.org/sqlite URI for path. Pragmas go in the DSN so that
// every connection the pool opens gets them, not just the first one.
func dsn(path string, readOnly bool) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolve database path %q: %w", path, err)
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	q.Add("_pragma", "foreign_keys(1)")
	if readOnly {
		q.Set("mode", "ro")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		// Write transactions take the write lock at BEGIN, so two writers
		// queue on busy_timeout instead of one failing when it upgrades a
		// read lock that the other has made stale.
		q.Set("_txlock", "immediate")
	}
	// The "file:" form makes SQLite percent-decode the path, so names with
	// '?', '#' or '%' survive.
	return "file:" + (&url.URL{Path: abs}).EscapedPath() + "?" + q.Encode(), nil
}

// Open opens (creating if needed) the database at path, creating its parent
// directory with mode 0700. It does not migrate; call Migrate before use.
func Open(path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open database: empty path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create database directory: %w", err)
	}
	d, err := dsn(path, false)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", d)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// Connections a burst of requests opened close once idle for a few
	// seconds: a long-lived daemon's descriptors come back to what its
	// steady work needs (the soak test watches them).
	db.SetConnMaxIdleTime(5 * time.Second)
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s (is it a banger database and readable?): %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("open database %s: journal mode is %q, not wal; put the state directory on a local filesystem", path, mode)
	}
	return &Store{db: db, path: path, now: time.Now}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path returns the database file path given to Open.
func (s *Store) Path() string { return s.path }

// Connections says how many database connections are open and how many of
// them are in use: a connection a caller never gave back shows as in use
// for good.
func (s *Store) Connections() (open, inUse int) {
	st := s.db.Stats()
	return st.OpenConnections, st.InUse
}

func (s *Store) timestamp() time.Time { return s.now().UTC() }

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse stored time %q: %w", s, err)
	}
	return t.UTC(), nil
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// uniqueViolation returns the "table.column" a UNIQUE or PRIMARY KEY
// constraint failed on, or "" when err is not such a violation.
func uniqueViolation(err error) string {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return ""
	}
	if se.Code() != sqlite3.SQLITE_CONSTRAINT_UNIQUE && se.Code() != sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
		return ""
	}
	msg := se.Error()
	const marker = "constraint failed: "
	i := strings.LastIndex(msg, marker)
	if i < 0 {
		return "?"
	}
	col, _, _ := strings.Cut(msg[i+len(marker):], " ")
	return col
}

func notFound(kind, name string) error {
	return api.Errorf(api.CodeNotFound, "%s %q not found", kind, name)
}

func alreadyExists(kind, name string) error {
	return api.Errorf(api.CodeAlreadyExists, "%s %q already exists", kind, name)
}

// rowsChanged turns a zero-row UPDATE or DELETE into a not-found error.
func rowsChanged(res sql.Result, err error, kind, name, op string) error {
	if err != nil {
		return fmt.Errorf("%s %s %q: %w", op, kind, name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s %s %q: %w", op, kind, name, err)
	}
	if n == 0 {
		return notFound(kind, name)
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

// withTx runs fn in one (immediate) transaction, committing when it returns nil.
func (s *Store) withTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.full(fmt.Errorf("begin transaction: %w", err))
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return s.full(err)
	}
	if err := tx.Commit(); err != nil {
		return s.full(fmt.Errorf("commit transaction: %w", err))
	}
	return nil
}

// exec runs a write outside a transaction.
func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := s.db.ExecContext(ctx, query, args...)
	return res, s.full(err)
}

// full turns SQLite's "database or disk is full" into an error that
// names the filesystem of the database and what is free on it (a
// *rootdisk.NoSpaceError: errors.Is(err, rootdisk.ErrNoSpace)).
func (s *Store) full(err error) error {
	var se *sqlite.Error
	if err == nil || !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_FULL {
		return err
	}
	return fmt.Errorf("banger's database %s cannot grow: %w; free some space there", s.path, rootdisk.SpaceError(filepath.Dir(s.path), err))
}
