// Package store is bangerd's persistent state: one SQLite database (WAL mode)
// holding the VM, image and kernel records.
//
// It owns the database file, its connection settings (every pooled
// connection gets WAL, busy_timeout, synchronous=NORMAL and foreign_keys
// through the DSN) and the schema. The schema only moves forward: numbered
// migrations, each applied in its own transaction together with its row in
// schema_migrations. A binary refuses a database whose schema is newer than
// it knows (CheckMigrations reports that without touching the file).
//
// Records are plain structs; times are UTC and stored as RFC 3339 text.
// Missing and duplicate records come back as api errors (not_found,
// already_exists) so the RPC layer can pass them through unchanged.
//
// The store must not do host work (files other than the database, taps,
// processes) and knows nothing about the daemon; callers decide what a record
// means and keep host state and rows consistent.
package store
