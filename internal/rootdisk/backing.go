package rootdisk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// maxChain bounds how deep BackingChain follows backing files.
const maxChain = 32

// BackingChain reads path's qcow2 headers and returns the files it is
// built on, nearest first, as the files themselves say (not as anyone
// recorded them): a layer is in use while any VM's file names it, even if
// a crash kept the record from catching up. A raw file has no chain.
// Relative backing names resolve against the directory of the file that
// names them, as QEMU does.
func BackingChain(path string) ([]string, error) {
	var chain []string
	cur := path
	for range maxChain {
		next, err := backingOf(cur)
		if err != nil {
			return chain, err
		}
		if next == "" {
			return chain, nil
		}
		if !filepath.IsAbs(next) {
			next = filepath.Join(filepath.Dir(cur), next)
		}
		chain = append(chain, next)
		cur = next
	}
	return chain, fmt.Errorf("backing chain of %s is deeper than %d", path, maxChain)
}

// backingOf returns the backing file a qcow2 header names ("" for a raw
// file or a qcow2 file without one).
func backingOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var hdr [20]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return "", nil // too short to be qcow2: raw
		}
		return "", err
	}
	if !bytes.Equal(hdr[:4], qcow2Magic) {
		return "", nil
	}
	off := binary.BigEndian.Uint64(hdr[8:16])
	size := binary.BigEndian.Uint32(hdr[16:20])
	if off == 0 || size == 0 {
		return "", nil
	}
	if size > 1023 { // QEMU's own limit on a backing file name
		return "", fmt.Errorf("%s: backing file name of %d bytes", path, size)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("%s: read backing file name: %w", path, err)
	}
	return string(name), nil
}
