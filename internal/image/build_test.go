package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/kernel"
	"banger/internal/system"
)

// TestBuildDebianBookworm builds the real image with mmdebstrap (and the
// kernel, unless BANGER_KERNEL_DIR names a built one), checks the
// filesystem with debugfs, then boots it with QEMU inside a network
// namespace made for the test. It downloads ~150 MB and needs root, so it
// only runs with BANGER_BUILD_TESTS=1. BANGER_IMAGE_DEST names a directory
// to build into and keep.
func TestBuildDebianBookworm(t *testing.T) {
	if os.Getenv("BANGER_BUILD_TESTS") != "1" {
		t.Skip("set BANGER_BUILD_TESTS=1 to build the Debian image (downloads ~150 MB, needs root)")
	}
	if os.Geteuid() != 0 {
		t.Skip("building the image needs root (mmdebstrap, chroot)")
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "debugfs", "dumpe2fs", "chroot"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	run := &system.Exec{}

	kdir := os.Getenv("BANGER_KERNEL_DIR")
	if kdir == "" {
		kdir = filepath.Join(t.TempDir(), "kernel")
		if _, err := kernel.BuildDebian(ctx, run, t.TempDir(), kdir, nil); err != nil {
			t.Fatal(err)
		}
	}
	km, err := kernel.LoadManifest(kdir)
	if err != nil {
		t.Fatal(err)
	}
	dest := os.Getenv("BANGER_IMAGE_DEST")
	if dest == "" {
		dest = filepath.Join(t.TempDir(), "image")
	}

	const probe = "/usr/local/lib/banger/probe"
	start := time.Now()
	m, err := BuildDebianBookworm(ctx, run, BuildOptions{
		WorkDir:          t.TempDir(),
		DestDir:          dest,
		KernelModulesDir: filepath.Join(kdir, km.ModulesDir),
		KernelVersion:    km.Version,
		ExtraFiles:       map[string]File{probe: {Data: []byte("hello from the build\n"), Mode: 0o750}},
		Progress:         func(s string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s (%d packages) in %v", m.Name, len(m.Packages), time.Since(start).Round(time.Second))

	loaded, err := LoadManifest(dest)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.RootFS != m.RootFS || loaded.KernelVersion != km.Version {
		t.Errorf("LoadManifest = %+v, want rootfs %+v kernel %s", loaded, m.RootFS, km.Version)
	}
	if m.RootFS.Size != DefaultSizeBytes {
		t.Errorf("rootfs size %d, want %d", m.RootFS.Size, DefaultSizeBytes)
	}
	for _, p := range []string{"openssh-server", "systemd-sysv", "udev", "git", "curl", "sudo", "kmod"} {
		if !slices.ContainsFunc(m.Packages, func(x Package) bool { return x.Name == p }) {
			t.Errorf("manifest lists no package %s", p)
		}
	}
	rootfs := m.RootFSPath(dest)
	if used, err := allocated(rootfs); err != nil {
		t.Error(err)
	} else if used > m.RootFS.Size/2 {
		t.Errorf("rootfs allocates %d of %d bytes; want a sparse file", used, m.RootFS.Size)
	}

	label, err := run.Run(ctx, "dumpe2fs", "-h", rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(label), "Filesystem volume name:   bangerroot") {
		t.Errorf("rootfs is not labelled bangerroot:\n%s", label)
	}
	debugfs := func(cmd string) string {
		out, err := run.Run(ctx, "debugfs", "-R", cmd, rootfs)
		if err != nil {
			t.Fatalf("debugfs %s: %v", cmd, err)
		}
		return string(out)
	}
	checks := []struct {
		cmd, want string
		absent    bool
	}{
		{cmd: "stat /etc/machine-id", want: "Size: 0"},
		{cmd: "ls /etc/ssh", want: "ssh_host_", absent: true},
		{cmd: "cat /etc/fstab", want: "/dev/vdb /root ext4 defaults,nofail 0 2"},
		{cmd: "cat /etc/ssh/sshd_config.d/10-banger.conf", want: "PermitRootLogin prohibit-password"},
		{cmd: "stat /etc/systemd/system/multi-user.target.wants/systemd-networkd.service", want: "Fast link dest: \"/lib/systemd/system/systemd-networkd.service\""},
		{cmd: "stat /etc/systemd/system/ssh.service.requires/banger-ssh-keygen.service", want: "Type: symlink"},
		{cmd: "ls /etc/systemd/system/timers.target.wants", want: "apt-daily", absent: true},
		{cmd: "cat /etc/shadow", want: "root::"},
		{cmd: "stat /usr/lib/modules/" + km.Version + "/modules.dep.bin", want: "Type: regular"},
		{cmd: "stat /usr/lib/modules/" + km.Version + "/kernel/fs/ext4/ext4.ko", want: "Type: regular"},
		{cmd: "cat " + probe, want: "hello from the build"},
		{cmd: "stat " + probe, want: "Mode:  0750"},
	}
	for _, c := range checks {
		out := debugfs(c.cmd)
		if strings.Contains(out, c.want) == c.absent {
			t.Errorf("debugfs %q: want %q present=%v, got:\n%s", c.cmd, c.want, !c.absent, out)
		}
	}

	bootWithQEMU(t, kdir, km, rootfs)
}

// bootWithQEMU boots the kernel and image under QEMU microvm inside a
// network namespace made for it (no NIC at all) and waits for systemd to
// start sshd and a getty on the serial console.
func bootWithQEMU(t *testing.T, kdir string, km kernel.Manifest, rootfs string) {
	qemu, err := system.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 is not installed; not booting the image: %v", err)
	}
	run := &system.Exec{}
	ctx := context.Background()
	ns := fmt.Sprintf("bangerimg%d", os.Getpid())
	if _, err := run.Run(ctx, "ip", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := run.Run(context.Background(), "ip", "netns", "del", ns); err != nil {
			t.Errorf("remove network namespace %s: %v", ns, err)
		}
	})

	// TCG by default: on the nested development VMs /dev/kvm opens but
	// KVM guests hang right after the kernel decompresses.
	accel := "tcg"
	if a := os.Getenv("BANGER_QEMU_ACCEL"); a != "" {
		accel = a
	}
	vmlinuz, _ := km.Path(kdir, kernel.RoleVmlinuz)
	initrd, _ := km.Path(kdir, kernel.RoleInitrd)
	logPath := filepath.Join(t.TempDir(), "serial.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	argv := []string{"ip", "netns", "exec", ns, qemu,
		"-M", "microvm", "-accel", accel, "-m", "1024", "-smp", "2",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", km.Cmdline + " panic=-1",
		"-drive", "id=root,file=" + rootfs + ",format=raw,if=none,snapshot=on",
		"-device", "virtio-blk-device,drive=root", "-no-reboot"}
	start := time.Now()
	proc, err := system.StartDetached(system.DetachedSpec{Argv: argv, Stdout: logFile, Stderr: logFile})
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { proc.Wait(); close(exited) }()
	t.Cleanup(func() {
		proc.Kill()
		<-exited
	})

	limit := 60 * time.Second
	if accel == "tcg" {
		limit = 240 * time.Second
	}
	wants := []string{"banger-initrd: root /dev/vda mounted", "Started ssh.service", "Reached target multi-user.target", "login:"}
	deadline := time.Now().Add(limit)
	for {
		raw, _ := os.ReadFile(logPath)
		log := ansiEscape.ReplaceAll(raw, nil)
		missing := slices.DeleteFunc(slices.Clone(wants), func(w string) bool { return bytes.Contains(log, []byte(w)) })
		if len(missing) == 0 {
			t.Logf("booted to sshd and a login prompt in %v (%s); command line %q", time.Since(start).Round(100*time.Millisecond), accel, km.Cmdline)
			return
		}
		select {
		case <-exited:
			t.Fatalf("qemu exited before %q appeared; serial log:\n%s", missing, tail(log))
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the serial console after %v (%s); serial log:\n%s", missing, limit, accel, tail(log))
		}
	}
}

// ansiEscape matches the colour sequences systemd puts on the console.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)

func tail(b []byte) string {
	const n = 6000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// allocated is the space a file occupies on disk.
func allocated(p string) (int64, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("stat %s: no block count", p)
	}
	return st.Blocks * 512, nil
}
