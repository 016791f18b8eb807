package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// InitrdModules are the modules the initrd loads before it mounts root,
// together with everything modules.dep says they need. virtio_mmio and
// virtio_pci find the disks (microvm/Firecracker describe virtio-mmio
// devices through ACPI), crc32c_generic is ext4's metadata checksum (a
// soft dependency modules.dep does not list). The network, console, vsock
// and rng drivers are loaded here too so that guests whose root has no
// matching modules tree still get their network and agent channel.
var InitrdModules = []string{
	"virtio_mmio",
	"virtio_pci",
	"virtio_blk",
	"crc32c_generic",
	"ext4",
	"virtio_net",
	"virtio_console",
	"virtio_rng",
	"vmw_vsock_virtio_transport",
}

// initrdApplets get a /bin symlink to busybox: what /init uses, plus
// enough to look around when banger.initrd=shell drops to a shell.
var initrdApplets = []string{
	"[", "cat", "cp", "dmesg", "echo", "find", "findfs", "grep", "head", "insmod", "ip", "ls", "lsmod",
	"mkdir", "mount", "poweroff", "ps", "reboot", "rm", "sh", "sleep", "switch_root", "tar",
	"test", "umount", "uname", "wc",
}

// initScript is the initrd's /init.
//
//go:embed initrd_init.sh
var initScript string

// ApplyConfigScript is the initrd's /bin/banger-apply-config, which
// copies a VM's configuration disk (see internal/configdisk) over its root.
//
//go:embed apply_config.sh
var ApplyConfigScript string

// initrdModuleList is where /init reads the ordered module paths from.
const initrdModuleList = "etc/banger-initrd/modules"

type initrdSpec struct {
	// Busybox is a statically linked busybox binary on the host.
	Busybox string
	// ModulesDir is the /lib/modules/<Version> tree; it must hold
	// modules.dep.
	ModulesDir string
	Version    string
	// Modules are module names to load; their dependencies are added.
	Modules []string
	// Out is the gzip'ed newc cpio to write.
	Out string
}

// buildInitrd writes the initramfs described by spec and returns the
// module names it loads, in load order.
func buildInitrd(ctx context.Context, r Runner, spec initrdSpec) ([]string, error) {
	if err := checkStaticBinary(spec.Busybox); err != nil {
		return nil, fmt.Errorf("build initrd: busybox: %w", err)
	}
	order, err := initrdLoadOrder(spec.ModulesDir, spec.Modules)
	if err != nil {
		return nil, fmt.Errorf("build initrd: %w", err)
	}

	out, err := os.Create(spec.Out)
	if err != nil {
		return nil, fmt.Errorf("build initrd: %w", err)
	}
	defer out.Close()
	zw := gzip.NewWriter(out)
	cw := newCpioTree(cpio.NewWriter(zw))

	for _, d := range []string{"dev", "proc", "sys", "newroot", "tmp"} {
		cw.dir(d)
	}
	busybox, err := os.ReadFile(spec.Busybox)
	if err != nil {
		return nil, fmt.Errorf("build initrd: %w", err)
	}
	cw.file("bin/busybox", 0o755, busybox)
	for _, a := range initrdApplets {
		cw.symlink("bin/"+a, "busybox")
	}
	cw.file("init", 0o755, []byte(initScript))
	cw.file("bin/banger-apply-config", 0o755, []byte(ApplyConfigScript))

	var list strings.Builder
	names := make([]string, 0, len(order))
	for _, p := range order {
		data, err := readModule(ctx, r, filepath.Join(spec.ModulesDir, p))
		if err != nil {
			return nil, fmt.Errorf("build initrd: %w", err)
		}
		plain := stripCompressionSuffix(p)
		cw.file(path.Join("lib/modules", spec.Version, plain), 0o644, data)
		list.WriteString(plain + "\n")
		names = append(names, ModuleName(p))
	}
	cw.file(initrdModuleList, 0o644, []byte(list.String()))

	if err := cw.close(); err != nil {
		return nil, fmt.Errorf("build initrd: write cpio: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("build initrd: compress: %w", err)
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("build initrd: %w", err)
	}
	return names, nil
}

func initrdLoadOrder(modulesDir string, names []string) ([]string, error) {
	depFile, err := os.Open(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("resolve initrd modules: %w (run depmod on the modules tree)", err)
	}
	defer depFile.Close()
	deps, err := ParseModulesDep(depFile)
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if f, err := os.Open(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		builtin, err = ParseModulesBuiltin(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return deps.LoadOrder(names, builtin)
}

// readModule returns the plain ELF of a module, decompressing .ko.gz in Go
// and .ko.xz/.ko.zst with the host's xz/zstd: insmod takes plain modules
// and the initrd has no decompressor for them.
func readModule(ctx context.Context, r Runner, p string) ([]byte, error) {
	var data []byte
	var err error
	switch {
	case strings.HasSuffix(p, ".ko"):
		data, err = os.ReadFile(p)
	case strings.HasSuffix(p, ".ko.gz"):
		data, err = gunzipFile(p)
	case strings.HasSuffix(p, ".ko.xz"):
		data, err = r.Run(ctx, "xz", "--decompress", "--stdout", "--quiet", p)
	case strings.HasSuffix(p, ".ko.zst"):
		data, err = r.Run(ctx, "zstd", "--decompress", "--stdout", "--quiet", p)
	default:
		return nil, fmt.Errorf("module %s: unknown file suffix (want .ko, .ko.gz, .ko.xz or .ko.zst)", p)
	}
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", p, err)
	}
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return nil, fmt.Errorf("module %s is not an ELF object once decompressed", p)
	}
	return data, nil
}

func gunzipFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

func stripCompressionSuffix(p string) string {
	for _, s := range []string{".gz", ".xz", ".zst"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// checkStaticBinary refuses a binary that needs a dynamic loader: the
// initrd holds no libraries.
func checkStaticBinary(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the initrd needs a static busybox", p)
		}
	}
	return nil
}

// cpioTree writes a newc archive, adding each parent directory once before
// the first entry under it (the kernel's unpacker does not create them).
// Entries are owned by root with mtime 0, so equal inputs give equal
// archives. The first error sticks and is returned by close.
type cpioTree struct {
	w    *cpio.Writer
	dirs map[string]bool
	err  error
}

func newCpioTree(w *cpio.Writer) *cpioTree {
	return &cpioTree{w: w, dirs: map[string]bool{".": true, "": true}}
}

func (t *cpioTree) parents(name string) {
	parent := path.Dir(name)
	if t.dirs[parent] {
		return
	}
	t.parents(parent)
	t.dir(parent)
}

func (t *cpioTree) dir(name string) {
	if t.err != nil || t.dirs[name] {
		return
	}
	t.parents(name)
	t.dirs[name] = true
	t.err = t.w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeDir | 0o755, Links: 2})
}

func (t *cpioTree) file(name string, perm cpio.FileMode, data []byte) {
	t.entry(name, cpio.TypeReg|perm, data)
}

// symlink stores the target as the entry's data, as newc does.
func (t *cpioTree) symlink(name, target string) {
	t.entry(name, cpio.TypeSymlink|0o777, []byte(target))
}

func (t *cpioTree) entry(name string, mode cpio.FileMode, data []byte) {
	if t.err != nil {
		return
	}
	t.parents(name)
	if t.err != nil {
		return
	}
	if t.err = t.w.WriteHeader(&cpio.Header{Name: name, Mode: mode, Size: int64(len(data)), Links: 1}); t.err != nil {
		return
	}
	_, t.err = t.w.Write(data)
}

func (t *cpioTree) close() error {
	if t.err != nil {
		return t.err
	}
	return t.w.Close()
}
