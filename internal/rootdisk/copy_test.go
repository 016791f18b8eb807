package rootdisk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCreateCopyKeepsHoles(t *testing.T) {
	ctx := context.Background()
	dir := extDir(t)
	base := filepath.Join(dir, "rootfs.ext4")
	const size = 256 * mib
	data := makeBase(t, base, size, region{0, mib}, region{100 * mib, 2 * mib}, region{size - mib, mib})
	baseSum := sha(t, base)

	d, err := Create(ctx, host(), Copy, base, filepath.Join(dir, "root.raw"))
	if err != nil {
		t.Fatalf("Create(copy): %v", err)
	}
	if want := (Disk{Strategy: Copy, Path: d.Path, Format: FormatRaw}); !equalDisk(d, want) {
		t.Errorf("Create(copy) = %+v, want %+v", d, want)
	}
	if sha(t, base) != baseSum {
		t.Fatal("Create(copy) changed the base")
	}
	if sha(t, d.Path) != baseSum {
		t.Fatal("the copy differs from the base")
	}
	if a := allocated(t, d.Path); a > 4*mib+256<<10 {
		t.Errorf("copy of 4 MiB of data in a %d-byte file allocates %d bytes: holes were filled", int64(size), a)
	}
	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if next, err := unix.Seek(int(f.Fd()), 2*mib, unix.SEEK_DATA); err != nil || next < 99*mib {
		t.Errorf("SEEK_DATA from 2 MiB = %d, %v; want the data at 100 MiB (hole lost)", next, err)
	}
	if st, _ := os.Stat(d.Path); st.Mode().Perm() != 0o600 {
		t.Errorf("copy mode %v, want 0600", st.Mode().Perm())
	}
	if u, err := d.Usage(); err != nil || u < 4*mib || u > 5*mib {
		t.Errorf("Usage = %d, %v; want about 4 MiB", u, err)
	}

	// Grow a raw disk: a longer sparse file, never shorter.
	if err := d.Grow(ctx, host(), 2*size); err != nil {
		t.Fatal(err)
	}
	if vs, err := d.VirtualSize(ctx, host()); err != nil || vs != 2*size {
		t.Errorf("VirtualSize after Grow = %d, %v", vs, err)
	}
	if err := d.Grow(ctx, host(), size); err == nil {
		t.Error("shrinking a raw disk succeeded")
	}
	if got, _ := os.ReadFile(d.Path); !bytes.Equal(got[100*mib:102*mib], data[1]) || int64(len(got)) != 2*size {
		t.Error("Grow lost data")
	}

	// Clone of a copy disk on ext4 is a sparse copy.
	src, dst, err := Clone(ctx, host(), d, filepath.Join(dir, "root2.raw"), "", VMMQEMU)
	if err != nil {
		t.Fatal(err)
	}
	if !equalDisk(src, d) || dst.Strategy != Copy || dst.Format != FormatRaw || len(dst.Chain) != 0 {
		t.Errorf("Clone(copy) = %+v, %+v", src, dst)
	}
	if sha(t, dst.Path) != sha(t, d.Path) {
		t.Error("copy clone differs")
	}
	if a := allocated(t, dst.Path); a > 4*mib+256<<10 {
		t.Errorf("clone allocates %d bytes: holes were filled", a)
	}
	if sha(t, base) != baseSum {
		t.Fatal("the base changed")
	}
}

// A plain (work) disk on ext4: firecracker gets a sparse copy, qemu a
// frozen raw layer with two qcow2 overlays.
func TestClonePlain(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := extDir(t)
	work := NewRaw(filepath.Join(dir, "work.ext4"))
	data := makeBase(t, work.Path, 64*mib, region{0, 4 * mib})[0]
	if err := os.Chmod(work.Path, 0o600); err != nil {
		t.Fatal(err)
	}
	workSum := sha(t, work.Path)

	src, dst, err := Clone(ctx, host(), work, filepath.Join(dir, "work-fc.ext4"), filepath.Join(dir, "layer-unused"), VMMFirecracker)
	if err != nil {
		t.Fatal(err)
	}
	if !equalDisk(src, work) || dst.Strategy != Plain || dst.Format != FormatRaw {
		t.Errorf("Clone(plain, firecracker) = %+v, %+v", src, dst)
	}
	if sha(t, dst.Path) != workSum || allocated(t, dst.Path) > 5*mib {
		t.Error("firecracker clone of a plain disk is not a sparse copy")
	}
	mustNotExist(t, filepath.Join(dir, "layer-unused"))

	layer := filepath.Join(dir, "work-layer.raw")
	src, dst, err = Clone(ctx, host(), work, filepath.Join(dir, "work-q.qcow2"), layer, VMMQEMU)
	if err != nil {
		t.Fatal(err)
	}
	chain := []string{layer}
	if want := (Disk{Strategy: QCOW2, Path: work.Path, Format: FormatQCOW2, Chain: chain}); !equalDisk(src, want) {
		t.Errorf("src after freezing = %+v, want %+v", src, want)
	}
	if want := (Disk{Strategy: QCOW2, Path: dst.Path, Format: FormatQCOW2, Chain: chain}); !equalDisk(dst, want) {
		t.Errorf("dst = %+v, want %+v", dst, want)
	}
	if sha(t, layer) != workSum {
		t.Error("the frozen layer is not the work disk's content")
	}
	if st, _ := os.Stat(layer); st.Mode().Perm() != 0o444 {
		t.Errorf("layer mode %v, want 0444", st.Mode().Perm())
	}
	info, err := imageInfo(ctx, host(), dst.Path, FormatQCOW2, true)
	if err != nil || info.BackingFormat != "raw" || info.FullBackingFilename != layer || info.VirtualSize != 64*mib {
		t.Errorf("dst overlay info = %+v, %v", info, err)
	}
	qemuWrite(t, src.Path, 0x11, 0, mib)
	if v := guestView(t, dst); !bytes.Equal(v[:4*mib], data) {
		t.Error("dst does not see the work disk as it was")
	}
	if sha(t, layer) != workSum {
		t.Error("writing src changed the layer")
	}
}
