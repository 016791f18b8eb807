package sysinstall

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeRunner records the commands an install runs: systemctl is the
// edge (systemd is not PID 1 on the machines the tests run on).
type fakeRunner struct {
	calls []string
	fail  string // a command (joined) that fails
}

func (f *fakeRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	cmd := strings.Join(argv, " ")
	f.calls = append(f.calls, cmd)
	if cmd == f.fail {
		return nil, errors.New("exit status 1")
	}
	return nil, nil
}

func sources(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range Binaries {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\necho "+b+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func testOwner() Owner { return Owner{Name: "alice", UID: 1000, GID: 1000, KVM: true} }

func TestInstallAndUninstall(t *testing.T) {
	root := t.TempDir()
	r := &fakeRunner{}
	in := &Installer{Root: root, Sources: sources(t), Owner: testOwner(), Runner: r,
		SystemdRunning: func() error { return nil }, Ready: func(context.Context) error { return nil }}
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, b := range Binaries {
		fi, err := os.Stat(filepath.Join(root, "usr/local/bin", b))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s installed: %v, mode %v; want 0755", b, err, fi.Mode())
		}
	}
	for _, u := range []string{DaemonUnit, HelperUnit} {
		fi, err := os.Stat(filepath.Join(root, "etc/systemd/system", u))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s written: %v; want mode 0644", u, err)
		}
	}
	want := []string{"systemctl daemon-reload", "systemctl enable bangerd-root.service bangerd.service", "systemctl restart bangerd-root.service bangerd.service"}
	if !slices.Equal(r.calls, want) {
		t.Errorf("install ran %q, want %q", r.calls, want)
	}
	// The jails' directory is there before the units start, root's 0755.
	jails := filepath.Join(root, "var/lib/banger-jail")
	if fi, err := os.Stat(jails); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Errorf("%s: %v, want a 0755 directory", jails, err)
	}
	if !Installed(root) {
		t.Error("Installed says no after an install")
	}

	// The state stays unless purged.
	state := filepath.Join(root, "var/lib/banger")
	if err := os.MkdirAll(filepath.Join(state, "vms"), 0o700); err != nil {
		t.Fatal(err)
	}
	r.calls = nil
	if err := in.Uninstall(context.Background(), false, nil); err != nil {
		t.Fatal(err)
	}
	want = []string{"systemctl disable --now bangerd.service bangerd-root.service", "systemctl daemon-reload"}
	if !slices.Equal(r.calls, want) {
		t.Errorf("uninstall ran %q, want %q", r.calls, want)
	}
	if Installed(root) {
		t.Error("the units are still there after uninstall")
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(root, "usr/local/bin", b)); !os.IsNotExist(err) {
			t.Errorf("%s still installed", b)
		}
	}
	if _, err := os.Stat(state); err != nil {
		t.Errorf("uninstall without --purge removed the state: %v", err)
	}
	deleted := false
	if err := in.Uninstall(context.Background(), true, func(context.Context) error { deleted = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if !deleted {
		t.Error("--purge did not delete the VMs first")
	}
	for _, p := range []string{state, jails} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("--purge left %s: %v", p, err)
		}
	}
}

func TestInstallRefusals(t *testing.T) {
	root := t.TempDir()
	r := &fakeRunner{}
	in := &Installer{Root: root, Sources: sources(t), Owner: testOwner(), Runner: r,
		SystemdRunning: func() error { return errors.New("systemd is not running as PID 1") }, Ready: func(context.Context) error { return nil }}
	if err := in.Install(context.Background()); err == nil || !strings.Contains(err.Error(), "PID 1") {
		t.Errorf("without systemd: %v, want the reason", err)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 || len(r.calls) != 0 {
		t.Errorf("a refused install wrote %v and ran %q", ents, r.calls)
	}

	// A start that fails removes the units again.
	in.SystemdRunning = func() error { return nil }
	r.fail = "systemctl restart bangerd-root.service bangerd.service"
	if err := in.Install(context.Background()); err == nil || !strings.Contains(err.Error(), "units were removed") {
		t.Errorf("a failed start: %v", err)
	}
	if Installed(root) {
		t.Error("a failed install left its units")
	}

	// A failed reinstall leaves the units it rewrote (they were working).
	r.fail = ""
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.fail = "systemctl restart bangerd-root.service bangerd.service"
	if err := in.Install(context.Background()); err == nil || !strings.Contains(err.Error(), "rewritten") {
		t.Errorf("a failed reinstall: %v", err)
	}
	if !Installed(root) {
		t.Error("a failed reinstall removed a working install's units")
	}

	if _, err := LookupOwner("root"); err == nil || !strings.Contains(err.Error(), "ordinary user") {
		t.Errorf("--owner root: %v, want a refusal", err)
	}
	if _, err := LookupOwner("no-such-user-banger"); err == nil || !strings.Contains(err.Error(), "no such user") {
		t.Errorf("an unknown owner: %v", err)
	}
	if _, _, err := RenderUnits(UnitOptions{BinDir: "/opt/my bin", Owner: testOwner()}); err == nil {
		t.Error("a binaries directory with a space was rendered")
	}
}

// TestUnitsVerify holds both units to systemd's own checker, with no
// warning at all, and to the hardening the issue names.
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skipf("needs systemd-analyze (apt-get install systemd): %v", err)
	}
	prefix := t.TempDir()
	if err := os.MkdirAll(filepath.Join(prefix, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prefix, "bin", "bangerd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A user systemd does not call special (nobody would be).
	owner := Owner{Name: "daemon", UID: 1, GID: 1, KVM: false}
	daemon, helper, err := RenderUnits(UnitOptions{BinDir: filepath.Join(prefix, "bin"), Owner: owner})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, text := range map[string]string{DaemonUnit: daemon, HelperUnit: helper} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(sa, "verify", filepath.Join(dir, HelperUnit), filepath.Join(dir, DaemonUnit))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, w := range []string{"User=daemon", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "ProtectSystem=strict", "ProtectHome=read-only",
		"KillMode=process", "RuntimeDirectoryPreserve=yes", "--root-helper /run/banger-root/helper.sock", "ReadWritePaths=-/var/lib/banger-jail\n"} {
		if !strings.Contains(daemon, w) {
			t.Errorf("%s lacks %q", DaemonUnit, w)
		}
	}
	for _, w := range []string{"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_CHOWN CAP_SYS_ADMIN CAP_MKNOD CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_SYS_CHROOT CAP_SETUID CAP_SETGID\n",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib\n", "KillMode=process", "RestrictNamespaces=mnt\n",
		"ProtectHome=yes", "PrivateTmp=yes", "DeviceAllow=/dev/net/tun rwm", "DeviceAllow=/dev/kvm rwm", "DeviceAllow=block-device-mapper rw", "DeviceAllow=block-loop rw", "--owner daemon"} {
		if !strings.Contains(helper, w) {
			t.Errorf("%s lacks %q", HelperUnit, w)
		}
	}
	if strings.Contains(helper, "User=") {
		t.Errorf("%s must run as root", HelperUnit)
	}
	if strings.Contains(daemon, "PrivateTmp") {
		t.Errorf("%s must see the host's /tmp (paths users pass)", DaemonUnit)
	}
	// And a broken unit fails the same check (the test can fail).
	bad := strings.Replace(helper, "ExecStart="+filepath.Join(prefix, "bin"), "ExecStart=/nonexistent", 1)
	if err := os.WriteFile(filepath.Join(dir, HelperUnit), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(sa, "verify", filepath.Join(dir, HelperUnit))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err == nil && strings.TrimSpace(string(out)) == "" {
		t.Error("systemd-analyze verify accepted a unit whose ExecStart does not exist")
	}
}
