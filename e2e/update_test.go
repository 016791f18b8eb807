//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/internal/release"
)

const (
	updateFrom = "v1.0.0"
	updateTo   = "v1.1.0"
)

// makeKey writes a new ECDSA P-256 signing key (SEC 1 PEM) to path.
func makeKey(t *testing.T, path string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// makeRelease runs the README's make release into dist.
func makeRelease(t *testing.T, version, key, dist string) {
	t.Helper()
	cmd := exec.Command("make", "-s", "release", "VERSION="+version, "SIGNING_KEY="+key, "DIST="+dist)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release %s: %v: %s", version, err, out)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// releases are the dist directories the test serves, each under its own
// path, and the handlers that misbehave on purpose.
type releases struct {
	root string // one directory per served path
	url  string // http://127.0.0.1:PORT inside the env's namespace
}

func (r *releases) manifest(name string) string { return r.url + "/" + name + "/manifest.json" }

func serveReleases(t *testing.T, e *env, root string) *releases {
	t.Helper()
	var ln net.Listener
	inNS(t, e.ns, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	tarball := release.TarballName(updateTo, runtime.GOARCH)
	files := http.FileServer(http.Dir(root))
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dir, file, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if file == tarball {
			switch dir {
			case "truncated":
				b, _ := os.ReadFile(filepath.Join(root, "good", tarball))
				w.Header().Set("Content-Length", fmt.Sprint(len(b)))
				_, _ = w.Write(b[:len(b)/2])
				return // the connection closes short
			case "oversize":
				w.Header().Set("Content-Length", fmt.Sprint(300<<20))
				_, _ = w.Write(make([]byte, 1<<20))
				return
			case "stall":
				w.Header().Set("Content-Length", "1000000")
				_, _ = w.Write([]byte("x"))
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-time.After(60 * time.Second):
				}
				return
			}
		}
		if dir == "truncated" || dir == "oversize" || dir == "stall" {
			r.URL.Path = "/good/" + file
		}
		files.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &releases{root: root, url: "http://" + ln.Addr().String()}
}

// installed lists the install directory and the version its banger says.
func (e *env) installed() (string, []string) {
	e.t.Helper()
	var v struct {
		Client struct {
			Version string `json:"version"`
		} `json:"client"`
		Daemon *struct {
			Version string `json:"version"`
		} `json:"daemon"`
	}
	if err := json.Unmarshal([]byte(e.must("version", "--json")), &v); err != nil {
		e.t.Fatal(err)
	}
	ents, err := os.ReadDir(e.bin)
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, x := range ents {
		names = append(names, x.Name())
	}
	if v.Daemon == nil || v.Daemon.Version != v.Client.Version {
		e.t.Fatalf("banger %s but bangerd %+v", v.Client.Version, v.Daemon)
	}
	return v.Client.Version, names
}

func (e *env) daemonPID() int {
	e.t.Helper()
	var p struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(e.must("ping", "--json")), &p); err != nil {
		e.t.Fatal(err)
	}
	return p.PID
}

// TestUpdate: releases made by make release with a key the test makes,
// served over HTTP in the VM's namespace; an installation of vA with a
// running VM updated to vB while the VM keeps running; every bad release
// refused with nothing swapped; an operation in flight refused unless
// --force; a doctor FAIL after the swap rolled back.
func TestUpdate(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("e2e needs root")
	}
	kernelDir, rootfs := artifacts(t)
	work := t.TempDir()
	key, otherKey := filepath.Join(work, "key.pem"), filepath.Join(work, "other.pem")
	makeKey(t, key)
	makeKey(t, otherKey)
	root := filepath.Join(work, "served")
	good := filepath.Join(root, "good")
	makeRelease(t, updateFrom, key, good)
	makeRelease(t, updateTo, key, good)
	makeRelease(t, updateTo, otherKey, filepath.Join(root, "otherkey"))
	tarball := release.TarballName(updateTo, runtime.GOARCH)
	copyDir(t, good, filepath.Join(root, "badtarball"))
	b, err := os.ReadFile(filepath.Join(good, tarball))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(filepath.Join(root, "badtarball", tarball), b, 0o644); err != nil {
		t.Fatal(err)
	}
	copyDir(t, good, filepath.Join(root, "badsums"))
	sums, err := os.ReadFile(filepath.Join(good, release.SumsName))
	if err != nil {
		t.Fatal(err)
	}
	// A sums file naming the tampered tarball's hash: its signature fails.
	tbSum := release.SHA256Hex(b)
	m, _ := release.ParseManifest(mustRead(t, filepath.Join(good, release.ManifestName)))
	sums = bytes.Replace(sums, []byte(m.Versions[updateTo].SHA256), []byte(tbSum), 1)
	if err := os.WriteFile(filepath.Join(root, "badsums", release.SumsName), sums, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "badsums", tarball), b, 0o644); err != nil {
		t.Fatal(err)
	}

	prefix := installRelease(t, good, updateFrom, filepath.Join(work, "prefix", "bin"))

	e := newEnvAt(t, prefix)
	rel := serveReleases(t, e, root)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
	e.must("vm", "create", "--name", "keep", "--image", "debian-bookworm")
	alive := func(when string) {
		t.Helper()
		if out := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id"); len(strings.TrimSpace(out)) != 36 {
			t.Fatalf("%s: exec in keep printed %q", when, out)
		}
	}
	alive("before the update")
	bootID := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id")
	vmPID := e.show("keep").PID
	three := []string{"banger", "banger-agent", "bangerd"}

	stdout, _, code := e.banger("update", "--check", "--manifest-url", rel.manifest("good"))
	if code != 10 || stdout != "update available: "+updateFrom+" → "+updateTo+"\n" {
		t.Fatalf("update --check: exit %d, %q", code, stdout)
	}

	// Refusals: nothing swapped, the same daemon serving.
	pid := e.daemonPID()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"badtarball", nil, "does not match SHA256SUMS's"},
		{"badsums", nil, "SHA256SUMS is not signed by this build's release key"},
		{"otherkey", nil, "SHA256SUMS is not signed by this build's release key"},
		{"truncated", nil, "unexpected EOF"},
		{"oversize", nil, "over the 268435456-byte limit"},
		{"stall", []string{"--stall-timeout", "2s"}, "nothing received for 2s; the server stalled"},
		{"good", []string{"--to", "v9.9.9"}, "does not offer v9.9.9"},
	} {
		start := time.Now()
		_, errOut, code := e.banger(append([]string{"update", "--manifest-url", rel.manifest(c.name)}, c.args...)...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Fatalf("update from %s: exit %d, %q; want an error containing %q", c.name, code, errOut, c.want)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("update from %s took %s", c.name, d)
		}
		if v, names := e.installed(); v != updateFrom || !slices.Equal(names, three) {
			t.Fatalf("after refusing %s: %s installed, files %v", c.name, v, names)
		}
		if p := e.daemonPID(); p != pid {
			t.Fatalf("after refusing %s the daemon changed (pid %d → %d)", c.name, pid, p)
		}
	}

	// An operation in flight: refused, naming it; --force proceeds.
	create := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "--no-autostart", "vm", "create", "--name", "inflight", "--image", "debian-bookworm")
	create.Env = e.vars
	var createOut bytes.Buffer
	create.Stdout, create.Stderr = &createOut, &createOut
	if err := create.Start(); err != nil {
		t.Fatal(err)
	}
	createDone := make(chan error, 1)
	go func() { createDone <- create.Wait() }()
	t.Cleanup(func() {
		select {
		case <-createDone:
		case <-time.After(2 * time.Minute):
			_ = create.Process.Kill()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ops []struct {
			Kind, Target string
			Done         bool
		}
		_ = json.Unmarshal([]byte(e.must("ops", "--json")), &ops)
		if slices.ContainsFunc(ops, func(o struct {
			Kind, Target string
			Done         bool
		}) bool {
			return o.Kind == "vm.create" && o.Target == "inflight" && !o.Done
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm create inflight never showed in ops: %s", createOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, errOut, code := e.banger("update", "--manifest-url", rel.manifest("good"))
	if code == 0 || !strings.Contains(errOut, "refusing to update while bangerd has operations in flight") ||
		!strings.Contains(errOut, "  vm.create inflight (stage ") {
		t.Fatalf("update during a create: exit %d, %q", code, errOut)
	}
	if v, _ := e.installed(); v != updateFrom {
		t.Fatalf("refused, yet %s is installed", v)
	}
	pid = e.daemonPID()
	stdout, errOut, code = e.banger("update", "--force", "--manifest-url", rel.manifest("good"))
	if code != 0 || !strings.HasSuffix(stdout, "updated "+updateFrom+" → "+updateTo+"\n") {
		t.Fatalf("update --force: exit %d\n%s\n%s", code, stdout, errOut)
	}
	e.adoptDaemon(pid)
	v, names := e.installed()
	if v != updateTo || !slices.Equal(names, []string{"banger", "banger-agent", "banger-agent.previous", "banger.previous", "bangerd", "bangerd.previous"}) {
		t.Fatalf("after the update: %s, files %v", v, names)
	}
	select {
	case <-createDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("the create interrupted by the update never returned")
	}
	alive("after the update")
	if got := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id"); got != bootID || e.show("keep").PID != vmPID {
		t.Fatalf("keep was restarted by the update (boot id %q → %q)", bootID, got)
	}

	// By hand back to vA.
	pid = e.daemonPID()
	if out := e.must("update", "--rollback"); out != "rolled back to "+updateFrom+"\n" {
		t.Fatalf("update --rollback printed %q", out)
	}
	e.adoptDaemon(pid)
	if v, _ := e.installed(); v != updateFrom {
		t.Fatalf("after --rollback %s is installed", v)
	}
	alive("after --rollback")

	// A doctor FAIL after the swap (a tool banger needs is gone from
	// PATH) rolls back to vA; the VM keeps running throughout.
	broken := filepath.Join(work, "path-without-debugfs")
	linkPathWithout(t, broken, "debugfs")
	brokenEnv := &env{t: t, root: e.root, ns: e.ns, bin: e.bin, vars: replaceVar(e.vars, "PATH", broken)}
	pid = e.daemonPID()
	_, errOut, code = brokenEnv.banger("update", "--manifest-url", rel.manifest("good"))
	if code == 0 || !strings.Contains(errOut, "banger doctor ("+updateTo+") fails: tool debugfs: not found on PATH") ||
		!strings.HasSuffix(strings.TrimSpace(errOut), "(rolled back to "+updateFrom+")") {
		t.Fatalf("update with a failing doctor: exit %d, %q", code, errOut)
	}
	e.adoptDaemon(pid)
	if v, _ := e.installed(); v != updateFrom {
		t.Fatalf("after the rollback %s is installed", v)
	}
	alive("after the rollback")
	if got := e.must("vm", "exec", "keep", "--", "cat", "/proc/sys/kernel/random/boot_id"); got != bootID || e.show("keep").PID != vmPID {
		t.Fatalf("keep was restarted (boot id %q → %q)", bootID, got)
	}
	e.must("vm", "delete", "keep")
}

// installRelease unpacks version's tarball from dist into prefix, as a
// user installing a release would, and returns prefix.
func installRelease(t *testing.T, dist, version, prefix string) string {
	t.Helper()
	if err := os.MkdirAll(prefix, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dist, release.TarballName(version, runtime.GOARCH)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := release.Extract(f, prefix); err != nil {
		t.Fatal(err)
	}
	return prefix
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// adoptDaemon records that the daemon which was pid (this test's child,
// or an earlier detached one) was replaced by a detached one the CLI
// started: the test stops that one by pid at the end.
func (e *env) adoptDaemon(old int) {
	e.t.Helper()
	if e.daemon != nil && e.daemon.Process.Pid == old {
		_ = e.daemon.Wait()
		e.daemon = nil
	}
	p := e.daemonPID()
	if p == old {
		e.t.Fatalf("bangerd was not restarted (still pid %d)", p)
	}
	e.detached = p
}

// linkPathWithout makes dir a PATH holding every program of this PATH
// but name.
func linkPathWithout(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		ents, _ := os.ReadDir(d)
		for _, x := range ents {
			if x.Name() == name {
				continue
			}
			_ = os.Symlink(filepath.Join(d, x.Name()), filepath.Join(dir, x.Name()))
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
		t.Fatalf("%s still in %s", name, dir)
	}
}

func replaceVar(vars []string, key, val string) []string {
	out := []string{key + "=" + val}
	for _, v := range vars {
		if !strings.HasPrefix(v, key+"=") {
			out = append(out, v)
		}
	}
	return out
}
