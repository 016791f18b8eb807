//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/agent"
	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/rpc"
	"banger/internal/vmm"
	"banger/internal/vmm/qemu"
)

// TestBenchSnapshot: create-to-SSH restoring a warm snapshot against a
// cold create of the same image and size, and against a raw QEMU
// -incoming restore of the same snapshot file to the same SSH check; the
// snapshot's size and save time per GiB of guest memory.
func TestBenchSnapshot(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `qemu_accel = "tcg"`)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("image", "warm", "debian-bookworm")
	snap := e.snapshots()[0]
	km, err := kernel.LoadManifest(kernelDir)
	if err != nil {
		t.Fatal(err)
	}
	client := &rpc.Client{SocketPath: e.sock}

	var restored, cold, raw []time.Duration
	stageSums := map[string]time.Duration{}
	for i := 0; i < rounds; i++ {
		runs := []func(){
			func() {
				total, stages := benchCreate(t, client, api.VMCreateParams{Name: fmt.Sprintf("warm-%d", i)})
				restored = append(restored, total)
				for k, v := range stages {
					stageSums[k] += v
				}
				e.must("vm", "delete", fmt.Sprintf("warm-%d", i))
			},
			func() {
				total, _ := benchCreate(t, client, api.VMCreateParams{Name: fmt.Sprintf("cold-%d", i), Cold: true})
				cold = append(cold, total)
				e.must("vm", "delete", fmt.Sprintf("cold-%d", i))
			},
			func() { raw = append(raw, benchRawRestore(t, e, km, kernelDir, snap)) },
		}
		if i%2 == 1 {
			runs[0], runs[2] = runs[2], runs[0]
		}
		for _, run := range runs {
			run()
		}
	}
	memGiB := 1.0 // vm_defaults.memory_mib = 1024 in the e2e config
	res := map[string]any{
		"date":                          time.Now().UTC().Format(time.RFC3339),
		"rounds":                        rounds,
		"restore_create_to_ssh_s":       seconds(restored),
		"cold_create_to_ssh_s":          seconds(cold),
		"raw_qemu_incoming_to_ssh_s":    seconds(raw),
		"ratio_restore_vs_cold":         median(restored).Seconds() / median(cold).Seconds(),
		"ratio_restore_vs_raw_incoming": median(restored).Seconds() / median(raw).Seconds(),
		"state_bytes_per_gib":           float64(snap.StateBytes) / memGiB,
		"save_s_per_gib":                float64(snap.SaveMS) / 1000 / memGiB,
	}
	stageAvg := map[string]float64{}
	for k, v := range stageSums {
		stageAvg[k] = v.Seconds() / float64(rounds)
	}
	res["restore_stages_mean_s"] = stageAvg
	fmt.Printf("\ncreate-to-SSH from a warm snapshot (median of %d, tcg): %.2fs; cold: %.2fs; ratio %.3f (target <= 0.12)\n",
		rounds, median(restored).Seconds(), median(cold).Seconds(), median(restored).Seconds()/median(cold).Seconds())
	fmt.Printf("raw qemu -incoming of the same snapshot to SSH: %.2fs; ratio banger / raw %.3f (target <= 1.3)\n",
		median(raw).Seconds(), median(restored).Seconds()/median(raw).Seconds())
	fmt.Printf("snapshot: %d MiB of state per GiB of guest memory, saved in %.2fs per GiB\n", snap.StateBytes>>20, float64(snap.SaveMS)/1000)
	fmt.Printf("restore stages (mean): %v\n\n", stageAvg)
	writeBenchResult(t, "snapshot_restore", res)
}

// benchCreate times vm.create from begin to done (SSH and agent up) and
// returns each stage's duration.
func benchCreate(t *testing.T, c *rpc.Client, p api.VMCreateParams) (time.Duration, map[string]time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	var begin api.VMCreateBeginResult
	if err := c.Call(ctx, "vm.create.begin", p, &begin); err != nil {
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
	total := time.Since(start)
	if st.Operation.Error != "" {
		t.Fatalf("create %s: %s", p.Name, st.Operation.Error)
	}
	stages := map[string]time.Duration{}
	for _, s := range st.Stages {
		stages[s.Name] = time.Duration(s.DurationMS) * time.Millisecond
	}
	return total, stages
}

// benchRawRestore starts QEMU by hand with the argv banger's driver builds
// for a restore of snap (new overlays over its frozen layers, its state
// file, a tap made here) and times launch to a successful `ssh true` at
// the address the guest had when saved.
func benchRawRestore(t *testing.T, e *env, km kernel.Manifest, kernelDir string, snap snapshotJSON) time.Duration {
	t.Helper()
	state := filepath.Join(e.root, "state", "banger")
	dir := t.TempDir()
	layer := func(drive string) string {
		m, _ := filepath.Glob(filepath.Join(state, "layers", snap.Name+"-"+drive+"-*"))
		if len(m) != 1 {
			t.Fatalf("the snapshot's %s layer: %v", drive, m)
		}
		return m[0]
	}
	root, work, cfg := filepath.Join(dir, "root.qcow2"), filepath.Join(dir, "work.qcow2"), filepath.Join(dir, "config.img")
	for _, argv := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", layer("root"), "-F", "qcow2", root},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", layer("work"), "-F", "raw", work},
		{"truncate", "-s", "1M", cfg},
		{"ip", "-n", e.ns, "tuntap", "add", "dev", "bgraw0", "mode", "tap"},
		{"ip", "-n", e.ns, "link", "set", "bgraw0", "master", "bge2e0", "up"},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	defer exec.Command("ip", "-n", e.ns, "link", "del", "bgraw0").Run()
	kpath, _ := km.Path(kernelDir, kernel.RoleVmlinuz)
	initrd, _ := km.Path(kernelDir, kernel.RoleInitrd)
	drv := qemu.New(qemu.Config{})
	argv, err := drv.Command(vmm.Spec{Name: "raw-restore", VCPU: 2, MemoryMiB: 1024, KernelPath: kpath, InitrdPath: initrd,
		Cmdline: km.BootCmdline(), RootDisk: root, RootFormat: "qcow2", WorkDisk: work, WorkFormat: "qcow2", ConfigDisk: cfg,
		Tap: "bgraw0", MAC: snap.GuestMAC, RuntimeDir: dir, ConsoleLog: filepath.Join(dir, "console.log"),
		IncomingState: filepath.Join(state, "snapshots", snap.Name, "state.bin")})
	if err != nil {
		t.Fatal(err)
	}
	// Plain QEMU reads the file itself (banger hands it over by
	// descriptor to its sandboxed QEMU).
	for i := range argv {
		if argv[i] == "-incoming" {
			argv[i+1] = "exec:cat " + filepath.Join(state, "snapshots", snap.Name, "state.bin")
		}
	}
	for i := range argv {
		if argv[i] == "-sandbox" {
			argv = append(argv[:i], argv[i+2:]...)
			break
		}
	}
	start := time.Now()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns}, argv...)...)
	var qemuOut strings.Builder
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	defer func() {
		if t.Failed() {
			t.Logf("raw qemu said: %s; QMP last: %s", qemuOut.String(), lastQMP)
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// The saved guest is paused, as it was saved: continue it once loaded.
	qmp := filepath.Join(dir, qemu.QMPSocketName)
	key := filepath.Join(state, "ssh", "id_ed25519")
	deadline := time.Now().Add(2 * time.Minute)
	continued := false
	for time.Now().Before(deadline) {
		if !continued {
			continued = qmpContIfPaused(qmp)
			if !continued {
				time.Sleep(20 * time.Millisecond)
				continue
			}
		}
		ssh := exec.Command("ip", "netns", "exec", e.ns, "ssh", "-i", key, "-o", "StrictHostKeyChecking=no",
			"-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=1", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
			"root@"+snap.GuestIP, "true")
		if continued && ssh.Run() == nil {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Diagnose: is the guest alive (its agent), does it answer on the
	// network, and does bouncing its link change that?
	actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer acancel()
	ac, aerr := agent.DialQEMU(actx, filepath.Join(dir, qemu.AgentSocketName))
	if aerr == nil {
		h, herr := ac.Health(actx)
		t.Logf("agent: %+v %v", h, herr)
		ac.Close()
	} else {
		t.Logf("agent dial: %v", aerr)
	}
	ping, _ := exec.Command("ip", "netns", "exec", e.ns, "ping", "-c", "2", "-W", "1", snap.GuestIP).CombinedOutput()
	neigh, _ := exec.Command("ip", "-n", e.ns, "neigh").CombinedOutput()
	t.Logf("ping: %s\nneigh: %s", ping, neigh)
	console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	if len(console) > 3000 {
		console = console[len(console)-3000:]
	}
	t.Fatalf("raw restore never answered SSH at %s (continued %v); console:\n%s", snap.GuestIP, continued, console)
	return 0
}

// qmpContIfPaused continues the guest behind the QMP socket once it is
// loaded and paused; it reports whether the guest runs.
// lastQMP is what qmpContIfPaused last saw, for a failure's report.
var lastQMP string

func qmpContIfPaused(path string) bool {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		lastQMP = "dial: " + err.Error()
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(conn)
	call := func(cmd string) string {
		fmt.Fprintf(conn, "{\"execute\":%q}\n", cmd)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return ""
			}
			if !strings.Contains(line, "\"event\"") {
				return line
			}
		}
	}
	if _, err := r.ReadString('\n'); err != nil {
		return false
	}
	call("qmp_capabilities")
	var st struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	line := call("query-status")
	lastQMP = "query-status: " + line
	if json.Unmarshal([]byte(line), &st) != nil {
		return false
	}
	switch st.Return.Status {
	case "running":
		return true
	case "paused":
		return strings.Contains(call("cont"), "return")
	}
	return false
}
