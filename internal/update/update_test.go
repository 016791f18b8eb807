package update

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/release"
	"banger/internal/system"
)

// fakeBin builds testdata/fakebanger as version (and with bangerd's
// --check-migrations exiting migrations) into a directory holding it
// under the three release names.
func fakeBin(t *testing.T, version, migrations string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "banger"),
		"-ldflags", "-s -w -X main.version="+version+" -X main.migrations="+migrations, "./testdata/fakebanger")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build fakebanger: %v: %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "banger"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bangerd", "banger-agent"} {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type fixture struct {
	t       *testing.T
	key     *ecdsa.PrivateKey
	pub     string
	dist    string
	install string
	srv     *httptest.Server
	daemon  *fakeDaemon
	// override, when set, answers a request instead of dist.
	mu       sync.Mutex
	override func(w http.ResponseWriter, r *http.Request) bool
	requests []string
	doctor   string // FAKE_DOCTOR_FAIL's file
}

var (
	binsOnce sync.Once
	binA     string
	binB     string
	binB2    string // vB whose bangerd finds a database newer than itself
	binsDir  string
	// distKey signed distTemplate, which holds all three releases.
	distKey      *ecdsa.PrivateKey
	distTemplate string
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	binsOnce.Do(func() {
		// Built once for the package's tests, outside any one test's
		// temp dir.
		d, err := os.MkdirTemp("", "banger-fake-")
		if err != nil {
			t.Fatal(err)
		}
		binsDir = d
		for _, b := range []struct {
			dst        *string
			v, migrate string
		}{{&binA, "v1.0.0", "0"}, {&binB, "v1.1.0", "1"}, {&binB2, "v1.2.0-rc.1", "2"}} {
			src := fakeBin(t, b.v, b.migrate)
			*b.dst = filepath.Join(d, b.v)
			if err := os.Rename(src, *b.dst); err != nil {
				t.Fatal(err)
			}
		}
		if distKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
		distTemplate = filepath.Join(d, "dist")
		for _, v := range []struct{ ver, bin string }{{"v1.0.0", binA}, {"v1.1.0", binB}, {"v1.2.0-rc.1", binB2}} {
			if _, err := release.Pack(distTemplate, v.ver, "amd64", v.bin, distKey, 0); err != nil {
				t.Fatal(err)
			}
		}
	})
	if distTemplate == "" {
		t.Fatal("fake releases were not built")
	}
	pub, err := release.EncodePublicKey(&distKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, key: distKey, pub: pub, dist: t.TempDir(), install: t.TempDir()}
	f.doctor = filepath.Join(t.TempDir(), "doctor-fails")
	ents, err := os.ReadDir(distTemplate)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		copyFile(t, filepath.Join(distTemplate, e.Name()), filepath.Join(f.dist, e.Name()))
	}
	for _, n := range release.Binaries {
		copyFile(t, filepath.Join(binA, n), filepath.Join(f.install, n))
	}
	files := http.FileServer(http.Dir(f.dist))
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.URL.Path)
		o := f.override
		f.mu.Unlock()
		if o != nil && o(w, r) {
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	f.daemon = &fakeDaemon{dir: f.install, running: true, version: "v1.0.0"}
	return f
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) opts() Options {
	return Options{
		ManifestURL: f.srv.URL + "/manifest.json", InstallDir: f.install, CurrentVersion: "v1.0.0",
		PublicKey: f.pub, StallTimeout: 2 * time.Second, Daemon: f.daemon,
		Runner: &system.Exec{Env: []string{"FAKE_DOCTOR_FAIL=" + f.doctor}},
	}
}

// installed is the version the installed banger reports, and the
// directory's listing.
func (f *fixture) installed() (string, []string) {
	f.t.Helper()
	o := f.opts()
	v, err := o.binaryVersion(context.Background(), filepath.Join(f.install, "banger"))
	if err != nil {
		f.t.Fatal(err)
	}
	ents, err := os.ReadDir(f.install)
	if err != nil {
		f.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return v, names
}

// assertUntouched: still vA, no .previous, no staging left.
func (f *fixture) assertUntouched() {
	f.t.Helper()
	v, names := f.installed()
	if v != "v1.0.0" || !slices.Equal(names, []string{"banger", "banger-agent", "bangerd"}) {
		f.t.Fatalf("install dir changed: version %s, files %v", v, names)
	}
	if len(f.daemon.restarts) != 0 {
		f.t.Fatalf("daemon restarted: %v", f.daemon.restarts)
	}
}

type fakeDaemon struct {
	dir        string
	running    bool
	version    string
	ops        []api.OperationSummary
	restarts   []string
	restartErr map[string]error
}

func (d *fakeDaemon) Running(context.Context) (string, bool, error) {
	return d.version, d.running, nil
}

func (d *fakeDaemon) Operations(context.Context) ([]api.OperationSummary, error) {
	return d.ops, nil
}

// Restart "starts" the installed binary: it answers as what is installed.
func (d *fakeDaemon) Restart(ctx context.Context, want string) error {
	d.restarts = append(d.restarts, want)
	if err := d.restartErr[want]; err != nil {
		return err
	}
	o := Options{Runner: &system.Exec{}}
	v, err := o.binaryVersion(ctx, filepath.Join(d.dir, "banger"))
	if err != nil {
		return err
	}
	d.version = v
	if v != want {
		return errors.New("bangerd answers as " + v + ", not " + want)
	}
	return nil
}

func TestUpdateSwapsAndRestarts(t *testing.T) {
	f := newFixture(t)
	res, err := Run(t.Context(), f.opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.From != "v1.0.0" || res.To != "v1.1.0" || !res.Restarted || res.UpToDate || res.DryRun {
		t.Fatalf("result %+v", res)
	}
	v, names := f.installed()
	want := []string{"banger", "banger-agent", "banger-agent.previous", "banger.previous", "bangerd", "bangerd.previous"}
	if v != "v1.1.0" || !slices.Equal(names, want) {
		t.Fatalf("after update: version %s, files %v; want v1.1.0, %v", v, names, want)
	}
	if !slices.Equal(f.daemon.restarts, []string{"v1.1.0"}) {
		t.Fatalf("restarts %v", f.daemon.restarts)
	}
	o := f.opts()
	if pv, _ := o.binaryVersion(t.Context(), filepath.Join(f.install, "banger.previous")); pv != "v1.0.0" {
		t.Fatalf("banger.previous is %s", pv)
	}
	// Again: nothing newer.
	o.CurrentVersion = "v1.1.0"
	if res, err := Run(t.Context(), o); err != nil || !res.UpToDate {
		t.Fatalf("second run: %+v, %v", res, err)
	}

	// By hand back, and forth again.
	got, err := Rollback(t.Context(), o)
	if err != nil || got != "v1.0.0" {
		t.Fatalf("rollback: %q, %v", got, err)
	}
	if v, _ := f.installed(); v != "v1.0.0" {
		t.Fatalf("after rollback: %s", v)
	}
	if pv, _ := o.binaryVersion(t.Context(), filepath.Join(f.install, "banger.previous")); pv != "v1.1.0" {
		t.Fatalf("after rollback banger.previous is %s", pv)
	}
	if !slices.Equal(f.daemon.restarts, []string{"v1.1.0", "v1.0.0"}) {
		t.Fatalf("restarts %v", f.daemon.restarts)
	}
}

func TestCheck(t *testing.T) {
	f := newFixture(t)
	p, err := Check(t.Context(), f.opts())
	if err != nil || !p.Available || p.Target != "v1.1.0" || p.Current != "v1.0.0" {
		t.Fatalf("check: %+v, %v", p, err)
	}
	o := f.opts()
	o.CurrentVersion = "v1.1.0"
	if p, err := Check(t.Context(), o); err != nil || p.Available {
		t.Fatalf("check at latest: %+v, %v", p, err)
	}
	// A pinned pre-release is offered though latest_stable skips it.
	o.To = "v1.2.0-rc.1"
	if p, err := Check(t.Context(), o); err != nil || !p.Available || p.Target != "v1.2.0-rc.1" {
		t.Fatalf("check --to: %+v, %v", p, err)
	}
	o.PublicKey = ""
	if _, err := Check(t.Context(), o); !errors.Is(err, ErrDisabled) {
		t.Fatalf("no key: %v", err)
	}
}

func TestDryRunSwapsNothing(t *testing.T) {
	f := newFixture(t)
	var log bytes.Buffer
	o := f.opts()
	o.DryRun, o.Log = true, &log
	res, err := Run(t.Context(), o)
	if err != nil || !res.DryRun {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	f.assertUntouched()
	if !strings.Contains(log.String(), "would replace banger, bangerd, banger-agent in "+f.install) {
		t.Fatalf("dry run said:\n%s", log.String())
	}
}

// Each refusal leaves the installation as it was.
func TestRefusals(t *testing.T) {
	tarball := "/" + release.TarballName("v1.1.0", "amd64")
	cases := []struct {
		name  string
		setup func(f *fixture, o *Options)
		want  string
	}{
		{"tampered tarball", func(f *fixture, o *Options) {
			p := filepath.Join(f.dist, tarball)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			_ = os.WriteFile(p, b, 0o644)
		}, "does not match SHA256SUMS's"},
		{"tampered sums", func(f *fixture, o *Options) {
			p := filepath.Join(f.dist, release.SumsName)
			b, _ := os.ReadFile(p)
			_ = os.WriteFile(p, bytes.Replace(b, []byte("  banger-v1.1.0"), []byte("  banger-v1.1.1"), 1), 0o644)
		}, "SHA256SUMS is not signed by this build's release key"},
		{"another key", func(f *fixture, o *Options) {
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			o.PublicKey, _ = release.EncodePublicKey(&other.PublicKey)
		}, "not signed by this build's release key"},
		{"manifest lies about the sha", func(f *fixture, o *Options) {
			p := filepath.Join(f.dist, release.ManifestName)
			m, _ := os.ReadFile(p)
			mf, _ := release.ParseManifest(m)
			e := mf.Versions["v1.1.0"]
			_ = os.WriteFile(p, bytes.Replace(m, []byte(e.SHA256), []byte(strings.Repeat("0", 64)), 1), 0o644)
		}, "the manifest and the signed SHA256SUMS disagree"},
		{"truncated tarball", func(f *fixture, o *Options) {
			f.override = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != tarball {
					return false
				}
				b, _ := os.ReadFile(filepath.Join(f.dist, tarball))
				w.Header().Set("Content-Length", "100000")
				_, _ = w.Write(b[:1000])
				return true
			}
		}, "unexpected EOF"},
		{"short tarball", func(f *fixture, o *Options) {
			f.override = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != tarball {
					return false
				}
				b, _ := os.ReadFile(filepath.Join(f.dist, tarball))
				_, _ = w.Write(b[:len(b)-10])
				return true
			}
		}, "bytes, the manifest says"},
		{"oversize tarball", func(f *fixture, o *Options) {
			f.override = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != tarball {
					return false
				}
				w.Header().Set("Content-Length", "300000000")
				return true
			}
		}, "300000000 bytes, over the 268435456-byte limit"},
		{"oversize manifest", func(f *fixture, o *Options) {
			f.override = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != "/manifest.json" {
					return false
				}
				// Streamed without a length: the cap holds while reading.
				for range 20 {
					_, _ = w.Write(bytes.Repeat([]byte(" "), 64<<10))
					w.(http.Flusher).Flush()
				}
				return true
			}
		}, "over the 1048576-byte limit"},
		{"unknown version", func(f *fixture, o *Options) { o.To = "v9.9.9" }, "does not offer v9.9.9"},
		{"stalled server", func(f *fixture, o *Options) {
			o.StallTimeout = 300 * time.Millisecond
			f.override = func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != tarball {
					return false
				}
				w.Header().Set("Content-Length", "1000")
				_, _ = w.Write([]byte("x"))
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				return true
			}
		}, "nothing received for 300ms; the server stalled"},
		{"database newer than the release", func(f *fixture, o *Options) { o.To = "v1.2.0-rc.1" }, "bangerd v1.2.0-rc.1 cannot use this database"},
		{"operation in flight", func(f *fixture, o *Options) {
			o.Now = func() time.Time { return time.Date(2026, 1, 1, 0, 1, 5, 0, time.UTC) }
			f.daemon.ops = []api.OperationSummary{
				{ID: "op-1", Kind: api.OpKindVMCreate, Target: "web", Stage: "boot", StartedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
				{ID: "op-0", Kind: api.OpKindImagePull, Target: "old", Done: true},
			}
		}, "refusing to update while bangerd has operations in flight; wait for them, cancel them (banger ops cancel ID), or pass --force:\n  vm.create web (stage \"boot\", 1m5s old, id op-1)"},
		{"not an http manifest", func(f *fixture, o *Options) { o.ManifestURL = "file:///etc/passwd" }, "is not an http(s) URL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			o := f.opts()
			c.setup(f, &o)
			start := time.Now()
			_, err := Run(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %s", time.Since(start))
			}
			f.assertUntouched()
			if c.name == "operation in flight" && len(f.requests) != 0 {
				t.Fatalf("downloaded while refusing: %v", f.requests)
			}
		})
	}
}

func TestForceSkipsOnlyThePreflight(t *testing.T) {
	f := newFixture(t)
	f.daemon.ops = []api.OperationSummary{{ID: "op-1", Kind: api.OpKindVMCreate, Target: "web", Stage: "boot"}}
	o := f.opts()
	o.Force = true
	if _, err := Run(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.installed(); v != "v1.1.0" {
		t.Fatalf("installed %s", v)
	}
	// --force does not get past a bad signature.
	g := newFixture(t)
	o = g.opts()
	o.Force = true
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	o.PublicKey, _ = release.EncodePublicKey(&other.PublicKey)
	if _, err := Run(t.Context(), o); err == nil {
		t.Fatal("--force installed a release signed by another key")
	}
	g.assertUntouched()
}

func TestRollsBackWhenTheNewVersionFails(t *testing.T) {
	t.Run("doctor", func(t *testing.T) {
		f := newFixture(t)
		if err := os.WriteFile(f.doctor, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Run(t.Context(), f.opts())
		want := "banger doctor (v1.1.0) fails: tool e2fsck: not found on PATH (rolled back to v1.0.0)"
		if err == nil || err.Error() != want {
			t.Fatalf("got %v, want %q", err, want)
		}
		if v, _ := f.installed(); v != "v1.0.0" {
			t.Fatalf("installed %s after rollback", v)
		}
		if !slices.Equal(f.daemon.restarts, []string{"v1.1.0", "v1.0.0"}) || f.daemon.version != "v1.0.0" {
			t.Fatalf("restarts %v, daemon %s", f.daemon.restarts, f.daemon.version)
		}
	})
	t.Run("restart", func(t *testing.T) {
		f := newFixture(t)
		f.daemon.restartErr = map[string]error{"v1.1.0": errors.New("did not answer within 30s")}
		_, err := Run(t.Context(), f.opts())
		if err == nil || err.Error() != "restart bangerd as v1.1.0: did not answer within 30s (rolled back to v1.0.0)" {
			t.Fatalf("got %v", err)
		}
		if v, _ := f.installed(); v != "v1.0.0" || f.daemon.version != "v1.0.0" {
			t.Fatalf("installed %s, daemon %s", v, f.daemon.version)
		}
	})
	t.Run("no daemon", func(t *testing.T) {
		f := newFixture(t)
		f.daemon.running = false
		if err := os.WriteFile(f.doctor, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Run(t.Context(), f.opts()); err == nil || !strings.HasSuffix(err.Error(), "(rolled back to v1.0.0)") {
			t.Fatalf("got %v", err)
		}
		if v, _ := f.installed(); v != "v1.0.0" || len(f.daemon.restarts) != 0 {
			t.Fatalf("installed %s, restarts %v", v, f.daemon.restarts)
		}
	})
}

func TestInstallDirChecks(t *testing.T) {
	f := newFixture(t)
	if err := os.Remove(filepath.Join(f.install, "banger-agent")); err != nil {
		t.Fatal(err)
	}
	_, err := Run(t.Context(), f.opts())
	if err == nil || !strings.Contains(err.Error(), "replaces banger, bangerd and banger-agent together in "+f.install+", but banger-agent is not there") {
		t.Fatalf("got %v", err)
	}
	if len(f.requests) != 0 {
		t.Fatalf("downloaded: %v", f.requests)
	}
	o := f.opts()
	if _, err := Rollback(t.Context(), o); err == nil {
		t.Fatal("rollback without .previous files succeeded")
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binsDir != "" {
		_ = os.RemoveAll(binsDir)
	}
	os.Exit(code)
}
