//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// inNS runs fn on an OS thread switched into the named network namespace.
// Sockets fn opens stay in that namespace after it returns.
func inNS(t *testing.T, name string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked on purpose: it dies with the goroutine
		// instead of running other code in the wrong namespace.
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("namespace %s: %w", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func ipn(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// internet is a namespace playing the internet: joined to the daemon's
// namespace by a veth pair with TEST-NET addresses, the daemon's default
// route pointing into it, an HTTP server and a DNS server answering
// example.test. Nothing in it reaches anywhere else.
type internet struct {
	ns string
	mu sync.Mutex
	// sources are the remote addresses the HTTP server saw.
	sources []string
	// files, when set, is served under /files/ (a package repository).
	files string
}

// serveFiles serves dir under http://inetAddr:8080/files/.
func (in *internet) serveFiles(dir string) {
	in.mu.Lock()
	in.files = dir
	in.mu.Unlock()
}

const (
	inetHostSide = "198.51.100.1" // the daemon's namespace end
	inetAddr     = "198.51.100.2" // the internet's end
)

func newInternet(t *testing.T, e *env) *internet {
	t.Helper()
	in := &internet{ns: e.ns + "-inet"}
	_ = exec.Command("ip", "netns", "delete", in.ns).Run()
	ipn(t, "netns", "add", in.ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", in.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", in.ns, err, out)
		}
	})
	ipn(t, "-n", in.ns, "link", "set", "lo", "up")
	ipn(t, "-n", e.ns, "link", "add", "bge2e-up", "type", "veth", "peer", "name", "bge2e-inet", "netns", in.ns)
	ipn(t, "-n", e.ns, "addr", "add", inetHostSide+"/24", "dev", "bge2e-up")
	ipn(t, "-n", e.ns, "link", "set", "bge2e-up", "up")
	ipn(t, "-n", in.ns, "addr", "add", inetAddr+"/24", "dev", "bge2e-inet")
	ipn(t, "-n", in.ns, "link", "set", "bge2e-inet", "up")
	ipn(t, "-n", e.ns, "route", "add", "default", "via", inetAddr)

	var ln net.Listener
	var udp net.PacketConn
	inNS(t, in.ns, func() error {
		var err error
		if ln, err = net.Listen("tcp", inetAddr+":8080"); err != nil {
			return err
		}
		udp, err = net.ListenPacket("udp", inetAddr+":53")
		return err
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.mu.Lock()
		in.sources = append(in.sources, r.RemoteAddr)
		files := in.files
		in.mu.Unlock()
		if files != "" && strings.HasPrefix(r.URL.Path, "/files/") {
			http.StripPrefix("/files/", http.FileServer(http.Dir(files))).ServeHTTP(w, r)
			return
		}
		fmt.Fprint(w, "hello from the internet\n")
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	ds := &dns.Server{PacketConn: udp, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, "example.test.") && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.ParseIP(inetAddr)})
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = ds.ActivateAndServe() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = ds.Shutdown()
	})
	return in
}

func (in *internet) seen() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.sources...)
}

// lookup asks banger's host-side DNS listener (in the daemon's namespace).
func lookup(t *testing.T, e *env, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return lookupAt(t, e, "127.0.0.1:42069", name, qtype)
}

// lookupAt asks the DNS server at server, from the daemon's namespace.
func lookupAt(t *testing.T, e *env, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	var conn net.Conn
	inNS(t, e.ns, func() error {
		var err error
		conn, err = net.Dial("udp", server)
		return err
	})
	defer conn.Close()
	c := &dns.Client{Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r
}

func aRecord(t *testing.T, r *dns.Msg) string {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("want one A record, got rcode %s and %d answers: %v", dns.RcodeToString[r.Rcode], len(r.Answer), r)
	}
	return r.Answer[0].(*dns.A).A.String()
}

func (e *env) nftRuleset() string {
	out, err := exec.Command("ip", "netns", "exec", e.ns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		e.t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

// TestNetworking: names, a way out only with NAT, and no spoofing.
func TestNetworking(t *testing.T) {
	kernelDir, rootfs := artifacts(t)
	e := newEnv(t, `default_dns = ["`+inetAddr+`"]`)
	in := newInternet(t, e)
	e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
	e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")

	e.must("vm", "create", "--name", "a", "--nat")
	e.must("vm", "create", "--name", "b")
	a, b := e.show("a"), e.show("b")

	// Names, from the host and from a guest.
	if got := aRecord(t, lookup(t, e, "b.vm", dns.TypeA)); got != b.IP {
		t.Errorf("host: b.vm = %s, want %s", got, b.IP)
	}
	if got := aRecord(t, lookup(t, e, "A.Vm", dns.TypeA)); got != a.IP {
		t.Errorf("host: A.Vm = %s, want %s", got, a.IP)
	}
	if got := strings.Fields(e.must("vm", "exec", "a", "--", "getent", "ahostsv4", "b.vm")); len(got) == 0 || got[0] != b.IP {
		t.Errorf("guest a: getent b.vm = %q, want %s", got, b.IP)
	}
	// A connects to a port on B by name.
	banner := e.must("vm", "exec", "a", "--", "timeout", "10", "bash", "-c", "exec 3<>/dev/tcp/b.vm/22; head -c 8 <&3")
	if !strings.HasPrefix(banner, "SSH-2.0") {
		t.Errorf("a → b.vm:22 read %q, want an SSH banner", banner)
	}

	// With NAT, A reaches the internet, by name (forwarded) and by address,
	// masqueraded behind the daemon's uplink address.
	page := e.must("vm", "exec", "a", "--", "curl", "-sS", "--max-time", "10", "http://example.test:8080/")
	if page != "hello from the internet\n" {
		t.Errorf("a fetched %q", page)
	}
	if seen := in.seen(); len(seen) == 0 || !strings.HasPrefix(seen[len(seen)-1], inetHostSide+":") {
		t.Errorf("the internet saw %v, want requests from %s (masqueraded)", seen, inetHostSide)
	}
	// B, without NAT, never does.
	if _, _, code := e.banger("vm", "exec", "b", "--", "curl", "-sS", "--max-time", "3", "http://"+inetAddr+":8080/"); code == 0 {
		t.Errorf("b without NAT reached the internet")
	}
	// NAT off, live: A no longer gets out.
	if out := e.must("vm", "set", "a", "--no-nat"); !strings.Contains(out, "nat off") {
		t.Errorf("vm set --no-nat said %q", out)
	}
	if _, _, code := e.banger("vm", "exec", "a", "--", "curl", "-sS", "--max-time", "3", "http://"+inetAddr+":8080/"); code == 0 {
		t.Errorf("a reached the internet after vm set --no-nat")
	}
	e.must("vm", "set", "a", "--nat")
	if page := e.must("vm", "exec", "a", "--", "curl", "-sS", "--max-time", "10", "http://"+inetAddr+":8080/"); page != "hello from the internet\n" {
		t.Errorf("a after --nat again fetched %q", page)
	}
	if show := e.must("vm", "show", "a"); !strings.Contains(show, "ip_forward") {
		t.Errorf("vm show a does not say what banger did to ip_forward:\n%s", show)
	}

	// The guest agent: health, and listeners with their processes.
	var h struct {
		Hostname string `json:"hostname"`
		Disks    []struct {
			Path string `json:"path"`
		} `json:"disks"`
	}
	if err := json.Unmarshal([]byte(e.must("vm", "health", "b", "--json")), &h); err != nil || h.Hostname != "b" || len(h.Disks) != 2 {
		t.Errorf("vm health b: %+v %v", h, err)
	}
	e.must("vm", "exec", "b", "--", "systemd-run", "--unit", "web", "--", "systemd-socket-activate", "-l", "8000", "--inetd", "-a",
		"sh", "-c", `printf 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n'`)
	var ports []struct {
		Port    int    `json:"port"`
		Proto   string `json:"proto"`
		Process string `json:"process"`
		URL     string `json:"url"`
	}
	found := map[int]string{}
	deadline := time.Now().Add(5 * time.Second)
	for found[8000] == "" && time.Now().Before(deadline) {
		if err := json.Unmarshal([]byte(e.must("vm", "ports", "b", "--json")), &ports); err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if strings.HasPrefix(p.Proto, "tcp") {
				found[p.Port] = p.Process + " " + p.URL
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.HasPrefix(found[22], "sshd") {
		t.Errorf("vm ports b: port 22 is %q, want sshd (all: %v)", found[22], found)
	}
	if !strings.Contains(found[8000], "http://b.vm:8000/") {
		t.Errorf("vm ports b: port 8000 is %q, want its http:// link (all: %v)", found[8000], found)
	}

	// vm forward: the guest's port on the host's loopback, run by bangerd.
	var fwd struct {
		HostAddr string `json:"host_addr"`
	}
	if err := json.Unmarshal([]byte(e.must("vm", "forward", "b", "8000:0", "--json")), &fwd); err != nil || fwd.HostAddr == "" {
		t.Fatalf("vm forward: %+v %v", fwd, err)
	}
	httpGet := func() (string, error) {
		var conn net.Conn
		inNS(t, e.ns, func() error {
			var err error
			conn, err = net.DialTimeout("tcp", fwd.HostAddr, 3*time.Second)
			if err != nil {
				conn = nil
			}
			return nil
		})
		if conn == nil {
			return "", fmt.Errorf("connect %s failed", fwd.HostAddr)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.0\r\n\r\n")
		body, err := io.ReadAll(conn)
		return string(body), err
	}
	if body, err := httpGet(); err != nil || !strings.HasSuffix(body, "hi\n") {
		t.Errorf("GET through the forward: %q %v", body, err)
	}
	if list := e.must("vm", "forward", "b", "--list"); !strings.Contains(list, fwd.HostAddr) {
		t.Errorf("forward --list lacks %s:\n%s", fwd.HostAddr, list)
	}
	e.must("vm", "forward", "b", "--stop", fwd.HostAddr[strings.LastIndex(fwd.HostAddr, ":")+1:])
	if body, err := httpGet(); err == nil {
		t.Errorf("the forward still answered after --stop: %q", body)
	}

	// B cannot send as A: a datagram from B's own address arrives, one from
	// A's address is dropped at B's tap.
	var got []string
	var gotMu sync.Mutex
	var pc net.PacketConn
	inNS(t, e.ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", inetHostSide+":9999")
		return err
	})
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			gotMu.Lock()
			got = append(got, strings.TrimSpace(string(buf[:n]))+" from "+from.(*net.UDPAddr).IP.String())
			gotMu.Unlock()
		}
	}()
	dev := strings.TrimSpace(e.must("vm", "exec", "b", "--", "sh", "-c", "ip -o link show | awk -F': ' '$2 != \"lo\" {print $2; exit}'"))
	e.must("vm", "exec", "b", "--", "bash", "-c", "echo real > /dev/udp/"+inetHostSide+"/9999")
	spoof := fmt.Sprintf("ip addr add %s/32 dev %s && ip route add %s/32 dev %s src %s && "+
		"for i in 1 2 3; do echo spoofed > /dev/udp/%s/9999; sleep 0.3; done; "+
		"ip route del %s/32; ip addr del %s/32 dev %s", a.IP, dev, inetHostSide, dev, a.IP, inetHostSide, inetHostSide, a.IP, dev)
	e.must("vm", "exec", "b", "--", "bash", "-c", spoof)
	time.Sleep(2 * time.Second)
	gotMu.Lock()
	received := strings.Join(got, "; ")
	gotMu.Unlock()
	if !strings.Contains(received, "real from "+b.IP) {
		t.Errorf("B's own datagram did not arrive (got %q)", received)
	}
	if strings.Contains(received, "spoofed") {
		t.Errorf("B's datagrams from A's address arrived: %q", received)
	}
	// A is still A.
	if host := strings.TrimSpace(e.must("vm", "exec", "a", "--", "hostname")); host != "a" {
		t.Errorf("a answered as %q", host)
	}

	// ssh-config: plain `ssh b.vm` and `ssh b` work from the user's own ssh
	// config. OpenSSH finds ~ through the password database, not $HOME, so
	// the test names the user config --install wrote (in its temp HOME).
	e.must("ssh-config", "--install")
	userConfig := filepath.Join(e.root, ".ssh", "config")
	for _, host := range []string{"b.vm", "b"} {
		cmd := exec.Command("ip", "netns", "exec", e.ns, "ssh", "-F", userConfig, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host, "hostname")
		cmd.Env = e.vars
		if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "b" {
			t.Errorf("ssh %s hostname after ssh-config --install: %v: %s", host, err, out)
		}
	}
	e.must("ssh-config", "--uninstall")

	// Rules mention each VM's tap; after delete, nothing mentions A.
	rules := e.nftRuleset()
	for _, want := range []string{a.Tap, b.Tap, a.IP} {
		if !strings.Contains(rules, want) {
			t.Errorf("ruleset lacks %s:\n%s", want, rules)
		}
	}
	e.must("vm", "delete", "a")
	if r := lookup(t, e, "a.vm", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("a.vm after delete: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	rules = e.nftRuleset()
	for _, gone := range []string{a.Tap, a.IP + " "} {
		if strings.Contains(rules, gone) {
			t.Errorf("ruleset still mentions %q after delete:\n%s", gone, rules)
		}
	}
	// Rules come back after someone deletes banger's tables by hand.
	if out, err := exec.Command("ip", "netns", "exec", e.ns, "nft", "delete", "table", "bridge", "banger").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v: %s", err, out)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(e.nftRuleset(), b.Tap) {
		if time.Now().After(deadline) {
			t.Fatalf("anti-spoofing rules for %s not restored within 10s", b.Tap)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
