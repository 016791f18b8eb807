package rootdisk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestCreateQCOW2(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "rootfs.ext4")
	const size = 64 * mib
	data := makeBase(t, base, size, region{0, 2 * mib}, region{40 * mib, mib})
	baseSum := sha(t, base)

	path := filepath.Join(dir, "vm", "root.qcow2")
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := Create(ctx, host(), QCOW2, base, path)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := Disk{Strategy: QCOW2, Path: path, Format: FormatQCOW2, Chain: []string{base}}
	if !equalDisk(d, want) {
		t.Fatalf("Create = %+v, want %+v", d, want)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("overlay mode %v, want 0600", st.Mode().Perm())
	}
	// The overlay names the base as a raw backing file, by absolute path.
	info, err := imageInfo(ctx, host(), path, FormatQCOW2, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.FullBackingFilename != base || info.BackingFormat != "raw" || info.VirtualSize != size {
		t.Errorf("qemu-img info = %+v; want backing %s (raw), virtual size %d", info, base, size)
	}
	if a := allocated(t, path); a >= mib {
		t.Errorf("fresh overlay allocates %d bytes, want < 1 MiB", a)
	}
	if view := guestView(t, d); !bytes.Equal(view[:2*mib], data[0]) || !bytes.Equal(view[40*mib:41*mib], data[1]) {
		t.Fatal("the overlay does not show the base's content")
	}

	before, err := d.Usage()
	if err != nil {
		t.Fatal(err)
	}
	qemuWrite(t, path, 0xab, 0, mib)
	if got := sha(t, base); got != baseSum {
		t.Fatal("writing through the overlay changed the base")
	}
	after, err := d.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if after < before+mib {
		t.Errorf("Usage %d → %d after writing 1 MiB; want it to grow by at least 1 MiB", before, after)
	}
	view := guestView(t, d)
	if !bytes.Equal(view[:mib], fill(0xab, mib)) || !bytes.Equal(view[mib:2*mib], data[0][mib:]) {
		t.Error("the guest does not see its write over the base")
	}

	// Grow: the virtual size changes, the base does not.
	if vs, err := d.VirtualSize(ctx, host()); err != nil || vs != size {
		t.Fatalf("VirtualSize = %d, %v; want %d", vs, err, size)
	}
	if err := d.Grow(ctx, host(), 128*mib); err != nil {
		t.Fatalf("Grow: %v", err)
	}
	if vs, err := d.VirtualSize(ctx, host()); err != nil || vs != 128*mib {
		t.Fatalf("VirtualSize after Grow = %d, %v; want %d", vs, err, 128*mib)
	}
	if err := d.Grow(ctx, host(), 128*mib); err != nil {
		t.Errorf("Grow to the same size: %v", err)
	}
	err = d.Grow(ctx, host(), 64*mib)
	if !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), "cannot shrink") {
		t.Errorf("shrinking: %v; want a bad_request 'cannot shrink' error", err)
	}
	if vs, _ := d.VirtualSize(ctx, host()); vs != 128*mib {
		t.Errorf("a refused shrink changed the size to %d", vs)
	}
	if err := d.Grow(ctx, host(), 200*mib+1); err == nil {
		t.Error("Grow to a size that is not a multiple of 512 succeeded")
	}
	if got := sha(t, base); got != baseSum {
		t.Fatal("Grow changed the base")
	}

	if err := Remove(ctx, host(), d); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	mustNotExist(t, path)
	if got := sha(t, base); got != baseSum {
		t.Fatal("Remove changed the base")
	}
	if err := Remove(ctx, host(), d); err != nil {
		t.Errorf("Remove of a removed disk: %v", err)
	}
}

// The overlay stays tiny whatever the size of the base.
func TestCreateQCOW2LargeSparseBase(t *testing.T) {
	needTools(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "big.ext4")
	makeBase(t, base, 8<<30, region{0, mib}, region{4 << 30, mib}, region{8<<30 - mib, mib})
	d, err := Create(ctx, host(), QCOW2, base, filepath.Join(dir, "root.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	if a := allocated(t, d.Path); a >= mib {
		t.Errorf("overlay over an 8 GiB base allocates %d bytes, want < 1 MiB", a)
	}
	if vs, err := d.VirtualSize(ctx, host()); err != nil || vs != 8<<30 {
		t.Errorf("VirtualSize = %d, %v; want 8 GiB", vs, err)
	}
}

func TestCreateRefusals(t *testing.T) {
	needTools(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	makeBase(t, base, 4*mib, region{0, mib})

	taken := filepath.Join(dir, "taken")
	if err := os.WriteFile(taken, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Strategy{QCOW2, Copy, DM} {
		if _, err := Create(ctx, host(), s, base, taken); err == nil {
			t.Errorf("%s: Create over an existing file succeeded", s)
		}
		if b, _ := os.ReadFile(taken); string(b) != "precious" {
			t.Fatalf("%s: Create clobbered an existing file", s)
		}
	}

	// A qcow2 base is refused: QEMU would follow its backing file.
	q, err := Create(ctx, host(), QCOW2, base, filepath.Join(dir, "layer.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, host(), QCOW2, q.Path, filepath.Join(dir, "over.qcow2")); err == nil || !strings.Contains(err.Error(), "qcow2") {
		t.Errorf("Create over a qcow2 base = %v, want a refusal", err)
	}
	mustNotExist(t, filepath.Join(dir, "over.qcow2"))

	for name, b := range map[string]string{"missing": filepath.Join(dir, "nope"), "directory": dir} {
		p := filepath.Join(dir, "from-"+name)
		if _, err := Create(ctx, host(), QCOW2, b, p); err == nil {
			t.Errorf("Create over a %s base succeeded", name)
		}
		mustNotExist(t, p)
	}

	// Remove never deletes a file in the disk's own chain.
	if err := Remove(ctx, host(), Disk{Strategy: Copy, Path: base, Format: FormatRaw, Chain: []string{base}}); err == nil {
		t.Error("Remove of a disk whose Path is in its Chain succeeded")
	}
	if _, err := os.Stat(base); err != nil {
		t.Fatalf("Remove deleted a chain file: %v", err)
	}

	// qemu-img failing leaves no file behind.
	p := filepath.Join(dir, "fails.qcow2")
	_, err = Create(ctx, failRunner{}, QCOW2, base, p)
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Errorf("Create with a failing qemu-img = %v", err)
	}
	mustNotExist(t, p)

	// A cancelled context stops a copy and leaves nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	p = filepath.Join(dir, "cancelled.raw")
	if _, err := Create(cctx, host(), Copy, base, p); !errors.Is(err, context.Canceled) {
		t.Errorf("Create with a cancelled context = %v", err)
	}
	mustNotExist(t, p)
}

func TestDiskJSON(t *testing.T) {
	d := Disk{Strategy: QCOW2, Path: "/v/root.qcow2", Format: FormatQCOW2, Chain: []string{"/l/1", "/i/rootfs"}}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"strategy":"qcow2","path":"/v/root.qcow2","format":"qcow2","chain":["/l/1","/i/rootfs"]}`
	if string(b) != want {
		t.Errorf("JSON = %s, want %s", b, want)
	}
	var back Disk
	if err := json.Unmarshal(b, &back); err != nil || !equalDisk(back, d) {
		t.Errorf("round trip = %+v, %v", back, err)
	}
	if b, _ := json.Marshal(NewRaw("/v/work.ext4")); string(b) != `{"strategy":"plain","path":"/v/work.ext4","format":"raw"}` {
		t.Errorf("NewRaw JSON = %s", b)
	}
}

func equalDisk(a, b Disk) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// failRunner fails every command, as a missing or broken tool would.
type failRunner struct{}

func (failRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return nil, errors.New("fake: injected failure of " + strings.Join(argv, " "))
}
