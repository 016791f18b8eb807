package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type fakeRunner struct {
	calls [][]string
	fn    func(argv []string) ([]byte, error)
}

func (f *fakeRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	f.calls = append(f.calls, slices.Clone(argv))
	return f.fn(argv)
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHostDebianSources(t *testing.T) {
	apt := t.TempDir()
	writeFiles(t, apt, map[string]string{
		"sources.list": `# comment
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main contrib
deb-src http://mirror.example/debian bookworm main
deb http://mirror.example/debian bookworm-backports main
deb http://mirror.example/debian trixie main
`,
		"sources.list.d/debian.sources": `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
`,
		// Third-party repositories and disabled files are not part of a
		// Debian image, even when their suite mentions bookworm.
		"sources.list.d/google-cloud-sdk.list":            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
		"sources.list.d/nodesource.sources.disabled-farm": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: bookworm\nComponents: main\n",
	})
	got, err := hostDebianSources(apt, "bookworm")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"deb http://mirror.example/debian bookworm main contrib",
		"deb http://mirror.example/debian bookworm main",
		"deb http://mirror.example/debian bookworm-updates main",
		"deb http://mirror.example/debian-security bookworm-security main",
	}
	if !slices.Equal(got, want) {
		t.Errorf("hostDebianSources =\n%q\nwant\n%q", got, want)
	}

	empty, err := hostDebianSources(t.TempDir(), "bookworm")
	if err != nil || empty != nil {
		t.Errorf("no sources: got %q, %v; want nil (mmdebstrap's default mirror)", empty, err)
	}
	bad := t.TempDir()
	writeFiles(t, bad, map[string]string{"sources.list": "deb [arch=amd64 http://x bookworm main\n"})
	if _, err := hostDebianSources(bad, "bookworm"); err == nil {
		t.Error("hostDebianSources accepted an unterminated [options]")
	}
}

func TestParseDpkgStatus(t *testing.T) {
	status := `Package: openssh-server
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 1:9.2p1-2+deb12u7
Conffiles:
 /etc/default/ssh 500ec7fc2c8d9f3b1b2a2a4ad4d3a8b5
 /etc/ssh/moduli 5d9b3c9d1a
Description: secure shell (SSH) server
 This is the portable version of OpenSSH.
 .
 More text.

Package: removed-but-configured
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u11
`
	got, err := parseDpkgStatus(strings.NewReader(status))
	if err != nil {
		t.Fatal(err)
	}
	want := []Package{
		{Name: "base-files", Version: "12.4+deb12u11", Arch: "amd64"},
		{Name: "openssh-server", Version: "1:9.2p1-2+deb12u7", Arch: "amd64"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseDpkgStatus = %+v, want %+v", got, want)
	}
	if _, err := parseDpkgStatus(strings.NewReader("Status: install ok installed\n")); err == nil {
		t.Error("parseDpkgStatus accepted a stanza without Package")
	}
	if _, err := parseDpkgStatus(strings.NewReader(" continuation first\n")); err == nil {
		t.Error("parseDpkgStatus accepted a leading continuation line")
	}
}

// fakeDebianTree lays out the parts of a fresh mmdebstrap tree that the
// customisation touches. hostFile is a file outside the tree that an
// absolute symlink in the tree points at, as /etc/resolv.conf might.
func fakeDebianTree(t *testing.T, hostFile string) string {
	t.Helper()
	tree := t.TempDir()
	writeFiles(t, tree, map[string]string{
		"usr/lib/systemd/system/systemd-networkd.service":          "[Unit]\nDescription=n\n[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket\nAlias=dbus-org.freedesktop.network1.service\n",
		"usr/lib/systemd/system/systemd-networkd.socket":           "[Install]\nWantedBy=sockets.target\n",
		"usr/lib/systemd/system/systemd-network-generator.service": "[Install]\nWantedBy=sysinit.target\n",
		"usr/lib/systemd/system/ssh.service":                       "[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
		"etc/machine-id":                                           "0123456789abcdef0123456789abcdef\n",
		"var/lib/dbus/machine-id":                                  "0123456789abcdef0123456789abcdef\n",
		"etc/hostname":                                             "buildhost\n",
		"etc/ssh/ssh_host_ed25519_key":                             "PRIVATE",
		"etc/ssh/ssh_host_ed25519_key.pub":                         "PUBLIC",
		"etc/ssh/ssh_host_rsa_key":                                 "PRIVATE",
		"etc/ssh/sshd_config":                                      "Include /etc/ssh/sshd_config.d/*.conf\n",
		"etc/shadow":                                               "root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n",
		"etc/fstab":                                                "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
		"etc/systemd/system/multi-user.target.wants/.keep":         "",
	})
	if err := os.Symlink("usr/lib", filepath.Join(tree, "lib")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hostFile, filepath.Join(tree, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ dir, unit string }{
		{"timers.target.wants", "apt-daily.timer"},
		{"timers.target.wants", "apt-daily-upgrade.timer"},
		{"timers.target.wants", "fstrim.timer"},
		{"timers.target.wants", "systemd-tmpfiles-clean.timer"},
		{"getty.target.wants", "getty@tty1.service"},
		{"multi-user.target.wants", "ssh.service"},
		{"multi-user.target.wants", "e2scrub_reap.service"},
	} {
		d := filepath.Join(tree, "etc/systemd/system", l.dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/lib/systemd/system/"+l.unit, filepath.Join(d, l.unit)); err != nil {
			t.Fatal(err)
		}
	}
	return tree
}

func TestCustomizeTree(t *testing.T) {
	hostFile := filepath.Join(t.TempDir(), "host-resolv.conf")
	writeFiles(t, filepath.Dir(hostFile), map[string]string{filepath.Base(hostFile): "nameserver 192.0.2.1\n"})
	tree := fakeDebianTree(t, hostFile)
	if err := customizeTree(tree); err != nil {
		t.Fatal(err)
	}

	if data, _ := os.ReadFile(hostFile); string(data) != "nameserver 192.0.2.1\n" {
		t.Fatalf("customizeTree wrote through a symlink to the host: %q", data)
	}
	read := func(name string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	exists := func(name string) bool {
		_, err := os.Lstat(filepath.Join(tree, name))
		return err == nil
	}
	link := func(name string) string {
		t.Helper()
		target, err := os.Readlink(filepath.Join(tree, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		return target
	}

	if got := read("etc/machine-id"); got != "" {
		t.Errorf("machine-id = %q, want empty", got)
	}
	if exists("var/lib/dbus/machine-id") {
		t.Error("dbus keeps its own machine-id copy")
	}
	if fi, err := os.Lstat(filepath.Join(tree, "etc/resolv.conf")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("resolv.conf is not a plain file: %v %v", fi, err)
	}
	if got := read("etc/hostname"); got != "banger\n" {
		t.Errorf("hostname = %q", got)
	}
	for _, k := range []string{"ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"} {
		if exists("etc/ssh/" + k) {
			t.Errorf("host key %s is baked into the image", k)
		}
	}
	if !exists("etc/ssh/sshd_config") {
		t.Error("sshd_config was removed with the host keys")
	}
	if got := read("etc/ssh/sshd_config.d/10-banger.conf"); !strings.Contains(got, "PermitRootLogin prohibit-password") {
		t.Errorf("sshd drop-in = %q", got)
	}
	if got := read("etc/fstab"); !strings.Contains(got, "/dev/vda / ext4 defaults 0 1\n") || !strings.Contains(got, "/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=10s 0 2\n") {
		t.Errorf("fstab = %q", got)
	}
	if got := read("etc/shadow"); got != "root::20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n" {
		t.Errorf("shadow = %q", got)
	}
	links := map[string]string{
		"etc/systemd/system/multi-user.target.wants/systemd-networkd.service":       "/lib/systemd/system/systemd-networkd.service",
		"etc/systemd/system/dbus-org.freedesktop.network1.service":                  "/lib/systemd/system/systemd-networkd.service",
		"etc/systemd/system/sockets.target.wants/systemd-networkd.socket":           "/lib/systemd/system/systemd-networkd.socket",
		"etc/systemd/system/sysinit.target.wants/systemd-network-generator.service": "/lib/systemd/system/systemd-network-generator.service",
		"etc/systemd/system/ssh.service.requires/banger-ssh-keygen.service":         "/etc/systemd/system/banger-ssh-keygen.service",
		"etc/systemd/system/multi-user.target.wants/ssh.service":                    "/lib/systemd/system/ssh.service",
		"etc/systemd/system/timers.target.wants/systemd-tmpfiles-clean.timer":       "/lib/systemd/system/systemd-tmpfiles-clean.timer",
	}
	for name, want := range links {
		if got := link(name); got != want {
			t.Errorf("%s -> %q, want %q", name, got, want)
		}
	}
	for _, gone := range []string{
		"etc/systemd/system/timers.target.wants/apt-daily.timer",
		"etc/systemd/system/timers.target.wants/apt-daily-upgrade.timer",
		"etc/systemd/system/timers.target.wants/fstrim.timer",
		"etc/systemd/system/getty.target.wants/getty@tty1.service",
		"etc/systemd/system/multi-user.target.wants/e2scrub_reap.service",
	} {
		if exists(gone) {
			t.Errorf("%s is still enabled", gone)
		}
	}
	if exists("etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service") {
		t.Error("systemd-networkd-wait-online is enabled")
	}
	unit := read("etc/systemd/system/banger-ssh-keygen.service")
	if !strings.Contains(unit, "Before=ssh.service") || !strings.Contains(unit, "$${t}") {
		t.Errorf("keygen unit = %q", unit)
	}

	// Running it twice is harmless (a rebuilt tree, a retried step).
	if err := customizeTree(tree); err != nil {
		t.Fatalf("second customizeTree: %v", err)
	}
}

func TestEnableUnit(t *testing.T) {
	tests := []struct {
		name    string
		unit    string
		file    string
		want    []string
		wantErr string
	}{
		{
			name: "wanted by two targets, repeated keys accumulate",
			unit: "a.service",
			file: "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nWantedBy=graphical.target\n",
			want: []string{"etc/systemd/system/graphical.target.wants/a.service", "etc/systemd/system/multi-user.target.wants/a.service"},
		},
		{
			name: "required by and alias",
			unit: "b.service",
			file: "[Install]\n# comment\nRequiredBy=ssh.service\nAlias=bee.service\n",
			want: []string{"etc/systemd/system/bee.service", "etc/systemd/system/ssh.service.requires/b.service"},
		},
		{name: "no install section", unit: "c.service", file: "[Service]\nWantedBy=not-in-install.target\n", wantErr: "names no WantedBy"},
		{name: "missing unit", unit: "d.service", wantErr: "no such unit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree := t.TempDir()
			if tt.file != "" {
				writeFiles(t, tree, map[string]string{"lib/systemd/system/" + tt.unit: tt.file})
			}
			root, err := os.OpenRoot(tree)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			err = enableUnit(root, tt.unit)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("enableUnit error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			filepath.WalkDir(filepath.Join(tree, "etc"), func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type()&fs.ModeSymlink != 0 {
					rel, _ := filepath.Rel(tree, p)
					got = append(got, rel)
					if target, _ := os.Readlink(p); target != "/lib/systemd/system/"+tt.unit {
						t.Errorf("%s -> %s", rel, target)
					}
				}
				return nil
			})
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("links %q, want %q", got, tt.want)
			}
		})
	}
}

func TestWriteExtraFiles(t *testing.T) {
	tree := t.TempDir()
	outside := t.TempDir()
	// An absolute symlink inside the tree must not lead a write out of it.
	if err := os.MkdirAll(filepath.Join(tree, "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(tree, "usr/local")); err != nil {
		t.Fatal(err)
	}
	err := writeExtraFiles(tree, map[string]File{
		"/usr/bin/banger-agent": {Data: []byte("agent"), Mode: 0o755},
		"/usr/bin/suid":         {Data: []byte("s"), Mode: fs.ModeSetuid | 0o755},
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(tree, "usr/bin/banger-agent"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("agent: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(tree, "usr/bin/suid")); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("setuid bit lost: %v %v", fi, err)
	}
	if err := writeExtraFiles(tree, map[string]File{"/usr/local/bin/x": {Data: []byte("x"), Mode: 0o644}}); err == nil {
		t.Error("writeExtraFiles followed an absolute symlink out of the tree")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("files written outside the tree: %v", entries)
	}
}

func TestBuildOptionsCheck(t *testing.T) {
	ok := BuildOptions{WorkDir: "/w", DestDir: "/d"}
	tests := []struct {
		name    string
		mutate  func(*BuildOptions)
		wantErr string
	}{
		{"minimal", func(*BuildOptions) {}, ""},
		{"with kernel", func(o *BuildOptions) { o.KernelModulesDir, o.KernelVersion = "/k/modules", "6.1.0-56-amd64" }, ""},
		{"no dest", func(o *BuildOptions) { o.DestDir = "" }, "required"},
		{"modules without version", func(o *BuildOptions) { o.KernelModulesDir = "/k/modules" }, "go together"},
		{"version with slash", func(o *BuildOptions) { o.KernelModulesDir, o.KernelVersion = "/k", "../x" }, "not a directory name"},
		{"version like an option", func(o *BuildOptions) { o.KernelModulesDir, o.KernelVersion = "/k", "-b.." }, "not a directory name"},
		{"too small", func(o *BuildOptions) { o.SizeBytes = 100 << 20 }, "minimum"},
		{"relative extra file", func(o *BuildOptions) { o.ExtraFiles = map[string]File{"etc/x": {}} }, "clean absolute path"},
		{"unclean extra file", func(o *BuildOptions) { o.ExtraFiles = map[string]File{"/etc/../x": {}} }, "clean absolute path"},
		{"root as extra file", func(o *BuildOptions) { o.ExtraFiles = map[string]File{"/": {}} }, "clean absolute path"},
		{"unix setuid bits", func(o *BuildOptions) { o.ExtraFiles = map[string]File{"/x": {Mode: 0o4755}} }, "fs.ModeSetuid"},
		{"directory mode", func(o *BuildOptions) { o.ExtraFiles = map[string]File{"/x": {Mode: fs.ModeDir | 0o755}} }, "fs.ModeSetuid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.mutate(&o)
			err := o.check()
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("check() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestMakeExt4(t *testing.T) {
	tree := t.TempDir()
	writeFiles(t, tree, map[string]string{"etc/os-release": strings.Repeat("x", 4096)})
	file := filepath.Join(t.TempDir(), "rootfs.ext4")
	r := &fakeRunner{fn: func(argv []string) ([]byte, error) { return nil, nil }}
	if err := makeExt4(context.Background(), r, tree, file, 1<<30); err != nil {
		t.Fatal(err)
	}
	want := []string{"mkfs.ext4", "-F", "-q", "-L", "bangerroot", "-d", tree, "-E", "lazy_itable_init=1,lazy_journal_init=1", file}
	if len(r.calls) != 1 || !slices.Equal(r.calls[0], want) {
		t.Errorf("ran %q, want %q", r.calls, want)
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Size() != 1<<30 {
		t.Errorf("rootfs file: %v %v, want 1 GiB", fi, err)
	}
	if used, err := allocated(file); err != nil || used > 1<<20 {
		t.Errorf("rootfs file allocates %d bytes (%v), want a sparse file", used, err)
	}

	if err := makeExt4(context.Background(), r, tree, filepath.Join(t.TempDir(), "small.ext4"), 4096); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("makeExt4 into a 4 KiB file: %v", err)
	}
}

// TestBuildDebianBookwormPipeline runs the whole build against a fake
// runner: mmdebstrap lays out a small tree, depmod and mkfs.ext4 leave
// marks. It checks the commands, the published directory and the manifest.
func TestBuildDebianBookwormPipeline(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("BuildDebianBookworm refuses to run without root")
	}
	modules := filepath.Join(t.TempDir(), "modules")
	writeFiles(t, modules, map[string]string{"modules.order": "kernel/fs/ext4/ext4.ko\n", "kernel/fs/ext4/ext4.ko": "ELF"})
	dest := filepath.Join(t.TempDir(), "images", "debian-bookworm")
	writeFiles(t, dest, map[string]string{"rootfs.ext4": "previous build"})
	work := t.TempDir()

	var tree string
	r := &fakeRunner{}
	r.fn = func(argv []string) ([]byte, error) {
		switch argv[0] {
		case "mmdebstrap":
			i := slices.Index(argv, "bookworm")
			if i < 0 || i+1 >= len(argv) {
				return nil, fmt.Errorf("no suite and target in %q", argv)
			}
			tree = argv[i+1]
			fakeTree := fakeDebianTree(t, filepath.Join(t.TempDir(), "resolv"))
			if err := os.Remove(tree); err != nil && !os.IsNotExist(err) {
				return nil, err
			}
			if err := os.Rename(fakeTree, tree); err != nil {
				return nil, err
			}
			writeFiles(t, tree, map[string]string{"var/lib/dpkg/status": "Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:9.2p1\n"})
			return nil, nil
		case "chroot":
			if !slices.Equal(argv[1:], []string{tree, "/sbin/depmod", "-a", "6.1.0-test"}) {
				return nil, fmt.Errorf("unexpected chroot %q", argv)
			}
			if _, err := os.Stat(filepath.Join(tree, "usr/lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko")); err != nil {
				return nil, fmt.Errorf("depmod before the modules were copied: %w", err)
			}
			return nil, nil
		case "mkfs.ext4":
			if _, err := os.Stat(filepath.Join(tree, "opt/probe")); err != nil {
				return nil, fmt.Errorf("mkfs before the extra files were written: %w", err)
			}
			return nil, nil
		}
		return nil, fmt.Errorf("unexpected command %q", argv)
	}
	var stages []string
	m, err := BuildDebianBookworm(context.Background(), r, BuildOptions{
		WorkDir:          work,
		DestDir:          dest,
		KernelModulesDir: modules,
		KernelVersion:    "6.1.0-test",
		SizeBytes:        1 << 30,
		ExtraFiles:       map[string]File{"/opt/probe": {Data: []byte("p"), Mode: 0o644}},
		Sources:          []string{"deb http://mirror.example/debian bookworm main"},
		Progress:         func(s string) { stages = append(stages, s) },
	})
	if err != nil {
		t.Fatal(err)
	}
	mm := r.calls[0]
	if mm[len(mm)-1] != "deb http://mirror.example/debian bookworm main" || !slices.Contains(mm, "--variant=minbase") ||
		!slices.ContainsFunc(mm, func(a string) bool {
			return strings.HasPrefix(a, "--include=") && strings.Contains(a, "openssh-server")
		}) {
		t.Errorf("mmdebstrap argv %q", mm)
	}
	if want := []string{"mmdebstrap", "customize", "kernel modules", "extra files", "mkfs", "manifest", "publish"}; !slices.Equal(stages, want) {
		t.Errorf("stages %q, want %q", stages, want)
	}
	loaded, err := LoadManifest(dest)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.RootFS != m.RootFS || loaded.RootFS.Size != 1<<30 || loaded.KernelVersion != "6.1.0-test" ||
		len(loaded.Packages) != 1 || loaded.Packages[0].Name != "openssh-server" {
		t.Errorf("manifest %+v", loaded)
	}
	if err := loaded.Verify(dest); err != nil {
		t.Error(err)
	}
	if leftovers, _ := os.ReadDir(work); len(leftovers) != 0 {
		t.Errorf("work directory not cleaned: %v", leftovers)
	}
	if entries, _ := os.ReadDir(filepath.Dir(dest)); len(entries) != 1 {
		t.Errorf("staging directories left beside the image: %v", entries)
	}

	// A failing build leaves the published image alone and no debris.
	r.fn = func(argv []string) ([]byte, error) { return nil, fmt.Errorf("E: Couldn't download packages") }
	if _, err := BuildDebianBookworm(context.Background(), r, BuildOptions{WorkDir: work, DestDir: dest, Sources: []string{"deb http://x bookworm main"}}); err == nil || !strings.Contains(err.Error(), "mmdebstrap") {
		t.Fatalf("failed build: %v", err)
	}
	if again, err := LoadManifest(dest); err != nil || again.RootFS != m.RootFS {
		t.Errorf("failed build disturbed the published image: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(dest)); len(entries) != 1 {
		t.Errorf("failed build left %v beside the image", entries)
	}
}
