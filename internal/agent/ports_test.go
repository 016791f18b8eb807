package agent

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fakeProcess is a process in a fake /proc: its comm and fd symlink targets.
type fakeProcess struct {
	pid   int
	comm  string
	links []string // fd symlink targets, fd 0, 1, ...
}

// fakeProcesses owns the sockets in testdata/proc/net/*.
var fakeProcesses = []fakeProcess{
	{1, "systemd", []string{"/dev/null", "socket:[2003]", "anon_inode:[eventfd]"}},
	{120, "systemd-resolve", []string{"/dev/null", "socket:[3002]"}},
	{150, "dhclient", []string{"socket:[3001]", "pipe:[77]"}},
	{250, "sshd", []string{"/dev/null", "/dev/null", "/dev/null", "socket:[1001]", "socket:[2001]"}},
	{300, "postgres", []string{"socket:[1002]"}},
	{400, "nginx", []string{"socket:[1004]", "socket:[1005]"}},
	{401, "nginx", []string{"socket:[1004]", "socket:[1005]"}},
	{500, "cupsd", []string{"socket:[2002]"}},
	{600, "caddy", []string{"socket:[2003]"}},
	{700, "avahi-daemon", []string{"socket:[4001]"}},
	{710, "chronyd", []string{"socket:[4002]"}},
	{999, "busy", []string{"socket:[notanumber]", "socket:[1003]", "socket:[55555]"}},
}

// fakeProc copies testdata/proc into a temporary directory and adds the
// fakeProcesses' /proc/PID/{comm,fd/N} (symlinks cannot be committed as
// fixtures portably, so they are made here), plus a process whose fd
// directory cannot be read.
func fakeProc(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "proc")
	if err := os.CopyFS(root, os.DirFS("testdata/proc")); err != nil {
		t.Fatal(err)
	}
	for _, p := range fakeProcesses {
		dir := filepath.Join(root, strconv.Itoa(p.pid))
		mustMkdir(t, filepath.Join(dir, "fd"))
		mustWrite(t, filepath.Join(dir, "comm"), p.comm+"\n")
		for i, l := range p.links {
			if err := os.Symlink(l, filepath.Join(dir, "fd", strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// pid 77: fd is not a directory (as if unreadable); must be skipped.
	mustMkdir(t, filepath.Join(root, "77"))
	mustWrite(t, filepath.Join(root, "77", "fd"), "")
	return root
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	mustMkdir(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseProcNet(t *testing.T) {
	// The fixtures were recorded on little-endian x86_64.
	le := binary.LittleEndian
	cases := []struct {
		file string
		want []socket
	}{
		{"tcp", []socket{
			{Port{Proto: "tcp", Addr: "0.0.0.0", Port: 22}, 1001},
			{Port{Proto: "tcp", Addr: "127.0.0.1", Port: 5432}, 1002},
			// 10.0.2.15:22 ESTABLISHED and the TIME_WAIT row are not listeners.
			{Port{Proto: "tcp", Addr: "0.0.0.0", Port: 80}, 1004},
			{Port{Proto: "tcp", Addr: "0.0.0.0", Port: 80}, 1005},
			{Port{Proto: "tcp", Addr: "192.168.1.10", Port: 9000}, 1006},
		}},
		{"tcp6", []socket{
			{Port{Proto: "tcp6", Addr: "::", Port: 22}, 2001},
			{Port{Proto: "tcp6", Addr: "::1", Port: 631}, 2002},
			{Port{Proto: "tcp6", Addr: "2001:db8::1", Port: 443}, 2003},
		}},
		{"udp", []socket{
			{Port{Proto: "udp", Addr: "0.0.0.0", Port: 68}, 3001},
			{Port{Proto: "udp", Addr: "127.0.0.53", Port: 53}, 3002},
			// connected (state 01) and unbound (port 0) sockets are not.
		}},
		{"udp6", []socket{
			{Port{Proto: "udp6", Addr: "::", Port: 5353}, 4001},
			{Port{Proto: "udp6", Addr: "::1", Port: 323}, 4002},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata/proc/net", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := parseProcNet(f, tc.file, le)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseHexAddrPort(t *testing.T) {
	cases := []struct {
		in, addr string
		port     uint16
		order    binary.ByteOrder
	}{
		{"0100007F:0CEA", "127.0.0.1", 3306, binary.LittleEndian},
		{"00000000:0016", "0.0.0.0", 22, binary.LittleEndian},
		{"0A01A8C0:FFFF", "192.168.1.10", 65535, binary.LittleEndian},
		{"00000000000000000000000001000000:0050", "::1", 80, binary.LittleEndian},
		{"00000000000000000000000000000000:0050", "::", 80, binary.LittleEndian},
		{"B80D0120000000000000000001000000:01BB", "2001:db8::1", 443, binary.LittleEndian},
		{"0000000000000000FFFF00000100007F:0016", "::ffff:127.0.0.1", 22, binary.LittleEndian},
		// A big-endian kernel prints the network-order word as is.
		{"7F000001:0CEA", "127.0.0.1", 3306, binary.BigEndian},
		{"00000000000000000000000000000001:0050", "::1", 80, binary.BigEndian},
	}
	for _, tc := range cases {
		a, p, err := parseHexAddrPort(tc.in, tc.order)
		if err != nil || a.String() != tc.addr || p != tc.port {
			t.Errorf("parseHexAddrPort(%q) = %v, %d, %v; want %s, %d", tc.in, a, p, err, tc.addr, tc.port)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:16", "0100007:0016", "0100007G:0016", "0100007F:001G", "01000000000000000000000000007F:0016"} {
		if _, _, err := parseHexAddrPort(bad, binary.LittleEndian); err == nil {
			t.Errorf("parseHexAddrPort(%q) succeeded", bad)
		}
	}
}

func TestParseProcNetMalformed(t *testing.T) {
	in := "header\n" +
		"   0: 0100007F:0016 00000000:0000 0A\n" + // too few fields
		"   1: zzzz:0016 00000000:0000 0A 0:0 0:0 0 0 0 5\n" + // bad address
		"   2: 0100007F:0016 00000000:0000 0A 0:0 0:0 0 0 0 x\n" + // bad inode
		"   3: 0100007F:0017 00000000:0000 0A 0:0 0:0 0 0 0 6\n"
	got, err := parseProcNet(strings.NewReader(in), "tcp", binary.LittleEndian)
	if err != nil {
		t.Fatal(err)
	}
	want := []socket{{Port{Proto: "tcp", Addr: "127.0.0.1", Port: 23}, 6}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// wantPorts is what Ports answers on fakeProc.
var wantPorts = []Port{
	{Proto: "tcp", Addr: "0.0.0.0", Port: 22, PID: 250, Process: "sshd"},
	{Proto: "tcp6", Addr: "::", Port: 22, PID: 250, Process: "sshd"},
	{Proto: "udp", Addr: "127.0.0.53", Port: 53, PID: 120, Process: "systemd-resolve"},
	{Proto: "udp", Addr: "0.0.0.0", Port: 68, PID: 150, Process: "dhclient"},
	{Proto: "tcp", Addr: "0.0.0.0", Port: 80, PID: 400, Process: "nginx"}, // two reuseport rows
	{Proto: "udp6", Addr: "::1", Port: 323, PID: 710, Process: "chronyd"},
	{Proto: "tcp6", Addr: "2001:db8::1", Port: 443, PID: 600, Process: "caddy"}, // not pid 1
	{Proto: "tcp6", Addr: "::1", Port: 631, PID: 500, Process: "cupsd"},
	{Proto: "udp6", Addr: "::", Port: 5353, PID: 700, Process: "avahi-daemon"},
	{Proto: "tcp", Addr: "127.0.0.1", Port: 5432, PID: 300, Process: "postgres"},
	{Proto: "tcp", Addr: "192.168.1.10", Port: 9000}, // no process holds it
}

func TestPorts(t *testing.T) {
	s := &Server{ProcRoot: fakeProc(t), ByteOrder: binary.LittleEndian}
	got, err := s.Ports()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, wantPorts) {
		t.Errorf("Ports:\n got  %+v\n want %+v", got, wantPorts)
	}
}

func TestPortsFDCap(t *testing.T) {
	// With 2 fds allowed only pid 1's first two links are read: nothing but
	// the systemd-held socket gets an owner.
	s := &Server{ProcRoot: fakeProc(t), ByteOrder: binary.LittleEndian, MaxFDs: 2}
	got, err := s.Ports()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range got {
		switch {
		case p.Port == 443 && p.PID != 1:
			t.Errorf("443: pid %d, want 1 (systemd) with the fd cap", p.PID)
		case p.Port != 443 && p.PID != 0:
			t.Errorf("%d/%s: pid %d, want none with the fd cap", p.Port, p.Proto, p.PID)
		}
	}
}

func TestPortsNoIPv6(t *testing.T) {
	root := fakeProc(t)
	os.Remove(filepath.Join(root, "net/tcp6"))
	os.Remove(filepath.Join(root, "net/udp6"))
	s := &Server{ProcRoot: root, ByteOrder: binary.LittleEndian}
	got, err := s.Ports()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range got {
		if strings.HasSuffix(p.Proto, "6") {
			t.Errorf("unexpected %+v", p)
		}
	}
	if len(got) != 6 { // tcp 22, 80, 5432, 9000; udp 53, 68
		t.Errorf("got %d ports, want 6: %+v", len(got), got)
	}
}
