package rootdisk

import (
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
)

func TestParseStrategy(t *testing.T) {
	for in, want := range map[string]Strategy{"dm": DM, "qcow2": QCOW2, "reflink": Reflink, "copy": Copy} {
		s, auto, err := ParseStrategy(in)
		if err != nil || auto || s != want {
			t.Errorf("ParseStrategy(%q) = %q, %v, %v", in, s, auto, err)
		}
	}
	for _, in := range []string{"auto", ""} {
		if s, auto, err := ParseStrategy(in); err != nil || !auto || s != "" {
			t.Errorf("ParseStrategy(%q) = %q, %v, %v; want auto", in, s, auto, err)
		}
	}
	for _, in := range []string{"plain", "QCOW2", "lvm"} {
		if _, _, err := ParseStrategy(in); !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(err.Error(), "auto, dm, qcow2, reflink, copy") {
			t.Errorf("ParseStrategy(%q) = %v; want a bad_request error listing the choices", in, err)
		}
	}
}

// On this machine (ext4, no device-mapper, qemu-img installed): qemu gets
// qcow2, firecracker falls through to copy.
func TestChooseAuto(t *testing.T) {
	needTools(t, "qemu-img")
	dir := extDir(t)
	dmOK := dmsnap.Available() == nil
	cases := []struct {
		vmm  string
		want Strategy
	}{
		{VMMQEMU, QCOW2},
		{VMMFirecracker, Copy},
	}
	for _, c := range cases {
		want := c.want
		if dmOK {
			want = DM
		}
		if s, err := Choose("auto", c.vmm, dir, "", host()); err != nil || s != want {
			t.Errorf("Choose(auto, %s, ext4) = %q, %v; want %q", c.vmm, s, err, want)
		}
	}
	// Without a working qemu-img, qemu falls back too.
	if s, err := Choose("auto", VMMQEMU, dir, "", failRunner{}); err != nil || (s != Copy && !dmOK) {
		t.Errorf("Choose(auto, qemu) without qemu-img = %q, %v; want copy", s, err)
	}
	if s, err := Choose("copy", VMMFirecracker, dir, "", host()); err != nil || s != Copy {
		t.Errorf("Choose(copy) = %q, %v", s, err)
	}
	if s, err := Choose("qcow2", VMMQEMU, dir, "", host()); err != nil || s != QCOW2 {
		t.Errorf("Choose(qcow2, qemu) = %q, %v", s, err)
	}
	_, err := Choose("qcow2", VMMFirecracker, dir, "", host())
	want := `root_disk = "qcow2": firecracker opens only raw disks; qcow2 overlays are for qemu; use auto or copy`
	if dmOK {
		want = `root_disk = "qcow2": firecracker opens only raw disks; qcow2 overlays are for qemu; use auto, dm or copy`
	}
	if err == nil || err.Error() != want {
		t.Errorf("Choose(qcow2, firecracker) = %v\nwant %s", err, want)
	}
	if _, err := Choose("qcow2", VMMQEMU, dir, "", failRunner{}); err == nil || !strings.Contains(err.Error(), "qemu-utils") {
		t.Errorf("Choose(qcow2) without qemu-img = %v", err)
	}
	if _, err := Choose("auto", "bhyve", dir, "", host()); err == nil {
		t.Error("Choose with an unknown VMM succeeded")
	}
	if _, err := Choose("zfs", VMMQEMU, dir, "", host()); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("Choose(zfs) = %v", err)
	}
}
