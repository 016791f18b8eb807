//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/rootdisk"
	"banger/internal/system"
)

// TestBenchStorage is `make bench`'s storage figures: preparing a VM's
// root disk over a 1 GiB and an 8 GiB image with each strategy this host
// can do (copy is the baseline copy-on-write beats), and what a created
// VM costs on the host.
func TestBenchStorage(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	dir := t.TempDir()
	r := &system.Exec{}
	// Sparse bases with 1/32 of their size written, like a real image.
	base := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		chunk := make([]byte, 1<<20)
		for i := range chunk {
			chunk[i] = byte(i)
		}
		for off := int64(0); off < size; off += 32 << 20 {
			if _, err := f.WriteAt(chunk, off); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	bases := map[string]string{"1G": base("base-1g.img", 1<<30), "8G": base("base-8g.img", 8<<30)}
	res := map[string]any{"date": time.Now().UTC().Format(time.RFC3339)}
	const rounds = 5
	for _, s := range []rootdisk.Strategy{rootdisk.QCOW2, rootdisk.Reflink, rootdisk.Copy} {
		if err := rootdisk.Check(s, rootdisk.VMMQEMU, dir, bases["1G"], r); err != nil {
			fmt.Printf("root disk %s: not available here (%v)\n", s, err)
			continue
		}
		med := map[string]time.Duration{}
		for _, size := range []string{"1G", "8G"} {
			var ds []time.Duration
			for i := 0; i < rounds; i++ {
				path := filepath.Join(dir, fmt.Sprintf("%s-%s-%d", s, size, i))
				start := time.Now()
				disk, err := rootdisk.Create(context.Background(), r, s, bases[size], path)
				if err != nil {
					t.Fatal(err)
				}
				ds = append(ds, time.Since(start))
				if err := rootdisk.Remove(context.Background(), r, disk); err != nil {
					t.Fatal(err)
				}
			}
			med[size] = median(ds)
		}
		ratio := med["8G"].Seconds() / med["1G"].Seconds()
		res[string(s)+"_1g_ms"] = med["1G"].Seconds() * 1000
		res[string(s)+"_8g_ms"] = med["8G"].Seconds() * 1000
		res["ratio_"+string(s)+"_8g_vs_1g"] = ratio
		fmt.Printf("root disk %s: 1 GiB image %.1f ms, 8 GiB image %.1f ms: ratio %.2f (copy-on-write target <= 1.2)\n",
			s, med["1G"].Seconds()*1000, med["8G"].Seconds()*1000, ratio)
	}

	// What a created (unstarted) VM costs on the host, through banger.
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("vm", "create", "--name", "cost", "--no-start")
	d := e.disks("cost")
	res["created_vm_root_layer_bytes"] = d.RootUsedBytes
	res["created_vm_work_disk_bytes"] = d.WorkUsedBytes
	fmt.Printf("a created VM holds %d bytes in its root layer (%s) and %d in its work disk (metadata of an empty ext4)\n\n",
		d.RootUsedBytes, d.RootDisk, d.WorkUsedBytes)
	writeBenchResult(t, "storage", res)
}
