// Package loopdev attaches a loop device to a file the caller already has
// open, with the kernel's LOOP_CONFIGURE ioctl, and marks it to clear
// itself (LO_FLAGS_AUTOCLEAR): the device lives exactly as long as someone
// holds it open. Banger's root helper uses it to build a VM's dm snapshot
// from descriptors its unprivileged daemon passes — it never resolves a
// path a caller names — and so that a snapshot's loops go with the
// snapshot, or with the helper if it dies before handing them over.
//
// Written against x/sys/unix rather than through losetup because losetup
// takes a path, not a descriptor, and cannot set autoclear.
package loopdev

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// controlPath is the kernel's loop control device.
const controlPath = "/dev/loop-control"

// attachTries bounds the retries when another process takes the free loop
// device this one was given before it could configure it.
const attachTries = 16

// Device is an attached loop device, held open: closing it (with nothing
// else holding the device, such as a dm table) clears it.
type Device struct {
	*os.File
	// Path is the device node, e.g. /dev/loop7.
	Path string
}

// Attach attaches a loop device to backing, read-only when readOnly, and
// returns it open. backing must be a regular file; for a writable device
// it must be open for writing (O_RDWR), or the kernel would quietly make
// the device read-only. A device made read-only refuses writes whatever
// backing's mode.
func Attach(backing *os.File, readOnly bool) (*Device, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(backing.Fd()), &st); err != nil {
		return nil, fmt.Errorf("loopdev: stat the backing file: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("loopdev: %s is not a regular file", backing.Name())
	}
	fl, err := unix.FcntlInt(backing.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("loopdev: the backing file's mode: %w", err)
	}
	if !readOnly && fl&unix.O_ACCMODE != unix.O_RDWR {
		return nil, fmt.Errorf("loopdev: a writable loop device needs its backing file open read-write; %s is not", backing.Name())
	}
	ctl, err := os.OpenFile(controlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loopdev: %w (is the loop module loaded? modprobe loop)", err)
	}
	defer ctl.Close()
	flags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	mode := os.O_RDWR
	if readOnly {
		flags |= unix.LO_FLAGS_READ_ONLY
		mode = os.O_RDONLY
	}
	var last error
	for range attachTries {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loopdev: find a free loop device: %w", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		dev, err := os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("loopdev: open %s: %w", path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: unix.LoopInfo64{Flags: flags}}
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing.Name())
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return &Device{File: dev, Path: path}, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
				return nil, fmt.Errorf("loopdev: configure %s: %w (LOOP_CONFIGURE needs Linux 5.8 or later)", path, err)
			}
			return nil, fmt.Errorf("loopdev: configure %s: %w", path, err)
		}
		last = err // taken by someone else meanwhile: ask for another
	}
	return nil, fmt.Errorf("loopdev: every free loop device was taken before it could be configured (%d tries): %w", attachTries, last)
}

// BackingFile is the file the kernel says the loop device at path is
// attached to, and false when it is attached to none.
func BackingFile(path string) (string, bool) {
	var name string
	if _, err := fmt.Sscanf(path, "/dev/%s", &name); err != nil {
		return "", false
	}
	b, err := os.ReadFile("/sys/block/" + name + "/loop/backing_file")
	if err != nil {
		return "", false
	}
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	return string(b), true
}
