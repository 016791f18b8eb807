package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Clone methods reported by CloneRoot.
const (
	MethodReflink    = "reflink"
	MethodSparseCopy = "sparse-copy"
)

// copyChunk is the unit of the sparse copy: big enough to be fast, small
// enough that all-zero chunks inside data extents are worth skipping.
const copyChunk = 1 << 20

// CloneRoot creates dst as a private copy of the image src for one VM.
// It first tries a reflink (FICLONE), which shares blocks copy-on-write
// and is instant on btrfs and xfs; where that is not possible (other file
// systems, src and dst on different file systems) it copies only the data
// ranges of src (SEEK_DATA/SEEK_HOLE), leaving holes and all-zero chunks
// unallocated. It returns MethodReflink or MethodSparseCopy.
//
// dst must not exist; it is created 0600 (it will hold the guest's
// secrets). On any failure, including cancellation of ctx, dst is removed.
func CloneRoot(ctx context.Context, src, dst string) (method string, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("clone root disk: open base image: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone root disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("clone root disk: base image %s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("clone root disk: create %s: %w", dst, err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("clone root disk: close %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
			method = ""
		}
	}()

	if err := ctx.Err(); err != nil {
		return "", err
	}
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return MethodReflink, nil
	}
	// The reflink failed (EOPNOTSUPP, EXDEV, EINVAL, ...) before writing
	// anything; start the copy from an empty file anyway.
	if err := out.Truncate(0); err != nil {
		return "", fmt.Errorf("clone root disk: reset %s: %w", dst, err)
	}
	if err := sparseCopy(ctx, in, out, st.Size()); err != nil {
		return "", fmt.Errorf("clone root disk: copy %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		return "", fmt.Errorf("clone root disk: sync %s: %w", dst, err)
	}
	return MethodSparseCopy, nil
}

// sparseCopy copies the data ranges of in to the same offsets of out and
// sets out's size to size. out must be empty.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	buf := make([]byte, copyChunk)
	fd := int(in.Fd())
	off := int64(0)
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			// No SEEK_DATA support: treat the rest as data.
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				data = off
			} else {
				return fmt.Errorf("find data at %d: %w", off, err)
			}
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole <= data {
			hole = size
		}
		if hole > size {
			hole = size
		}
		if err := copyRange(ctx, in, out, buf, data, hole); err != nil {
			return err
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("set size %d: %w", size, err)
	}
	return nil
}

// copyRange copies [from, to) chunk by chunk, not writing chunks that are
// all zeros (the destination reads them back as zeros from the hole).
func copyRange(ctx context.Context, in, out *os.File, buf []byte, from, to int64) error {
	for pos := from; pos < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int64(len(buf))
		if to-pos < n {
			n = to - pos
		}
		got, err := in.ReadAt(buf[:n], pos)
		if err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("base image shrank while copying (at %d)", pos+int64(got))
			}
			return fmt.Errorf("read at %d: %w", pos, err)
		}
		chunk := buf[:got]
		if !allZero(chunk) {
			if _, err := out.WriteAt(chunk, pos); err != nil {
				return fmt.Errorf("write at %d: %w", pos, err)
			}
		}
		pos += int64(got)
	}
	return nil
}

var zeroChunk = make([]byte, copyChunk)

func allZero(b []byte) bool { return bytes.Equal(b, zeroChunk[:len(b)]) }
