package image

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

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
		t.Skip("this test needs root: it boots the image in a network namespace of its own (the build itself works without; e2e TestRootlessCatalogImage)")
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
		{cmd: "cat /etc/fstab", want: "/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=10s 0 2"},
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

// bootWithQEMU boots the kernel and a copy of the image under QEMU
// microvm, the way banger does: a work disk as /dev/vdb, a tap in a network
// namespace made for the test, the per-VM files (network, authorized key)
// written into the copy with debugfs. It waits for sshd and the serial
// getty, then logs in over SSH and checks that systemd finished cleanly.
func bootWithQEMU(t *testing.T, kdir string, km kernel.Manifest, rootfs string) {
	qemu, err := system.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 is not installed; not booting the image: %v", err)
	}
	for _, tool := range []string{"ip", "ssh", "cp"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("%s is not installed; not booting the image: %v", tool, err)
		}
	}
	run := &system.Exec{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// The per-VM files the daemon writes: a static address, root's key.
	const guestIP, hostIP = "10.253.7.2", "10.253.7.1"
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pemBlock, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "id_ed25519")
	writeFiles(t, dir, map[string]string{
		"id_ed25519":        string(pem.EncodeToMemory(pemBlock)),
		"authorized_keys":   string(ssh.MarshalAuthorizedKey(signer.PublicKey())),
		"10-banger.network": "[Match]\nName=e*\n\n[Network]\nAddress=" + guestIP + "/24\n",
	})
	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "root.ext4")
	if _, err := run.Run(ctx, "cp", "--sparse=always", rootfs, disk); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{
		"authorized_keys":   "/etc/ssh/authorized_keys.d/root",
		"10-banger.network": "/etc/systemd/network/10-banger.network",
	} {
		if _, err := run.Run(ctx, "debugfs", "-w", "-R", "write "+filepath.Join(dir, src)+" "+dst, disk); err != nil {
			t.Fatal(err)
		}
	}
	work := filepath.Join(dir, "work.ext4")
	if err := os.WriteFile(work, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(work, 256<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := run.Run(ctx, "mkfs.ext4", "-F", "-q", work); err != nil {
		t.Fatal(err)
	}

	ns := fmt.Sprintf("bangerimg%d", os.Getpid())
	if _, err := run.Run(ctx, "ip", "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := run.Run(context.Background(), "ip", "netns", "del", ns); err != nil {
			t.Errorf("remove network namespace %s: %v", ns, err)
		}
	})
	inNS := func(argv ...string) ([]byte, error) {
		return run.Run(ctx, append([]string{"ip", "netns", "exec", ns}, argv...)...)
	}
	for _, argv := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "tuntap", "add", "bgtap0", "mode", "tap"},
		{"ip", "addr", "add", hostIP + "/24", "dev", "bgtap0"},
		{"ip", "link", "set", "bgtap0", "up"},
	} {
		if _, err := inNS(argv...); err != nil {
			t.Fatal(err)
		}
	}

	// TCG by default: on the nested development VMs /dev/kvm opens but
	// KVM guests hang right after the kernel decompresses.
	accel := "tcg"
	if a := os.Getenv("BANGER_QEMU_ACCEL"); a != "" {
		accel = a
	}
	cmdline := km.Cmdline + " panic=-1"
	if accel == "tcg" {
		// microvm has no HPET or PM timer, so the kernel calibrates the TSC
		// against the PIT; on a loaded host that fails and the boot hangs
		// in calibrate_delay. TCG's TSC runs at the host's rate: say it.
		if khz := hostCPUkHz(t); khz > 0 {
			cmdline += fmt.Sprintf(" tsc_early_khz=%d", khz)
		}
	}
	vmlinuz, _ := km.Path(kdir, kernel.RoleVmlinuz)
	initrd, _ := km.Path(kdir, kernel.RoleInitrd)
	logPath := filepath.Join(dir, "serial.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	argv := []string{"ip", "netns", "exec", ns, qemu,
		"-M", "microvm", "-accel", accel, "-m", "1024", "-smp", "2",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline,
		"-drive", "id=root,file=" + disk + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-drive", "id=work,file=" + work + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=work",
		"-netdev", "tap,id=net0,ifname=bgtap0,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0",
		"-no-reboot"}
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
			break
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
	t.Logf("sshd and a login prompt after %v (%s); command line %q", time.Since(start).Round(100*time.Millisecond), accel, cmdline)

	sshArgv := []string{"ssh", "-i", keyFile, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "root@" + guestIP,
		"systemctl is-system-running --wait; findmnt -n -o SOURCE /root; wc -c </etc/machine-id; ls /etc/ssh"}
	var out []byte
	for attempt := 1; ; attempt++ {
		out, err = inNS(sshArgv...)
		if err == nil {
			break
		}
		if attempt == 20 {
			raw, _ := os.ReadFile(logPath)
			t.Fatalf("ssh root@%s: %v; serial log:\n%s", guestIP, err, tail(ansiEscape.ReplaceAll(raw, nil)))
		}
		time.Sleep(time.Second)
	}
	t.Logf("first SSH command done %v after qemu started", time.Since(start).Round(100*time.Millisecond))
	lines := strings.Fields(string(out))
	if len(lines) < 3 || lines[0] != "running" || lines[1] != "/dev/vdb" || lines[2] != "33" {
		t.Errorf("guest says %q; want systemd \"running\" (no failed units), /root on /dev/vdb, a 32-char machine-id", out)
	}
	if !slices.Contains(lines, "ssh_host_ed25519_key") || slices.Contains(lines, "ssh_host_rsa_key") {
		t.Errorf("guest host keys: %q; want ed25519 generated at boot and no RSA key", lines)
	}
}

// hostCPUkHz reads the first "cpu MHz" of /proc/cpuinfo (0 if absent).
func hostCPUkHz(t *testing.T) int {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Logf("no /proc/cpuinfo: %v", err)
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
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
