//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/vmm"
	"banger/internal/vmm/qemu"
)

// TestBenchCreateToSSH is `make bench`: banger's create-to-SSH against a raw
// QEMU boot of the same kernel, image and machine to SSH, interleaved in
// one run so both see the same machine. It prints ratios and writes
// bench/results/latest.json; it asserts nothing about speed.
func TestBenchCreateToSSH(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	accel := os.Getenv("BANGER_BENCH_ACCEL")
	if accel == "" {
		accel = "tcg"
	}
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, fmt.Sprintf("qemu_accel = %q", accel))
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	km, err := kernel.LoadManifest(kernelDir)
	if err != nil {
		t.Fatal(err)
	}
	client := &rpc.Client{SocketPath: e.sock}

	var bangerTotal, bangerHost, raw []time.Duration
	for i := 0; i < rounds; i++ {
		// Alternate which goes first so neither always gets a warm cache.
		runs := []func(){
			func() {
				total, host := benchBangerCreate(t, e, client, fmt.Sprintf("bench-%d", i))
				bangerTotal, bangerHost = append(bangerTotal, total), append(bangerHost, host)
			},
			func() { raw = append(raw, benchRawBoot(t, e, km, kernelDir, fmt.Sprintf("raw-%d", i), accel)) },
		}
		if i%2 == 1 {
			runs[0], runs[1] = runs[1], runs[0]
		}
		for _, run := range runs {
			run()
		}
	}
	res := map[string]any{
		"date":                       time.Now().UTC().Format(time.RFC3339),
		"accel":                      accel,
		"rounds":                     rounds,
		"banger_create_to_ssh_s":     seconds(bangerTotal),
		"raw_qemu_boot_to_ssh_s":     seconds(raw),
		"banger_host_side_s":         seconds(bangerHost),
		"median_banger_s":            median(bangerTotal).Seconds(),
		"median_raw_s":               median(raw).Seconds(),
		"median_host_side_s":         median(bangerHost).Seconds(),
		"ratio_create_to_ssh_vs_raw": median(bangerTotal).Seconds() / median(raw).Seconds(),
	}
	fmt.Printf("\nbanger create-to-SSH (median of %d, %s): %.2fs\n", rounds, accel, median(bangerTotal).Seconds())
	fmt.Printf("raw qemu boot-to-SSH  (median of %d, %s): %.2fs\n", rounds, accel, median(raw).Seconds())
	fmt.Printf("ratio banger / raw: %.3f (target <= 1.10)\n", res["ratio_create_to_ssh_vs_raw"])
	fmt.Printf("banger host-side time per create (all stages but the guest's boot): %.3fs\n\n", median(bangerHost).Seconds())
	writeBenchResult(t, "create_to_ssh", res)
}

// benchBangerCreate times vm.create from begin to SSH, and the part of it
// that is banger's own host work (every stage but waiting for the guest).
func benchBangerCreate(t *testing.T, e *env, c *rpc.Client, name string) (total, host time.Duration) {
	total, host, _ = benchBangerCreateStages(t, e, c, name)
	return total, host
}

// benchBangerCreateStages is benchBangerCreate with each stage's duration.
// The first VM of a run also prints the guest's own boot timeline.
func benchBangerCreateStages(t *testing.T, e *env, c *rpc.Client, name string) (total, host time.Duration, stages map[string]time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	var begin api.VMCreateBeginResult
	if err := c.Call(ctx, "vm.create.begin", api.VMCreateParams{Name: name}, &begin); err != nil {
		t.Fatal(err)
	}
	var st api.VMCreateStatus
	for {
		if err := c.Call(ctx, "vm.create.status", api.OpRef{OpID: begin.OpID}, &st); err != nil {
			t.Fatal(err)
		}
		if st.Operation.Done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	total = time.Since(start)
	if st.Operation.Error != "" {
		t.Fatalf("create %s: %s", name, st.Operation.Error)
	}
	host = total
	stages = map[string]time.Duration{}
	for _, s := range st.Stages {
		stages[s.Name] = time.Duration(s.DurationMS) * time.Millisecond
		// The guest's own boot: until sshd answers, then until its agent does.
		if s.Name == "wait for SSH" || s.Name == "wait for agent" {
			host -= time.Duration(s.DurationMS) * time.Millisecond
		}
	}
	if name == "bench-0" {
		// The guest's side: where its boot went, and when the network and
		// sshd were up (systemd's clock starts when the kernel does).
		timeline := e.must("vm", "exec", name, "--", "sh", "-c",
			"systemd-analyze; systemd-analyze critical-chain ssh.service systemd-networkd.service; true")
		fmt.Printf("guest boot timeline (%s):\n%s\n", name, timeline)
	}
	e.must("vm", "delete", name)
	return total, host, stages
}

// benchRawBoot boots the same kernel and a banger-prepared root disk with
// QEMU directly (the argv banger's driver would use, on a tap made here)
// and times launch to a successful SSH login.
func benchRawBoot(t *testing.T, e *env, km kernel.Manifest, kernelDir, name, accel string) time.Duration {
	t.Helper()
	// Disks and configuration disk prepared by banger (a create, then a
	// stop, untimed): the baseline is the VMM and the guest alone.
	e.must("vm", "create", "--name", name)
	e.must("vm", "stop", name)
	v := e.show(name)
	defer e.must("vm", "delete", name)
	tap := "bgraw0"
	for _, argv := range [][]string{
		{"ip", "-n", e.ns, "tuntap", "add", "dev", tap, "mode", "tap"},
		{"ip", "-n", e.ns, "link", "set", tap, "master", "bge2e0", "up"},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	defer exec.Command("ip", "-n", e.ns, "link", "del", tap).Run()
	runDir := filepath.Join(e.root, "raw-run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	kpath, _ := km.Path(kernelDir, kernel.RoleVmlinuz)
	initrd, _ := km.Path(kernelDir, kernel.RoleInitrd)
	drv := qemu.New(qemu.Config{KVM: accel == "kvm"})
	argv, err := drv.Command(vmm.Spec{Name: name, VCPU: 2, MemoryMiB: 1024, KernelPath: kpath, InitrdPath: initrd,
		Cmdline: km.BootCmdline() + " " + rawNetArg(v.IP, v.MAC), RootDisk: filepath.Join(v.Dir, "root.qcow2"), RootFormat: "qcow2",
		WorkDisk: filepath.Join(v.Dir, "work.ext4"), ConfigDisk: filepath.Join(v.Dir, "config.img"),
		Tap: tap, MAC: v.MAC, RuntimeDir: runDir, ConsoleLog: filepath.Join(runDir, "console.log")})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	key := filepath.Join(e.root, "state", "banger", "ssh", "id_ed25519")
	deadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		ssh := exec.Command("ip", "netns", "exec", e.ns, "ssh", "-i", key, "-o", "StrictHostKeyChecking=no",
			"-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=1", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
			"root@"+v.IP, "true")
		if ssh.Run() == nil {
			return time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("raw boot of %s never answered SSH", name)
	return 0
}

func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// writeBenchResult merges one benchmark's figures into
// bench/results/latest.json.
func writeBenchResult(t *testing.T, key string, res map[string]any) {
	path := filepath.Join(repoRoot(t), "bench", "results", "latest.json")
	all := map[string]any{}
	if data, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(data, &all)
	}
	all[key] = res
	data, _ := json.MarshalIndent(all, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// rawNetArg is the kernel argument banger gives its guests to bring their
// network up in the initrd; the baseline boots with the same command line.
func rawNetArg(ip, mac string) string {
	return fmt.Sprintf("banger.net=%s/24,172.31.250.1,%s", ip, mac)
}
