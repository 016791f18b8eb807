//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestBenchWorkspace is `make bench`'s day-to-day figures: a repeat `vm
// exec` against the first (one shared SSH connection per VM), `vm run --
// true` against `vm create` + `vm exec true`, and `vm cp` of a 200 MB tree
// against `scp -r` of the same tree to the same VM.
func TestBenchWorkspace(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	timed := func(args ...string) time.Duration {
		start := time.Now()
		e.must(args...)
		return time.Since(start)
	}
	res := map[string]any{"date": time.Now().UTC().Format(time.RFC3339)}

	// create + exec, then run -- true, each from nothing.
	create := timed("vm", "create", "--name", "w1")
	first := timed("vm", "exec", "w1", "--", "true")
	var repeats []time.Duration
	for i := 0; i < 5; i++ {
		repeats = append(repeats, timed("vm", "exec", "w1", "--", "true"))
	}
	run := timed("vm", "run", "--name", "w2", "--", "true")
	res["first_exec_s"], res["repeat_exec_s"] = first.Seconds(), median(repeats).Seconds()
	res["ratio_repeat_vs_first_exec"] = median(repeats).Seconds() / first.Seconds()
	res["vm_run_true_s"], res["create_plus_exec_s"] = run.Seconds(), (create + first).Seconds()
	res["ratio_run_vs_create_exec"] = run.Seconds() / (create + first).Seconds()
	fmt.Printf("\nvm exec true: first %.2fs, repeat %.3fs (median of 5): ratio %.3f (target <= 0.2)\n",
		first.Seconds(), median(repeats).Seconds(), median(repeats).Seconds()/first.Seconds())
	fmt.Printf("vm run -- true %.2fs vs vm create + vm exec true %.2fs: ratio %.3f (target <= 1.05)\n",
		run.Seconds(), (create + first).Seconds(), run.Seconds()/(create+first).Seconds())

	// A 200 MB tree: 200 files of 1 MB.
	tree := filepath.Join(e.root, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for i := 0; i < 200; i++ {
		if err := os.WriteFile(filepath.Join(tree, fmt.Sprintf("f%03d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var cps, scps []time.Duration
	var ip string
	for _, v := range []vmJSON{e.show("w1")} {
		ip = v.IP
	}
	key := filepath.Join(e.root, "state", "banger", "ssh", "id_ed25519")
	kh := filepath.Join(e.root, "state", "banger", "ssh", "known_hosts")
	for i := 0; i < 3; i++ {
		cps = append(cps, timed("vm", "cp", "-r", tree, fmt.Sprintf("w1:/root/cp%d", i)))
		start := time.Now()
		scp := exec.Command("ip", "netns", "exec", e.ns, "scp", "-q", "-r", "-F", "/dev/null", "-i", key,
			"-o", "UserKnownHostsFile="+kh, "-o", "HostKeyAlias="+ip, "-o", "StrictHostKeyChecking=yes",
			tree, fmt.Sprintf("root@%s:/root/scp%d", ip, i))
		if out, err := scp.CombinedOutput(); err != nil {
			t.Fatalf("scp: %v: %s", err, out)
		}
		scps = append(scps, time.Since(start))
		// The work disk is small: make room for the next round.
		e.must("vm", "exec", "w1", "--", "rm", "-rf", fmt.Sprintf("/root/cp%d", i), fmt.Sprintf("/root/scp%d", i))
	}
	res["vm_cp_200mb_s"], res["scp_200mb_s"] = median(cps).Seconds(), median(scps).Seconds()
	res["ratio_vm_cp_vs_scp"] = median(cps).Seconds() / median(scps).Seconds()
	fmt.Printf("200 MB tree: vm cp %.2fs, scp -r %.2fs (median of 3): ratio %.2f\n\n",
		median(cps).Seconds(), median(scps).Seconds(), median(cps).Seconds()/median(scps).Seconds())
	writeBenchResult(t, "workspace", res)
}
