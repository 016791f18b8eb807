package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/hostnat"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
)

// testEnv is a host where everything passes: tools found, KVM fine,
// plenty of space, a daemon of the same version answering on a 0600
// socket in 0700 directories.
func testEnv(t *testing.T) Env {
	t.Helper()
	root := t.TempDir()
	get := map[string]string{"HOME": root, "XDG_RUNTIME_DIR": filepath.Join(root, "run")}
	layout, err := config.LayoutFromEnv(func(k string) string { return get[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := layout.Ensure(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", layout.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := os.Chmod(layout.SocketPath, 0o600); err != nil {
		t.Fatal(err)
	}
	return Env{Layout: layout, Config: config.Config{VMM: "qemu", QEMUAccel: "tcg", DNSListen: "127.0.0.1:42069"},
		LookPath:      func(name string) (string, error) { return "/usr/bin/" + name, nil },
		FreeBytes:     func(string) (int64, error) { return 100 << 30, nil },
		Run:           func(context.Context, ...string) ([]byte, error) { return []byte("QEMU emulator version 7.2.22\n"), nil },
		DaemonVersion: func(context.Context) (string, error) { return "v1", nil }, ClientVersion: "v1",
		CheckKVM: func() error { return nil },
		ReadFile: func(string) ([]byte, error) { return []byte("1\n"), nil },
		Firewall: func() (int, error) { return 2, nil },
	}
}

func find(t *testing.T, checks []Check, name string) Check {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, checks)
	return Check{}
}

func TestAllPass(t *testing.T) {
	checks := Run(context.Background(), testEnv(t))
	for _, c := range checks {
		if c.Status == Fail {
			t.Errorf("%s: %s (%s)", c.Name, c.Detail, c.Fix)
		}
	}
	if Failed(checks) {
		t.Error("Failed = true on a healthy host")
	}
	// dm comes first but needs a device-mapper this test cannot fake.
	if c := find(t, checks, "root-disk"); !strings.HasPrefix(c.Detail, "qcow2 (root_disk = auto)") && !strings.HasPrefix(c.Detail, "dm (root_disk = auto)") {
		t.Errorf("root-disk: %q", c.Detail)
	}
	for _, name := range []string{"socket", "versions", "state dir", "runtime dir", "tool qemu-img", "free space (state)", "root-disk"} {
		if c := find(t, checks, name); c.Status != Pass {
			t.Errorf("%s = %s: %s", name, c.Status, c.Detail)
		}
	}
}

// Each check made to fail on purpose says so, with the fix.
func TestEachCheckFails(t *testing.T) {
	cases := []struct {
		name, check, status, detail, fix string
		break_                           func(e *Env)
	}{
		{"missing tool", "tool qemu-img", Fail, "not found on PATH", "apt-get install qemu-utils", func(e *Env) {
			e.LookPath = func(name string) (string, error) {
				if name == "qemu-img" {
					return "", errors.New("not found")
				}
				return "/usr/bin/" + name, nil
			}
		}},
		{"optional tool", "tool mmdebstrap", Warn, "only needed for building catalog images", "install mmdebstrap", func(e *Env) {
			e.LookPath = func(name string) (string, error) {
				if name == "mmdebstrap" {
					return "", errors.New("not found")
				}
				return "/usr/bin/" + name, nil
			}
		}},
		{"socket others may use", "socket", Fail, "has mode 0666", "chmod 600", func(e *Env) {
			if err := os.Chmod(e.Layout.SocketPath, 0o666); err != nil {
				panic(err)
			}
		}},
		{"socket is a file", "socket", Fail, "is not a socket", "remove it", func(e *Env) {
			os.Remove(e.Layout.SocketPath)
			if err := os.WriteFile(e.Layout.SocketPath, nil, 0o600); err != nil {
				panic(err)
			}
		}},
		{"stale socket", "socket", Warn, "is stale: nothing answers", "rm ", func(e *Env) {
			p := filepath.Join(filepath.Dir(e.Layout.SocketPath), "old.sock")
			ln, err := net.Listen("unix", p)
			if err != nil {
				panic(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
			if err := os.Chmod(p, 0o600); err != nil {
				panic(err)
			}
			e.Layout.SocketPath = p
		}},
		{"open state dir", "state dir", Fail, "has mode 0755", "chmod 700", func(e *Env) {
			if err := os.Chmod(e.Layout.StateDir, 0o755); err != nil {
				panic(err)
			}
		}},
		{"disk full", "free space (state)", Fail, "100 MiB free", "image cache prune", func(e *Env) {
			e.FreeBytes = func(string) (int64, error) { return 100 << 20, nil }
		}},
		{"disk low", "free space (cache)", Warn, "1024 MiB free", "a few GiB", func(e *Env) {
			e.FreeBytes = func(string) (int64, error) { return 1 << 30, nil }
		}},
		{"versions differ", "versions", Warn, "banger v1, bangerd v0", "restart bangerd", func(e *Env) {
			e.DaemonVersion = func(context.Context) (string, error) { return "v0", nil }
		}},
		{"no kvm", "kvm", Warn, "no /dev/kvm", "TCG is not a security boundary", func(e *Env) {
			e.CheckKVM = func() error { return errors.New("no /dev/kvm") }
		}},
		{"stale lock", "lock", Warn, "which is gone", "the next bangerd takes the lock", func(e *Env) {
			if err := os.WriteFile(e.Layout.SocketPath+".lock", []byte("999999999 serves x\n"), 0o600); err != nil {
				panic(err)
			}
		}},
		{"no nf_tables", "nftables", Fail, "nf_tables", "modprobe nf_tables", func(e *Env) {
			e.Firewall = func() (int, error) { return 0, fmt.Errorf("read firewall rules: %w", hostnat.ErrUnsupported) }
		}},
		{"root disk strategy that cannot work", "root-disk", Fail, `root_disk = "qcow2": qemu-img does not run`, `root_disk = "auto"`, func(e *Env) {
			e.Config.RootDisk = "qcow2"
			e.Run = func(_ context.Context, argv ...string) ([]byte, error) {
				if argv[0] == "qemu-img" {
					return nil, errors.New("exec: qemu-img: not found")
				}
				return []byte("QEMU emulator version 7.2.22\n"), nil
			}
		}},
		{"root helper down", "root helper", Fail, "does not answer", "sudo banger system restart", func(e *Env) {
			e.RootHelper = func(context.Context) error {
				return errors.New("banger's root helper (/run/banger-root/helper.sock) does not answer")
			}
		}},
		{"no vmm", "vmm", Fail, "", "install QEMU", func(e *Env) {
			e.Config.QEMUBin = "/nonexistent/qemu"
		}},
		{"firecracker unjailed", "vmm sandbox", Warn, `Firecracker runs unjailed, as bangerd's user: the jailer binary "jailer" was not found`, "install the jailer", func(e *Env) {
			e.SelectVMM = func(vmm.Options) (vmm.Driver, error) {
				return firecracker.New(firecracker.Config{Binary: "/usr/bin/firecracker"}), nil
			}
			e.JailerChoice = func(o vmm.Options, fc string) (bool, string, error) {
				if o.JailBase != filepath.Join(e.Layout.StateDir, "jail") || fc != "/usr/bin/firecracker" {
					return false, fmt.Sprintf("asked with jail base %q and firecracker %q", o.JailBase, fc), nil
				}
				return false, `the jailer binary "jailer" was not found (exec: not found)`, nil
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := testEnv(t)
			tc.break_(&e)
			checks := Run(context.Background(), e)
			c := find(t, checks, tc.check)
			if c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) || !strings.Contains(c.Fix, tc.fix) {
				t.Errorf("%s = %s %q (fix %q); want %s containing %q, fix %q", tc.check, c.Status, c.Detail, c.Fix, tc.status, tc.detail, tc.fix)
			}
			if got := Failed(checks); got != (tc.status == Fail) {
				t.Errorf("Failed = %v", got)
			}
		})
	}
}

// TestSandboxJailed: a jailed Firecracker passes.
func TestSandboxJailed(t *testing.T) {
	e := testEnv(t)
	e.SelectVMM = func(vmm.Options) (vmm.Driver, error) {
		return firecracker.New(firecracker.Config{Binary: "/usr/bin/firecracker", Jailer: &firecracker.JailerConfig{}}), nil
	}
	c := find(t, Run(context.Background(), e), "vmm sandbox")
	if c.Status != Pass || !strings.Contains(c.Detail, "under the jailer") {
		t.Fatalf("vmm sandbox = %s %q", c.Status, c.Detail)
	}
}

// TestSandboxJudgedForTheDaemon: whether Firecracker can be jailed
// depends on bangerd's uid, not on the user running doctor.
func TestSandboxJudgedForTheDaemon(t *testing.T) {
	for _, tc := range []struct {
		name     string
		uid      func(context.Context) (int, error)
		wantRoot *bool
		suffix   bool
	}{
		{"root daemon", func(context.Context) (int, error) { return 0, nil }, ptr(true), false},
		{"user daemon", func(context.Context) (int, error) { return 1000, nil }, ptr(false), false},
		{"no daemon", func(context.Context) (int, error) { return 0, errors.New("no answer") }, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEnv(t)
			e.DaemonUID = tc.uid
			var asked *bool
			e.SelectVMM = func(vmm.Options) (vmm.Driver, error) {
				return firecracker.New(firecracker.Config{Binary: "/usr/bin/firecracker"}), nil
			}
			e.JailerChoice = func(o vmm.Options, _ string) (bool, string, error) {
				asked = o.AsRoot
				return false, "why not", nil
			}
			c := find(t, Run(context.Background(), e), "vmm sandbox")
			if (asked == nil) != (tc.wantRoot == nil) || (asked != nil && *asked != *tc.wantRoot) {
				t.Errorf("the jailer was judged with AsRoot %v, want %v", deref(asked), deref(tc.wantRoot))
			}
			if got := strings.Contains(c.Detail, "judged for the user running doctor"); got != tc.suffix {
				t.Errorf("detail %q: says it judged for the doctor's user: %v, want %v", c.Detail, got, tc.suffix)
			}
		})
	}
}

func ptr(b bool) *bool { return &b }

func deref(b *bool) string {
	if b == nil {
		return "nil"
	}
	return fmt.Sprint(*b)
}

// TestSnapshotsRow: stale snapshots are marked with why and how to
// remove them; none stale passes; no daemon, no row.
func TestSnapshotsRow(t *testing.T) {
	e := testEnv(t)
	e.Snapshots = func(context.Context) ([]api.Snapshot, error) {
		return []api.Snapshot{{Name: "debian.2c-1024m"}, {Name: "old", Stale: "its image debian changed since it was saved"}}, nil
	}
	c := find(t, Run(context.Background(), e), "snapshots")
	if c.Status != Warn || c.Detail != "1 of 2 stale (refused by vm create): old: its image debian changed since it was saved" ||
		!strings.HasPrefix(c.Fix, "banger snapshot rm old ") {
		t.Errorf("snapshots = %s %q (fix %q)", c.Status, c.Detail, c.Fix)
	}
	e.Snapshots = func(context.Context) ([]api.Snapshot, error) { return []api.Snapshot{{Name: "a"}}, nil }
	if c := find(t, Run(context.Background(), e), "snapshots"); c.Status != Pass || c.Detail != "1, none stale" {
		t.Errorf("snapshots = %s %q", c.Status, c.Detail)
	}
	e.Snapshots = func(context.Context) ([]api.Snapshot, error) { return nil, errors.New("no answer") }
	for _, c := range Run(context.Background(), e) {
		if c.Name == "snapshots" {
			t.Errorf("a snapshots row without a daemon: %+v", c)
		}
	}
}

// The root helper row appears for a system install only, and passes when
// the helper answers.
func TestRootHelperRow(t *testing.T) {
	e := testEnv(t)
	for _, c := range Run(context.Background(), e) {
		if c.Name == "root helper" {
			t.Errorf("user mode shows a root helper row: %+v", c)
		}
	}
	e.RootHelper = func(context.Context) error { return nil }
	if c := find(t, Run(context.Background(), e), "root helper"); c.Status != Pass {
		t.Errorf("root helper = %s: %s", c.Status, c.Detail)
	}
}

// TestRootDiskAsksTheHelper: in system mode the daemon cannot judge dm
// itself (it has no root); the root-disk row takes the helper's answer.
func TestRootDiskAsksTheHelper(t *testing.T) {
	e := testEnv(t)
	e.Config.RootDisk = "dm"
	e.DMSnapshots = func() error { return nil }
	if c := find(t, Run(context.Background(), e), "root-disk"); c.Status != Pass || c.Detail != "dm (root_disk = dm)" {
		t.Errorf("root-disk with a helper that makes snapshots: %s %q", c.Status, c.Detail)
	}
	e.DMSnapshots = func() error { return errors.New("dmsnap: device-mapper is not available") }
	if c := find(t, Run(context.Background(), e), "root-disk"); c.Status != Fail || !strings.Contains(c.Detail, `root_disk = "dm": dmsnap: device-mapper is not available`) {
		t.Errorf("root-disk with a helper that cannot: %s %q", c.Status, c.Detail)
	}
}
