package rootdisk

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP (linux/fiemap.h), which golang.org/x/sys/unix does not wrap.
const (
	fsIocFiemap        = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapExtentLast   = 0x00000001
	fiemapExtentShared = 0x00002000
	fiemapBatch        = 128
)

type fiemapExtent struct {
	Logical  uint64
	Physical uint64
	Length   uint64
	_        [2]uint64
	Flags    uint32
	_        [3]uint32
}

type fiemapRequest struct {
	Start         uint64
	Length        uint64
	Flags         uint32
	MappedExtents uint32
	ExtentCount   uint32
	_             uint32
	Extents       [fiemapBatch]fiemapExtent
}

// exclusiveBytes returns the bytes of path's extents that no other file
// shares (a reflink's untouched extents are shared). Where the
// filesystem has no FIEMAP (tmpfs) it returns the allocated blocks.
func exclusiveBytes(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	req := new(fiemapRequest)
	for start := uint64(0); ; {
		*req = fiemapRequest{Start: start, Length: ^uint64(0) - start, ExtentCount: fiemapBatch}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(req)))
		if errno != 0 {
			if errors.Is(errno, unix.EOPNOTSUPP) || errors.Is(errno, unix.ENOTTY) || errors.Is(errno, unix.EINVAL) {
				return allocatedBytes(f)
			}
			return 0, &os.PathError{Op: "fiemap", Path: path, Err: errno}
		}
		if req.MappedExtents == 0 {
			return total, nil
		}
		for _, e := range req.Extents[:req.MappedExtents] {
			if e.Flags&fiemapExtentShared == 0 {
				total += int64(e.Length)
			}
			if e.Flags&fiemapExtentLast != 0 {
				return total, nil
			}
			start = e.Logical + e.Length
		}
	}
}

func allocatedBytes(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
