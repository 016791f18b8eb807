//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"banger/internal/rpc"
)

// pinger pings bangerd every 50 ms and measures how long it did not
// answer: from the first failed ping of a stretch to the next success.
type pinger struct {
	mu      sync.Mutex
	down    time.Duration
	stop    chan struct{}
	stopped chan struct{}
}

func startPinger(sock string) *pinger {
	p := &pinger{stop: make(chan struct{}), stopped: make(chan struct{})}
	c := &rpc.Client{SocketPath: sock}
	go func() {
		defer close(p.stopped)
		var failedAt time.Time
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Millisecond)
			err := c.Call(ctx, "ping", nil, nil)
			cancel()
			now := time.Now()
			switch {
			case err != nil && failedAt.IsZero():
				failedAt = now
			case err == nil && !failedAt.IsZero():
				p.mu.Lock()
				p.down += now.Sub(failedAt)
				p.mu.Unlock()
				failedAt = time.Time{}
			}
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

func (p *pinger) finish() time.Duration {
	close(p.stop)
	<-p.stopped
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.down
}

// TestBenchUpdate: banger update's wall time (manifest to a serving
// daemon of the other version, doctor included) and the daemon's
// unavailability window during it, against a plain restart of bangerd by
// hand (SIGTERM, start, first answer) in the same run, a VM running
// throughout.
func TestBenchUpdate(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	kernelDir, rootfs := artifacts(t)
	work := t.TempDir()
	key := filepath.Join(work, "key.pem")
	makeKey(t, key)
	dist := filepath.Join(work, "served", "good")
	makeRelease(t, updateFrom, key, dist)
	makeRelease(t, updateTo, key, dist)
	e := newEnvAt(t, installRelease(t, dist, updateFrom, filepath.Join(work, "bin")))
	rel := serveReleases(t, e, filepath.Join(work, "served"))
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("vm", "create", "--name", "keep", "--image", "debian-bookworm")

	rounds := 3
	var upWall, upDown, rsWall, rsDown []time.Duration
	versions := []string{updateTo, updateFrom}
	for i := 0; i < rounds*2; i++ {
		// Alternate: an update (to the other version), then a plain restart.
		pid := e.daemonPID()
		p := startPinger(e.sock)
		start := time.Now()
		if i%2 == 0 {
			e.must("update", "--to", versions[(i/2)%2], "--manifest-url", rel.manifest("good"))
			upWall = append(upWall, time.Since(start))
			upDown = append(upDown, p.finish())
			e.adoptDaemon(pid)
			continue
		}
		e.stopDaemon()
		if e.daemon == nil {
			cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "bangerd"), "--socket", e.sock)
			cmd.Env = e.vars
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			e.daemon = cmd
			e.waitForDaemon(cmd.Process.Pid, "ip", "netns", "exec", e.ns)
		}
		rsWall = append(rsWall, time.Since(start))
		rsDown = append(rsDown, p.finish())
	}
	if out := e.must("vm", "exec", "keep", "--", "true"); out != "" {
		t.Fatalf("exec after the updates printed %q", out)
	}
	res := map[string]any{
		"date":                      time.Now().UTC().Format(time.RFC3339),
		"rounds":                    rounds,
		"update_wall_s":             seconds(upWall),
		"update_unavailable_s":      seconds(upDown),
		"restart_wall_s":            seconds(rsWall),
		"restart_unavailable_s":     seconds(rsDown),
		"median_update_wall_s":      median(upWall).Seconds(),
		"median_update_down_s":      median(upDown).Seconds(),
		"median_restart_down_s":     median(rsDown).Seconds(),
		"ratio_update_down_restart": median(upDown).Seconds() / median(rsDown).Seconds(),
	}
	fmt.Printf("\nbanger update, start to a serving new daemon (median of %d): %.2fs\n", rounds, median(upWall).Seconds())
	fmt.Printf("daemon unavailable during update (ping every 50ms):   %.2fs\n", median(upDown).Seconds())
	fmt.Printf("daemon unavailable during a plain restart by hand:    %.2fs\n", median(rsDown).Seconds())
	fmt.Printf("ratio update/plain restart unavailability: %.2f\n", res["ratio_update_down_restart"])
	writeBenchResult(t, "update", res)
}
