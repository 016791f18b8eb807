//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"
)

// allocatedOf is the space a file takes on the host (holes excluded).
func allocatedOf(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestBenchImageBuild: a one-package image by `image build --from`
// against doing the same by hand (cold create, the install by vm exec,
// stop, `image build --from-vm`), in the same run; and the built image's
// size against its base's.
func TestBenchImageBuild(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `default_dns = ["`+inetAddr+`"]`)
	in := newInternet(t, e)
	repo := t.TempDir()
	makeAptRepo(t, repo)
	in.serveFiles(repo)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	// The base both ways start from: apt pointed at the local repository.
	e.must("vm", "create", "--name", "prep")
	e.must("vm", "exec", "prep", "--", "sh", "-c", useLocalRepo)
	e.must("vm", "stop", "prep")
	e.must("image", "build", "base", "--from-vm", "prep")
	e.must("vm", "delete", "prep")

	timed := func(args ...string) time.Duration {
		start := time.Now()
		e.must(args...)
		return time.Since(start)
	}
	build := timed("image", "build", "one", "--from", "base", "--packages", "banger-hello")
	create := timed("vm", "create", "--name", "m", "--image", "base", "--nat")
	install := timed("vm", "exec", "m", "--", "sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get update -q && apt-get install -y -q --no-install-recommends banger-hello")
	stop := timed("vm", "stop", "m")
	fromVM := timed("image", "build", "two", "--from-vm", "m")
	byHand := create + install + stop + fromVM

	path := func(name string) string {
		var im struct {
			RootfsPath string `json:"rootfs_path"`
		}
		if err := json.Unmarshal([]byte(e.must("image", "show", name, "--json")), &im); err != nil {
			t.Fatal(err)
		}
		return im.RootfsPath
	}
	oneBytes, baseBytes, bookwormBytes := allocatedOf(t, path("one")), allocatedOf(t, path("base")), allocatedOf(t, rootfs)
	res := map[string]any{
		"date":                        time.Now().UTC().Format(time.RFC3339),
		"build_from_s":                build.Seconds(),
		"by_hand_s":                   byHand.Seconds(),
		"by_hand_create_s":            create.Seconds(),
		"by_hand_install_s":           install.Seconds(),
		"by_hand_stop_s":              stop.Seconds(),
		"by_hand_build_from_vm_s":     fromVM.Seconds(),
		"ratio_build_vs_by_hand":      build.Seconds() / byHand.Seconds(),
		"built_allocated_bytes":       oneBytes,
		"base_allocated_bytes":        baseBytes,
		"ratio_size_built_vs_base":    float64(oneBytes) / float64(baseBytes),
		"ratio_size_built_vs_catalog": float64(oneBytes) / float64(bookwormBytes),
	}
	fmt.Printf("\nimage build --from --packages (one package) %.1fs vs by hand %.1fs (create %.1fs + install %.1fs + stop %.1fs + build --from-vm %.1fs): ratio %.3f\n",
		build.Seconds(), byHand.Seconds(), create.Seconds(), install.Seconds(), stop.Seconds(), fromVM.Seconds(), build.Seconds()/byHand.Seconds())
	fmt.Printf("built image %d MiB on disk vs its base %d MiB: ratio %.3f (vs the catalog image %d MiB: %.3f)\n",
		oneBytes>>20, baseBytes>>20, float64(oneBytes)/float64(baseBytes), bookwormBytes>>20, float64(oneBytes)/float64(bookwormBytes))
	writeBenchResult(t, "image_build", res)
}
