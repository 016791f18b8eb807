package agent

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Socket states in /proc/net/{tcp,udp}*, the kernel's TCP state numbers.
const (
	stateListen = "0A" // TCP_LISTEN
	stateClose  = "07" // TCP_CLOSE: an unconnected UDP socket
)

// socket is one row of /proc/net/{tcp,tcp6,udp,udp6} that is listening.
type socket struct {
	Port
	inode uint64
}

// Ports lists the guest's listening sockets: TCP in LISTEN, UDP unconnected
// and bound to a port, each with its owning process when /proc/*/fd shows
// it. The list is deduplicated by (proto, addr, port) and sorted by port,
// then proto, then addr, and capped at maxPorts entries.
func (s *Server) Ports() ([]Port, error) {
	root := s.procRoot()
	order := s.ByteOrder
	if order == nil {
		order = binary.NativeEndian
	}
	var socks []socket
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(filepath.Join(root, "net", proto))
		if isNotExist(err) {
			continue // no IPv6 in this kernel, say
		}
		if err != nil {
			return nil, err
		}
		got, err := parseProcNet(f, proto, order)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		socks = append(socks, got...)
	}

	want := map[uint64]owner{}
	for _, sk := range socks {
		if sk.inode != 0 {
			want[sk.inode] = owner{}
		}
	}
	maxFDs := s.MaxFDs
	if maxFDs <= 0 {
		maxFDs = DefaultMaxFDs
	}
	socketOwners(root, want, maxFDs)

	type key struct {
		proto, addr string
		port        uint16
	}
	seen := map[key]int{}
	out := make([]Port, 0, len(socks))
	for _, sk := range socks {
		p := sk.Port
		if o := want[sk.inode]; o.pid != 0 {
			p.PID, p.Process = o.pid, o.comm
		}
		k := key{p.Proto, p.Addr, p.Port}
		if i, ok := seen[k]; ok {
			// SO_REUSEPORT groups list one row per socket: keep the
			// lowest owning pid.
			if p.PID != 0 && (out[i].PID == 0 || p.PID < out[i].PID) {
				out[i].PID, out[i].Process = p.PID, p.Process
			}
			continue
		}
		seen[k] = len(out)
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Addr, b.Addr))
	})
	if len(out) > maxPorts {
		out = out[:maxPorts]
	}
	return out, nil
}

// parseProcNet returns the listening sockets in one /proc/net/{tcp,tcp6,
// udp,udp6} file. proto names the file; order is the byte order the kernel
// printed addresses in (its native order: each 32-bit word of the address,
// as stored in network order, is printed with %08X as a host-order integer).
// Malformed rows are skipped.
func parseProcNet(r io.Reader, proto string, order binary.ByteOrder) ([]socket, error) {
	udp := strings.HasPrefix(proto, "udp")
	var out []socket
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // the column header
			first = false
			continue
		}
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		st := f[3]
		if (!udp && st != stateListen) || (udp && st != stateClose) {
			continue
		}
		addr, port, err := parseHexAddrPort(f[1], order)
		if err != nil || (udp && port == 0) {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, socket{Port: Port{Proto: proto, Addr: addr.String(), Port: port}, inode: inode})
	}
	return out, sc.Err()
}

// parseHexAddrPort decodes "0100007F:0CEA" (IPv4, 8 hex digits) or a
// 32-hex-digit IPv6 address, then the port in 4 hex digits (the port is
// printed as a plain number, already in host order).
func parseHexAddrPort(s string, order binary.ByteOrder) (netip.Addr, uint16, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || len(p) != 4 {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad port in %q", s)
	}
	if len(a) != 8 && len(a) != 32 {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	var raw [16]byte
	for i := 0; i < len(a)/8; i++ {
		w, err := strconv.ParseUint(a[8*i:8*i+8], 16, 32)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
		}
		order.PutUint32(raw[4*i:], uint32(w))
	}
	if len(a) == 8 {
		return netip.AddrFrom4([4]byte(raw[:4])), uint16(port), nil
	}
	return netip.AddrFrom16(raw), uint16(port), nil
}

type owner struct {
	pid  int
	comm string
}

// socketOwners fills want (socket inode -> owner) from the /proc/PID/fd
// symlinks ("socket:[INODE]") under root. Pids are visited in increasing
// order and the first owner found is kept, except that pid 1 gives way to a
// later one: a socket-activated service shares its listener with systemd
// and is the one worth naming. Unreadable processes and fds are skipped; at
// most maxFDs fd entries are read in all.
func socketOwners(root string, want map[uint64]owner, maxFDs int) {
	if len(want) == 0 {
		return
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	unresolved := len(want) // inodes without an owner other than pid 1
	scanned := 0
	for _, pid := range pids {
		if unresolved == 0 || scanned >= maxFDs {
			return
		}
		dir := filepath.Join(root, strconv.Itoa(pid))
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue // gone, or not ours to read
		}
		comm := ""
		for _, fd := range fds {
			if scanned >= maxFDs {
				return
			}
			scanned++
			link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil {
				continue
			}
			rest, ok := strings.CutPrefix(link, "socket:[")
			if !ok || !strings.HasSuffix(rest, "]") {
				continue
			}
			inode, err := strconv.ParseUint(rest[:len(rest)-1], 10, 64)
			if err != nil {
				continue
			}
			cur, ok := want[inode]
			if !ok || (cur.pid != 0 && cur.pid != 1) {
				continue
			}
			if comm == "" {
				comm, _ = readLine(filepath.Join(dir, "comm"))
			}
			want[inode] = owner{pid: pid, comm: comm}
			if pid != 1 {
				unresolved--
			}
		}
	}
}
