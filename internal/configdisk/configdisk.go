// Package configdisk builds a VM's configuration disk: a small raw disk,
// made fresh by the host at every boot, that carries the files which make
// a VM itself — hostname, network, resolv.conf, SSH host and authorized
// keys, machine-id, banger's guest units — without the host ever writing
// into (or parsing) a disk the guest owns. The guest applies it: banger's
// initrd finds the disk by its first bytes and copies its files over the
// root filesystem before the root's init runs, like a NoCloud seed that
// needs no agent in the image.
//
//	offset 0    tar entry "banger-config/"          (the magic the initrd looks for)
//	            tar entry "banger-config/version"   ("1")
//	            tar entries "banger-config/root/etc/hostname", ...
//	            two zero blocks (end of archive), zero padding to a 4 KiB multiple
//
// The package owns only the bytes of the image it builds. It must not read
// anything from a VM's disks, and refuses paths that are not clean and
// absolute, so an archive it builds can never name a file outside the
// guest's root.
package configdisk

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Magic is the name of the first entry: the initrd reads the first bytes
// of every virtio disk and applies the one that starts with it.
const Magic = "banger-config/"

// Version is the layout of the archive the initrd understands.
const Version = "1"

// MaxSize bounds a configuration disk (the guest agent binary is the
// largest thing it carries).
const MaxSize = 64 << 20

// File is one file (or, with Target set, one symlink) to place in the
// guest at Path.
type File struct {
	Path   string // absolute path in the guest, e.g. /etc/hostname
	Data   []byte
	Mode   os.FileMode // permission bits; 0 means 0644
	Target string      // non-empty: a symlink to Target instead of a file
}

// Build returns the disk image holding files.
func Build(files []File) ([]byte, error) {
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	seen := map[string]bool{}
	dirs := map[string]bool{}
	for _, f := range sorted {
		if err := checkPath(f.Path); err != nil {
			return nil, err
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("config disk: %s given twice", f.Path)
		}
		seen[f.Path] = true
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if seen[d] {
			return nil, fmt.Errorf("config disk: %s is both a file and a directory", d)
		}
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	hdr := func(h *tar.Header) error {
		h.Uname, h.Gname, h.ModTime, h.Format = "root", "root", epoch, tar.FormatUSTAR
		return tw.WriteHeader(h)
	}
	if err := hdr(&tar.Header{Name: Magic, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		return nil, err
	}
	if err := hdr(&tar.Header{Name: Magic + "version", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(Version))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write([]byte(Version)); err != nil {
		return nil, err
	}
	for _, f := range sorted {
		name := Magic + "root" + f.Path
		mode := int64(f.Mode.Perm())
		if mode == 0 {
			mode = 0o644
		}
		if f.Target != "" {
			if err := hdr(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: f.Target, Mode: 0o777}); err != nil {
				return nil, fmt.Errorf("config disk: %s: %w", f.Path, err)
			}
			continue
		}
		if err := hdr(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(f.Data))}); err != nil {
			return nil, fmt.Errorf("config disk: %s: %w", f.Path, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
		if buf.Len() > MaxSize {
			return nil, fmt.Errorf("config disk: more than %d MiB of files", MaxSize>>20)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if pad := buf.Len() % 4096; pad != 0 {
		buf.Write(make([]byte, 4096-pad))
	}
	return buf.Bytes(), nil
}

// checkPath accepts clean absolute paths without NUL or newline (the
// initrd reads the list of files line by line).
func checkPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/") || p == "/":
		return fmt.Errorf("config disk: %q is not an absolute file path", p)
	case path.Clean(p) != p:
		return fmt.Errorf("config disk: %q is not a clean path", p)
	case strings.ContainsAny(p, "\x00\n"):
		return fmt.Errorf("config disk: %q contains NUL or a newline", p)
	case len(Magic+"root"+p) > 255:
		return fmt.Errorf("config disk: %q is too long", p)
	}
	return nil
}

// Write builds the disk and writes it to file (0600), replacing it
// atomically; nothing is left behind on failure.
func Write(file string, files []File) error {
	img, err := Build(files)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".config-*.tmp")
	if err != nil {
		return err
	}
	_, err = tmp.Write(img)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write config disk %s: %w", file, err)
	}
	return nil
}

// Read lists the files of a disk Build made (for tests and `vm show`
// diagnostics). It is not used on anything a guest could have written.
func Read(img []byte) ([]File, error) {
	if !bytes.HasPrefix(img, []byte(Magic)) {
		return nil, errors.New("config disk: no banger-config header")
	}
	tr := tar.NewReader(bytes.NewReader(img))
	var out []File
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		p, ok := strings.CutPrefix(h.Name, Magic+"root")
		if !ok {
			continue
		}
		f := File{Path: p, Mode: os.FileMode(h.Mode).Perm()}
		switch h.Typeflag {
		case tar.TypeSymlink:
			f.Target = h.Linkname
		case tar.TypeReg:
			if f.Data, err = io.ReadAll(io.LimitReader(tr, MaxSize)); err != nil {
				return nil, err
			}
		default:
			continue
		}
		out = append(out, f)
	}
}
