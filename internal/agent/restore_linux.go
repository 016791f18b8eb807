package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/system"
)

// SystemHost is the RestoreHost of a real Linux guest.
type SystemHost struct{}

// AddEntropy mixes b into the kernel's input pool, credited in full
// (RNDADDENTROPY on /dev/random), and reseeds the CRNG from it at once
// (RNDRESEEDCRNG): /dev/urandom and getrandom differ between VMs restored
// from one snapshot from here on.
func (SystemHost) AddEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// SetClock steps CLOCK_REALTIME.
func (SystemHost) SetClock(unixNano int64) error {
	ts := unix.NsecToTimespec(unixNano)
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// WriteFile replaces path atomically (a temporary file renamed over it),
// making its parents.
func (SystemHost) WriteFile(path string, data []byte, mode fs.FileMode) error {
	if mode == 0 {
		mode = 0o644
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".banger-restore"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// SetHostname sets the kernel's host name.
func (SystemHost) SetHostname(name string) error { return unix.Sethostname([]byte(name)) }

// SetNetwork moves the NIC that has oldMAC to mac and addr: down, new
// MAC, old IPv4 addresses removed, the new one added, up, a default route
// via gw, and gratuitous ARP so the bridge and its peers learn the new
// pairing at once.
func (SystemHost) SetNetwork(oldMAC, mac net.HardwareAddr, addr netip.Prefix, gw netip.Addr) error {
	link, err := linkByMAC(oldMAC, mac)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("set %s down: %w", link.Attrs().Name, err)
	}
	if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
		return fmt.Errorf("set %s's MAC: %w", link.Attrs().Name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove %s: %w", a.IPNet, err)
		}
	}
	ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fmt.Errorf("add %s: %w", addr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice(), Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return gratuitousARP(link.Attrs().Index, mac, addr.Addr())
}

// linkByMAC finds the NIC by its current MAC (oldMAC, or mac when a
// restore is repeated), else the only non-loopback one.
func linkByMAC(oldMAC, mac net.HardwareAddr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var ether []netlink.Link
	for _, l := range links {
		hw := l.Attrs().HardwareAddr
		if len(hw) != 6 || l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		if hw.String() == oldMAC.String() || hw.String() == mac.String() {
			return l, nil
		}
		ether = append(ether, l)
	}
	if len(ether) == 1 {
		return ether[0], nil
	}
	return nil, fmt.Errorf("no interface with MAC %s (and %d others)", oldMAC, len(ether))
}

// gratuitousARP announces ip at mac on the link, twice.
func gratuitousARP(ifindex int, mac net.HardwareAddr, ip netip.Addr) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return fmt.Errorf("gratuitous ARP: %w", err)
	}
	defer unix.Close(fd)
	frame := make([]byte, 42)
	copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:12], mac)
	binary.BigEndian.PutUint16(frame[12:], unix.ETH_P_ARP)
	binary.BigEndian.PutUint16(frame[14:], 1)      // Ethernet
	binary.BigEndian.PutUint16(frame[16:], 0x0800) // IPv4
	frame[18], frame[19] = 6, 4
	binary.BigEndian.PutUint16(frame[20:], 1) // request
	copy(frame[22:28], mac)
	ip4 := ip.As4()
	copy(frame[28:32], ip4[:])
	copy(frame[38:42], ip4[:])
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex, Halen: 6}
	copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	for i := 0; i < 2; i++ {
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return fmt.Errorf("gratuitous ARP: %w", err)
		}
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// GrowWork grows /root's filesystem to its disk, online.
func (SystemHost) GrowWork() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := (&system.Exec{}).Run(ctx, "resize2fs", "/dev/vdb"); err != nil {
		return fmt.Errorf("grow /root: %w", err)
	}
	return nil
}

// ReloadSSHD sends SIGHUP to sshd's listener (an sshd whose parent is
// init), which re-executes itself and reads the new host keys.
func (SystemHost) ReloadSSHD() error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if s[open+1:close] != "sshd" || len(f) < 2 || f[1] != "1" {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGHUP); err == nil {
			n++
		}
	}
	if n == 0 {
		return errors.New("no sshd listener found")
	}
	return nil
}
