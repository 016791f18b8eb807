//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// makeAptRepo builds a one-package flat apt repository in dir: a .deb made
// with dpkg-deb that installs /usr/bin/banger-hello, with its Packages and
// Release files.
func makeAptRepo(t *testing.T, dir string) {
	t.Helper()
	pkg := filepath.Join(t.TempDir(), "pkg")
	for _, d := range []string{"DEBIAN", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(pkg, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	control := "Package: banger-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: banger e2e <e2e@banger.invalid>\nDescription: says hello\n"
	if err := os.WriteFile(filepath.Join(pkg, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "usr", "bin", "banger-hello"), []byte("#!/bin/sh\necho hello from a package\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "banger-hello_1.0_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v: %s", err, out)
	}
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	packages := control + fmt.Sprintf("Filename: ./banger-hello_1.0_all.deb\nSize: %d\nSHA256: %s\n", len(data), hex.EncodeToString(sum[:]))
	if err := os.WriteFile(filepath.Join(dir, "Packages"), []byte(packages), 0o644); err != nil {
		t.Fatal(err)
	}
	psum := sha256.Sum256([]byte(packages))
	release := fmt.Sprintf("Origin: banger-e2e\nLabel: banger-e2e\nSuite: e2e\nCodename: e2e\nDate: %s\nSHA256:\n %s %d Packages\n",
		time.Now().UTC().Format(time.RFC1123), hex.EncodeToString(psum[:]), len(packages))
	if err := os.WriteFile(filepath.Join(dir, "Release"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
}

// useLocalRepo, run in a guest, points apt at the repository the
// "internet" serves (makeAptRepo) and nothing else.
const useLocalRepo = "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && " +
	"echo 'deb [trusted=yes] http://" + inetAddr + ":8080/files ./' > /etc/apt/sources.list.d/e2e.list"

// watchOps polls `banger ops --json` until stop is closed and returns the
// stages seen for operations of kind.
func (e *env) watchOps(kind string, stop <-chan struct{}) func() []string {
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 3000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			out, _, code := e.banger("ops", "--json")
			if code != 0 {
				continue
			}
			var ops []struct {
				Kind  string `json:"kind"`
				Stage string `json:"stage"`
				Done  bool   `json:"done"`
			}
			if json.Unmarshal([]byte(out), &ops) != nil {
				continue
			}
			mu.Lock()
			for _, op := range ops {
				if op.Kind == kind && !op.Done && (len(seen) == 0 || seen[len(seen)-1] != op.Stage) {
					seen = append(seen, op.Stage)
				}
			}
			mu.Unlock()
		}
	}()
	return func() []string {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

func hasStage(stages []string, prefix string) bool {
	for _, s := range stages {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// assertNoBuildLeft: no hidden build VM's files, no build directory, no
// VMM of a build.
func (e *env) assertNoBuildLeft() {
	e.t.Helper()
	e.assertNothingLeft("imgbuild-")
	imagesDir := filepath.Join(e.root, "state", "banger", "images")
	entries, _ := os.ReadDir(imagesDir)
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), ".build-") {
			e.t.Errorf("build directory left: %s", en.Name())
		}
	}
}

func (e *env) imageNames() []string {
	e.t.Helper()
	var ims []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(e.must("image", "list", "--json")), &ims); err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, im := range ims {
		names = append(names, im.Name)
	}
	return names
}

// TestImageBuild: an image from a stopped VM, an image from that one with
// a package from a local apt repository and a script, both independent of
// their bases; a failing script, a Ctrl-C and a guest without its mirrors
// leave nothing.
func TestImageBuild(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `default_dns = ["`+inetAddr+`"]`)
	in := newInternet(t, e)
	repo := t.TempDir()
	makeAptRepo(t, repo)
	in.serveFiles(repo)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	// A VM configured by hand: apt pointed at the local repository only,
	// and a file in /.
	e.must("vm", "create", "--name", "src")
	e.must("vm", "exec", "src", "--", "sh", "-c",
		useLocalRepo+" && "+
			"echo from-src > /etc/marker-src && echo history > /root/.bash_history && sync")
	srcKeys := e.must("vm", "exec", "src", "--", "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
	srcMachineID := e.must("vm", "exec", "src", "--", "cat", "/etc/machine-id")
	e.must("vm", "stop", "src")

	// Refused while running, then made from the stopped VM.
	e.must("vm", "start", "src")
	if _, errOut, code := e.banger("image", "build", "withrepo", "--from-vm", "src"); code == 0 || !strings.Contains(errOut, "stop it first") {
		t.Errorf("build from a running VM: exit %d, %s", code, errOut)
	}
	e.must("vm", "stop", "src")
	start := time.Now()
	e.must("image", "build", "withrepo", "--from-vm", "src")
	t.Logf("image build --from-vm: %s", time.Since(start).Round(100*time.Millisecond))
	var man struct {
		Source   string `json:"source"`
		Manifest struct {
			Kind   string `json:"kind"`
			FromVM string `json:"from_vm"`
			Base   string `json:"base"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(e.must("image", "show", "withrepo", "--json")), &man); err != nil {
		t.Fatal(err)
	}
	if man.Manifest.Kind != "from-vm" || man.Manifest.FromVM != "src" || man.Manifest.Base != "debian-bookworm" || man.Source != "built from vm src" {
		t.Errorf("withrepo: %+v", man)
	}
	// Its VMs have the file and their own identity.
	e.must("vm", "create", "--name", "fromvm", "--image", "withrepo")
	if got := e.must("vm", "exec", "fromvm", "--", "cat", "/etc/marker-src"); got != "from-src\n" {
		t.Errorf("fromvm /etc/marker-src = %q", got)
	}
	keys := e.must("vm", "exec", "fromvm", "--", "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
	for _, line := range strings.Split(strings.TrimSpace(keys), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.Contains(srcKeys, f[1]) {
			t.Errorf("a VM of the image has a host key of the source VM: %s", line)
		}
	}
	t.Logf("host keys: source %d, VM of the image %d", strings.Count(srcKeys, "\n"), strings.Count(keys, "\n"))
	if id := e.must("vm", "exec", "fromvm", "--", "cat", "/etc/machine-id"); id == srcMachineID {
		t.Errorf("a VM of the image has the source VM's machine-id %s", id)
	}
	// /root (the work disk) was not taken without --with-work-disk.
	if _, _, code := e.banger("vm", "exec", "fromvm", "--", "test", "-e", "/root/.bash_history"); code == 0 {
		t.Errorf("the source VM's /root reached the image without --with-work-disk")
	}
	if out := e.must("vm", "list"); strings.Contains(out, "imgbuild-") {
		t.Errorf("vm list shows a build VM:\n%s", out)
	}

	// A package from the repository and a script, watched through ops.
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker.sh")
	if err := os.WriteFile(marker, []byte("#!/bin/sh\nset -e\necho writing the marker\nbanger-hello > /etc/built-marker\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	stages := e.watchOps("image.build", stop)
	start = time.Now()
	_, buildOut, code := e.banger("image", "build", "tools", "--from", "withrepo", "--packages", "banger-hello", "--script", marker)
	close(stop)
	if code != 0 {
		t.Fatalf("image build tools: exit %d\n%s", code, buildOut)
	}
	t.Logf("image build --from --packages --script: %s", time.Since(start).Round(100*time.Millisecond))
	seen := stages()
	for _, want := range []string{"boot: ", "packages", "script 1 (marker.sh)", "shutdown"} {
		if !hasStage(seen, want) {
			t.Errorf("ops --json never showed image.build in stage %q; saw %v", want, seen)
		}
	}
	if !strings.Contains(buildOut, "writing the marker") || !strings.Contains(buildOut, "banger-hello") {
		t.Errorf("the build did not show its guest's output:\n%s", buildOut)
	}
	e.must("vm", "create", "--name", "t1", "--image", "tools")
	if got := e.must("vm", "exec", "t1", "--", "banger-hello"); got != "hello from a package\n" {
		t.Errorf("banger-hello in a VM of the built image said %q", got)
	}
	if got := e.must("vm", "exec", "t1", "--", "cat", "/etc/built-marker"); got != "hello from a package\n" {
		t.Errorf("/etc/built-marker = %q", got)
	}
	// Caches cleaned, no package lists kept.
	if out := e.must("vm", "exec", "t1", "--", "find", "/var/cache/apt/archives", "/var/lib/apt/lists", "-name", "*.deb", "-o", "-name", "*Packages*"); out != "" {
		t.Errorf("package caches left in the image: %s", out)
	}

	// Independent of its base: the base (and its base's VMs) go, new VMs
	// of the built image still boot.
	for _, vm := range []string{"t1", "fromvm", "src"} {
		e.must("vm", "delete", vm)
	}
	e.must("image", "delete", "withrepo")
	e.assertNoBuildLeft()

	// A script that exits 3 fails the build, named; nothing is left.
	fail := filepath.Join(dir, "fail.sh")
	if err := os.WriteFile(fail, []byte("echo about to fail\nexit 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := e.banger("image", "build", "bad", "--from", "tools", "--script", fail)
	if code == 0 || !strings.Contains(errOut, `script fail.sh exited with status 3; its last line of output: "about to fail"`) {
		t.Errorf("failing script: exit %d\n%s", code, errOut)
	}
	e.assertNoBuildLeft()
	if names := strings.Join(e.imageNames(), ","); names != "debian-bookworm,tools" {
		t.Errorf("images after a failed build: %s", names)
	}

	// Ctrl-C halfway (in the script) removes everything.
	slow := filepath.Join(dir, "slow.sh")
	if err := os.WriteFile(slow, []byte("echo sleeping\nsleep 600\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "--no-autostart",
		"image", "build", "interrupted", "--from", "tools", "--script", slow)
	cmd.Env = e.vars
	var cliErr bytes.Buffer
	cmd.Stderr = &cliErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1200 && !strings.Contains(cliErr.String(), "sleeping"); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(cliErr.String(), "sleeping") {
		_ = cmd.Process.Kill()
		t.Fatalf("the build never reached its script:\n%s", cliErr.String())
	}
	// ip netns exec runs banger as its child: signal the CLI itself.
	out, _ := exec.Command("pgrep", "-P", fmt.Sprint(cmd.Process.Pid)).Output()
	target := cmd.Process.Pid
	if f := strings.Fields(string(out)); len(f) == 1 {
		fmt.Sscan(f[0], &target)
	}
	_ = syscall.Kill(target, syscall.SIGINT)
	_ = cmd.Wait()
	if !strings.Contains(cliErr.String(), "everything it made was removed") {
		t.Errorf("Ctrl-C during the build said:\n%s", cliErr.String())
	}
	e.assertNoBuildLeft()
	if names := strings.Join(e.imageNames(), ","); names != "debian-bookworm,tools" {
		t.Errorf("images after a cancelled build: %s", names)
	}

	// A guest that cannot reach its mirrors: the package manager's last
	// line says why.
	_, errOut, code = e.banger("image", "build", "nomirror", "--from", "debian-bookworm", "--no-nat", "--packages", "banger-hello")
	if code == 0 || !strings.Contains(errOut, "installing packages: exited with status 100") || !strings.Contains(errOut, "Unable to locate package banger-hello") {
		t.Errorf("build without a way to the mirrors: exit %d\n%s", code, errOut)
	}
	e.assertNoBuildLeft()

	// The built image outlives its base.
	e.must("vm", "create", "--name", "t2", "--image", "tools")
	if got := e.must("vm", "exec", "t2", "--", "banger-hello"); got != "hello from a package\n" {
		t.Errorf("after its base was deleted, banger-hello said %q", got)
	}
	if out := e.must("image", "list"); !strings.Contains(out, "built from withrepo") {
		t.Errorf("image list does not say how tools was made:\n%s", out)
	}
}
