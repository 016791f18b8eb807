package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
)

func openMigrated(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// newTestStore returns a migrated store whose clock starts at a fixed UTC
// instant and advances one second per reading.
func newTestStore(t *testing.T) *Store {
	t.Helper()
	s := openMigrated(t, filepath.Join(t.TempDir(), "state.db"))
	var mu sync.Mutex
	clock := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.FixedZone("X", 3600))
	s.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(time.Second)
		return clock
	}
	return s
}

func wantCode(t *testing.T, err error, code api.Code, msg string) {
	t.Helper()
	if !api.IsCode(err, code) {
		t.Fatalf("err = %v, want code %s", err, code)
	}
	if msg != "" && err.Error() != msg {
		t.Fatalf("message = %q, want %q", err.Error(), msg)
	}
}

func TestOpenConfiguresEveryConnection(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a", "b", "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("parent directory mode = %v, want 0700", fi.Mode().Perm())
	}
	// Hold several connections at once so the pool must open distinct ones.
	for i := range 3 {
		c, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var mode string
		var fk, busy int
		if err := c.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || fk != 1 || busy != busyTimeoutMS {
			t.Errorf("connection %d: journal_mode=%s foreign_keys=%d busy_timeout=%d", i, mode, fk, busy)
		}
	}
}

func TestOpenPathWithURICharacters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "we?ird#dir %41", "state.db")
	openMigrated(t, path)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the given path: %v", err)
	}
	if code, msg := CheckMigrations(path); code != CheckUpToDate {
		t.Fatalf("CheckMigrations = %d (%s)", code, msg)
	}
}

func sampleVM(name, ip, tap string) VM {
	return VM{Name: name, Image: "debian", Kernel: "6.1", State: StateCreating, VCPU: 2, MemoryMiB: 1024,
		DiskSizeBytes: 8 << 30, IP: ip, MAC: "02:00:00:00:00:01", Tap: tap, NAT: true, VMM: "qemu",
		PID: 4242, PIDStartTime: 1<<63 + 5, APISocket: "/run/x.sock", Dir: "/var/vms/" + name}
}

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)

	v := sampleVM("web", "10.0.0.2", "tap0")
	v.RootDisk, v.WorkDisk, v.Purpose = `{"strategy":"qcow2"}`, `{"strategy":"copy"}`, PurposeImageBuild
	if err := s.CreateVM(ctx, &v); err != nil {
		t.Fatal(err)
	}
	if v.ID == "" || v.CreatedAt.IsZero() || v.CreatedAt.Location() != time.UTC || !v.UpdatedAt.Equal(v.CreatedAt) {
		t.Fatalf("CreateVM did not fill ID/times: %+v", v)
	}
	got, err := s.GetVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if got != v {
		t.Fatalf("GetVM = %+v\nwant   %+v", got, v)
	}
	if byID, err := s.GetVMByID(ctx, v.ID); err != nil || byID != v {
		t.Fatalf("GetVMByID = %+v, %v", byID, err)
	}

	got.State, got.LastError, got.Name, got.RootDisk, got.Purpose = StateError, "boom", "web2", `{"strategy":"dm"}`, ""
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	upd, err := s.GetVM(ctx, "web2")
	if err != nil {
		t.Fatal(err)
	}
	if upd.State != StateError || upd.Purpose != "" || upd.LastError != "boom" || upd.RootDisk != `{"strategy":"dm"}` || upd.WorkDisk != `{"strategy":"copy"}` || !upd.CreatedAt.Equal(v.CreatedAt) || !upd.UpdatedAt.After(v.UpdatedAt) {
		t.Fatalf("after update: %+v", upd)
	}

	w := sampleVM("api", "", "")
	if err := s.CreateVM(ctx, &w); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "api" || list[1].Name != "web2" {
		t.Fatalf("ListVMs = %+v", list)
	}
	if err := s.DeleteVM(ctx, "web2"); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetVM(ctx, "web2")
	wantCode(t, err, api.CodeNotFound, `vm "web2" not found`)
}

func TestVMErrors(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	base := sampleVM("web", "10.0.0.2", "tap0")
	if err := s.CreateVM(ctx, &base); err != nil {
		t.Fatal(err)
	}
	other := sampleVM("db", "10.0.0.3", "tap1")
	if err := s.CreateVM(ctx, &other); err != nil {
		t.Fatal(err)
	}
	// Several VMs may lack an IP and tap (the partial indexes allow it).
	for _, n := range []string{"n1", "n2"} {
		v := sampleVM(n, "", "")
		if err := s.CreateVM(ctx, &v); err != nil {
			t.Fatalf("second VM without ip/tap: %v", err)
		}
	}

	tests := []struct {
		name string
		op   func() error
		code api.Code
		msg  string
	}{
		{"duplicate name", func() error { v := sampleVM("web", "", ""); return s.CreateVM(ctx, &v) },
			api.CodeAlreadyExists, `vm "web" already exists`},
		{"duplicate ip", func() error { v := sampleVM("x", "10.0.0.2", ""); return s.CreateVM(ctx, &v) },
			api.CodeAlreadyExists, "ip 10.0.0.2 is already assigned to another vm"},
		{"duplicate tap", func() error { v := sampleVM("x", "", "tap0"); return s.CreateVM(ctx, &v) },
			api.CodeAlreadyExists, `tap "tap0" is already assigned to another vm`},
		{"duplicate id", func() error { v := sampleVM("x", "", ""); v.ID = base.ID; return s.CreateVM(ctx, &v) },
			api.CodeAlreadyExists, fmt.Sprintf("vm id %q already exists", base.ID)},
		{"update into taken ip", func() error { v := other; v.IP = "10.0.0.2"; return s.UpdateVM(ctx, v) },
			api.CodeAlreadyExists, "ip 10.0.0.2 is already assigned to another vm"},
		{"rename onto taken name", func() error { v := other; v.Name = "web"; return s.UpdateVM(ctx, v) },
			api.CodeAlreadyExists, `vm "web" already exists`},
		{"get missing", func() error { _, err := s.GetVM(ctx, "nope"); return err },
			api.CodeNotFound, `vm "nope" not found`},
		{"get missing id", func() error { _, err := s.GetVMByID(ctx, "feed"); return err },
			api.CodeNotFound, `vm id "feed" not found`},
		{"update missing", func() error { v := sampleVM("ghost", "", ""); v.ID = "feed"; return s.UpdateVM(ctx, v) },
			api.CodeNotFound, `vm "ghost" not found`},
		{"delete missing", func() error { return s.DeleteVM(ctx, "nope") },
			api.CodeNotFound, `vm "nope" not found`},
		{"empty name", func() error { v := sampleVM(" ", "", ""); return s.CreateVM(ctx, &v) },
			api.CodeBadRequest, ""},
		{"unknown state", func() error { v := sampleVM("x", "", ""); v.State = "paused"; return s.CreateVM(ctx, &v) },
			api.CodeBadRequest, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.op(), tc.code, tc.msg) })
	}
	// None of the failed writes changed anything.
	if got, err := s.GetVM(ctx, "db"); err != nil || got != other {
		t.Fatalf("db changed: %+v, %v", got, err)
	}
	if list, _ := s.ListVMs(ctx); len(list) != 4 {
		t.Fatalf("%d VMs after failed writes, want 4", len(list))
	}
}

func TestVMsUsingImage(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	for _, v := range []VM{sampleVM("b", "", ""), sampleVM("a", "", ""), sampleVM("c", "", "")} {
		if v.Name == "c" {
			v.Image = "alpine"
		}
		if err := s.CreateVM(ctx, &v); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.VMsUsingImage(ctx, "debian")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[a b]" {
		t.Fatalf("VMsUsingImage(debian) = %v", got)
	}
	if got, _ := s.VMsUsingImage(ctx, "none"); len(got) != 0 {
		t.Fatalf("VMsUsingImage(none) = %v", got)
	}
}

func defaultImages(t *testing.T, s *Store) []string {
	t.Helper()
	list, err := s.ListImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range list {
		if im.IsDefault {
			out = append(out, im.Name)
		}
	}
	return out
}

func TestImageCRUDAndDefault(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)

	_, err := s.DefaultImage(ctx)
	wantCode(t, err, api.CodeNotFound, "")

	a := Image{Name: "debian", Kernel: "6.1", RootfsPath: "/img/debian.ext4", Source: "registry.example/library/debian",
		SHA256: "abc", Manifest: `{"layers":[]}`, SizeBytes: 1 << 30, IsDefault: true}
	if err := s.CreateImage(ctx, &a); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetImage(ctx, "debian"); err != nil || got != a {
		t.Fatalf("GetImage = %+v, %v; want %+v", got, err, a)
	}
	b := Image{Name: "alpine", RootfsPath: "/img/alpine.ext4", IsDefault: true}
	if err := s.CreateImage(ctx, &b); err != nil {
		t.Fatal(err)
	}
	if d := fmt.Sprint(defaultImages(t, s)); d != "[alpine]" {
		t.Fatalf("defaults after creating a second default = %s", d)
	}
	if err := s.SetDefaultImage(ctx, "debian"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.SetDefaultImage(ctx, "nope"), api.CodeNotFound, `image "nope" not found`)
	if d := fmt.Sprint(defaultImages(t, s)); d != "[debian]" {
		t.Fatalf("defaults = %s, want [debian] (a failed SetDefaultImage must not clear it)", d)
	}
	if d, err := s.DefaultImage(ctx); err != nil || d.Name != "debian" {
		t.Fatalf("DefaultImage = %+v, %v", d, err)
	}

	b.SHA256, b.IsDefault = "def", true
	if err := s.UpdateImage(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetImage(ctx, "alpine"); got != b {
		t.Fatalf("after update = %+v, want %+v", got, b)
	}
	if d := fmt.Sprint(defaultImages(t, s)); d != "[alpine]" {
		t.Fatalf("defaults after UpdateImage = %s", d)
	}

	tests := []struct {
		name string
		err  error
		code api.Code
		msg  string
	}{
		{"duplicate", s.CreateImage(ctx, &Image{Name: "debian"}), api.CodeAlreadyExists, `image "debian" already exists`},
		{"get missing", func() error { _, err := s.GetImage(ctx, "x"); return err }(), api.CodeNotFound, `image "x" not found`},
		{"update missing", s.UpdateImage(ctx, Image{Name: "x"}), api.CodeNotFound, `image "x" not found`},
		{"delete missing", s.DeleteImage(ctx, "x"), api.CodeNotFound, `image "x" not found`},
		{"bad manifest", s.CreateImage(ctx, &Image{Name: "y", Manifest: "{"}), api.CodeBadRequest, ""},
		{"empty name", s.CreateImage(ctx, &Image{}), api.CodeBadRequest, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.err, tc.code, tc.msg) })
	}

	if err := s.DeleteImage(ctx, "alpine"); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.IsDefault = false // cleared when alpine became the default
	if len(list) != 1 || list[0] != a {
		t.Fatalf("ListImages = %+v", list)
	}
}

func TestKernelCRUD(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	k := Kernel{Name: "6.1", Arch: "x86_64", Source: "debian:linux-image-amd64", Dir: "/k/6.1", Version: "6.1.0-30",
		Files: `{"kernel":{"path":"vmlinux","sha256":"aa"}}`}
	if err := s.CreateKernel(ctx, &k); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetKernel(ctx, "6.1"); err != nil || got != k {
		t.Fatalf("GetKernel = %+v, %v; want %+v", got, err, k)
	}
	k.Version = "6.1.0-31"
	if err := s.UpdateKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	k2 := Kernel{Name: "5.10", Arch: "x86_64"}
	if err := s.CreateKernel(ctx, &k2); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListKernels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0] != k2 || list[1] != k {
		t.Fatalf("ListKernels = %+v", list)
	}

	tests := []struct {
		name string
		err  error
		code api.Code
		msg  string
	}{
		{"duplicate", s.CreateKernel(ctx, &Kernel{Name: "6.1"}), api.CodeAlreadyExists, `kernel "6.1" already exists`},
		{"get missing", func() error { _, err := s.GetKernel(ctx, "x"); return err }(), api.CodeNotFound, `kernel "x" not found`},
		{"update missing", s.UpdateKernel(ctx, Kernel{Name: "x"}), api.CodeNotFound, `kernel "x" not found`},
		{"delete missing", s.DeleteKernel(ctx, "x"), api.CodeNotFound, `kernel "x" not found`},
		{"bad files", s.CreateKernel(ctx, &Kernel{Name: "y", Files: "[1,"}), api.CodeBadRequest, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.err, tc.code, tc.msg) })
	}
	if err := s.DeleteKernel(ctx, "6.1"); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetKernel(ctx, "6.1")
	wantCode(t, err, api.CodeNotFound, "")
}

// Writers in several goroutines (each its own pooled connection) must queue
// on the write lock rather than fail with SQLITE_BUSY.
func TestConcurrentWriters(t *testing.T) {
	const workers, perWorker = 6, 15
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := openMigrated(t, filepath.Join(t.TempDir(), "state.db"))

	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker*2)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				v := sampleVM(fmt.Sprintf("vm-%d-%d", w, i), fmt.Sprintf("10.1.%d.%d", w, i), "")
				if err := s.CreateVM(ctx, &v); err != nil {
					errs <- err
					continue
				}
				v.State = StateRunning
				if err := s.UpdateVM(ctx, v); err != nil {
					errs <- err
				}
				// A transaction that reads then writes: under deferred locking
				// its read snapshot goes stale and the write fails at once
				// with SQLITE_BUSY instead of waiting.
				err := s.withTx(ctx, func(tx *sql.Tx) error {
					var n int
					if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM vms`).Scan(&n); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, `UPDATE vms SET last_error = ? WHERE id = ?`, fmt.Sprint(n), v.ID)
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("read-then-write transaction: %w", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != workers*perWorker {
		t.Fatalf("%d VMs stored, want %d", len(list), workers*perWorker)
	}
	for _, v := range list {
		if v.State != StateRunning {
			t.Fatalf("vm %s state %s, want running", v.Name, v.State)
		}
	}
}

func TestSnapshotCRUD(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	sn := Snapshot{Name: "debian-bookworm-2c-1024m", Kind: SnapshotWarm, Image: "debian-bookworm", Kernel: "debian-6.1", VMM: "qemu",
		Accel: "tcg", VCPU: 2, MemoryMiB: 1024, WorkSizeBytes: 8 << 30, BangerVersion: "v1", Dir: "/s/x", Meta: `{"state":"state.bin"}`}
	if err := s.CreateSnapshot(ctx, &sn); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSnapshot(ctx, sn.Name)
	if err != nil || got != sn {
		t.Fatalf("GetSnapshot = %+v, %v\nwant %+v", got, err, sn)
	}
	dup := sn
	wantCode(t, s.CreateSnapshot(ctx, &dup), api.CodeAlreadyExists, `snapshot "debian-bookworm-2c-1024m" already exists`)
	bad := sn
	bad.Name, bad.Meta = "bad", "{"
	wantCode(t, s.CreateSnapshot(ctx, &bad), api.CodeBadRequest, `snapshot "bad" has metadata that is not valid JSON`)
	bad.Meta, bad.Kind = "{}", "other"
	if err := s.CreateSnapshot(ctx, &bad); err == nil {
		t.Error("a snapshot of an unknown kind was stored")
	}
	list, err := s.ListSnapshots(ctx)
	if err != nil || len(list) != 1 || list[0].Name != sn.Name {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}
	if err := s.DeleteSnapshot(ctx, sn.Name); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetSnapshot(ctx, sn.Name)
	wantCode(t, err, api.CodeNotFound, "")
	wantCode(t, s.DeleteSnapshot(ctx, sn.Name), api.CodeNotFound, "")
}
