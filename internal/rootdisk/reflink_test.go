package rootdisk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
)

func TestReflink(t *testing.T) {
	needTools(t, "qemu-img")
	ctx := context.Background()
	xfs, xfsDev := mountLoop(t, "xfs", 512*mib)
	ext := extDir(t)

	// Choose: an explicit reflink on ext4 says why not and what instead.
	_, err := Choose("reflink", VMMQEMU, ext, "", host())
	want := `root_disk = "reflink": ` + ext + ` is on ext4, which cannot reflink; use auto, qcow2 or copy`
	if dmsnap.Available() == nil {
		want = `root_disk = "reflink": ` + ext + ` is on ext4, which cannot reflink; use auto, dm, qcow2 or copy`
	}
	if err == nil || err.Error() != want || !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("Choose(reflink, qemu, ext4) = %v\nwant %s", err, want)
	}
	if _, err := Choose("reflink", VMMFirecracker, ext, "", host()); err == nil || !strings.HasSuffix(err.Error(), "; use auto or copy") && dmsnap.Available() != nil {
		t.Errorf("Choose(reflink, firecracker, ext4) = %v; want it to offer auto or copy only", err)
	}
	if s, err := Choose("reflink", VMMQEMU, filepath.Join(xfs, "vms", "not-made-yet"), "", host()); err != nil || s != Reflink {
		t.Errorf("Choose(reflink, qemu, a dir to be made on xfs) = %q, %v; want reflink", s, err)
	}
	if s, err := Choose("reflink", VMMQEMU, xfs, "", host()); err != nil || s != Reflink {
		t.Errorf("Choose(reflink, qemu, xfs) = %q, %v; want reflink", s, err)
	}
	// Auto on xfs: qcow2 still comes first for qemu; firecracker gets a
	// reflink (unless device-mapper works here).
	wantFC := Reflink
	if dmsnap.Available() == nil {
		wantFC = DM
	}
	wantQ := QCOW2
	if dmsnap.Available() == nil {
		wantQ = DM
	}
	if s, err := Choose("auto", VMMQEMU, xfs, "", host()); err != nil || s != wantQ {
		t.Errorf("Choose(auto, qemu, xfs) = %q, %v; want %q", s, err, wantQ)
	}
	if s, err := Choose("auto", VMMFirecracker, xfs, "", host()); err != nil || s != wantFC {
		t.Errorf("Choose(auto, firecracker, xfs) = %q, %v; want %q", s, err, wantFC)
	}

	// A base on another filesystem cannot be reflinked into xfs.
	extBase := filepath.Join(ext, "rootfs.ext4")
	makeBase(t, extBase, 8*mib, region{0, mib})
	if err := Check(Reflink, VMMFirecracker, xfs, extBase, host()); err == nil || !strings.Contains(err.Error(), "cannot cross filesystems") {
		t.Errorf("Check(reflink) with the base on ext4 = %v; want a cross-filesystem error", err)
	}
	p := filepath.Join(xfs, "cross.raw")
	if _, err := Create(ctx, host(), Reflink, extBase, p); err == nil || !strings.Contains(err.Error(), "cannot cross filesystems") {
		t.Errorf("Create(reflink) across filesystems = %v", err)
	}
	mustNotExist(t, p)
	p = filepath.Join(ext, "noreflink.raw")
	if _, err := Create(ctx, host(), Reflink, extBase, p); err == nil || !strings.Contains(err.Error(), "ext4, which cannot reflink") {
		t.Errorf("Create(reflink) on ext4 = %v", err)
	}
	mustNotExist(t, p)

	// Create on xfs: the clone shares the base's extents.
	base := filepath.Join(xfs, "rootfs.ext4")
	data := makeBase(t, base, 256*mib, region{0, 32 * mib}, region{100 * mib, 32 * mib})
	baseSum := sha(t, base)
	if err := Check(Reflink, VMMQEMU, xfs, base, host()); err != nil {
		t.Fatalf("Check(reflink) on xfs: %v", err)
	}
	used := fsUsed(t, xfs)
	d, err := Create(ctx, host(), Reflink, base, filepath.Join(xfs, "vm-root.raw"))
	if err != nil {
		t.Fatalf("Create(reflink): %v", err)
	}
	if d.Strategy != Reflink || d.Format != FormatRaw || len(d.Chain) != 0 {
		t.Errorf("Create(reflink) = %+v", d)
	}
	if grew := fsUsed(t, xfs) - used; grew > 2*mib {
		t.Errorf("a reflink of 64 MiB of data used %d bytes of the filesystem; want extents shared", grew)
	}
	if u, err := d.Usage(); err != nil || u > mib {
		t.Errorf("Usage of a fresh reflink = %d, %v; want ~0 (extents shared with the base)", u, err)
	}
	got, _ := os.ReadFile(d.Path)
	if !bytes.Equal(got[:32*mib], data[0]) || !bytes.Equal(got[100*mib:132*mib], data[1]) {
		t.Fatal("reflink content differs from the base")
	}
	fh, err := os.OpenFile(d.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt(fill(0xab, 4*mib), 0); err != nil {
		t.Fatal(err)
	}
	fh.Sync()
	fh.Close()
	if sha(t, base) != baseSum {
		t.Fatal("writing the reflink changed the base")
	}
	if u, err := d.Usage(); err != nil || u < 4*mib || u > 8*mib {
		t.Errorf("Usage after rewriting 4 MiB = %d, %v; want about 4 MiB", u, err)
	}

	// Clone of a reflink disk is a reflink too.
	used = fsUsed(t, xfs)
	src, dst, err := Clone(ctx, host(), d, filepath.Join(xfs, "vm2-root.raw"), "", VMMQEMU)
	if err != nil {
		t.Fatal(err)
	}
	if !equalDisk(src, d) || dst.Strategy != Reflink || len(dst.Chain) != 0 {
		t.Errorf("Clone(reflink) = %+v, %+v", src, dst)
	}
	if grew := fsUsed(t, xfs) - used; grew > 2*mib {
		t.Errorf("Clone(reflink) used %d bytes of the filesystem; want extents shared", grew)
	}
	if sha(t, dst.Path) != sha(t, d.Path) {
		t.Error("reflink clone differs from its source")
	}

	// A plain (work) disk on xfs clones by reflink, for either VMM.
	work := NewRaw(filepath.Join(xfs, "work.ext4"))
	makeBase(t, work.Path, 64*mib, region{0, 16 * mib})
	for _, vmm := range []string{VMMQEMU, VMMFirecracker} {
		used = fsUsed(t, xfs)
		s2, w2, err := Clone(ctx, host(), work, filepath.Join(xfs, "work-"+vmm+".ext4"), filepath.Join(xfs, "unused-layer"), vmm)
		if err != nil {
			t.Fatal(err)
		}
		if !equalDisk(s2, work) || w2.Strategy != Plain || w2.Format != FormatRaw {
			t.Errorf("Clone(plain, %s) on xfs = %+v, %+v; want a plain reflink", vmm, s2, w2)
		}
		if grew := fsUsed(t, xfs) - used; grew > 2*mib {
			t.Errorf("Clone(plain, %s) used %d bytes; want a reflink", vmm, grew)
		}
		mustNotExist(t, filepath.Join(xfs, "unused-layer"))
	}
	// SpaceForClone knows a reflink needs next to nothing.
	if n := SpaceForClone(work, xfs, VMMFirecracker); n > 2*mib {
		t.Errorf("SpaceForClone(plain on xfs) = %d", n)
	}
	if m, err := mountOf(xfs); err != nil || m.source != xfsDev || m.fstype != "xfs" {
		t.Errorf("mountOf(%s) = %+v, %v; want xfs on %s", xfs, m, err, xfsDev)
	}
}

// The FIEMAP structures must match linux/fiemap.h.
func TestFiemapLayout(t *testing.T) {
	var e fiemapExtent
	var r fiemapRequest
	if s := unsafe.Sizeof(e); s != 56 {
		t.Errorf("sizeof(struct fiemap_extent) = %d, want 56", s)
	}
	if s := unsafe.Sizeof(r) - fiemapBatch*56; s != 32 {
		t.Errorf("sizeof(struct fiemap) = %d, want 32", s)
	}
	// Usage on a filesystem without FIEMAP falls back to allocated blocks.
	if os.Geteuid() == 0 {
		dir := mountTmpfs(t, 8*mib)
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, fill(1, mib), 0o600); err != nil {
			t.Fatal(err)
		}
		if u, err := NewRaw(p).Usage(); err != nil || u != allocated(t, p) {
			t.Errorf("Usage on tmpfs = %d, %v; want %d", u, err, allocated(t, p))
		}
	}
}
