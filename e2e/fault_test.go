//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/vishvananda/netns"

	"banger/internal/oci/ocitest"
)

// faultBinaries builds banger, bangerd and banger-agent with the
// faultinject tag (BANGER_FAULT=STAGE:error|kill breaks the daemon after
// STAGE); release builds have no such hook.
func faultBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-tags", "faultinject", "-trimpath", "-o", dir+"/", "./cmd/banger", "./cmd/bangerd", "./cmd/banger-agent")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build with faultinject: %v: %s", err, out)
	}
	return dir
}

// restartWith restarts bangerd with BANGER_FAULT set to fault ("" for
// none). A daemon the fault killed is reaped first.
func (e *env) restartWith(fault string) {
	e.t.Helper()
	e.stopDaemon()
	e.vars = replaceVar(e.vars, "BANGER_FAULT", fault)
	e.startDaemon()
}

// TestFaultMatrix breaks every step of create, start, clone, stop, delete and pull twice:
// the step fails (its own undo and the earlier steps' run), and the daemon
// is SIGKILLed right after it (a new daemon finds what it left). After
// each, with a daemon restarted clean: the leak checker finds nothing, the
// VM is gone or complete and working, and a VM made before still answers.
func TestFaultMatrix(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnvAt(t, faultBinaries(t), `qemu_accel = "tcg"`)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("vm", "create", "--name", "keep")
	keepBoot := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id")

	var matrix []string
	// settle: the daemon restarted clean; the VM is gone, or it is whole.
	settle := func(op, stage, mode, name string) {
		t.Helper()
		e.restartWith("")
		outcome := "gone"
		if out, _, code := e.banger("vm", "show", name, "--json"); code == 0 {
			var v vmJSON
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatal(err)
			}
			outcome = v.State
			if v.State == "running" {
				if _, errOut, code := e.banger("vm", "exec", name, "--", "true"); code != 0 {
					t.Errorf("%s %q %s: %s is running but exec fails: %s", op, stage, mode, name, errOut)
				}
			}
		}
		label := fmt.Sprintf("after %s %q %s", op, stage, mode)
		e.assertNoLeaks(label)
		if got := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id"); got != keepBoot {
			t.Errorf("%s: keep rebooted or lost", label)
		}
		matrix = append(matrix, fmt.Sprintf("%-6s %-26s %-5s → %s, no leak", op, stage, mode, outcome))
	}
	expectFailure := func(op, stage, mode, errOut string, code int) {
		t.Helper()
		if code == 0 {
			t.Errorf("%s with %q %s succeeded", op, stage, mode)
		}
		if mode == "error" && !strings.Contains(errOut, "injected fault") {
			t.Errorf("%s with %q error: %q does not name the injected fault", op, stage, errOut)
		}
	}

	// BANGER_FAULT_ONLY=TEXT runs only the cells whose "OP STAGE" contains
	// TEXT (to look at one cell while changing the code it breaks).
	only := os.Getenv("BANGER_FAULT_ONLY")
	skip := func(op, stage string) bool { return only != "" && !strings.Contains(op+" "+stage, only) }

	createStages := []string{"resolve image and kernel", "claim IP", "prepare root disk", "prepare work disk",
		"make identity", "write config disk", "claim tap", "attach disks", "start VMM: launched", "start VMM", "wait for SSH", "wait for agent"}
	for i, stage := range createStages {
		if skip("create", stage) {
			continue
		}
		for _, mode := range []string{"error", "kill"} {
			e.restartWith(stage + ":" + mode)
			name := fmt.Sprintf("c%d%s", i, mode[:1])
			_, errOut, code := e.banger("vm", "create", "--name", name)
			expectFailure("create", stage, mode, errOut, code)
			settle("create", stage, mode, name)
			if _, _, code := e.banger("vm", "show", name); code == 0 {
				e.must("vm", "delete", name)
			}
		}
	}

	// A start: the VM exists (created without booting), each boot step broken.
	e.must("vm", "create", "--name", "st", "--no-start")
	for _, stage := range []string{"write config disk", "claim tap", "attach disks", "start VMM: launched", "start VMM", "wait for SSH", "wait for agent"} {
		if skip("start", stage) {
			continue
		}
		for _, mode := range []string{"error", "kill"} {
			e.restartWith(stage + ":" + mode)
			_, errOut, code := e.banger("vm", "start", "st")
			expectFailure("start", stage, mode, errOut, code)
			settle("start", stage, mode, "st")
			if e.show("st").State == "running" {
				e.must("vm", "stop", "st")
			}
		}
	}
	// A clone of the stopped VM (without booting it: the boot steps are
	// the start's, broken above).
	for i, stage := range []string{"check source", "clone root disk", "clone work disk", "make identity"} {
		if skip("clone", stage) {
			continue
		}
		for _, mode := range []string{"error", "kill"} {
			e.restartWith(stage + ":" + mode)
			name := fmt.Sprintf("k%d%s", i, mode[:1])
			_, errOut, code := e.banger("vm", "clone", "st", name, "--no-start")
			expectFailure("clone", stage, mode, errOut, code)
			settle("clone", stage, mode, name)
			if _, _, code := e.banger("vm", "show", name); code == 0 {
				e.must("vm", "delete", name)
			}
		}
	}
	e.must("vm", "start", "st")
	e.must("vm", "exec", "st", "--", "true")
	// A stop, after the VMM exited and after its tap and runtime went:
	// the VM ends stopped (the watch loop or the next daemon records what
	// the failed stop did not) and starts again.
	for _, stage := range []string{"stop: VMM exited", "stop: runtime released"} {
		if skip("stop", stage) {
			continue
		}
		for _, mode := range []string{"error", "kill"} {
			e.restartWith(stage + ":" + mode)
			_, errOut, code := e.banger("vm", "stop", "st")
			expectFailure("stop", stage, mode, errOut, code)
			e.restartWith("")
			deadline := time.Now().Add(10 * time.Second)
			for e.show("st").State != "stopped" && time.Now().Before(deadline) {
				time.Sleep(200 * time.Millisecond) // the watch loop's 2 s tick
			}
			settle("stop", stage, mode, "st")
			if st := e.show("st").State; st != "stopped" {
				t.Errorf("after stop %q %s: st is %s, want stopped", stage, mode, st)
			}
			e.must("vm", "start", "st")
		}
	}
	e.must("vm", "exec", "st", "--", "true")
	e.must("vm", "delete", "st")

	for i, stage := range []string{"delete: stop", "delete: remove files", "delete: remove row"} {
		if skip("delete", stage) {
			continue
		}
		for _, mode := range []string{"error", "kill"} {
			name := fmt.Sprintf("d%d%s", i, mode[:1])
			e.must("vm", "create", "--name", name, "--no-start")
			e.restartWith(stage + ":" + mode)
			_, errOut, code := e.banger("vm", "delete", name)
			expectFailure("delete", stage, mode, errOut, code)
			e.restartWith("")
			_, _, code = e.banger("vm", "show", name)
			if mode == "kill" && code == 0 {
				// Begun, a delete is finished by the next daemon (its
				// journal), whatever step it died after.
				t.Errorf("delete killed after %q: the new daemon did not finish it: %s is still there", stage, name)
			}
			// What a failed delete leaves, a second delete finishes.
			if code == 0 {
				e.must("vm", "delete", name)
			}
			settle("delete", stage, mode, name)
		}
	}

	// A pull of a small OCI image from a registry listening inside the
	// test's namespace: the image ends absent or complete, and a pull
	// after a broken one succeeds.
	ref := nsRegistryImage(t, e.ns)
	pullStages := []string{"pull: convert", "pull: bootstrap", "pull: checksum", "pull: publish", "pull: record"}
	for i, stage := range pullStages {
		if skip("pull", stage) {
			continue
		}
		for _, mode := range []string{"error", "kill"} {
			name := fmt.Sprintf("p%d%s", i, mode[:1])
			e.restartWith(stage + ":" + mode)
			_, errOut, code := e.banger("image", "pull", ref, "--name", name)
			expectFailure("pull", stage, mode, errOut, code)
			e.restartWith("")
			outcome := "gone"
			if _, _, code := e.banger("image", "show", name); code == 0 {
				outcome = "complete"
				var im struct {
					RootfsPath string `json:"rootfs_path"`
					SHA256     string `json:"sha256"`
				}
				if err := json.Unmarshal([]byte(e.must("image", "show", name, "--json")), &im); err != nil {
					t.Fatal(err)
				}
				if im.SHA256 == "" || im.SHA256 != sha256File(t, im.RootfsPath) {
					t.Errorf("after pull %q %s: image %s is recorded but its rootfs does not match its sha256", stage, mode, name)
				}
			}
			label := fmt.Sprintf("after pull %q %s", stage, mode)
			e.assertNoLeaks(label)
			if got := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id"); got != keepBoot {
				t.Errorf("%s: keep rebooted or lost", label)
			}
			matrix = append(matrix, fmt.Sprintf("%-6s %-26s %-5s → %s, no leak", "pull", stage, mode, outcome))
			if outcome == "gone" {
				e.must("image", "pull", ref, "--name", name)
			}
			e.must("image", "delete", name)
			e.assertNoLeaks(label + ", pulled again and deleted")
		}
	}

	t.Logf("fault matrix (%d cells):\n%s", len(matrix), strings.Join(matrix, "\n"))
	if os.Getenv("BANGER_FAULT_REPORT") != "" {
		_ = os.WriteFile(filepath.Join(os.Getenv("BANGER_FAULT_REPORT")), []byte(strings.Join(matrix, "\n")+"\n"), 0o644)
	}
}

// nsRegistryImage serves a small OCI image (a few files; the kernel's
// initrd brings busybox for banger's bootstrap) from a registry that
// also listens on 127.0.0.1 inside the network namespace ns, and returns
// the reference a daemon there pulls.
func nsRegistryImage(t *testing.T, ns string) string {
	t.Helper()
	ln := listenInNetns(t, ns)
	host, nsHosts := ocitest.RegistryAlsoOn(t, nil, ln)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, body string }{
		{"etc/os-release", "ID=tiny\nNAME=\"banger fault matrix\"\n"},
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"},
		{"etc/hostname", "tiny\n"},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ocitest.Push(t, host+"/fault/tiny:1", ocitest.Image(t, "amd64", v1.Config{}, ocitest.Layer(t, buf.Bytes())))
	return nsHosts[0] + "/fault/tiny:1"
}

// listenInNetns opens a TCP listener on 127.0.0.1 inside the named
// network namespace (a socket stays in the namespace it was made in,
// whichever thread serves it later).
func listenInNetns(t *testing.T, ns string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine rather than
		// run other code in the test's namespace.
		runtime.LockOSThread()
		t.Fatalf("return to the host namespace: %v", err)
	}
	if lerr != nil {
		t.Fatal(lerr)
	}
	return ln
}
