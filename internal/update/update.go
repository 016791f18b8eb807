// Package update replaces an installed banger with a signed release:
// banger update's whole flow, from the manifest to a serving daemon of the
// new version, and its rollback.
//
// Order matters, and each step holds before the next starts:
//
//  1. preflight: the daemon's daemon.operations.list has nothing in flight
//     (--force skips only this);
//  2. download with size caps and a stall timeout into a temporary
//     directory away from the installed binaries; SHA256SUMS verifies
//     against the embedded key, the tarball against SHA256SUMS;
//  3. stage in the install directory and sanity-run the new binaries;
//  4. swap each binary by rename in its directory, the old one kept as
//     NAME.previous; restart the daemon (running VMs are re-adopted);
//     wait for it to answer with the new version; run the new doctor;
//  5. on any failure in 4, exchange the .previous binaries back and
//     restart the old daemon: "... (rolled back to vA)".
package update

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/release"
	"banger/internal/system"
)

// Runner runs a command and returns its stdout; a non-zero exit is a
// *system.CommandError (stdout is still returned).
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Daemon is what the updater needs of the running bangerd.
type Daemon interface {
	// Running reports the daemon answering on the socket, and its version
	// ("" and false when nothing answers).
	Running(ctx context.Context) (version string, ok bool, err error)
	// Operations lists its operations (done ones included).
	Operations(ctx context.Context) ([]api.OperationSummary, error)
	// Restart stops the daemon that answers and starts the one installed
	// beside banger, returning once it answers with version want.
	Restart(ctx context.Context, want string) error
}

// Options configure one update.
type Options struct {
	ManifestURL string
	// To pins a version; "" takes the manifest's latest_stable.
	To     string
	DryRun bool
	// Force skips the in-flight operations preflight, nothing else.
	Force bool
	// InstallDir holds the banger, bangerd and banger-agent to replace.
	InstallDir     string
	CurrentVersion string
	// PublicKey is version.UpdateKey: empty disables updates.
	PublicKey string
	// StallTimeout ends a download that receives nothing for this long.
	StallTimeout time.Duration
	// DoctorArgs are passed to the new banger's doctor (a --socket, say).
	DoctorArgs []string
	Daemon     Daemon
	Runner     Runner
	HTTP       *http.Client
	// Log receives one line per step.
	Log io.Writer
	// Now is the clock for operation ages.
	Now func() time.Time
}

// ErrDisabled: this build embeds no key to verify releases with.
var ErrDisabled = errors.New("updates are disabled in this build: it embeds no release signing key (build with make release SIGNING_KEY=...), so nothing it downloads could be verified; install a release by hand")

func (o *Options) defaults() error {
	if o.PublicKey == "" {
		return ErrDisabled
	}
	if o.ManifestURL == "" {
		return errors.New("no manifest URL: pass --manifest-url or set update_manifest_url in config.toml")
	}
	u, err := url.Parse(o.ManifestURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("manifest URL %q is not an http(s) URL", o.ManifestURL)
	}
	if o.To != "" && !release.ValidVersion(o.To) {
		return fmt.Errorf("--to %q is not a release version like v1.2.3", o.To)
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{}
	}
	if o.Runner == nil {
		o.Runner = &system.Exec{}
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

func (o *Options) logf(format string, args ...any) {
	fmt.Fprintf(o.Log, format+"\n", args...)
}

// Plan is what the manifest offers against what is installed.
type Plan struct {
	Current, Target string
	Entry           release.Entry
	// TarballURL is Entry.URL resolved against the manifest's URL.
	TarballURL string
	// Available: Target differs from Current (newer, or pinned by --to).
	Available bool
	manifest  *url.URL
}

// Check reads the manifest and says whether there is something to
// install: latest_stable when newer, or the --to version when it is not
// the installed one.
func Check(ctx context.Context, o Options) (*Plan, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	return o.plan(ctx)
}

func (o *Options) plan(ctx context.Context) (*Plan, error) {
	mu, _ := url.Parse(o.ManifestURL)
	b, err := o.fetch(ctx, o.ManifestURL, release.MaxManifest)
	if err != nil {
		return nil, err
	}
	m, err := release.ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.ManifestURL, err)
	}
	p := &Plan{Current: o.CurrentVersion, manifest: mu}
	if o.To != "" {
		p.Target = o.To
	} else {
		p.Target = m.LatestStable
		if p.Target == "" {
			return nil, fmt.Errorf("%s names no latest_stable version", o.ManifestURL)
		}
	}
	e, ok := m.Versions[p.Target]
	if !ok {
		return nil, fmt.Errorf("%s does not offer %s (it has: %s)", o.ManifestURL, p.Target, versionList(m))
	}
	if e.Arch != "" && e.Arch != runtime.GOARCH {
		return nil, fmt.Errorf("%s of %s is built for %s, not this host's %s", p.Target, o.ManifestURL, e.Arch, runtime.GOARCH)
	}
	tu, err := url.Parse(e.URL)
	if err != nil {
		return nil, fmt.Errorf("manifest: %s has a malformed url: %w", p.Target, err)
	}
	p.TarballURL = mu.ResolveReference(tu).String()
	p.Entry = e
	if o.To != "" {
		p.Available = p.Target != p.Current
	} else {
		p.Available = release.Compare(p.Target, p.Current) > 0
	}
	return p, nil
}

func versionList(m *release.Manifest) string {
	var vs []string
	for v := range m.Versions {
		vs = append(vs, v)
	}
	if len(vs) == 0 {
		return "nothing"
	}
	return strings.Join(vs, ", ")
}

// Result is what Run did.
type Result struct {
	From, To string
	// UpToDate: nothing to do.
	UpToDate bool
	// DryRun: verified and staged, nothing swapped.
	DryRun bool
	// Restarted: a daemon was running and now serves To.
	Restarted bool
}

// Run updates the installation as the package comment says.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	pub, err := release.DecodePublicKey(o.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := checkInstallDir(o.InstallDir); err != nil {
		return nil, err
	}
	if err := o.preflight(ctx); err != nil {
		return nil, err
	}
	p, err := o.plan(ctx)
	if err != nil {
		return nil, err
	}
	res := &Result{From: p.Current, To: p.Target}
	if !p.Available {
		res.UpToDate = true
		return res, nil
	}
	o.logf("update %s → %s from %s", p.Current, p.Target, p.TarballURL)

	// 2. Download and verify, away from the installed binaries.
	tmp, err := os.MkdirTemp("", "banger-update-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	tarball, err := o.download(ctx, p, pub, tmp)
	if err != nil {
		return nil, err
	}

	// 3. Stage beside the installed binaries (rename needs one file
	// system) and sanity-run them.
	stage, err := os.MkdirTemp(o.InstallDir, ".banger-update-")
	if err != nil {
		return nil, fmt.Errorf("stage in %s: %w", o.InstallDir, err)
	}
	defer os.RemoveAll(stage)
	f, err := os.Open(tarball)
	if err != nil {
		return nil, err
	}
	err = release.Extract(f, stage)
	f.Close()
	if err != nil {
		return nil, err
	}
	if err := o.sanity(ctx, stage, p.Target); err != nil {
		return nil, err
	}
	if o.DryRun {
		res.DryRun = true
		_, running, _ := o.Daemon.Running(ctx)
		o.logf("dry run: %s verified and its binaries run; would replace %s in %s (keeping .previous copies)",
			p.Target, strings.Join(release.Binaries, ", "), o.InstallDir)
		if running {
			o.logf("dry run: would restart bangerd, wait for it to answer as %s, run banger doctor, and roll back on failure", p.Target)
		}
		return res, nil
	}

	// Operations may have started during the download.
	if err := o.preflight(ctx); err != nil {
		return nil, err
	}
	_, running, err := o.Daemon.Running(ctx)
	if err != nil {
		return nil, err
	}

	// 4. Swap, restart, verify; 5. or roll back.
	if err := swapIn(o.InstallDir, stage); err != nil {
		return nil, err
	}
	o.logf("swapped in %s (previous binaries kept as *.previous)", p.Target)
	if err := o.settle(ctx, running, p.Target); err != nil {
		o.logf("%v; rolling back to %s", err, p.Current)
		if rerr := o.rollback(ctx, running, p.Current); rerr != nil {
			return nil, fmt.Errorf("%w; and rolling back failed too: %v", err, rerr)
		}
		return nil, fmt.Errorf("%w (rolled back to %s)", err, p.Current)
	}
	res.Restarted = running
	return res, nil
}

// Rollback exchanges the .previous binaries with the installed ones by
// hand (banger update --rollback), restarting a running daemon, and
// returns the version now installed.
func Rollback(ctx context.Context, o Options) (string, error) {
	if o.Runner == nil {
		o.Runner = &system.Exec{}
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if err := checkInstallDir(o.InstallDir); err != nil {
		return "", err
	}
	for _, b := range release.Binaries {
		if _, err := os.Lstat(filepath.Join(o.InstallDir, b+".previous")); err != nil {
			return "", fmt.Errorf("nothing to roll back to: %s has no %s.previous (banger update keeps one per update)", o.InstallDir, b)
		}
	}
	prev, err := o.binaryVersion(ctx, filepath.Join(o.InstallDir, "banger.previous"))
	if err != nil {
		return "", fmt.Errorf("banger.previous does not run: %w", err)
	}
	_, running, err := o.Daemon.Running(ctx)
	if err != nil {
		return "", err
	}
	if err := o.rollback(ctx, running, prev); err != nil {
		return "", err
	}
	return prev, nil
}

// rollback exchanges NAME and NAME.previous for every binary (so the
// version rolled away from becomes .previous) and restarts the daemon if
// one was running.
func (o *Options) rollback(ctx context.Context, running bool, want string) error {
	for _, b := range release.Binaries {
		cur := filepath.Join(o.InstallDir, b)
		if err := exchange(cur, cur+".previous"); err != nil {
			return err
		}
	}
	if !running {
		return nil
	}
	// A cancelled update still gets its daemon back.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	return o.Daemon.Restart(rctx, want)
}

// settle restarts the daemon as the new version and runs its doctor.
func (o *Options) settle(ctx context.Context, running bool, want string) error {
	if running {
		start := time.Now()
		if err := o.Daemon.Restart(ctx, want); err != nil {
			return fmt.Errorf("restart bangerd as %s: %w", want, err)
		}
		o.logf("bangerd %s serving (restarted in %s)", want, time.Since(start).Round(time.Millisecond))
	} else {
		o.logf("bangerd was not running; the next banger command starts %s", want)
	}
	argv := append([]string{filepath.Join(o.InstallDir, "banger"), "--no-autostart", "doctor", "--json"}, o.DoctorArgs...)
	out, err := o.Runner.Run(ctx, argv...)
	var checks []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Detail string `json:"detail"`
	}
	if jerr := json.Unmarshal(out, &checks); jerr != nil {
		if err == nil {
			err = jerr
		}
		return fmt.Errorf("banger doctor (%s) did not report: %w", want, err)
	}
	var failed []string
	for _, c := range checks {
		if c.Status == "FAIL" {
			failed = append(failed, c.Name+": "+c.Detail)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("banger doctor (%s) fails: %s", want, strings.Join(failed, "; "))
	}
	if err != nil {
		return fmt.Errorf("banger doctor (%s): %w", want, err)
	}
	o.logf("banger doctor (%s): no FAIL", want)
	return nil
}

// preflight refuses while the daemon has operations in flight.
func (o *Options) preflight(ctx context.Context) error {
	if o.Force {
		return nil
	}
	_, running, err := o.Daemon.Running(ctx)
	if err != nil {
		return err
	}
	if !running {
		return nil
	}
	ops, err := o.Daemon.Operations(ctx)
	if err != nil {
		return fmt.Errorf("ask bangerd what is in flight (daemon.operations.list): %w", err)
	}
	var busy []string
	for _, op := range ops {
		if op.Done {
			continue
		}
		busy = append(busy, fmt.Sprintf("  %s %s (stage %q, %s old, id %s)", op.Kind, op.Target, op.Stage,
			o.Now().Sub(op.StartedAt).Round(time.Second), op.ID))
	}
	if len(busy) > 0 {
		return fmt.Errorf("refusing to update while bangerd has operations in flight; wait for them, cancel them (banger ops cancel ID), or pass --force:\n%s",
			strings.Join(busy, "\n"))
	}
	return nil
}

// download fetches and verifies the signed sums and then the tarball,
// which it leaves in dir; it returns the tarball's path.
func (o *Options) download(ctx context.Context, p *Plan, pub *ecdsa.PublicKey, dir string) (string, error) {
	sumsURL := p.manifest.ResolveReference(&url.URL{Path: release.SumsName}).String()
	sigURL := p.manifest.ResolveReference(&url.URL{Path: release.SignatureName}).String()
	sums, err := o.fetch(ctx, sumsURL, release.MaxSums)
	if err != nil {
		return "", err
	}
	sig, err := o.fetch(ctx, sigURL, release.MaxSignature)
	if err != nil {
		return "", err
	}
	if !release.Verify(pub, sums, sig) {
		return "", fmt.Errorf("%s is not signed by this build's release key (%s does not verify); refusing %s", release.SumsName, release.SignatureName, p.Target)
	}
	table, err := release.ParseSums(sums)
	if err != nil {
		return "", err
	}
	tu, _ := url.Parse(p.TarballURL)
	name := path.Base(tu.Path)
	want, ok := table[name]
	if !ok {
		return "", fmt.Errorf("%s does not list %s; refusing it", release.SumsName, name)
	}
	if !strings.EqualFold(want, p.Entry.SHA256) {
		return "", fmt.Errorf("the manifest and the signed %s disagree on %s's sha256; refusing it", release.SumsName, name)
	}
	if p.Entry.Size > release.MaxTarball {
		return "", fmt.Errorf("%s is %d bytes, over the %d-byte limit", name, p.Entry.Size, release.MaxTarball)
	}
	dst := filepath.Join(dir, name)
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := o.fetchTo(ctx, p.TarballURL, release.MaxTarball, io.MultiWriter(f, h))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if n != p.Entry.Size {
		return "", fmt.Errorf("%s: got %d bytes, the manifest says %d; refusing it", p.TarballURL, n, p.Entry.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return "", fmt.Errorf("%s: sha256 %s does not match %s's %s; refusing it", name, got, release.SumsName, want)
	}
	o.logf("downloaded %s (%d bytes), signature and sha256 verified", name, n)
	return dst, nil
}

// sanity runs the staged binaries before anything is swapped.
func (o *Options) sanity(ctx context.Context, stage, want string) error {
	got, err := o.binaryVersion(ctx, filepath.Join(stage, "banger"))
	if err != nil {
		return fmt.Errorf("the new banger does not run: %w", err)
	}
	if got != want {
		return fmt.Errorf("the new banger says it is %s, not %s; refusing it", got, want)
	}
	out, err := o.Runner.Run(ctx, filepath.Join(stage, "bangerd"), "--check-migrations")
	msg := strings.TrimSpace(string(out))
	var ce *system.CommandError
	switch {
	case err == nil:
	case errors.As(err, &ce) && ce.ExitCode == 1:
		o.logf("bangerd %s will migrate the database: %s", want, msg)
	case errors.As(err, &ce) && ce.ExitCode == 2:
		return fmt.Errorf("bangerd %s cannot use this database: %s; refusing it", want, msg)
	default:
		return fmt.Errorf("the new bangerd does not run: %w", err)
	}
	out, err = o.Runner.Run(ctx, filepath.Join(stage, "banger-agent"), "--version")
	if err != nil || !strings.Contains(string(out), " "+want+" ") {
		return fmt.Errorf("the new banger-agent does not say it is %s (%q, %v); refusing it", want, strings.TrimSpace(string(out)), err)
	}
	if err := checkStatic(filepath.Join(stage, "banger-agent")); err != nil {
		return err
	}
	return nil
}

// checkStatic: banger-agent runs inside guests whatever their libc is.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("the new banger-agent is not an ELF binary: %w", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New("the new banger-agent is dynamically linked; guests need a static one")
		}
	}
	return nil
}

// binaryVersion asks a banger binary its own version, never starting a
// daemon for it.
func (o *Options) binaryVersion(ctx context.Context, bin string) (string, error) {
	out, err := o.Runner.Run(ctx, bin, "--no-autostart", "version", "--json")
	if err != nil {
		return "", err
	}
	var v struct {
		Client struct {
			Version string `json:"version"`
		} `json:"client"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Client.Version == "" {
		return "", fmt.Errorf("%s version --json printed %q", bin, strings.TrimSpace(string(out)))
	}
	return v.Client.Version, nil
}

// checkInstallDir: the three binaries are there and the directory is
// writable, before anything is downloaded.
func checkInstallDir(dir string) error {
	for _, b := range release.Binaries {
		st, err := os.Lstat(filepath.Join(dir, b))
		if err != nil {
			return fmt.Errorf("banger update replaces banger, bangerd and banger-agent together in %s, but %s is not there: %w", dir, b, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file; banger update only replaces the binaries it installed", filepath.Join(dir, b))
		}
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("cannot write %s to replace banger's binaries: run banger update as its owner (sudo banger update)", dir)
	}
	return nil
}

// swapIn renames each staged binary over the installed one, keeping the
// installed one as NAME.previous. A failure part way puts back what was
// already swapped.
func swapIn(dir, stage string) (err error) {
	var done []string
	defer func() {
		if err != nil {
			for _, b := range done {
				cur := filepath.Join(dir, b)
				_ = os.Rename(cur+".previous", cur)
			}
		}
	}()
	for _, b := range release.Binaries {
		cur := filepath.Join(dir, b)
		prevTmp := cur + ".previous.tmp"
		_ = os.Remove(prevTmp)
		if err := os.Link(cur, prevTmp); err != nil {
			return fmt.Errorf("keep %s as .previous: %w", cur, err)
		}
		if err := os.Rename(prevTmp, cur+".previous"); err != nil {
			_ = os.Remove(prevTmp)
			return fmt.Errorf("keep %s as .previous: %w", cur, err)
		}
		if err := os.Rename(filepath.Join(stage, b), cur); err != nil {
			return fmt.Errorf("swap in %s: %w", cur, err)
		}
		done = append(done, b)
	}
	return nil
}

// exchange swaps two names atomically (renameat2 RENAME_EXCHANGE), or by
// three renames on a file system without it.
func exchange(a, b string) error {
	err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("exchange %s and %s: %w", a, b, err)
	}
	tmp := a + ".exchange"
	if err := os.Rename(a, tmp); err != nil {
		return err
	}
	if err := os.Rename(b, a); err != nil {
		_ = os.Rename(tmp, a)
		return err
	}
	return os.Rename(tmp, b)
}
