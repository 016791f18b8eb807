package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"

	"banger/internal/system"
)

// fakeRunner answers commands from a function and records them.
type fakeRunner struct {
	calls [][]string
	fn    func(argv []string) ([]byte, error)
}

func (f *fakeRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	f.calls = append(f.calls, slices.Clone(argv))
	return f.fn(argv)
}

// minimalELF is a 64-byte ELF header: x86-64, the given type, no program
// or section headers. debug/elf reads it; it is "static" (no PT_INTERP).
func minimalELF(typ elfType) []byte {
	b := make([]byte, 64)
	copy(b, "\x7fELF")
	b[4] = 2 // ELFCLASS64
	b[5] = 1 // little endian
	b[6] = 1 // EV_CURRENT
	binary.LittleEndian.PutUint16(b[16:], uint16(typ))
	binary.LittleEndian.PutUint16(b[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(b[20:], 1)
	binary.LittleEndian.PutUint16(b[52:], 64) // e_ehsize
	return b
}

type elfType uint16

const (
	etRel  elfType = 1
	etExec elfType = 2
)

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/ext4/ext4.ko":                      "ext4",
		"kernel/drivers/char/hw_random/virtio-rng.ko": "virtio_rng",
		"kernel/arch/x86/crypto/crc32c-intel.ko.xz":   "crc32c_intel",
		"kernel/net/vsock.ko.zst":                     "vsock",
		"virtio-rng":                                  "virtio_rng",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

const sampleModulesDep = `kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/dangling.ko: kernel/missing.ko
`

func TestLoadOrder(t *testing.T) {
	deps, err := ParseModulesDep(strings.NewReader(sampleModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		modules []string
		builtin map[string]bool
		want    []string
		wantErr string
	}{
		{
			name:    "dependencies first, each once",
			modules: []string{"virtio_blk", "ext4", "virtio-rng"},
			want: []string{
				"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
				"kernel/drivers/block/virtio_blk.ko",
				"kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko",
				"kernel/drivers/char/hw_random/virtio-rng.ko",
			},
		},
		{
			// modules.dep lists vsock after the transport_common module that
			// needs it; the order must still put vsock first.
			name:    "transitive dependency listed late",
			modules: []string{"vmw_vsock_virtio_transport"},
			want: []string{
				"kernel/drivers/virtio/virtio.ko", "kernel/net/vmw_vsock/vsock.ko",
				"kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
				"kernel/drivers/virtio/virtio_ring.ko",
				"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
			},
		},
		{name: "builtin is skipped", modules: []string{"virtio_mmio", "crc16"}, builtin: map[string]bool{"virtio_mmio": true}, want: []string{"kernel/lib/crc16.ko"}},
		{name: "unknown module", modules: []string{"virtio_mmio"}, wantErr: "neither in modules.dep nor built in"},
		{name: "cycle", modules: []string{"a"}, wantErr: "cycle"},
		{name: "dependency not described", modules: []string{"dangling"}, wantErr: "kernel/missing.ko (needed by kernel/dangling.ko) is not in modules.dep"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := deps.LoadOrder(tt.modules, tt.builtin)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadOrder error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("LoadOrder =\n%q\nwant\n%q", got, tt.want)
			}
			// Whatever the exact order, every module comes after its deps.
			for i, p := range got {
				for _, d := range deps.deps[p] {
					if j := slices.Index(got, d); j < 0 || j > i {
						t.Errorf("%s is loaded before its dependency %s", p, d)
					}
				}
			}
		})
	}
}

func TestParseModulesDepRejectsGarbage(t *testing.T) {
	if _, err := ParseModulesDep(strings.NewReader("kernel/a.ko kernel/b.ko\n")); err == nil {
		t.Fatal("ParseModulesDep accepted a line without a colon")
	}
}

func TestCpioTreeRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	tree := newCpioTree(cpio.NewWriter(&buf))
	tree.dir("dev")
	tree.file("bin/busybox", 0o755, []byte("BUSYBOX"))
	tree.symlink("bin/sh", "busybox")
	tree.file("lib/modules/6.1/kernel/fs/ext4/ext4.ko", 0o644, []byte("odd length")) // 10 bytes: padding
	tree.file("init", 0o755, nil)
	if err := tree.close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, newc pads to 4", buf.Len())
	}

	type entry struct {
		mode cpio.FileMode
		data string
	}
	var names []string
	got := map[string]entry{}
	r := cpio.NewReader(&buf)
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if h.Linkname != "" {
			data = []byte(h.Linkname)
		}
		names = append(names, h.Name)
		got[h.Name] = entry{h.Mode, string(data)}
	}
	want := []string{"dev", "bin", "bin/busybox", "bin/sh", "lib", "lib/modules", "lib/modules/6.1",
		"lib/modules/6.1/kernel", "lib/modules/6.1/kernel/fs", "lib/modules/6.1/kernel/fs/ext4",
		"lib/modules/6.1/kernel/fs/ext4/ext4.ko", "init"}
	if !slices.Equal(names, want) {
		t.Errorf("entries\n%q\nwant (parents first, once)\n%q", names, want)
	}
	checks := map[string]entry{
		"bin":                                    {cpio.TypeDir | 0o755, ""},
		"bin/busybox":                            {cpio.TypeReg | 0o755, "BUSYBOX"},
		"bin/sh":                                 {cpio.TypeSymlink | 0o777, "busybox"},
		"lib/modules/6.1/kernel/fs/ext4/ext4.ko": {cpio.TypeReg | 0o644, "odd length"},
		"init":                                   {cpio.TypeReg | 0o755, ""},
	}
	for name, w := range checks {
		if got[name] != w {
			t.Errorf("%s = %o %q, want %o %q", name, got[name].mode, got[name].data, w.mode, w.data)
		}
	}
}

// TestCpioTreeMatchesCpioTool lets GNU cpio, an independent reader, list
// the archive, when it is installed.
func TestCpioTreeMatchesCpioTool(t *testing.T) {
	if _, err := system.LookPath("cpio"); err != nil {
		t.Skip("cpio is not installed")
	}
	var buf bytes.Buffer
	tree := newCpioTree(cpio.NewWriter(&buf))
	tree.file("a/b/c", 0o600, []byte("xyz"))
	tree.symlink("a/l", "b/c")
	if err := tree.close(); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "x.cpio")
	if err := os.WriteFile(archive, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := (&system.Exec{}).Run(context.Background(), "cpio", "--quiet", "-itv", "-H", "newc", "-F", archive)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[2], "-rw-------") || !strings.HasSuffix(lines[2], " a/b/c") ||
		!strings.HasPrefix(lines[3], "lrwxrwxrwx") || !strings.HasSuffix(lines[3], "a/l -> b/c") {
		t.Errorf("cpio -t lists:\n%s", out)
	}
}

func TestBuildInitrd(t *testing.T) {
	dir := t.TempDir()
	mods := filepath.Join(dir, "modules")
	write := func(rel string, data []byte) {
		t.Helper()
		p := filepath.Join(mods, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ko := func(name string) []byte { return append(minimalELF(etRel), name...) }
	write("modules.dep", []byte("kernel/virtio.ko:\nkernel/virtio_blk.ko: kernel/virtio.ko\nkernel/ext4.ko.xz: kernel/crc16.ko.gz\nkernel/crc16.ko.gz:\n"))
	write("modules.builtin", []byte("kernel/virtio_mmio.ko\n"))
	write("kernel/virtio.ko", ko("virtio"))
	write("kernel/virtio_blk.ko", ko("virtio_blk"))
	write("kernel/ext4.ko.xz", []byte("pretend xz"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(ko("crc16"))
	zw.Close()
	write("kernel/crc16.ko.gz", gz.Bytes())
	busybox := filepath.Join(dir, "busybox")
	if err := os.WriteFile(busybox, minimalELF(etExec), 0o755); err != nil {
		t.Fatal(err)
	}

	r := &fakeRunner{fn: func(argv []string) ([]byte, error) {
		if argv[0] == "xz" && strings.HasSuffix(argv[len(argv)-1], "ext4.ko.xz") {
			return ko("ext4"), nil
		}
		return nil, fmt.Errorf("unexpected command %q", argv)
	}}
	out := filepath.Join(dir, "initrd.img")
	loaded, err := buildInitrd(context.Background(), r, initrdSpec{
		Busybox: busybox, ModulesDir: mods, Version: "6.1.0-test",
		Modules: []string{"virtio_mmio", "virtio_blk", "ext4"}, Out: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"virtio", "virtio_blk", "crc16", "ext4"}; !slices.Equal(loaded, want) {
		t.Errorf("loaded %q, want %q", loaded, want)
	}
	entries := readInitrd(t, out)
	wantList := "kernel/virtio.ko\nkernel/virtio_blk.ko\nkernel/crc16.ko\nkernel/ext4.ko\n"
	if got := string(entries[initrdModuleList]); got != wantList {
		t.Errorf("module list %q, want %q", got, wantList)
	}
	for rel, want := range map[string]string{"kernel/ext4.ko": "ext4", "kernel/crc16.ko": "crc16"} {
		got := entries["lib/modules/6.1.0-test/"+rel]
		if !bytes.Equal(got, ko(want)) {
			t.Errorf("%s holds %q, want the decompressed module", rel, got)
		}
	}
	if string(entries["init"]) != initScript || string(entries["bin/switch_root"]) != "busybox" {
		t.Error("initrd lacks /init or the switch_root applet link")
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot"} {
		if _, ok := entries[d]; !ok {
			t.Errorf("initrd has no /%s", d)
		}
	}

	// A dynamically linked "busybox" is refused: the initrd has no libc.
	dyn := filepath.Join(dir, "dynamic")
	if err := os.WriteFile(dyn, dynamicELF(), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := buildInitrd(context.Background(), r, initrdSpec{Busybox: dyn, ModulesDir: mods, Out: out}); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("buildInitrd with a dynamic busybox: %v", err)
	}
}

// dynamicELF is minimalELF with one PT_INTERP program header.
func dynamicELF() []byte {
	b := minimalELF(etExec)
	binary.LittleEndian.PutUint64(b[32:], 64) // e_phoff
	binary.LittleEndian.PutUint16(b[54:], 56) // e_phentsize
	binary.LittleEndian.PutUint16(b[56:], 1)  // e_phnum
	ph := make([]byte, 56)
	binary.LittleEndian.PutUint32(ph[0:], 3) // PT_INTERP
	return append(b, ph...)
}

func TestInitScriptIsValidShell(t *testing.T) {
	sh, err := system.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(p, []byte(initScript), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := (&system.Exec{}).Run(context.Background(), sh, "-n", p); err != nil {
		t.Fatalf("sh -n init: %v", err)
	}
	for _, applet := range []string{"insmod", "switch_root", "findfs", "mount", "poweroff"} {
		if !strings.Contains(initScript, applet) || !slices.Contains(initrdApplets, applet) {
			t.Errorf("/init uses %s but the initrd does not link it", applet)
		}
	}
}

func TestExtractVmlinux(t *testing.T) {
	kernelELF := append(minimalELF(etExec), "Linux version 6.1-test"...)
	stream := append(slices.Clone(xzMagic), "REAL"...)
	decoy := append(slices.Clone(xzMagic), "DECOY"...)
	tests := []struct {
		name    string
		image   []byte
		payload []byte // what "xz" returns for the real stream
		want    []byte
		wantErr string
	}{
		{name: "decoy magic before the payload", image: concat([]byte("MZ setup code "), decoy, []byte("pad"), stream, []byte("trailer")), payload: kernelELF, want: kernelELF},
		{name: "no xz stream", image: []byte("MZ gzip-compressed kernel"), wantErr: "holds no XZ stream"},
		{name: "payload is not ELF", image: concat([]byte("MZ"), stream), payload: []byte("not an elf"), wantErr: "not an ELF file"},
		{name: "payload is a relocatable object", image: concat([]byte("MZ"), stream), payload: minimalELF(etRel), wantErr: "ET_EXEC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			bz := filepath.Join(dir, "vmlinuz")
			if err := os.WriteFile(bz, tt.image, 0o644); err != nil {
				t.Fatal(err)
			}
			r := &fakeRunner{fn: func(argv []string) ([]byte, error) {
				if argv[0] != "xz" || !slices.Contains(argv, "--single-stream") {
					return nil, fmt.Errorf("unexpected command %q", argv)
				}
				data, err := os.ReadFile(argv[len(argv)-1])
				if err != nil {
					return nil, err
				}
				if bytes.HasPrefix(data, stream) {
					return tt.payload, nil
				}
				return nil, errors.New("xz: (stdin): Compressed data is corrupt")
			}}
			dst := filepath.Join(dir, "vmlinux")
			err := ExtractVmlinux(context.Background(), r, bz, dst)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ExtractVmlinux error = %v, want one containing %q", err, tt.wantErr)
				}
				if _, err := os.Stat(dst); err == nil {
					t.Error("a failed extraction left a vmlinux behind")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("vmlinux = %q, want %q", got, tt.want)
			}
			if leftovers, _ := filepath.Glob(filepath.Join(dir, ".vmlinux-*")); len(leftovers) > 0 {
				t.Errorf("temporary files left: %v", leftovers)
			}
		})
	}
}

// TestExtractVmlinuxWithRealXZ compresses an ELF with the host's xz (with
// the x86 BCJ filter, as the kernel does), hides it in a bzImage-like blob
// and extracts it through system.Exec.
func TestExtractVmlinuxWithRealXZ(t *testing.T) {
	if _, err := system.LookPath("xz"); err != nil {
		t.Skip("xz is not installed")
	}
	dir := t.TempDir()
	kernelELF := append(minimalELF(etExec), bytes.Repeat([]byte("kernel text "), 500)...)
	raw := filepath.Join(dir, "vmlinux.bin")
	if err := os.WriteFile(raw, kernelELF, 0o644); err != nil {
		t.Fatal(err)
	}
	run := &system.Exec{}
	compressed, err := run.Run(context.Background(), "xz", "--format=xz", "--check=crc32", "--x86", "--lzma2=dict=1MiB", "--stdout", raw)
	if err != nil {
		t.Fatal(err)
	}
	bz := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(bz, concat([]byte("MZ\x00\x00fake setup"), make([]byte, 1000), compressed, []byte{0x10, 0x20, 0, 0}, []byte("trailing data")), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "vmlinux")
	if err := ExtractVmlinux(context.Background(), run, bz, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, kernelELF) {
		t.Errorf("extracted %d bytes, want the %d-byte ELF", len(got), len(kernelELF))
	}
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestNotesHave(t *testing.T) {
	note := func(name string, typ uint32, desc []byte) []byte {
		var b bytes.Buffer
		n := append([]byte(name), 0)
		binary.Write(&b, binary.LittleEndian, uint32(len(n)))
		binary.Write(&b, binary.LittleEndian, uint32(len(desc)))
		binary.Write(&b, binary.LittleEndian, typ)
		b.Write(n)
		b.Write(make([]byte, (4-len(n)%4)%4))
		b.Write(desc)
		b.Write(make([]byte, (4-len(desc)%4)%4))
		return b.Bytes()
	}
	gnu := note("GNU", 3, []byte("build-id-bytes!"))
	pvh := note("Xen", xenElfnotePhys32Entry, []byte{1, 2, 3, 4})
	tests := []struct {
		name string
		buf  []byte
		want bool
	}{
		{"pvh after another note", concat(gnu, pvh), true},
		{"other Xen note only", note("Xen", 1, []byte("x")), false},
		{"no notes", nil, false},
		{"truncated", concat(gnu, pvh[:14]), false},
	}
	for _, tt := range tests {
		if got := notesHave(tt.buf, binary.LittleEndian, "Xen", xenElfnotePhys32Entry); got != tt.want {
			t.Errorf("%s: notesHave = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestConcreteKernelPackage(t *testing.T) {
	tests := []struct {
		depends, want string
	}{
		{"linux-image-6.1.0-56-amd64 (= 6.1.192-2)", "linux-image-6.1.0-56-amd64"},
		{"linux-image-6.1.0-56-amd64-unsigned (= 6.1.192-2) | linux-image-6.1.0-56-amd64 (= 6.1.192-2)", "linux-image-6.1.0-56-amd64-unsigned"},
		{"initramfs-tools, linux-image-6.1.0-9-amd64:amd64", "linux-image-6.1.0-9-amd64"},
		{"linux-image-amd64", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := concreteKernelPackage(tt.depends)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("concreteKernelPackage(%q) = %q, %v; want %q", tt.depends, got, err, tt.want)
		}
	}
}

func TestParseControl(t *testing.T) {
	in := "Package: linux-image-6.1.0-56-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\nDescription: Linux 6.1 for 64-bit PCs (signed)\n The Linux kernel 6.1 and modules.\n .\n More.\n"
	f, err := parseControl(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if f["Package"] != "linux-image-6.1.0-56-amd64" || f["Version"] != "6.1.192-2" || f["Source"] != "linux-signed-amd64 (6.1.192+2)" {
		t.Errorf("fields %q", f)
	}
	if !strings.HasSuffix(f["Description"], "\nMore.") {
		t.Errorf("Description continuation lost: %q", f["Description"])
	}
	if _, err := parseControl(strings.NewReader(" leading continuation\n")); err == nil {
		t.Error("parseControl accepted a continuation before any field")
	}
}

func TestAptDownload(t *testing.T) {
	tests := []struct {
		name       string
		listsKnown bool // whether apt knows the package before an update
		updateErr  error
		wantCalls  []string
		wantErr    string
	}{
		{name: "known package", listsKnown: true, wantCalls: []string{"env"}},
		{name: "lists missing: update once and retry", wantCalls: []string{"env", "apt-get update", "env"}},
		{name: "update fails", updateErr: errors.New("permission denied"), wantCalls: []string{"env", "apt-get update"}, wantErr: "apt-get update` failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			updated := false
			r := &fakeRunner{fn: func(argv []string) ([]byte, error) {
				switch {
				case argv[0] == "apt-get" && argv[1] == "update":
					updated = tt.updateErr == nil
					return nil, tt.updateErr
				case argv[0] == "env" && argv[1] == "--chdir="+dir && argv[2] == "apt-get" && argv[3] == "download":
					if !tt.listsKnown && !updated {
						return nil, &system.CommandError{Argv: argv, Stderr: "E: Unable to locate package busybox-static", Err: errors.New("exit status 100")}
					}
					return nil, os.WriteFile(filepath.Join(dir, "busybox-static_1%3a1.35.0-4_amd64.deb"), []byte("deb"), 0o644)
				}
				return nil, fmt.Errorf("unexpected command %q", argv)
			}}
			got, err := aptDownload(context.Background(), r, dir, "busybox-static")
			var calls []string
			for _, c := range r.calls {
				if c[0] == "apt-get" {
					calls = append(calls, "apt-get "+c[1])
				} else {
					calls = append(calls, c[0])
				}
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("aptDownload error = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if filepath.Base(got) != "busybox-static_1%3a1.35.0-4_amd64.deb" {
				t.Errorf("aptDownload = %s", got)
			}
			if !slices.Equal(calls, tt.wantCalls) {
				t.Errorf("commands %q, want %q", calls, tt.wantCalls)
			}
		})
	}
}

func TestAptDownloadDoesNotRetryOtherErrors(t *testing.T) {
	r := &fakeRunner{fn: func(argv []string) ([]byte, error) {
		return nil, errors.New("E: Failed to fetch http://mirror.example/...: 503")
	}}
	if _, err := aptDownload(context.Background(), r, t.TempDir(), "busybox-static"); err == nil {
		t.Fatal("aptDownload succeeded on a failed fetch")
	}
	if len(r.calls) != 1 {
		t.Errorf("ran %d commands, want 1 (no apt-get update for a network error)", len(r.calls))
	}
}

func TestManifest(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"vmlinuz": "bz", "initrd.img": "cpio"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := Manifest{SchemaVersion: manifestSchema, Name: DebianName, Version: "6.1.0-56-amd64", Arch: "amd64", Files: map[string]File{}}
	for role, rel := range map[string]string{RoleVmlinuz: "vmlinuz", RoleInitrd: "initrd.img"} {
		f, err := describeFile(dir, rel)
		if err != nil {
			t.Fatal(err)
		}
		m.Files[role] = f
	}
	if err := writeManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	got, err := LoadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != m.Version || got.Files[RoleInitrd] != m.Files[RoleInitrd] {
		t.Errorf("LoadManifest = %+v, want %+v", got, m)
	}
	if err := got.Verify(dir); err != nil {
		t.Error(err)
	}
	if p, err := got.Path(dir, RoleVmlinuz); err != nil || p != filepath.Join(dir, "vmlinuz") {
		t.Errorf("Path(vmlinuz) = %s, %v", p, err)
	}
	if _, err := got.Path(dir, RoleVmlinux); err == nil {
		t.Error("Path(vmlinux) succeeded for a manifest without one")
	}
	if err := os.WriteFile(filepath.Join(dir, "initrd.img"), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(dir); err == nil || !strings.Contains(err.Error(), "initrd") {
		t.Errorf("Verify after tampering = %v, want an initrd mismatch", err)
	}

	bad := []struct {
		name    string
		mutate  func(*Manifest)
		wantErr string
	}{
		{"schema", func(m *Manifest) { m.SchemaVersion = 99 }, "schema version 99"},
		{"no initrd", func(m *Manifest) { delete(m.Files, RoleInitrd) }, `no "initrd" file`},
		{"escaping path", func(m *Manifest) { m.Files[RoleVmlinuz] = File{Path: "../../etc/passwd"} }, "outside the kernel directory"},
		{"no version", func(m *Manifest) { m.Version = "" }, "empty"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			mm := m
			mm.Files = map[string]File{}
			for k, v := range m.Files {
				mm.Files[k] = v
			}
			b.mutate(&mm)
			d := t.TempDir()
			if err := writeManifest(d, mm); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadManifest(d); err == nil || !strings.Contains(err.Error(), b.wantErr) {
				t.Errorf("LoadManifest = %v, want an error containing %q", err, b.wantErr)
			}
		})
	}
	if _, err := LoadManifest(t.TempDir()); err == nil {
		t.Error("LoadManifest of an empty directory succeeded")
	}
}
