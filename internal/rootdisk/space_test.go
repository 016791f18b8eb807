package rootdisk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheckFreeTmpfs(t *testing.T) {
	dir := mountTmpfs(t, 4*mib)
	if err := CheckFree(dir, mib); err != nil {
		t.Errorf("CheckFree(1 MiB) on an empty 4 MiB tmpfs: %v", err)
	}
	err := CheckFree(dir, 8*mib)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("CheckFree(8 MiB) on a 4 MiB tmpfs = %v, want ErrNoSpace", err)
	}
	// tmpfs has no device path: the mount point names it.
	want := fmt.Sprintf("no space left on %s (needs ~8 MB, 4 MB free)", dir)
	if err.Error() != want {
		t.Errorf("CheckFree error = %q\nwant %q", err, want)
	}
	var ns *NoSpaceError
	if !errors.As(err, &ns) || ns.Need != 8*mib || ns.Free != 4*mib || ns.Device != dir {
		t.Errorf("NoSpaceError = %+v", ns)
	}
}

func TestCheckFreeLoopExt4(t *testing.T) {
	mnt, dev := mountLoop(t, "ext4", 16*mib)
	sub := filepath.Join(mnt, "vms", "a")
	if err := os.MkdirAll(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	err := CheckFree(sub, 630*mib)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("CheckFree = %v, want ErrNoSpace", err)
	}
	m := regexp.MustCompile(`^no space left on (\S+) \(needs ~630 MB, (\d+) MB free\)$`).FindStringSubmatch(err.Error())
	if m == nil || m[1] != dev {
		t.Fatalf("CheckFree error = %q; want it to name %s and the numbers", err, dev)
	}
	free, _ := strconv.Atoi(m[2])
	if real, _ := freeBytes(sub); int64(free) != real/mib || free < 5 || free > 16 {
		t.Errorf("reported %d MB free; statfs says %d", free, real/mib)
	}
}

func TestNoSpace(t *testing.T) {
	needTools(t, "qemu-img")
	ctx := context.Background()
	src := t.TempDir()
	base := filepath.Join(src, "rootfs.ext4")
	makeBase(t, base, 64*mib, region{0, 2 * mib})
	work := NewRaw(filepath.Join(src, "work.ext4"))
	makeBase(t, work.Path, 16*mib, region{0, 2 * mib})

	full := mountTmpfs(t, 4*mib)
	fillUp(t, full, 64<<10)
	check := func(t *testing.T, err error, made ...string) {
		t.Helper()
		var ns *NoSpaceError
		if !errors.Is(err, ErrNoSpace) || !errors.As(err, &ns) || !isNoSpace(ns.Err) {
			t.Errorf("got %v; want ErrNoSpace caused by an ENOSPC", err)
		}
		if err != nil && !regexp.MustCompile(`no space left on `+regexp.QuoteMeta(full)+` \(needs ~\d+ MB, 0 MB free\)$`).MatchString(err.Error()) {
			t.Errorf("message %q does not have the CheckFree shape", err)
		}
		mustNotExist(t, made...)
	}
	t.Run("create qcow2", func(t *testing.T) {
		p := filepath.Join(full, "root.qcow2")
		_, err := Create(ctx, host(), QCOW2, base, p)
		check(t, err, p)
	})
	t.Run("create copy", func(t *testing.T) {
		p := filepath.Join(full, "root.raw")
		_, err := Create(ctx, host(), Copy, base, p)
		check(t, err, p)
	})
	t.Run("clone plain by copy", func(t *testing.T) {
		p := filepath.Join(full, "work2.ext4")
		_, _, err := Clone(ctx, host(), work, p, "", VMMFirecracker)
		check(t, err, p)
	})
	t.Run("clone qcow2 in a full dir", func(t *testing.T) {
		// The source itself lives on the full filesystem: the new
		// overlays cannot be written, and src must come out intact.
		small := mountTmpfs(t, 4*mib)
		d, err := Create(ctx, host(), QCOW2, base, filepath.Join(small, "root.qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		before := sha(t, d.Path)
		fillUp(t, small, 64<<10)
		dst, layer := filepath.Join(small, "root2.qcow2"), filepath.Join(small, "L1.qcow2")
		got, _, err := Clone(ctx, host(), d, dst, layer, VMMQEMU)
		if !errors.Is(err, ErrNoSpace) {
			t.Fatalf("Clone = %v, want ErrNoSpace", err)
		}
		mustNotExist(t, dst, layer, d.Path+newOverlaySuffix)
		if !equalDisk(got, d) || sha(t, d.Path) != before {
			t.Error("a Clone that ran out of space changed src")
		}
		if st, err := os.Stat(d.Path); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("src after a failed Clone: %v, %v", st, err)
		}
	})
}

func TestParseMountinfo(t *testing.T) {
	line := `36 35 98:0 / /mnt/with\040space rw,noatime master:1 - ext4 /dev/vda1 rw,errors=continue`
	m, ok := parseMountinfoLine(line)
	if !ok || m.point != "/mnt/with space" || m.fstype != "ext4" || m.source != "/dev/vda1" {
		t.Errorf("parse = %+v, %v", m, ok)
	}
	m, ok = parseMountinfoLine(`50 1 0:45 / /run/x rw - tmpfs tmpfs rw,size=4096k`)
	if !ok || m.device() != "/run/x" {
		t.Errorf("tmpfs device() = %q (%+v, %v); want the mount point", m.device(), m, ok)
	}
	if _, ok := parseMountinfoLine("garbage"); ok {
		t.Error("parsed garbage")
	}
	if !within("/a/b", "/a") || within("/ab", "/a") || !within("/x", "/") {
		t.Error("within is wrong")
	}
}

// Stacked mounts: the last one at a point is on top.
func TestMountOfStacked(t *testing.T) {
	mnt := mountTmpfs(t, mib)
	if m, err := mountOf(mnt); err != nil || m.fstype != "tmpfs" || m.point != mnt {
		t.Errorf("mountOf(%s) = %+v, %v", mnt, m, err)
	}
	_, dev := mountLoop(t, "ext4", 16*mib)
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	if m, err := mountOf(filepath.Join(mnt, "lost+found")); err != nil || m.fstype != "ext4" || m.source != dev {
		t.Errorf("mountOf(over-mounted %s) = %+v, %v; want the ext4 on top", mnt, m, err)
	}
}
