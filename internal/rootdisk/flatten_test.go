package rootdisk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestFlatten(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "rootfs.ext4")
	const size = 64 * mib
	data := makeBase(t, base, size, region{0, 2 * mib}, region{40 * mib, mib})

	// A qcow2 overlay with one write, then a clone's second layer with
	// another: flattening merges the whole chain.
	vm := filepath.Join(dir, "vm", "root.qcow2")
	if err := os.Mkdir(filepath.Dir(vm), 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := Create(ctx, host(), QCOW2, base, vm)
	if err != nil {
		t.Fatal(err)
	}
	qemuWrite(t, vm, 0xab, mib, mib)
	flat := filepath.Join(dir, "flat.raw")
	if err := Flatten(ctx, host(), d, flat, ""); err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	got, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want, data[0])
	copy(want[mib:2*mib], fill(0xab, mib))
	copy(want[40*mib:], data[1])
	if !bytes.Equal(got, want) {
		t.Fatal("the flattened file is not what the VM saw")
	}
	if st, _ := os.Stat(flat); st.Mode().Perm() != 0o600 {
		t.Errorf("flattened file mode %v, want 0600", st.Mode().Perm())
	}
	// Only the 3 MiB of data are allocated: zero ranges stay holes.
	if a := allocated(t, flat); a > 4*mib {
		t.Errorf("flattened file allocates %d bytes, want ≤ 4 MiB of a 64 MiB disk", a)
	}
	// Independent of the chain: removing the base changes nothing.
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(flat); !bytes.Equal(again, want) {
		t.Fatal("the flattened file changed when its base went away")
	}

	// A plain raw disk is copied; an existing target is refused and kept.
	plain := filepath.Join(dir, "plain.raw")
	if err := Flatten(ctx, host(), NewRaw(flat), plain, ""); err != nil {
		t.Fatal(err)
	}
	if sha(t, plain) != sha(t, flat) {
		t.Error("the plain disk's copy differs")
	}
	if err := Flatten(ctx, host(), NewRaw(flat), plain, ""); err == nil {
		t.Error("Flatten over an existing file succeeded")
	}
	if sha(t, plain) != sha(t, flat) {
		t.Error("a refused Flatten touched the existing file")
	}
	// A failing convert leaves nothing.
	broken := Disk{Strategy: QCOW2, Path: filepath.Join(dir, "missing.qcow2"), Format: FormatQCOW2}
	out := filepath.Join(dir, "out.raw")
	if err := Flatten(ctx, host(), broken, out, ""); err == nil {
		t.Error("Flatten of a missing layer succeeded")
	}
	mustNotExist(t, out)
}
