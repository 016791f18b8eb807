//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"testing"
	"time"

	"banger/internal/rpc"
)

// TestBenchSystemMode is part of `make bench`: what running bangerd
// unprivileged behind its root helper costs. The same create-to-SSH, in
// user mode (bangerd as root) and in system mode (bangerd as nobody, the
// bridge, taps, rules and port 53 through the helper), interleaved; it
// prints and records the ratios of the host side (everything but the
// guest's own boot) and of the whole, and asserts nothing about speed.
func TestBenchSystemMode(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("needs the user nobody: %v", err)
	}
	owner, _ := strconv.Atoi(u.Uid)
	kernelDir, rootfs := artifacts(t)
	userEnv := newEnv(t, `qemu_accel = "tcg"`)
	sysEnv := newSystemEnv(t, owner, `qemu_accel = "tcg"`)
	for _, e := range []*env{userEnv, sysEnv} {
		e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
		e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	}
	userClient := &rpc.Client{SocketPath: userEnv.sock}
	sysClient := &rpc.Client{SocketPath: sysEnv.sock, TrustUID: func(uid int) bool { return uid == owner || uid == 0 }}

	var userTotal, userHost, sysTotal, sysHost []time.Duration
	var userTap, sysTap, userVMM, sysVMM []time.Duration
	for i := 0; i < rounds; i++ {
		runs := []func(){
			func() {
				total, host, st := benchBangerCreateStages(t, userEnv, userClient, fmt.Sprintf("bench-user-%d", i))
				userTotal, userHost = append(userTotal, total), append(userHost, host)
				userTap, userVMM = append(userTap, st["claim tap"]), append(userVMM, st["start VMM"])
			},
			func() {
				total, host, st := benchBangerCreateStages(t, sysEnv, sysClient, fmt.Sprintf("bench-sys-%d", i))
				sysTotal, sysHost = append(sysTotal, total), append(sysHost, host)
				sysTap, sysVMM = append(sysTap, st["claim tap"]), append(sysVMM, st["start VMM"])
			},
		}
		if i%2 == 1 {
			runs[0], runs[1] = runs[1], runs[0]
		}
		for _, run := range runs {
			run()
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	res := map[string]any{
		"date":                           time.Now().UTC().Format(time.RFC3339),
		"rounds":                         rounds,
		"user_create_to_ssh_s":           seconds(userTotal),
		"system_create_to_ssh_s":         seconds(sysTotal),
		"user_host_side_ms":              ms(median(userHost)),
		"system_host_side_ms":            ms(median(sysHost)),
		"user_claim_tap_ms":              ms(median(userTap)),
		"system_claim_tap_ms":            ms(median(sysTap)),
		"user_start_vmm_ms":              ms(median(userVMM)),
		"system_start_vmm_ms":            ms(median(sysVMM)),
		"ratio_host_side_system_vs_user": median(sysHost).Seconds() / median(userHost).Seconds(),
		"ratio_create_system_vs_user":    median(sysTotal).Seconds() / median(userTotal).Seconds(),
	}
	fmt.Printf("\ncreate-to-SSH, median of %d: user mode %.2fs, system mode %.2fs (ratio %.3f)\n", rounds,
		median(userTotal).Seconds(), median(sysTotal).Seconds(), res["ratio_create_system_vs_user"])
	fmt.Printf("host side: user %.0f ms, system %.0f ms (ratio %.3f); claim tap %.0f vs %.0f ms; start VMM %.0f vs %.0f ms\n",
		ms(median(userHost)), ms(median(sysHost)), res["ratio_host_side_system_vs_user"], ms(median(userTap)), ms(median(sysTap)),
		ms(median(userVMM)), ms(median(sysVMM)))
	writeBenchResult(t, "system_mode", res)
}
