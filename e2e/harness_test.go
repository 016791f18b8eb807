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
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"banger/internal/image"
	"banger/internal/kernel"
	"banger/internal/system"
)

// env is one isolated banger installation: an XDG tree, a network
// namespace with no route out, and a bangerd inside it.
type env struct {
	t      *testing.T
	root   string
	ns     string
	bin    string
	sock   string
	vars   []string
	daemon *exec.Cmd
	// detached is a bangerd this test caused to start but did not start
	// as its child (banger update restarts the daemon): stopped by pid.
	detached int
	logPath  string
	// owner, when not 0, is the uid bangerd and the CLI run as (system
	// mode): as drops to it, helper is banger's root helper (as root)
	// that does what needs root for that daemon, on helperSock.
	owner      int
	as         []string
	helper     *exec.Cmd
	helperSock string
}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

func cacheDir() string {
	if d := os.Getenv("BANGER_E2E_CACHE"); d != "" {
		return d
	}
	return "/var/cache/banger-e2e"
}

// artifacts builds (once per machine; cached outside the checkout) the
// Debian kernel and bookworm image the VMs boot.
func artifacts(t *testing.T) (kernelDir, rootfs string) {
	t.Helper()
	cache := cacheDir()
	// Keyed by recipe and by a hash of the code that builds it: a changed
	// build rebuilds instead of reusing (a hand-bumped Recipe alone could
	// be forgotten, and CI would never run the changed code).
	kernelKey := kernel.Recipe + "-" + recipeHash(t, "internal/kernel")
	imageKey := image.Recipe + "-" + recipeHash(t, "internal/image") + "-" + kernelKey
	kernelDir = filepath.Join(cache, "kernel-"+kernelKey)
	imageDir := filepath.Join(cache, "image-"+imageKey)
	r := &system.Exec{}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	progress := func(stage string) { t.Logf("artifacts: %s", stage) }
	km, err := kernel.LoadManifest(kernelDir)
	if err != nil {
		t.Logf("building kernel into %s (%v)", kernelDir, err)
		start := time.Now()
		if km, err = kernel.BuildDebian(ctx, r, filepath.Join(cache, "work-kernel"), kernelDir, progress); err != nil {
			t.Fatalf("build kernel: %v", err)
		}
		t.Logf("kernel built in %s", time.Since(start).Round(time.Second))
		pruneStale(t, kernelDir)
	}
	if _, err := image.LoadManifest(imageDir); err != nil {
		t.Logf("building image into %s (%v)", imageDir, err)
		start := time.Now()
		_, err := image.BuildDebianBookworm(ctx, r, image.BuildOptions{
			WorkDir: filepath.Join(cache, "work-image"), DestDir: imageDir,
			KernelModulesDir: filepath.Join(kernelDir, km.ModulesDir), KernelVersion: km.Version,
			Progress: progress,
		})
		if err != nil {
			t.Fatalf("build image: %v", err)
		}
		t.Logf("image built in %s", time.Since(start).Round(time.Second))
		pruneStale(t, imageDir)
	}
	return kernelDir, filepath.Join(imageDir, "rootfs.ext4")
}

// recipeHash is 12 hex digits of the SHA-256 of a build package's
// non-test files (its Go code and the scripts it embeds).
func recipeHash(t *testing.T, pkg string) string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), pkg)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for _, e := range ents { // ReadDir sorts by name
		if e.IsDir() || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %d\n", e.Name(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// pruneStale removes cached builds of other recipes beside keep (they
// would only fill the disk: nothing uses an old recipe's build).
func pruneStale(t *testing.T, keep string) {
	prefix := strings.SplitN(filepath.Base(keep), "-", 2)[0] + "-"
	ents, _ := os.ReadDir(filepath.Dir(keep))
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) && e.Name() != filepath.Base(keep) && !strings.HasPrefix(e.Name(), "work-") {
			t.Logf("artifacts: removing %s, the build of another recipe", e.Name())
			_ = os.RemoveAll(filepath.Join(filepath.Dir(keep), e.Name()))
		}
	}
}

// envCount makes each env's namespace name unique within a run.
var envCount atomic.Int32

// newEnv starts an isolated banger; extraConfig lines are appended to its
// config.toml.
func newEnv(t *testing.T, extraConfig ...string) *env {
	t.Helper()
	return newEnvAt(t, filepath.Join(repoRoot(t), "bin"), extraConfig...)
}

// newEnvAt is newEnv running the binaries installed in bin.
func newEnvAt(t *testing.T, bin string, extraConfig ...string) *env {
	return newEnvAs(t, bin, 0, extraConfig...)
}

// newSystemEnv is newEnv in system mode: bangerd and the CLI run as uid
// owner, unprivileged, and banger's root helper (bangerd root-helper,
// root) makes the bridge, taps, rules and the guests' DNS port for it.
func newSystemEnv(t *testing.T, owner int, extraConfig ...string) *env {
	return newEnvAs(t, filepath.Join(repoRoot(t), "bin"), owner, extraConfig...)
}

func newEnvAs(t *testing.T, bin string, owner int, extraConfig ...string) *env {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("e2e needs root (network namespaces, taps)")
	}
	root := t.TempDir()
	if owner != 0 {
		// The owner must reach its own trees: a root it may traverse, and
		// its XDG directories its own.
		var err error
		if root, err = os.MkdirTemp("", "banger-sys-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(root) })
		if err := os.Chmod(root, 0o755); err != nil {
			t.Fatal(err)
		}
		// The config is root's, as /etc/banger is in a system install:
		// it bounds what the root helper does.
		if err := os.MkdirAll(filepath.Join(root, "config", "banger"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"home", "run", "state", "cache"} {
			p := filepath.Join(root, d)
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, owner, owner); err != nil {
				t.Fatal(err)
			}
		}
	}
	e := &env{t: t, root: root, bin: bin, owner: owner,
		ns: fmt.Sprintf("banger-e2e-%d-%d", os.Getpid(), envCount.Add(1))}
	if owner != 0 {
		id := strconv.Itoa(owner)
		e.as = []string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"}
		e.helperSock = filepath.Join(root, "helper", "helper.sock")
	}
	for _, b := range []string{"banger", "bangerd"} {
		if _, err := os.Stat(filepath.Join(e.bin, b)); err != nil {
			t.Fatalf("%s not built (run make build): %v", b, err)
		}
	}
	e.sock = filepath.Join(root, "run", "banger", "bangerd.sock")
	home := root
	if owner != 0 {
		home = filepath.Join(root, "home")
	}
	e.vars = []string{
		"HOME=" + home,
		"XDG_RUNTIME_DIR=" + filepath.Join(root, "run"),
		"XDG_STATE_HOME=" + filepath.Join(root, "state"),
		"XDG_CONFIG_HOME=" + filepath.Join(root, "config"),
		"XDG_CACHE_HOME=" + filepath.Join(root, "cache"),
		"BANGER_SOCKET=" + e.sock,
		"PATH=" + os.Getenv("PATH"),
	}
	cfgDir := filepath.Join(root, "config", "banger")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := "log_level = \"debug\"\nbridge_name = \"bge2e0\"\nbridge_cidr = \"172.31.250.1/24\"\nvmm = \"qemu\"\n" +
		strings.Join(extraConfig, "\n") +
		"\n\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"1G\"\n"
	if err := os.WriteFile(filepath.Join(cfgDir, "config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if owner != 0 {
		if err := os.Chmod(filepath.Join(cfgDir, "config.toml"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The namespace: loopback only; banger adds its bridge and taps.
	_ = exec.Command("ip", "netns", "delete", e.ns).Run()
	if out, err := exec.Command("ip", "netns", "add", e.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", e.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", e.ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", e.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	e.logPath = filepath.Join(root, "bangerd.log")
	if owner != 0 {
		e.startHelper(filepath.Join(cfgDir, "config.toml"))
	}
	e.startDaemon()
	t.Cleanup(e.cleanup)
	return e
}

// startHelper runs banger's root helper (as root) in the namespace, for
// the owner's daemon, and waits for its socket; it is stopped (SIGTERM)
// after everything else when the test ends.
func (e *env) startHelper(config string) {
	e.t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.root, "helper.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "bangerd"), "root-helper",
		"--owner", strconv.Itoa(e.owner), "--socket", e.helperSock, "--config", config,
		"--state-dir", filepath.Join(e.root, "state", "banger"), "--jail-dir", filepath.Join(e.root, "jail"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	logf.Close()
	e.helper = cmd
	e.t.Cleanup(e.stopHelper) // cleanup stops it first, when it runs
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(e.helperSock); err == nil {
			return
		}
		if time.Now().After(deadline) || !pidAlive(cmd.Process.Pid) {
			b, _ := os.ReadFile(filepath.Join(e.root, "helper.log"))
			e.t.Fatalf("the root helper did not listen on %s; its log:\n%s", e.helperSock, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopHelper ends the root helper (SIGTERM, then SIGKILL) and reaps it.
func (e *env) stopHelper() {
	if e.helper == nil {
		return
	}
	cmd := e.helper
	e.helper = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// helperLog is what the root helper logged.
func (e *env) helperLog() string {
	b, _ := os.ReadFile(filepath.Join(e.root, "helper.log"))
	return string(b)
}

// inNS is the command prefix that runs a banger binary in the namespace,
// as the owner in system mode.
func (e *env) inNS() []string {
	return append([]string{"ip", "netns", "exec", e.ns}, e.as...)
}

// startDaemon runs bangerd in the namespace and waits until it answers.
func (e *env) startDaemon() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	argv := append(e.inNS(), filepath.Join(e.bin, "bangerd"), "--foreground")
	if e.owner != 0 {
		argv = append(argv, "--root-helper", e.helperSock)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = e.vars
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	logf.Close()
	e.daemon = cmd
	e.waitForDaemon(cmd.Process.Pid, e.inNS()...)
}

// waitForDaemon waits until the daemon with pid answers on the socket,
// run through prefix (the namespace, or nothing for the host). Another
// daemon answering is fatal: it would be one this run did not place in
// the test's namespace, and VMs must never boot outside it.
func (e *env) waitForDaemon(pid int, prefix ...string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		argv := append(append([]string{}, prefix...), filepath.Join(e.bin, "banger"), "--no-autostart", "ping", "--json")
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = e.vars
		if out, err := cmd.Output(); err == nil {
			var p struct {
				PID int `json:"pid"`
			}
			if err := json.Unmarshal(out, &p); err != nil {
				e.t.Fatalf("ping --json: %v: %s", err, out)
			}
			if p.PID != pid {
				e.t.Fatalf("a bangerd this test did not start (pid %d, want %d) answers on %s", p.PID, pid, e.sock)
			}
			return
		}
		if !pidAlive(pid) {
			e.t.Fatalf("bangerd (pid %d) exited at start; log:\n%s", pid, e.daemonLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("bangerd did not answer within 20s; log:\n%s", e.daemonLog())
}

// stopDaemon ends bangerd (SIGTERM, then SIGKILL) and reaps it.
func (e *env) stopDaemon() {
	if e.detached > 0 {
		pid := e.detached
		e.detached = 0
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(30 * time.Second)
		for pidAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if pidAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if e.daemon == nil || e.daemon.Process == nil {
		return
	}
	_ = e.daemon.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = e.daemon.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = e.daemon.Process.Kill()
		<-done
	}
	e.daemon = nil
}

func (e *env) daemonLog() string {
	b, _ := os.ReadFile(e.logPath)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// cleanup removes every VM the test left (so no VMM outlives it) and
// stops the daemon; the namespace goes with its own cleanup.
func (e *env) cleanup() {
	if e.daemon != nil || e.detached > 0 {
		out, _, _ := e.banger("vm", "list", "--json")
		var vms []struct {
			Name string `json:"name"`
			PID  int    `json:"pid"`
		}
		_ = json.Unmarshal([]byte(out), &vms)
		for _, v := range vms {
			if _, errOut, code := e.banger("vm", "delete", v.Name); code != 0 {
				e.t.Logf("cleanup: delete %s: %s", v.Name, errOut)
				if v.PID > 0 {
					_ = syscall.Kill(v.PID, syscall.SIGKILL)
				}
			}
		}
		// Whatever the test did, nothing banger made may outlive its records.
		if len(vms) > 0 || !e.t.Failed() {
			e.assertNoLeaks("at the end of the test")
		}
		e.stopDaemon()
	}
	e.stopHelper()
	// A VMM no record names (a leak the checker reported, or one a daemon
	// lost) must not outlive the test either: its command line names the
	// test's own directory.
	for _, pid := range processesUnder(e.root) {
		e.t.Errorf("cleanup: killing pid %d, still running from %s", pid, e.root)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if e.t.Failed() {
		e.t.Logf("bangerd log tail:\n%s", e.daemonLog())
	}
}

// processesUnder lists the processes (not zombies) whose command line
// names a path under dir.
func processesUnder(dir string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + ent.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmd), dir+"/") {
			continue
		}
		if st, err := os.ReadFile("/proc/" + ent.Name() + "/stat"); err == nil && strings.Contains(string(st), ") Z ") {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// assertNoLeaks fails the test when banger doctor --leaks finds host
// resources no record accounts for.
func (e *env) assertNoLeaks(when string) {
	e.t.Helper()
	out, errOut, code := e.banger("doctor", "--leaks", "--json")
	var res struct {
		Leaks    []struct{ Kind, Name, Detail string } `json:"leaks"`
		InFlight int                                   `json:"in_flight"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		e.t.Errorf("doctor --leaks %s: exit %d: %v: %s %s", when, code, err, out, errOut)
		return
	}
	for _, l := range res.Leaks {
		e.t.Errorf("leak %s: %s %s: %s (%d operations in flight)", when, l.Kind, l.Name, l.Detail, res.InFlight)
	}
	if (code == 0) != (len(res.Leaks) == 0) {
		e.t.Errorf("doctor --leaks exit %d with %d leaks", code, len(res.Leaks))
	}
}

// banger runs the CLI inside the namespace.
func (e *env) banger(args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	argv := append(append(e.inNS(), filepath.Join(e.bin, "banger"), "--no-autostart"), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = e.vars
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

// must runs the CLI and fails the test on a non-zero exit.
func (e *env) must(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.banger(args...)
	if code != 0 {
		e.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

type vmJSON struct {
	Name  string `json:"name"`
	ID    string `json:"id"`
	State string `json:"state"`
	IP    string `json:"ip"`
	MAC   string `json:"mac"`
	Tap   string `json:"tap"`
	PID   int    `json:"pid"`
	Dir   string `json:"dir"`
}

func (e *env) show(name string) vmJSON {
	e.t.Helper()
	var v vmJSON
	if err := json.Unmarshal([]byte(e.must("vm", "show", name, "--json")), &v); err != nil {
		e.t.Fatal(err)
	}
	return v
}

// links lists the interfaces in the namespace.
func (e *env) links() string {
	out, _ := exec.Command("ip", "-n", e.ns, "-o", "link", "show").CombinedOutput()
	return string(out)
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
