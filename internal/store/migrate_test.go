package store

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// withMigrations replaces the migration list for one test.
func withMigrations(t *testing.T, ms []migration) {
	t.Helper()
	saved := migrations
	migrations = ms
	t.Cleanup(func() { migrations = saved })
}

func tableExists(t *testing.T, s *Store, name string) bool {
	t.Helper()
	var n int
	err := s.db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, name).Scan(&n)
	if err != nil {
		t.Fatalf("query sqlite_master: %v", err)
	}
	return n == 1
}

type appliedRow struct {
	id       int
	name, at string
}

func appliedRows(t *testing.T, s *Store) []appliedRow {
	t.Helper()
	rows, err := s.db.Query(`SELECT id, name, applied_at FROM schema_migrations ORDER BY id`)
	if err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	defer rows.Close()
	var out []appliedRow
	for rows.Next() {
		var r appliedRow
		if err := rows.Scan(&r.id, &r.name, &r.at); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMigrationListIsNumberedInOrder(t *testing.T) {
	for i, m := range migrations {
		if m.id != i+1 {
			t.Errorf("migration at index %d has id %d, want %d", i, m.id, i+1)
		}
		if m.name == "" || strings.TrimSpace(m.sql) == "" {
			t.Errorf("migration %d has an empty name or body", m.id)
		}
	}
	if LatestSchemaVersion() != len(migrations) {
		t.Errorf("LatestSchemaVersion() = %d, want %d", LatestSchemaVersion(), len(migrations))
	}
}

func TestMigrateAppliesOnceAndRecords(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	st, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != (MigrationStatus{Applied: 0, Latest: LatestSchemaVersion(), State: Pending}) {
		t.Fatalf("fresh status = %+v", st)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tbl := range []string{"vms", "images", "kernels"} {
		if !tableExists(t, s, tbl) {
			t.Errorf("table %s missing after Migrate", tbl)
		}
	}
	first := appliedRows(t, s)
	if len(first) != len(migrations) {
		t.Fatalf("recorded %d migrations, want %d", len(first), len(migrations))
	}
	for i, r := range first {
		if r.id != migrations[i].id || r.name != migrations[i].name {
			t.Errorf("row %d = %+v, want id %d name %q", i, r, migrations[i].id, migrations[i].name)
		}
		if _, err := parseTime(r.at); err != nil {
			t.Errorf("applied_at: %v", err)
		}
	}

	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if again := appliedRows(t, s); len(again) != len(first) || again[0] != first[0] {
		t.Fatalf("second Migrate changed schema_migrations: %+v -> %+v", first, again)
	}
	if st, _ := s.Status(ctx); st.State != UpToDate || st.Applied != LatestSchemaVersion() {
		t.Fatalf("status after Migrate = %+v", st)
	}
}

func TestNewerDatabaseIsRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s := openMigrated(t, path)
	future := LatestSchemaVersion() + 1
	if _, err := s.db.Exec(`INSERT INTO schema_migrations VALUES (?, 'from the future', '2099-01-01T00:00:00Z')`, future); err != nil {
		t.Fatal(err)
	}

	st, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != Newer || st.Applied != future {
		t.Fatalf("status = %+v, want Newer at %d", st, future)
	}
	err = s.Migrate(ctx)
	if err == nil || !strings.Contains(err.Error(), "upgrade banger") {
		t.Fatalf("Migrate on newer database: err = %v, want refusal", err)
	}
	if code, msg := CheckMigrations(path); code != CheckIncompatible {
		t.Fatalf("CheckMigrations = %d (%s), want %d", code, msg, CheckIncompatible)
	}
}

func TestCheckMigrations(t *testing.T) {
	twoStep := append(append([]migration(nil), migrations...),
		migration{len(migrations) + 1, "add notes", `CREATE TABLE notes (body TEXT NOT NULL)`})

	tests := []struct {
		name    string
		prepare func(t *testing.T, path string) // nil: leave the file absent
		want    int
	}{
		{"absent", nil, CheckPending},
		{"opened but never migrated", func(t *testing.T, path string) {
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}, CheckPending},
		{"behind by one", func(t *testing.T, path string) {
			openMigrated(t, path).Close()
			withMigrations(t, twoStep)
		}, CheckPending},
		{"up to date, closed", func(t *testing.T, path string) { openMigrated(t, path).Close() }, CheckUpToDate},
		{"up to date, in use", func(t *testing.T, path string) { openMigrated(t, path) }, CheckUpToDate},
		{"not a database", func(t *testing.T, path string) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 1024), 0o600); err != nil {
				t.Fatal(err)
			}
		}, CheckIncompatible},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			if tc.prepare != nil {
				tc.prepare(t, path)
			}
			before, _ := os.ReadFile(path)
			code, msg := CheckMigrations(path)
			if code != tc.want {
				t.Fatalf("CheckMigrations = %d (%s), want %d", code, msg, tc.want)
			}
			if msg == "" {
				t.Error("empty message")
			}
			after, err := os.ReadFile(path)
			if tc.prepare == nil {
				if !os.IsNotExist(err) {
					t.Fatalf("CheckMigrations created %s (err %v)", path, err)
				}
				return
			}
			if !bytes.Equal(before, after) {
				t.Fatal("CheckMigrations modified the database file")
			}
		})
	}
}

func TestFailedMigrationLeavesNothingBehind(t *testing.T) {
	ctx := context.Background()
	broken := migration{len(migrations) + 1, "half done", `
CREATE TABLE half_done (x INTEGER);
INSERT INTO half_done VALUES (1);
INSERT INTO no_such_table VALUES (1);`}
	withMigrations(t, append(append([]migration(nil), migrations...), broken))

	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	err = s.Migrate(ctx)
	if err == nil || !strings.Contains(err.Error(), "half done") {
		t.Fatalf("Migrate = %v, want failure naming the migration", err)
	}
	if tableExists(t, s, "half_done") {
		t.Error("table created by the failed migration survived")
	}
	rows := appliedRows(t, s)
	if len(rows) != broken.id-1 || rows[len(rows)-1].id != broken.id-1 {
		t.Fatalf("recorded migrations = %+v, want 1..%d", rows, broken.id-1)
	}
	if !tableExists(t, s, "vms") {
		t.Error("earlier migrations were not kept")
	}

	// Fixing the migration lets the same database move on.
	migrations[len(migrations)-1].sql = `CREATE TABLE half_done (x INTEGER);`
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate after fix: %v", err)
	}
	if st, _ := s.Status(ctx); st.State != UpToDate || st.Applied != broken.id {
		t.Fatalf("status after fix = %+v", st)
	}
}
