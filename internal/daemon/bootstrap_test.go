package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/guestfs"
	"banger/internal/kernel"
	"banger/internal/store"
	"banger/internal/system"
)

// shells the generated script must parse and run under: the host's sh
// and busybox's (what guests run it with).
func testShells(t *testing.T) [][]string {
	shells := [][]string{{"sh"}}
	if p, err := system.LookPath("busybox"); err == nil {
		shells = append(shells, []string{p, "sh"})
	} else {
		t.Log("busybox not installed: checking the script with sh only")
	}
	return shells
}

func TestRenderGuestInitPerPackageManager(t *testing.T) {
	cases := []struct {
		pm          string
		busybox     bool
		install     string // must appear
		wantShebang string
	}{
		{"apt", true, "apt-get install -y -q --no-install-recommends $pkgs", "#!/usr/lib/banger/busybox sh\n"},
		{"apk", true, "apk add --no-cache $pkgs", "#!/usr/lib/banger/busybox sh\n"},
		{"dnf", false, "dnf install -y $pkgs", "#!/bin/sh\n"},
		{"yum", false, "yum install -y $pkgs", "#!/bin/sh\n"},
		{"", true, "no package manager banger knows", "#!/usr/lib/banger/busybox sh\n"},
	}
	dir := t.TempDir()
	for _, c := range cases {
		script, err := renderGuestInit(c.pm, c.busybox)
		if err != nil {
			t.Fatalf("%q: %v", c.pm, err)
		}
		s := string(script)
		if !strings.HasPrefix(s, c.wantShebang) {
			t.Errorf("%q: starts %q, want %q", c.pm, firstLine(s), c.wantShebang)
		}
		if !strings.Contains(s, c.install) {
			t.Errorf("%q: script lacks %q", c.pm, c.install)
		}
		if c.pm != "" && !strings.Contains(s, `|| fail "installing $pkgs with`) {
			t.Errorf("%q: a failed install does not stop the boot", c.pm)
		}
		wantBB := "BB=\n"
		if c.busybox {
			wantBB = "BB=" + guestBusyboxPath + "\n"
		}
		if !strings.Contains(s, wantBB) {
			t.Errorf("%q: script lacks %q", c.pm, wantBB)
		}
		for other, m := range packageManagers {
			if other != c.pm && strings.Contains(s, m.install) {
				t.Errorf("%q: script also carries %s's install command", c.pm, other)
			}
		}
		p := filepath.Join(dir, "init-"+c.pm)
		if err := os.WriteFile(p, script, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, sh := range testShells(t) {
			if _, err := (&system.Exec{}).Run(t.Context(), append(sh, "-n", p)...); err != nil {
				t.Errorf("%q: %v -n: %v", c.pm, sh, err)
			}
		}
	}
	if _, err := renderGuestInit("pacman", true); err == nil {
		t.Error("a package manager without a recipe was accepted")
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// TestGuestInitNetwork runs the generated script's network step (in its
// print-network mode) against a network file and a fake sysfs.
func TestGuestInitNetwork(t *testing.T) {
	script, err := renderGuestInit("apt", true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	initPath := filepath.Join(dir, "banger-init")
	writeTestFile(t, initPath, string(script))
	sysNet := filepath.Join(dir, "net")
	writeTestFile(t, filepath.Join(sysNet, "lo", "address"), "00:00:00:00:00:00\n")
	writeTestFile(t, filepath.Join(sysNet, "eth0", "address"), "52:54:0a:00:00:07\n")
	writeTestFile(t, filepath.Join(sysNet, "eth1", "address"), "52:54:0a:00:00:09\n")

	cases := []struct {
		name, network string
		want          string // stdout; "" means the step must fail
		failMention   string
	}{
		{"gateway", "[Match]\nMACAddress=52:54:0a:00:00:09\n\n[Network]\nAddress=10.0.0.9/24\nGateway=10.0.0.1\nDNS=1.1.1.1\n",
			"ip link set lo up\nip link set dev eth1 up\nip addr replace 10.0.0.9/24 dev eth1\nip route replace default via 10.0.0.1 dev eth1\n", ""},
		{"no gateway, no final newline", "[Match]\nMACAddress=52:54:0a:00:00:07\n[Network]\nAddress=10.0.0.7/24",
			"ip link set lo up\nip link set dev eth0 up\nip addr replace 10.0.0.7/24 dev eth0\n", ""},
		{"unknown MAC", "[Match]\nMACAddress=52:54:0a:00:00:99\n[Network]\nAddress=10.0.0.99/24\n", "", "no network interface has MAC address 52:54:0a:00:00:99"},
		{"no address", "[Match]\nMACAddress=52:54:0a:00:00:07\n", "", "no Address="},
	}
	for _, c := range cases {
		netFile := filepath.Join(dir, "10-banger.network")
		writeTestFile(t, netFile, c.network)
		for _, sh := range testShells(t) {
			out, err := (&system.Exec{}).Run(t.Context(), append(sh, initPath, "print-network", netFile, sysNet)...)
			if c.want == "" {
				if err == nil || !strings.Contains(string(out), c.failMention) {
					t.Errorf("%s (%v): out %q err %v, want a failure mentioning %q", c.name, sh, out, err, c.failMention)
				}
				continue
			}
			if err != nil || string(out) != c.want {
				t.Errorf("%s (%v): got %q (err %v), want %q", c.name, sh, out, err, c.want)
			}
		}
	}

	// Without a subcommand it refuses to run unless it is PID 1.
	out, err := (&system.Exec{}).Run(t.Context(), "sh", initPath)
	if err == nil || !strings.Contains(string(out), "PID 1") {
		t.Errorf("run as a plain process: out %q err %v, want a refusal", out, err)
	}
}

func writeTestFile(t *testing.T, p, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestInitrdBusybox(t *testing.T) {
	elfBytes := append([]byte("\x7fELF"), bytes.Repeat([]byte{1}, 1000)...)
	cases := []struct {
		name    string
		initrd  []byte
		want    []byte
		wantErr string
	}{
		{"with busybox", initrdWith(t, elfBytes), elfBytes, ""},
		{"without busybox", initrdWith(t, nil), nil, "has no bin/busybox"},
		{"not ELF", initrdWith(t, []byte("#!/bin/sh\n")), nil, "not an ELF"},
		{"not gzip", []byte("plain cpio?"), nil, "not gzip"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		writeTestFile(t, filepath.Join(dir, "initrd.img"), string(c.initrd))
		km := kernel.Manifest{Name: "k", Files: map[string]kernel.File{kernel.RoleInitrd: {Path: "initrd.img"}}}
		got, err := initrdBusybox(store.Kernel{Dir: dir}, km)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: err = %v, want %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("%s: got %d bytes, err %v", c.name, len(got), err)
		}
	}
}

// fakeGuest answers Lstat and ReadFile from a map (path -> content).
type fakeGuest map[string]string

func (g fakeGuest) Lstat(_ context.Context, p string) (guestfs.FileInfo, error) {
	if _, ok := g[p]; !ok {
		return guestfs.FileInfo{}, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}
	return guestfs.FileInfo{}, nil
}

func (g fakeGuest) ReadFile(ctx context.Context, p string) ([]byte, error) {
	if _, err := g.Lstat(ctx, p); err != nil {
		return nil, err
	}
	return []byte(g[p]), nil
}

func TestCountPackages(t *testing.T) {
	dpkg := "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nStatus: install ok installed\nVersion: 1\n"
	cases := []struct {
		name  string
		pm    string
		guest fakeGuest
		want  int
	}{
		{"dpkg", "apt", fakeGuest{"/var/lib/dpkg/status": dpkg}, 2},
		{"apk", "apk", fakeGuest{"/lib/apk/db/installed": "C:x\nP:musl\nV:1\n\nC:y\nP:busybox\nV:1\n"}, 2},
		{"no database", "apt", fakeGuest{}, -1},
		{"rpm", "dnf", fakeGuest{"/var/lib/rpm/rpmdb.sqlite": "x"}, -1},
	}
	for _, c := range cases {
		if got := countPackages(t.Context(), c.guest, c.pm); got != c.want {
			t.Errorf("%s: %d packages, want %d", c.name, got, c.want)
		}
	}
}
