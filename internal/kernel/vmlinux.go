package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// xzMagic starts every XZ stream (the header of an XZ container).
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// maxXZCandidates bounds how many magic matches are tried; the payload is
// normally the first one, and a bzImage holds only a few false positives.
const maxXZCandidates = 16

// ExtractVmlinux finds the XZ-compressed kernel inside the bzImage at
// bzImage, decompresses it with the host's xz and writes the ELF to dst.
//
// A bzImage is a small real-mode/decompressor stub followed by the
// compressed kernel; the kernel's own scripts/extract-vmlinux does the same
// search. The payload uses xz's x86 BCJ filter, which only the xz tool (not
// the pure-Go decoders) undoes, so decompression goes through the Runner.
func ExtractVmlinux(ctx context.Context, r Runner, bzImage, dst string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".vmlinux-")
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	defer os.RemoveAll(tmp)

	var lastErr error
	tried := 0
	for off := 0; tried < maxXZCandidates; tried++ {
		i := bytes.Index(data[off:], xzMagic)
		if i < 0 {
			break
		}
		start := off + i
		off = start + 1
		elfData, err := decompressXZ(ctx, r, filepath.Join(tmp, "payload.xz"), data[start:])
		if err != nil {
			lastErr = fmt.Errorf("xz stream at offset %d: %w", start, err)
			continue
		}
		if err := checkKernelELF(elfData); err != nil {
			lastErr = fmt.Errorf("xz stream at offset %d: %w", start, err)
			continue
		}
		if err := os.WriteFile(dst, elfData, 0o644); err != nil {
			return fmt.Errorf("extract vmlinux: %w", err)
		}
		return nil
	}
	if tried == 0 {
		return fmt.Errorf("extract vmlinux: %s holds no XZ stream; banger only unpacks XZ-compressed bzImages (CONFIG_KERNEL_XZ)", bzImage)
	}
	return fmt.Errorf("extract vmlinux: no XZ stream in %s decompresses to an x86-64 ELF kernel (last: %w)", bzImage, lastErr)
}

// decompressXZ writes stream to path and returns what `xz -d` makes of
// its first stream; bytes after the stream (the rest of the bzImage) are
// ignored thanks to --single-stream.
func decompressXZ(ctx context.Context, r Runner, path string, stream []byte) ([]byte, error) {
	if err := os.WriteFile(path, stream, 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(path)
	out, err := r.Run(ctx, "xz", "--decompress", "--stdout", "--single-stream", "--quiet", path)
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	return out, nil
}

// checkKernelELF accepts a 64-bit x86 ELF executable.
func checkKernelELF(data []byte) error {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return errors.New("decompressed data is not an ELF file")
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("decompressed ELF is unreadable: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return fmt.Errorf("decompressed ELF is %v %v %v, want ELFCLASS64 EM_X86_64 ET_EXEC", f.Class, f.Machine, f.Type)
	}
	return nil
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry
// point that Firecracker and QEMU use to boot an ELF kernel directly.
const xenElfnotePhys32Entry = 18

// HasPVHNote reports whether the ELF kernel at path carries a PVH entry
// point note ("Xen", type 18) in a PT_NOTE segment.
func HasPVHNote(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("read ELF notes of %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		buf := make([]byte, p.Filesz)
		if _, err := p.ReadAt(buf, 0); err != nil {
			return false, fmt.Errorf("read ELF notes of %s: %w", path, err)
		}
		if notesHave(buf, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return true, nil
		}
	}
	return false, nil
}

// notesHave walks an ELF note segment (namesz, descsz, type, name, desc,
// each padded to 4 bytes) looking for a note with the given name and type.
func notesHave(buf []byte, bo binary.ByteOrder, name string, typ uint32) bool {
	align := func(n uint32) uint32 { return (n + 3) &^ 3 }
	for len(buf) >= 12 {
		namesz, descsz, t := bo.Uint32(buf[0:]), bo.Uint32(buf[4:]), bo.Uint32(buf[8:])
		rest := buf[12:]
		if uint64(align(namesz))+uint64(align(descsz)) > uint64(len(rest)) {
			return false
		}
		n := string(bytes.TrimRight(rest[:namesz], "\x00"))
		if n == name && t == typ {
			return true
		}
		buf = rest[align(namesz)+align(descsz):]
	}
	return false
}
