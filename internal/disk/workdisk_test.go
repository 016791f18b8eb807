package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/system"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs): %v", tool, err)
		}
	}
}

// fsInfo reads the ext4 superblock with dumpe2fs, independently of the
// code under test.
func fsInfo(t *testing.T, path string) (sizeBytes int64, label string) {
	t.Helper()
	out, err := (&system.Exec{}).Run(context.Background(), "dumpe2fs", "-h", path)
	if err != nil {
		t.Fatalf("dumpe2fs: %v", err)
	}
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:\s*(.*)$`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("dumpe2fs output lacks %q:\n%s", name, out)
		}
		return strings.TrimSpace(string(m[1]))
	}
	count, _ := strconv.ParseInt(field("Block count"), 10, 64)
	bs, _ := strconv.ParseInt(field("Block size"), 10, 64)
	return count * bs, field("Filesystem volume name")
}

func TestCreateAndResizeWorkDisk(t *testing.T) {
	needTools(t, "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "debugfs")
	ctx := context.Background()
	r := &system.Exec{}
	path := filepath.Join(t.TempDir(), "work.ext4")

	if err := CreateWorkDisk(ctx, r, path, 64*mib); err != nil {
		t.Fatalf("CreateWorkDisk: %v", err)
	}
	size, label := fsInfo(t, path)
	if size != 64*mib || label != WorkLabel {
		t.Fatalf("new work disk: fs size %d label %q, want %d %q", size, label, 64*mib, WorkLabel)
	}
	if a := allocated(t, path); a > 16*mib {
		t.Errorf("new 64 MiB work disk allocates %d bytes; lazy init should keep it sparse", a)
	}
	out, err := r.Run(ctx, "debugfs", "-R", "stat /", path)
	if err != nil || !regexp.MustCompile(`User:\s+0\s+Group:\s+0\b`).Match(out) {
		t.Errorf("root directory of the work disk is not owned by 0:0 (%v):\n%s", err, out)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("work disk mode %v, want 0600", st.Mode().Perm())
	}

	// Put a file on it so the resize has to keep data.
	if _, err := r.Run(ctx, "debugfs", "-w", "-R", "mkdir /keep", path); err != nil {
		t.Fatal(err)
	}

	if err := ResizeWorkDisk(ctx, r, path, 128*mib); err != nil {
		t.Fatalf("ResizeWorkDisk: %v", err)
	}
	if size, _ := fsInfo(t, path); size != 128*mib {
		t.Fatalf("after resize fs size %d, want %d", size, 128*mib)
	}
	if st, _ := os.Stat(path); st.Size() != 128*mib {
		t.Errorf("after resize file size %d, want %d", st.Size(), 128*mib)
	}
	if out, err := r.Run(ctx, "debugfs", "-R", "stat /keep", path); err != nil || !strings.Contains(string(out), "Type: directory") {
		t.Errorf("data lost in resize (%v):\n%s", err, out)
	}
	if out, err := r.Run(ctx, "e2fsck", "-f", "-n", path); err != nil {
		t.Fatalf("e2fsck after resize: %v\n%s", err, out)
	}

	// Same size again: checks and completes, no error.
	if err := ResizeWorkDisk(ctx, r, path, 128*mib); err != nil {
		t.Errorf("ResizeWorkDisk to the current size: %v", err)
	}

	// An interrupted resize (file grown, fs not) is completed by a retry.
	if err := os.Truncate(path, 160*mib); err != nil {
		t.Fatal(err)
	}
	if err := ResizeWorkDisk(ctx, r, path, 160*mib); err != nil {
		t.Fatalf("completing an interrupted resize: %v", err)
	}
	if size, _ := fsInfo(t, path); size != 160*mib {
		t.Errorf("after completing, fs size %d, want %d", size, 160*mib)
	}

	// Shrinking is refused and changes nothing.
	err = ResizeWorkDisk(ctx, r, path, 64*mib)
	if !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), "shrink") {
		t.Errorf("shrink: %v, want a bad_request about shrinking", err)
	}
	if st, _ := os.Stat(path); st.Size() != 160*mib {
		t.Errorf("refused shrink changed the file size to %d", st.Size())
	}
}

func TestCreateWorkDiskRefusals(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	small := filepath.Join(dir, "small.ext4")
	if err := CreateWorkDisk(ctx, &fakeRunner{t: t}, small, 1*mib); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("1 MiB work disk: %v, want bad_request", err)
	}
	if _, err := os.Stat(small); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused work disk left a file: %v", err)
	}

	taken := filepath.Join(dir, "taken.ext4")
	if err := os.WriteFile(taken, []byte("user data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CreateWorkDisk(ctx, &fakeRunner{t: t}, taken, 64*mib); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateWorkDisk over an existing file: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(taken); string(b) != "user data" {
		t.Errorf("existing file changed to %q", b)
	}

	failing := filepath.Join(dir, "failing.ext4")
	fr := &fakeRunner{t: t, fail: map[string]error{"mkfs.ext4": &system.CommandError{Argv: []string{"mkfs.ext4"}, ExitCode: 1, Err: errors.New("exit status 1")}}}
	if err := CreateWorkDisk(ctx, fr, failing, 64*mib); err == nil {
		t.Fatal("CreateWorkDisk succeeded though mkfs.ext4 failed")
	}
	if _, err := os.Stat(failing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed CreateWorkDisk left its file: %v", err)
	}
	if want := []string{"mkfs.ext4", "-q", "-F", "-L", "bangerwork", "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", failing}; fmt.Sprint(fr.calls[0]) != fmt.Sprint(want) {
		t.Errorf("mkfs argv = %q, want %q", fr.calls[0], want)
	}
}

// fakeRunner stands in for the host at the command edge: it records argv
// and fails the commands named in fail.
type fakeRunner struct {
	t     *testing.T
	fail  map[string]error
	calls [][]string
}

func (f *fakeRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	f.calls = append(f.calls, argv)
	if err, ok := f.fail[argv[0]]; ok {
		return nil, err
	}
	return nil, nil
}

func exitErr(code int) error {
	return &system.CommandError{Argv: []string{"x"}, ExitCode: code, Err: fmt.Errorf("exit status %d", code)}
}

func TestResizeWorkDiskCommandOutcomes(t *testing.T) {
	tests := []struct {
		name     string
		fail     map[string]error
		wantErr  string // "" means success
		wantSize int64
		wantCmds []string
	}{
		{"clean check", nil, "", 64 * mib, []string{"e2fsck", "resize2fs"}},
		{"check corrected errors", map[string]error{"e2fsck": exitErr(1)}, "", 64 * mib, []string{"e2fsck", "resize2fs"}},
		{"check wants a human", map[string]error{"e2fsck": exitErr(4)}, "e2fsck -f", 32 * mib, []string{"e2fsck"}},
		{"resize2fs fails", map[string]error{"resize2fs": exitErr(1)}, "retries", 64 * mib, []string{"e2fsck", "resize2fs"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "work.ext4")
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, 32*mib); err != nil {
				t.Fatal(err)
			}
			fr := &fakeRunner{t: t, fail: tc.fail}
			err := ResizeWorkDisk(context.Background(), fr, path, 64*mib)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ResizeWorkDisk: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("ResizeWorkDisk = %v, want an error mentioning %q", err, tc.wantErr)
			}
			if st, _ := os.Stat(path); st.Size() != tc.wantSize {
				t.Errorf("file size %d, want %d", st.Size(), tc.wantSize)
			}
			var names []string
			for _, c := range fr.calls {
				names = append(names, c[0])
				if c[len(c)-1] != path {
					t.Errorf("%v does not end with the disk path", c)
				}
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.wantCmds) {
				t.Errorf("commands %v, want %v", names, tc.wantCmds)
			}
		})
	}
}
