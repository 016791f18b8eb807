package dns

import (
	"bufio"
	"bytes"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultResolvConfPaths are where HostUpstreams looks by default:
// systemd-resolved's list of the real upstreams first (the other file then
// names only its stub, 127.0.0.53), then the classic file.
var DefaultResolvConfPaths = []string{"/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"}

const (
	resolvConfCheckEvery = time.Second
	resolvConfMaxBytes   = 64 << 10
)

// HostUpstreams is an UpstreamSource reading the host's resolvers from
// resolv.conf files. The first file, in order, that names a usable
// nameserver wins; loopback and unspecified addresses are not usable (they
// are a local stub such as systemd-resolved's 127.0.0.53, which guests
// cannot reach and which could forward back to us). At most once a second
// Upstreams checks whether a file changed (its size, mtime or inode) and
// re-reads them if so. It is safe for concurrent use.
type HostUpstreams struct {
	paths      []string
	checkEvery time.Duration

	mu      sync.Mutex
	checked time.Time   // when the files were last stat'ed
	stamps  []fileStamp // what they looked like then, one per path
	servers []string    // "ip:53", parsed from them
	loaded  bool        // servers reflects stamps
}

// NewHostUpstreams reads the resolv.conf files at paths, in order of
// preference; none means DefaultResolvConfPaths.
func NewHostUpstreams(paths ...string) *HostUpstreams {
	if len(paths) == 0 {
		paths = DefaultResolvConfPaths
	}
	return &HostUpstreams{paths: slices.Clone(paths), checkEvery: resolvConfCheckEvery}
}

// Upstreams returns the host's resolvers as "ip:53" ("[ip6]:53"), at most
// three as glibc uses.
func (h *HostUpstreams) Upstreams() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	if h.loaded && now.Sub(h.checked) < h.checkEvery {
		return slices.Clone(h.servers)
	}
	h.checked = now
	stamps := make([]fileStamp, len(h.paths))
	for i, p := range h.paths {
		stamps[i] = stampOf(p)
	}
	if !h.loaded || !slices.Equal(stamps, h.stamps) {
		h.stamps, h.servers, h.loaded = stamps, h.read(stamps), true
	}
	return slices.Clone(h.servers)
}

// read returns the nameservers of the first existing file that has any.
func (h *HostUpstreams) read(stamps []fileStamp) []string {
	for i, p := range h.paths {
		if !stamps[i].exists {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(f, resolvConfMaxBytes))
		f.Close()
		if err != nil {
			continue
		}
		if servers := parseResolvConf(data); len(servers) > 0 {
			return servers
		}
	}
	return nil
}

// parseResolvConf returns the usable nameservers in a resolv.conf, with
// port 53, without duplicates, at most maxUpstreams.
func parseResolvConf(data []byte) []string {
	var servers []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() && len(servers) < maxUpstreams {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line, _, _ = strings.Cut(line, ";")
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsUnspecified() {
			continue
		}
		if s := netip.AddrPortFrom(ip, 53).String(); !slices.Contains(servers, s) {
			servers = append(servers, s)
		}
	}
	return servers
}

// fileStamp is what a file looked like, enough to notice a rewrite in
// place (size, mtime) or by rename (inode).
type fileStamp struct {
	exists bool
	size   int64
	mtime  int64 // ns since the epoch
	inode  uint64
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	st := fileStamp{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = sys.Ino
	}
	return st
}
