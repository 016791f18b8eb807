package dmsnap

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/system"
)

// TestRealKernel makes a snapshot with the real losetup and dmsetup,
// writes through it, and checks the base is untouched and that Remove
// leaves nothing behind. It needs root, loop devices and device-mapper.
func TestRealKernel(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("skipped: no device-mapper snapshots on this host, so nothing to test against: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices and create dm devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs loop devices: %v", err)
	}
	ctx := context.Background()
	r := &system.Exec{}
	dir := t.TempDir()

	const size = 8 << 20
	base := filepath.Join(dir, "base.img")
	content := make([]byte, size)
	if _, err := rand.Read(content); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base, content, 0o644); err != nil {
		t.Fatal(err)
	}
	baseSum := sha256.Sum256(content)

	spec := Spec{
		Name:     fmt.Sprintf("banger-dmsnaptest-%d", os.Getpid()),
		BasePath: base,
		COWPath:  filepath.Join(dir, "root.cow"),
	}
	h, err := Create(ctx, r, spec, nil)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			if err := Remove(context.Background(), r, h); err != nil {
				t.Errorf("Remove in cleanup: %v", err)
			}
		}
	})

	// Read the base through the snapshot, then overwrite two chunks.
	dev, err := os.OpenFile(h.DMDev, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open %s: %v", h.DMDev, err)
	}
	got := make([]byte, size)
	if _, err := dev.ReadAt(got, 0); err != nil {
		dev.Close()
		t.Fatalf("read %s: %v", h.DMDev, err)
	}
	if !bytes.Equal(got, content) {
		dev.Close()
		t.Fatal("the snapshot does not read as the base")
	}
	patch := bytes.Repeat([]byte("banger"), 1000)
	for _, off := range []int64{0, size / 2} {
		if _, err := dev.WriteAt(patch, off); err != nil {
			dev.Close()
			t.Fatalf("write %s at %d: %v", h.DMDev, off, err)
		}
	}
	if err := dev.Sync(); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	back := make([]byte, len(patch))
	if _, err := dev.ReadAt(back, size/2); err != nil || !bytes.Equal(back, patch) {
		dev.Close()
		t.Fatalf("read back through the snapshot: %v", err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}

	now, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(now) != baseSum {
		t.Fatal("writing through the snapshot changed the base image")
	}

	if err := Remove(ctx, r, h); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	removed = true

	if _, err := os.Lstat(h.DMDev); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists after Remove (%v)", h.DMDev, err)
	}
	if _, err := r.Run(ctx, "dmsetup", "info", spec.Name); err == nil {
		t.Errorf("dm device %s still exists after Remove", spec.Name)
	}
	for _, f := range []string{base, spec.COWPath} {
		out, err := r.Run(ctx, "losetup", "--associated", f)
		if err != nil {
			// The COW file is gone; losetup -j of a missing file fails.
			if f == spec.COWPath {
				continue
			}
			t.Fatalf("losetup --associated %s: %v", f, err)
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			t.Errorf("loop device still attached to %s: %s", f, s)
		}
	}
	for _, loop := range []string{h.BaseLoop, h.COWLoop} {
		backing := filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file")
		if b, err := os.ReadFile(backing); err == nil {
			t.Errorf("%s still attached to %s", loop, strings.TrimSpace(string(b)))
		}
	}
	if _, err := os.Lstat(spec.COWPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("COW file %s still exists after Remove", spec.COWPath)
	}
}

// backedBy reports whether loop is attached to a file under dir.
func backedBy(loop, dir string) bool {
	if loop == "" {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file"))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/")
}

// failDMRunner runs losetup for real and fails every dmsetup command
// without running it, as a host without device-mapper would.
type failDMRunner struct{ system.Exec }

func (r *failDMRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	if argv[0] == "dmsetup" {
		return nil, &system.CommandError{Argv: argv, ExitCode: 1, Err: errors.New("exit status 1"),
			Stderr: "/dev/mapper/control: open failed: No such device\nCommand failed."}
	}
	return r.Exec.Run(ctx, argv...)
}

// TestRealLoopCleanup attaches real loop devices and fails dmsetup create,
// checking that Create's teardown detaches them with the real losetup.
// Unlike TestRealKernel it needs only root and loop devices.
func TestRealLoopCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs loop devices: %v", err)
	}
	if _, err := system.LookPath("losetup"); err != nil {
		t.Skipf("needs losetup: %v", err)
	}
	ctx := context.Background()
	r := &failDMRunner{}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "banger-dmsnaptest", BasePath: base, COWPath: filepath.Join(dir, "root.cow")}
	var made Handles
	// Safety net: if the code under test leaks a loop device (a broken
	// teardown), detach it anyway so the host is not left holding it. Only
	// devices still backed by this test's files are touched.
	t.Cleanup(func() {
		for _, loop := range []string{made.BaseLoop, made.COWLoop} {
			if backedBy(loop, dir) {
				r.Exec.Run(context.Background(), "losetup", "-d", loop)
			}
		}
	})
	_, err := Create(ctx, r, spec, func(h Handles) error { made = h; return nil })
	if err == nil || !strings.HasPrefix(err.Error(), "dmsnap: create device-mapper device banger-dmsnaptest: ") {
		t.Fatalf("err = %v, want a create device-mapper device error", err)
	}
	if strings.Contains(err.Error(), "cleanup") {
		t.Fatalf("teardown failed: %v", err)
	}
	if !loopRe.MatchString(made.BaseLoop) || !loopRe.MatchString(made.COWLoop) {
		t.Fatalf("recorded handles %+v; want two loop devices", made)
	}
	for _, loop := range []string{made.BaseLoop, made.COWLoop} {
		if backedBy(loop, dir) {
			t.Errorf("%s still attached to a file in %s", loop, dir)
		}
	}
	out, err := r.Exec.Run(ctx, "losetup", "--associated", base)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("loop device still attached to the base: %s", s)
	}
	if _, err := os.Lstat(spec.COWPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("COW file %s left behind", spec.COWPath)
	}
}

// TestAvailableSaysWhy: where snapshots cannot be made, the error tells
// the user what to do about it.
func TestAvailableSaysWhy(t *testing.T) {
	err := Available()
	if err == nil {
		t.Skip("device-mapper is available on this host; nothing to explain")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "dmsnap: ") || !(strings.Contains(msg, "modprobe dm_snapshot") || strings.Contains(msg, "install") || strings.Contains(msg, "root")) {
		t.Fatalf("Available() = %q; want it to say how to fix it", msg)
	}
	if _, serr := os.Stat(mapperDir); serr == nil && strings.Contains(msg, "stat "+mapperControl) {
		t.Fatalf("Available created nothing, but %s exists", mapperDir)
	}
}
