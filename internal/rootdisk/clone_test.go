package rootdisk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// qcow2Fixture is a base image and a VM's qcow2 disk over it.
type qcow2Fixture struct {
	dir, layers string
	base        string
	baseData    []byte // the first 8 MiB of the base
	src         Disk
}

func newQCOW2Fixture(t *testing.T) qcow2Fixture {
	t.Helper()
	needTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	f := qcow2Fixture{dir: dir, layers: filepath.Join(dir, "layers"), base: filepath.Join(dir, "rootfs.ext4")}
	for _, sub := range []string{"layers", "vm-a", "vm-b", "vm-c"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	f.baseData = makeBase(t, f.base, 32*mib, region{0, 8 * mib})[0]
	var err error
	f.src, err = Create(context.Background(), host(), QCOW2, f.base, filepath.Join(dir, "vm-a", "root.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestCloneQCOW2(t *testing.T) {
	f := newQCOW2Fixture(t)
	ctx := context.Background()
	baseSum := sha(t, f.base)

	qemuWrite(t, f.src.Path, 0xaa, 0, mib) // A, before the clone
	layer := filepath.Join(f.layers, "L1.qcow2")
	dstPath := filepath.Join(f.dir, "vm-b", "root.qcow2")
	src, dst, err := Clone(ctx, host(), f.src, dstPath, layer, VMMQEMU)
	if err != nil {
		t.Fatalf("Clone: %v", err)
	}
	chain := []string{layer, f.base}
	if want := (Disk{Strategy: QCOW2, Path: f.src.Path, Format: FormatQCOW2, Chain: chain}); !equalDisk(src, want) {
		t.Errorf("new src = %+v, want %+v", src, want)
	}
	if want := (Disk{Strategy: QCOW2, Path: dstPath, Format: FormatQCOW2, Chain: chain}); !equalDisk(dst, want) {
		t.Errorf("dst = %+v, want %+v", dst, want)
	}
	st, err := os.Stat(layer)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o444 {
		t.Errorf("layer mode %v, want 0444 (read-only)", st.Mode().Perm())
	}
	for _, d := range []Disk{src, dst} {
		info, err := imageInfo(ctx, host(), d.Path, FormatQCOW2, true)
		if err != nil {
			t.Fatal(err)
		}
		if info.FullBackingFilename != layer || info.BackingFormat != "qcow2" {
			t.Errorf("%s backs onto %s (%s), want %s (qcow2)", d.Path, info.FullBackingFilename, info.BackingFormat, layer)
		}
		if a := allocated(t, d.Path); a >= mib {
			t.Errorf("new overlay %s allocates %d bytes, want < 1 MiB", d.Path, a)
		}
		if st, _ := os.Stat(d.Path); st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", d.Path, st.Mode().Perm())
		}
	}
	mustNotExist(t, f.src.Path+newOverlaySuffix)
	layerSum := sha(t, layer)

	qemuWrite(t, src.Path, 0xbb, 2*mib, mib) // B, src only
	qemuWrite(t, dst.Path, 0xcc, 4*mib, mib) // C, dst only

	A, B, C := fill(0xaa, mib), fill(0xbb, mib), fill(0xcc, mib)
	orig := func(off int64) []byte { return f.baseData[off : off+mib] }
	at := func(b []byte, off int64) []byte { return b[off : off+mib] }
	sv, dv := guestView(t, src), guestView(t, dst)
	if !bytes.Equal(at(dv, 0), A) || !bytes.Equal(at(dv, 2*mib), orig(2*mib)) || !bytes.Equal(at(dv, 4*mib), C) {
		t.Error("dst must see A and its own C, not src's later B")
	}
	if !bytes.Equal(at(sv, 0), A) || !bytes.Equal(at(sv, 2*mib), B) || !bytes.Equal(at(sv, 4*mib), orig(4*mib)) {
		t.Error("src must see A and B, not dst's C")
	}
	if sha(t, layer) != layerSum || sha(t, f.base) != baseSum {
		t.Error("writes through the new overlays changed the layer or the base")
	}

	// Layers are unused only when no Chain mentions them.
	unused := func(disks ...Disk) []string {
		t.Helper()
		got, err := UnusedLayers(f.layers, disks)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := unused(src, dst); len(got) != 0 {
		t.Errorf("UnusedLayers with both disks = %v, want none", got)
	}
	if got := unused(dst); len(got) != 0 {
		t.Errorf("UnusedLayers with dst only = %v, want none", got)
	}
	if got := unused(); !reflect.DeepEqual(got, []string{layer}) {
		t.Errorf("UnusedLayers with no disks = %v, want [%s]", got, layer)
	}

	// Clone the clone: the chain grows, and a layer below another stays
	// in use through the full chain.
	layer2 := filepath.Join(f.layers, "L2.qcow2")
	dst2, dst3, err := Clone(ctx, host(), dst, filepath.Join(f.dir, "vm-c", "root.qcow2"), layer2, VMMQEMU)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{layer2, layer, f.base}; !reflect.DeepEqual(dst3.Chain, want) || !reflect.DeepEqual(dst2.Chain, want) {
		t.Errorf("chains after a second clone = %v, %v; want %v", dst2.Chain, dst3.Chain, want)
	}
	if dv := guestView(t, dst3); !bytes.Equal(at(dv, 0), A) || !bytes.Equal(at(dv, 4*mib), C) {
		t.Error("the second clone lost content")
	}
	if got := unused(dst3); len(got) != 0 {
		t.Errorf("UnusedLayers with a disk over L2 (over L1) = %v, want none", got)
	}
	if got := unused(src); !reflect.DeepEqual(got, []string{layer2}) {
		t.Errorf("UnusedLayers with only src (over L1) = %v, want [%s]", got, layer2)
	}

	// Remove deletes the VM's own layer only.
	for _, d := range []Disk{src, dst2, dst3} {
		if err := Remove(ctx, host(), d); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{layer, layer2, f.base} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Remove deleted a chain file: %v", err)
		}
	}
}

func TestCloneQCOW2Failures(t *testing.T) {
	f := newQCOW2Fixture(t)
	ctx := context.Background()
	qemuWrite(t, f.src.Path, 0xaa, 0, mib)
	srcSum := sha(t, f.src.Path)
	dstPath := filepath.Join(f.dir, "vm-b", "root.qcow2")
	layer := filepath.Join(f.layers, "L1.qcow2")

	// intact checks that a failed Clone left src as it was and made
	// nothing.
	intact := func(t *testing.T, got Disk, extra ...string) {
		t.Helper()
		if !equalDisk(got, f.src) {
			t.Errorf("Clone returned src %+v after failing, want %+v", got, f.src)
		}
		if sha(t, f.src.Path) != srcSum {
			t.Error("a failed Clone changed src")
		}
		if st, err := os.Stat(f.src.Path); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("src after a failed Clone: %v, %v", st, err)
		}
		mustNotExist(t, append([]string{dstPath, layer, f.src.Path + newOverlaySuffix}, extra...)...)
	}

	t.Run("qemu-img fails on the second overlay", func(t *testing.T) {
		r := &failNth{inner: host(), match: "create", n: 2}
		got, _, err := Clone(ctx, r, f.src, dstPath, layer, VMMQEMU)
		if err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("Clone = %v, want the injected failure", err)
		}
		intact(t, got)
	})
	t.Run("qemu-img fails on the first overlay", func(t *testing.T) {
		r := &failNth{inner: host(), match: "create", n: 1}
		got, _, err := Clone(ctx, r, f.src, dstPath, layer, VMMQEMU)
		if err == nil {
			t.Fatal("Clone succeeded")
		}
		intact(t, got)
	})
	t.Run("last step fails after the source was replaced", func(t *testing.T) {
		defer func(orig func(string, os.FileMode) error) { chmodLayer = orig }(chmodLayer)
		chmodLayer = func(string, os.FileMode) error { return errors.New("fake: injected chmod failure") }
		got, _, err := Clone(ctx, host(), f.src, dstPath, layer, VMMQEMU)
		if err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("Clone = %v, want the injected failure", err)
		}
		intact(t, got)
		if info, err := imageInfo(ctx, host(), f.src.Path, FormatQCOW2, true); err != nil || info.FullBackingFilename != f.base {
			t.Errorf("src after the undo backs onto %q (%v), want the base", info.FullBackingFilename, err)
		}
	})
	t.Run("no layer path", func(t *testing.T) {
		got, _, err := Clone(ctx, host(), f.src, dstPath, "", VMMQEMU)
		if err == nil || !strings.Contains(err.Error(), "layer path") {
			t.Fatalf("Clone = %v", err)
		}
		intact(t, got)
	})
	t.Run("existing layer", func(t *testing.T) {
		other := filepath.Join(f.layers, "taken.qcow2")
		if err := os.WriteFile(other, []byte("x"), 0o444); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(other)
		got, _, err := Clone(ctx, host(), f.src, dstPath, other, VMMQEMU)
		if err == nil {
			t.Fatal("Clone over an existing layer succeeded")
		}
		intact(t, got)
		if b, _ := os.ReadFile(other); string(b) != "x" {
			t.Error("existing layer changed")
		}
	})
	t.Run("existing destination", func(t *testing.T) {
		if err := os.WriteFile(dstPath, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _, err := Clone(ctx, host(), f.src, dstPath, layer, VMMQEMU)
		os.Remove(dstPath)
		if err == nil {
			t.Fatal("Clone over an existing destination succeeded")
		}
		intact(t, got)
	})
	t.Run("layer on another filesystem", func(t *testing.T) {
		other := mountTmpfs(t, 4*mib)
		elsewhere := filepath.Join(other, "L1.qcow2")
		got, _, err := Clone(ctx, host(), f.src, dstPath, elsewhere, VMMQEMU)
		if err == nil || !strings.Contains(err.Error(), "same filesystem") {
			t.Fatalf("Clone = %v, want a same-filesystem error", err)
		}
		intact(t, got, elsewhere)
	})
	t.Run("source in use by a VMM", func(t *testing.T) {
		// qemu-io holds the image open (with QEMU's write lock) until its
		// stdin closes, like a running VM.
		cmd := exec.Command("qemu-io", "-f", "qcow2", f.src.Path)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() string { stdin.Close(); <-exited; return out.String() }
		locked := false
		for deadline := time.Now().Add(30 * time.Second); !locked && time.Now().Before(deadline); {
			select {
			case err := <-exited:
				t.Fatalf("qemu-io exited (%v): %s", err, out.String())
			case <-time.After(20 * time.Millisecond):
			}
			_, err := imageInfo(ctx, host(), f.src.Path, FormatQCOW2, false)
			locked = err != nil
		}
		if !locked {
			t.Fatalf("qemu-io never locked %s: %s", f.src.Path, stop())
		}
		got, _, err := Clone(ctx, host(), f.src, dstPath, layer, VMMQEMU)
		said := stop()
		if err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("Clone of a disk a VMM holds = %v, want an 'in use' error (qemu-io said %q)", err, said)
		}
		intact(t, got)
	})
}

// failNth passes commands to inner, except that the n-th one whose argv
// contains match fails.
type failNth struct {
	inner Runner
	match string
	n     int32
	seen  atomic.Int32
}

func (r *failNth) Run(ctx context.Context, argv ...string) ([]byte, error) {
	if strings.Contains(strings.Join(argv, " "), r.match) && r.seen.Add(1) == r.n {
		return nil, errors.New("fake: injected failure of " + strings.Join(argv, " "))
	}
	return r.inner.Run(ctx, argv...)
}

// TestUnfreeze: a clone whose caller never recorded the frozen layer (a
// crash between Clone and the row) is undone: the source's disk is its
// original file again, with what was written before, and the layer and
// new overlay are gone. A freeze that only linked the layer is undone too.
func TestUnfreeze(t *testing.T) {
	f := newQCOW2Fixture(t)
	ctx := context.Background()
	qemuWrite(t, f.src.Path, 0xaa, 0, mib)
	before := sha(t, f.src.Path)
	layer := filepath.Join(f.layers, "L1.qcow2")
	if _, _, err := Clone(ctx, host(), f.src, filepath.Join(f.dir, "vm-b", "root.qcow2"), layer, VMMQEMU); err != nil {
		t.Fatal(err)
	}
	if sha(t, f.src.Path) == before {
		t.Fatal("the clone did not replace the source's disk with an overlay")
	}
	if err := Unfreeze(ctx, host(), f.src.Path, layer); err != nil {
		t.Fatal(err)
	}
	if got := sha(t, f.src.Path); got != before {
		t.Error("after Unfreeze the source's disk is not its original file")
	}
	if _, err := os.Lstat(layer); !os.IsNotExist(err) {
		t.Errorf("the layer is still there: %v", err)
	}
	if err := Unfreeze(ctx, host(), f.src.Path, layer); err != nil {
		t.Errorf("a second Unfreeze: %v", err)
	}
	// Only the link made: the disk stays, the link goes.
	if err := os.Link(f.src.Path, layer); err != nil {
		t.Fatal(err)
	}
	if err := Unfreeze(ctx, host(), f.src.Path, layer); err != nil {
		t.Fatal(err)
	}
	if got := sha(t, f.src.Path); got != before {
		t.Error("Unfreeze of a bare link changed the disk")
	}
	if _, err := os.Lstat(layer); !os.IsNotExist(err) {
		t.Errorf("the link is still there: %v", err)
	}
}
