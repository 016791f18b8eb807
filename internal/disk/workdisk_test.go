package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

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

func TestCreateWorkDisk(t *testing.T) {
	needTools(t, "mkfs.ext4", "dumpe2fs", "debugfs")
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
