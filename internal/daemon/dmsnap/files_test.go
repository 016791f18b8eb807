package dmsnap

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/loopdev"
)

// kernelLoopsRunner stands in for dmsetup only; the loops CreateFromFiles
// makes are real. At create it checks, with the kernel, that the table's
// origin is a read-only loop over the base and its cow a writable loop
// over the COW file.
type kernelLoopsRunner struct {
	t          *testing.T
	base, cow  string
	failCreate string // stderr of a failing dmsetup create ("": it works)
	mu         sync.Mutex
	calls      []string
	loops      []string
}

func (k *kernelLoopsRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, strings.Join(argv, " "))
	if len(argv) == 5 && argv[0] == "dmsetup" && argv[1] == "create" {
		f := strings.Fields(argv[4])
		if len(f) != 7 || f[2] != "snapshot" {
			return nil, cmdErr(argv, "bad table")
		}
		for i, want := range map[int]string{3: k.base, 4: k.cow} {
			if got, ok := loopdev.BackingFile(f[i]); !ok || got != want {
				k.t.Errorf("table field %d: %s backs onto %q (%v), want %s", i, f[i], got, ok, want)
			}
		}
		ro, _ := os.ReadFile("/sys/block/" + strings.TrimPrefix(f[3], "/dev/") + "/ro")
		rw, _ := os.ReadFile("/sys/block/" + strings.TrimPrefix(f[4], "/dev/") + "/ro")
		if strings.TrimSpace(string(ro)) != "1" || strings.TrimSpace(string(rw)) != "0" {
			k.t.Errorf("origin ro=%q, cow ro=%q; want 1 and 0", ro, rw)
		}
		k.loops = []string{f[3], f[4]}
		if k.failCreate != "" {
			return nil, cmdErr(argv, k.failCreate)
		}
	}
	return nil, nil
}

func (k *kernelLoopsRunner) waitLoopsCleared() {
	k.t.Helper()
	for _, l := range k.loops {
		for deadline := time.Now().Add(5 * time.Second); ; {
			if _, attached := loopdev.BackingFile(l); !attached {
				break
			}
			if time.Now().After(deadline) {
				k.t.Errorf("%s still attached: the loops outlive what made them", l)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func snapshotFiles(t *testing.T) (base, cow *os.File) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices: %v", err)
	}
	dir := t.TempDir()
	for _, n := range []string{"rootfs.ext4", "root.cow"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, n), 4<<20); err != nil {
			t.Fatal(err)
		}
	}
	base, err := os.Open(filepath.Join(dir, "rootfs.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Close() })
	cow, err = os.OpenFile(filepath.Join(dir, "root.cow"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cow.Close() })
	return base, cow
}

// TestCreateFromFiles: the snapshot is built on real autoclearing loops
// over the descriptors given; the Handles say so, and their removal is
// dmsetup remove alone — never a losetup -d of a number the kernel may
// have handed out again.
func TestCreateFromFiles(t *testing.T) {
	base, cow := snapshotFiles(t)
	r := &kernelLoopsRunner{t: t, base: base.Name(), cow: cow.Name()}
	h, err := CreateFromFiles(context.Background(), r, "banger-files", base, cow)
	if err != nil {
		t.Fatal(err)
	}
	want := Handles{BaseLoop: r.loops[0], COWLoop: r.loops[1], DMName: "banger-files", DMDev: "/dev/mapper/banger-files", AutoClear: true}
	if h != want {
		t.Errorf("handles %+v, want %+v", h, want)
	}
	if want := []string{"dmsetup create banger-files --table 0 8192 snapshot " + r.loops[0] + " " + r.loops[1] + " P 8"}; !slices.Equal(r.calls, want) {
		t.Errorf("ran %q, want %q", r.calls, want)
	}
	// No dm table holds them here: they clear as soon as Create lets go.
	r.waitLoopsCleared()
	r.calls = nil
	if err := Remove(context.Background(), r, h); err != nil {
		t.Fatal(err)
	}
	if want := []string{"dmsetup remove banger-files"}; !slices.Equal(r.calls, want) {
		t.Errorf("removal ran %q, want only %q", r.calls, want)
	}
}

// TestCreateFromFilesFails: dmsetup refusing leaves no loop, and bad
// input reaches no loop at all.
func TestCreateFromFilesFails(t *testing.T) {
	base, cow := snapshotFiles(t)
	r := &kernelLoopsRunner{t: t, base: base.Name(), cow: cow.Name(), failCreate: "device-mapper: reload ioctl on banger-files failed: Invalid argument"}
	if h, err := CreateFromFiles(context.Background(), r, "banger-files", base, cow); err == nil || h != (Handles{}) || !strings.Contains(err.Error(), "create device-mapper device banger-files") {
		t.Errorf("dmsetup failing: %+v, %v", h, err)
	}
	r.waitLoopsCleared()
	// dmsetup may have made the device before its table was refused.
	if len(r.calls) != 2 || r.calls[1] != "dmsetup remove banger-files" {
		t.Errorf("after a failed create ran %q, want a dmsetup remove of the name", r.calls)
	}
	// A name already taken is someone else's: not removed.
	r = &kernelLoopsRunner{t: t, base: base.Name(), cow: cow.Name(), failCreate: "device-mapper: create ioctl on banger-files failed: Device or resource busy"}
	if _, err := CreateFromFiles(context.Background(), r, "banger-files", base, cow); err == nil {
		t.Error("create over a taken name succeeded")
	}
	r.waitLoopsCleared()
	if len(r.calls) != 1 {
		t.Errorf("create over a taken name ran %q, want no removal", r.calls)
	}

	ro, err := os.Open(cow.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	r = &kernelLoopsRunner{t: t}
	for _, c := range []struct {
		name      string
		base, cow *os.File
		want      string
	}{
		{"banger x", base, cow, "may only hold"},
		{"banger-files", base, ro, "open read-write"},
	} {
		if _, err := CreateFromFiles(context.Background(), r, c.name, c.base, c.cow); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if len(r.calls) != 0 {
		t.Errorf("bad input ran %q", r.calls)
	}
	// The read-write case failed after the base's loop was attached: it
	// cleared with the descriptor.
	for deadline := time.Now().Add(5 * time.Second); len(loopsOn(base.Name())) > 0; {
		if time.Now().After(deadline) {
			t.Errorf("loops left on %s: %v", base.Name(), loopsOn(base.Name()))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loopsOn lists the loop devices the kernel says are attached to file.
func loopsOn(file string) []string {
	var out []string
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == file {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(p))))
		}
	}
	return out
}
