package privops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/hostnat"
	"banger/internal/hostnet"
	"banger/internal/loopdev"
	"banger/internal/netnstest"
	"banger/internal/resolved"
)

// recorder stands in for the kernel behind the helper: it records what
// it was asked and hands out real descriptors (a pipe for a tap, loopback
// sockets for DNS), so the wire and the policy are tested without
// touching the host.
type recorder struct {
	mu    sync.Mutex
	calls []string
	pipeR *os.File
	// unmanaged: RouteDNS answers as on a host without systemd-resolved.
	unmanaged bool
	// failOwner: SetDeviceOwner fails.
	failOwner bool
	// noDM: SnapshotsAvailable says no.
	noDM bool
}

func (r *recorder) rec(s string) {
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) EnsureBridge(name, cidr string) error { r.rec("bridge " + name); return nil }
func (r *recorder) CreateTap(name, bridge string) error  { r.rec("create " + name); return nil }
func (r *recorder) DeleteTap(name string) error          { r.rec("delete " + name); return nil }
func (r *recorder) SetTapOwner(name string, uid, gid int) error {
	r.rec(fmt.Sprintf("owner %s %d:%d", name, uid, gid))
	return nil
}
func (r *recorder) SyncNAT(spec hostnat.Spec) error { r.rec("sync"); return nil }
func (r *recorder) EnableIPForward() (bool, error)  { r.rec("forward"); return true, nil }
func (r *recorder) NATDiff(spec hostnat.Spec) ([]string, error) {
	r.rec("diff")
	return []string{"table missing"}, nil
}

func (r *recorder) RouteDNS(link, server, domain string) error {
	r.rec(fmt.Sprintf("route ~%s %s %s", domain, link, server))
	r.mu.Lock()
	unmanaged := r.unmanaged
	r.mu.Unlock()
	if unmanaged {
		return fmt.Errorf("%w (/run/systemd/resolve: no such file)", resolved.ErrNotManaged)
	}
	return nil
}

func (r *recorder) UnrouteDNS(link string) error { r.rec("unroute " + link); return nil }

func (r *recorder) SnapshotsAvailable() error {
	r.rec("snapshots?")
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.noDM {
		return errors.New("dmsnap: device-mapper is not available: no /dev/mapper/control")
	}
	return nil
}

// AttachSnapshot records the files it was given by name and mode.
func (r *recorder) AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error) {
	mode := func(f *os.File) string {
		fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		if fl&unix.O_ACCMODE == unix.O_RDWR {
			return "rw"
		}
		return "ro"
	}
	// What the descriptor is, whatever the name it came with.
	file := func(f *os.File) string {
		p, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
		return filepath.Base(p)
	}
	r.rec(fmt.Sprintf("attach %s %s(%s) %s(%s)", name, file(base), mode(base), file(cow), mode(cow)))
	return dmsnap.Handles{BaseLoop: "/dev/loop8", COWLoop: "/dev/loop9", DMName: name, DMDev: "/dev/mapper/" + name, AutoClear: true}, nil
}

func (r *recorder) DetachSnapshot(h dmsnap.Handles) error { r.rec("detach " + h.DMName); return nil }

func (r *recorder) SetDeviceOwner(dev string, uid, gid int) error {
	r.rec(fmt.Sprintf("owner %s %d:%d", dev, uid, gid))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failOwner {
		return errors.New("chown: read-only file system")
	}
	return nil
}

func (r *recorder) OpenTap(name string) (*os.File, error) {
	r.rec("open " + name)
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.pipeR = pr
	r.mu.Unlock()
	return pw, nil
}

// tapPipe is the read end of the last tap OpenTap made.
func (r *recorder) tapPipe() *os.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pipeR
}

func (r *recorder) ListenDNS(addr string) (net.PacketConn, net.Listener, error) {
	r.rec("dns " + addr)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	return pc, ln, nil
}

func testPolicy(t *testing.T) Policy {
	t.Helper()
	p, err := NewPolicy("bgt0", "10.203.0.1/24")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func goodSpec() hostnat.Spec {
	return hostnat.Spec{Bridge: "bgt0", Subnet: netip.MustParsePrefix("10.203.0.0/24"), Gateway: netip.MustParseAddr("10.203.0.1"),
		VMs: []hostnat.VM{{Name: "web", Tap: "bg-pool-0001", IP: netip.MustParseAddr("10.203.0.2"), MAC: net.HardwareAddr{0x02, 0xbb, 10, 203, 0, 2}, NAT: true}}}
}

// TestPolicyRefusesWhatIsNotBangers: every operation refuses names,
// addresses and rules outside banger's, before anything reaches the
// kernel, with bad_request and the reason.
func TestPolicyRefusesWhatIsNotBangers(t *testing.T) {
	rec := &recorder{}
	s := &Server{Ops: rec, Policy: testPolicy(t)}
	otherBridge, otherSubnet, hostTap, noTaps := goodSpec(), goodSpec(), goodSpec(), goodSpec()
	otherBridge.Bridge = "docker0"
	otherSubnet.Subnet, otherSubnet.Gateway = netip.MustParsePrefix("192.168.1.0/24"), netip.MustParseAddr("192.168.1.1")
	hostTap.VMs[0].Tap = "eth0"
	noTaps.VMs = nil
	for _, req := range []request{
		{Op: opEnsureBridge, Name: "docker0", CIDR: "10.203.0.1/24"},
		{Op: opEnsureBridge, Name: "bgt0", CIDR: "10.0.0.1/8"},
		{Op: opCreateTap, Name: "eth0", Bridge: "bgt0"},
		{Op: opCreateTap, Name: "bg-x", Bridge: "docker0"},
		{Op: opCreateTap, Name: "bg-", Bridge: "bgt0"},
		{Op: opCreateTap, Name: "bg-0123456789abcd", Bridge: "bgt0"},
		{Op: opDeleteTap, Name: "lo"},
		{Op: opDeleteTap, Name: "bg-a/../b"},
		{Op: opDeleteTap, Name: "vethbg-1"},
		{Op: opOpenTap, Name: "wlan0"},
		{Op: opSyncNAT},
		{Op: opSyncNAT, Spec: &otherBridge},
		{Op: opSyncNAT, Spec: &otherSubnet},
		{Op: opSyncNAT, Spec: &hostTap},
		{Op: opNATDiff, Spec: &otherBridge},
		{Op: opListenDNS, Addr: "0.0.0.0:53"},
		{Op: opListenDNS, Addr: "10.203.0.1:5353"},
		{Op: opListenDNS, Addr: "127.0.0.1:53"},
		{Op: opRouteDNS, Name: "eth0", Addr: "10.203.0.1:53", Domain: "vm"},
		{Op: opRouteDNS, Name: "bgt0", Addr: "10.203.0.1:53", Domain: "com"},
		{Op: opRouteDNS, Name: "bgt0", Addr: "10.203.0.1:53", Domain: ""},
		{Op: opRouteDNS, Name: "bgt0", Addr: "8.8.8.8:53", Domain: "vm"},
		{Op: opRouteDNS, Name: "bgt0", Addr: "10.203.0.1:5353", Domain: "vm"},
		{Op: opUnrouteDNS, Name: "eth0"},
	} {
		resp, files := s.do(req, nil)
		if len(files) != 0 || resp.Error == nil || resp.Error.Code != api.CodeBadRequest || !strings.Contains(resp.Error.Message, "root helper refuses") {
			t.Errorf("%+v: %+v (%d files), want a bad_request refusal", req, resp.Error, len(files))
		}
	}
	if resp, _ := s.do(request{Op: "mount", Name: "/"}, nil); resp.Error == nil || resp.Error.Code != api.CodeUnknownMethod {
		t.Errorf("an unknown operation: %+v, want unknown_method", resp.Error)
	}
	if len(rec.calls) != 0 {
		t.Errorf("refused requests reached the kernel: %q", rec.calls)
	}
	// And banger's own are done.
	for _, req := range []request{
		{Op: opEnsureBridge, Name: "bgt0", CIDR: "10.203.0.1/24"},
		{Op: opCreateTap, Name: "bg-pool-0001", Bridge: "bgt0"},
		{Op: opCreateTap, Name: "bg-3f2a9c01d4e5", Bridge: "bgt0"},
		{Op: opDeleteTap, Name: "bg-3f2a9c01d4e5"},
		{Op: opSyncNAT, Spec: &noTaps},
		{Op: opRouteDNS, Name: "bgt0", Addr: "10.203.0.1:53", Domain: "vm"},
		{Op: opUnrouteDNS, Name: "bgt0"},
	} {
		if resp, _ := s.do(req, nil); resp.Error != nil {
			t.Errorf("%+v: %v", req, resp.Error)
		}
	}
	want := []string{"bridge bgt0", "create bg-pool-0001", "create bg-3f2a9c01d4e5", "delete bg-3f2a9c01d4e5", "sync",
		"route ~vm bgt0 10.203.0.1:53", "unroute bgt0"}
	if !slices.Equal(rec.calls, want) {
		t.Errorf("calls %q, want %q", rec.calls, want)
	}
}

// serve runs a helper with rec on a socket in a directory others may
// enter; it ends with the test.
func serve(t *testing.T, rec HelperOps, owner int, opts ...func(*Server)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "privops")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "helper.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := &Server{Ops: rec, Policy: testPolicy(t), Owner: owner, OwnerGID: owner}
	for _, o := range opts {
		o(s)
	}
	go func() { done <- s.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			if fi, _ := os.Stat(sock); fi.Sys().(*syscall.Stat_t).Uid == uint32(owner) {
				return sock
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper did not listen within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClientGetsDescriptors: answers and the descriptors beside them
// cross the socket — a tap's, and DNS's UDP and TCP sockets.
func TestClientGetsDescriptors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the helper gives its socket to its owner)")
	}
	rec := &recorder{}
	c := &Client{SocketPath: serve(t, rec, 0)}
	f, err := c.OpenTap("bg-pool-0001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("frame")); err != nil {
		t.Fatalf("the tap descriptor the client got does not work: %v", err)
	}
	f.Close()
	got, _ := io.ReadAll(rec.tapPipe())
	if string(got) != "frame" {
		t.Errorf("through the passed descriptor: %q, want frame", got)
	}
	pc, ln, err := c.ListenDNS("10.203.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer ln.Close()
	conn, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("q"))
	conn.Close()
	buf := make([]byte, 4)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "q" {
		t.Errorf("the passed UDP socket: %q, %v", buf[:n], err)
	}
	if err := c.Ping(); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if wasOn, err := c.EnableIPForward(); err != nil || !wasOn {
		t.Errorf("EnableIPForward = %v, %v; want true (the recorder's)", wasOn, err)
	}
	diff, err := c.NATDiff(goodSpec())
	if err != nil || !slices.Equal(diff, []string{"table missing"}) {
		t.Errorf("NATDiff = %q, %v", diff, err)
	}
	if err := c.DeleteTap("eth0"); !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("a refusal crosses the wire as %v, want bad_request", err)
	}
	if err := c.RouteDNS("bgt0", "10.203.0.1:53", "vm"); err != nil {
		t.Errorf("RouteDNS: %v", err)
	}
	if err := c.UnrouteDNS("bgt0"); err != nil {
		t.Errorf("UnrouteDNS: %v", err)
	}
	// A host without systemd-resolved is told apart from a failure: the
	// daemon only notes it.
	rec.mu.Lock()
	rec.unmanaged = true
	rec.mu.Unlock()
	if err := c.RouteDNS("bgt0", "10.203.0.1:53", "vm"); !errors.Is(err, resolved.ErrNotManaged) {
		t.Errorf("RouteDNS on a host without resolved: %v, want resolved.ErrNotManaged", err)
	}
	if err := c.RouteDNS("bgt0", "10.203.0.1:53", "com"); err == nil || errors.Is(err, resolved.ErrNotManaged) || !api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("a refused route: %v, want bad_request and not ErrNotManaged", err)
	}
}

// TestHelperAnswersOnlyRootAndItsOwner: another uid is refused by the
// socket's mode and, were that loosened, by the helper itself
// (SO_PEERCRED), with unauthorized.
func TestHelperAnswersOnlyRootAndItsOwner(t *testing.T) {
	if sock := os.Getenv("BANGER_PRIVOPS_CLIENT"); sock != "" {
		// The child, running as another uid.
		err := (&Client{SocketPath: sock}).CreateTap("bg-pool-0001", "bgt0")
		fmt.Printf("RESULT code=%s err=%v\n", api.CodeOf(err), err)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (to run a client as other uids)")
	}
	const owner, other = 4242, 4343
	rec := &recorder{}
	sock := serve(t, rec, owner)
	// The test binary, where other uids may run it.
	bin := filepath.Join(filepath.Dir(sock), "privops.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	as := func(uid int) string {
		t.Helper()
		cmd := exec.Command(bin, "-test.run", "^TestHelperAnswersOnlyRootAndItsOwner$", "-test.count=1")
		cmd.Env = append(os.Environ(), "BANGER_PRIVOPS_CLIENT="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "RESULT ") {
				return line
			}
		}
		t.Fatalf("client as uid %d printed no result:\n%s", uid, out)
		return ""
	}
	if got := as(owner); !strings.Contains(got, "code= ") && !strings.HasSuffix(got, "err=<nil>") {
		t.Errorf("the owner (uid %d): %s, want success", owner, got)
	}
	if got := as(other); !strings.Contains(got, "permission denied") {
		t.Errorf("uid %d through the 0600 socket: %s, want permission denied", other, got)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := as(other); !strings.Contains(got, "code="+string(api.CodeUnauthorized)) || !strings.Contains(got, "uid 4343 may not use banger's root helper") {
		t.Errorf("uid %d through a loosened socket: %s, want unauthorized", other, got)
	}
	if got, want := rec.seen(), []string{"create bg-pool-0001", "owner bg-pool-0001 4242:4242"}; !slices.Equal(got, want) {
		t.Errorf("calls %q, want only the owner's %q", got, want)
	}
}

// TestLocalThroughThePolicy does banger's operations for real, through
// the helper's checks, in a network namespace of the test's own: bridge,
// tap, a descriptor attached to it, rules, DNS on the gateway's port 53.
func TestLocalThroughThePolicy(t *testing.T) {
	netnstest.Fresh(t)
	s := &Server{Ops: Local{}, Policy: testPolicy(t)}
	do := func(req request) (response, []*os.File) {
		t.Helper()
		resp, files := s.do(req, nil)
		if resp.Error != nil {
			t.Fatalf("%+v: %v", req, resp.Error)
		}
		return resp, files
	}
	do(request{Op: opEnsureBridge, Name: "bgt0", CIDR: "10.203.0.1/24"})
	do(request{Op: opCreateTap, Name: "bg-pool-0001", Bridge: "bgt0"})
	_, files := do(request{Op: opOpenTap, Name: "bg-pool-0001"})
	if len(files) != 1 {
		t.Fatalf("open_tap gave %d descriptors", len(files))
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(int(files[0].Fd()), unix.TUNGETIFF, ifr); err != nil || ifr.Name() != "bg-pool-0001" {
		t.Errorf("the descriptor is attached to %q (%v), want bg-pool-0001", ifr.Name(), err)
	}
	files[0].Close()
	if l, err := netlink.LinkByName("bg-pool-0001"); err != nil {
		t.Errorf("the tap went when its descriptor closed: %v", err)
	} else if l.Attrs().MasterIndex == 0 {
		t.Error("the tap is on no bridge")
	}
	spec := goodSpec()
	if resp, _ := do(request{Op: opNATDiff, Spec: &spec}); len(resp.Diff) == 0 {
		t.Error("nat_diff found nothing to do before the rules exist")
	}
	do(request{Op: opSyncNAT, Spec: &spec})
	if resp, _ := do(request{Op: opNATDiff, Spec: &spec}); len(resp.Diff) != 0 {
		t.Errorf("after sync_nat the rules still differ: %q", resp.Diff)
	}
	_, files = do(request{Op: opListenDNS, Addr: "10.203.0.1:53"})
	if len(files) != 2 {
		t.Fatalf("listen_dns gave %d descriptors, want 2", len(files))
	}
	for _, f := range files {
		sa, err := unix.Getsockname(int(f.Fd()))
		if in4, ok := sa.(*unix.SockaddrInet4); err != nil || !ok || in4.Port != 53 || netip.AddrFrom4(in4.Addr).String() != "10.203.0.1" {
			t.Errorf("a DNS socket is bound to %+v (%v), want 10.203.0.1:53", sa, err)
		}
		f.Close()
	}
	// resolved lives in the host's namespace, not this one: routing is
	// skipped (ErrNotManaged), never pointed at a link of another
	// namespace.
	if resp, _ := s.do(request{Op: opRouteDNS, Name: "bgt0", Addr: "10.203.0.1:53", Domain: "vm"}, nil); resp.Error == nil || !resp.NotManaged {
		t.Errorf("route_dns in a namespace of its own: %+v, want not managed", resp)
	}
	do(request{Op: opDeleteTap, Name: "bg-pool-0001"})
	if taps, _ := hostnet.ListTaps(hostnet.TapPrefix); len(taps) != 0 {
		t.Errorf("taps left: %v", taps)
	}
}

// TestClientWaitsForAHelperStarting: at boot both units start together;
// a call made before the helper listens waits for it (DialWait), and one
// told not to wait fails at once, saying how to check the helper.
func TestClientWaitsForAHelperStarting(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the helper gives its socket to its owner)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "helper.sock")
	if err := (&Client{SocketPath: sock, DialWait: -1}).Ping(); err == nil || !strings.Contains(err.Error(), "banger system status") {
		t.Errorf("no helper, no wait: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		done <- (&Server{Ops: &recorder{}, Policy: testPolicy(t)}).Serve(ctx, sock)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	start := time.Now()
	if err := (&Client{SocketPath: sock, DialWait: 5 * time.Second}).Ping(); err != nil {
		t.Fatalf("a helper that listens 300 ms later: %v", err)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Errorf("answered after %s, before the helper listened", waited)
	}
}

// snapshotFiles makes a base image and a COW file and opens them the way
// the daemon does: base read-only, COW read-write.
func snapshotFiles(t *testing.T) (base, cow, cowRO *os.File) {
	t.Helper()
	dir := t.TempDir()
	open := func(name string, flag int) *os.File {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	return open("rootfs.ext4", os.O_RDONLY), open("root.cow", os.O_RDWR), open("root.cow", os.O_RDONLY)
}

// TestSnapshotPolicy: the helper makes and removes only banger-named dm
// snapshots, of files that come as descriptors — the COW one open for
// writing by the caller —, and removes only those it made (no loop
// detached by number, no file deleted). Operations take exactly their
// descriptors.
func TestSnapshotPolicy(t *testing.T) {
	rec := &recorder{}
	// The test's files are its user's: that user is the owner.
	s := &Server{Ops: rec, Policy: testPolicy(t), Owner: os.Getuid()}
	base, cow, cowRO := snapshotFiles(t)
	good := dmsnap.Handles{BaseLoop: "/dev/loop8", COWLoop: "/dev/loop9", DMName: "banger-0f1e", DMDev: "/dev/mapper/banger-0f1e", AutoClear: true}
	notAuto, withFile, other := good, good, good
	notAuto.AutoClear = false
	withFile.COWPath = "/home/alice/.ssh/id_ed25519"
	other.DMName = "vg0-root"
	procFile, err := os.Open("/proc/self/stat") // regular, root's, on procfs
	if err != nil {
		t.Fatal(err)
	}
	defer procFile.Close()
	var othersFiles []*os.File
	if os.Geteuid() == 0 {
		theirs := filepath.Join(t.TempDir(), "theirs.img")
		if err := os.WriteFile(theirs, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirs, 4343, 4343); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(theirs)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		othersFiles = []*os.File{f, cow}
	}
	for _, c := range []struct {
		req   request
		files []*os.File
	}{
		{request{Op: opAttachSnapshot, Name: "vg0-root"}, []*os.File{base, cow}},
		{request{Op: opAttachSnapshot, Name: "banger-"}, []*os.File{base, cow}},
		{request{Op: opAttachSnapshot, Name: "banger-a b"}, []*os.File{base, cow}},
		{request{Op: opAttachSnapshot, Name: "banger-0f1e"}, []*os.File{base, cowRO}},
		{request{Op: opAttachSnapshot, Name: "banger-0f1e"}, []*os.File{procFile, cow}},
		{request{Op: opAttachSnapshot, Name: "banger-0f1e"}, []*os.File{base}},
		{request{Op: opAttachSnapshot, Name: "banger-0f1e"}, nil},
		{request{Op: opDetachSnapshot}, nil},
		{request{Op: opDetachSnapshot, Handles: &other}, nil},
		{request{Op: opDetachSnapshot, Handles: &notAuto}, nil},
		{request{Op: opDetachSnapshot, Handles: &withFile}, nil},
		{request{Op: opDetachSnapshot, Handles: &good}, []*os.File{base}},
		{request{Op: opPing}, []*os.File{base}},
	} {
		resp, files := s.do(c.req, c.files)
		if len(files) != 0 || resp.Error == nil || resp.Error.Code != api.CodeBadRequest || !strings.Contains(resp.Error.Message, "root helper refuses") {
			t.Errorf("%+v with %d files: %+v, want a bad_request refusal", c.req, len(c.files), resp.Error)
		}
	}
	if resp, _ := s.do(request{Op: opAttachSnapshot, Name: "banger-0f1e"}, []*os.File{procFile, cow}); resp.Error == nil || !strings.Contains(resp.Error.Message, "not on file system type 0x9fa0") {
		t.Errorf("a procfs file as the base: %+v, want refused for its file system", resp.Error)
	}
	if othersFiles != nil {
		s.Owner = 4242
		resp, _ := s.do(request{Op: opAttachSnapshot, Name: "banger-0f1e"}, othersFiles)
		if resp.Error == nil || !strings.Contains(resp.Error.Message, "uid 4343's") {
			t.Errorf("another uid's file as the base: %+v", resp.Error)
		}
		s.Owner = os.Getuid()
	}
	if calls := rec.seen(); len(calls) != 0 {
		t.Errorf("refused requests reached the kernel: %q", calls)
	}
	if resp, _ := s.do(request{Op: opAttachSnapshot, Name: "banger-0f1e"}, []*os.File{base, cow}); resp.Error != nil || resp.Handles == nil || *resp.Handles != good {
		t.Errorf("attach: %+v %+v, want %+v", resp.Error, resp.Handles, good)
	}
	if resp, _ := s.do(request{Op: opDetachSnapshot, Handles: &good}, nil); resp.Error != nil {
		t.Errorf("detach: %v", resp.Error)
	}
	want := []string{"attach banger-0f1e rootfs.ext4(ro) root.cow(rw)", "detach banger-0f1e"}
	if os.Getuid() != 0 { // an owner other than root gets the device
		want = slices.Insert(want, 1, fmt.Sprintf("owner /dev/mapper/banger-0f1e %d:0", os.Getuid()))
	}
	if got := rec.seen(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
}

// TestClientSnapshots: the files cross the socket as descriptors; the
// helper gives the device it made to its owner, and takes it down again
// when it cannot.
func TestClientSnapshots(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the helper gives its socket to its owner)")
	}
	rec := &recorder{}
	c := &Client{SocketPath: serve(t, rec, 4242)}
	base, cow, _ := snapshotFiles(t)
	h, err := c.AttachSnapshot("banger-0f1e", base, cow)
	if err != nil {
		t.Fatal(err)
	}
	if h.DMDev != "/dev/mapper/banger-0f1e" || !h.AutoClear {
		t.Errorf("handles %+v", h)
	}
	if err := c.DetachSnapshot(h); err != nil {
		t.Fatal(err)
	}
	if err := c.SnapshotsAvailable(); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	rec.failOwner, rec.noDM = true, true
	rec.mu.Unlock()
	if err := c.SnapshotsAvailable(); err == nil || err.Error() != "the root helper cannot make dm snapshots: dmsnap: device-mapper is not available: no /dev/mapper/control" {
		t.Errorf("SnapshotsAvailable on a host without dm: %v", err)
	}
	if _, err := c.AttachSnapshot("banger-0f1e", base, cow); err == nil || !strings.Contains(err.Error(), "read-only file system") {
		t.Errorf("attach whose device cannot be given to the owner: %v", err)
	}
	want := []string{
		"attach banger-0f1e rootfs.ext4(ro) root.cow(rw)", "owner /dev/mapper/banger-0f1e 4242:4242",
		"detach banger-0f1e", "snapshots?", "snapshots?",
		"attach banger-0f1e rootfs.ext4(ro) root.cow(rw)", "owner /dev/mapper/banger-0f1e 4242:4242", "detach banger-0f1e",
	}
	if got := rec.seen(); !slices.Equal(got, want) {
		t.Errorf("calls\n%q\nwant\n%q", got, want)
	}
}

// TestSetDeviceOwnerOnlyDM: the node is given away only when sysfs says
// its number is the dm device of that name — a loop device (a real block
// device that is not one) is refused and left as it was.
func TestSetDeviceOwnerOnlyDM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices: %v", err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := loopdev.Attach(f, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	var before unix.Stat_t
	if err := unix.Stat(dev.Path, &before); err != nil {
		t.Fatal(err)
	}
	// Whatever the code under test did, the host's node is put back.
	t.Cleanup(func() {
		_ = unix.Chown(dev.Path, int(before.Uid), int(before.Gid))
		_ = unix.Chmod(dev.Path, before.Mode&0o7777)
	})
	if err := (Local{}).SetDeviceOwner(dev.Path, 4242, 4242); err == nil || !strings.Contains(err.Error(), "is not the device-mapper device") {
		t.Errorf("a loop device given away: %v", err)
	}
	var after unix.Stat_t
	if err := unix.Stat(dev.Path, &after); err != nil {
		t.Fatal(err)
	}
	if after.Uid != before.Uid || after.Mode != before.Mode {
		t.Errorf("%s changed: %o %d → %o %d", dev.Path, before.Mode, before.Uid, after.Mode, after.Uid)
	}
}

// TestMadeByHelper: removal is allowed of a gone name or a snapshot on
// autoclearing loops only (a fake sysfs).
func TestMadeByHelper(t *testing.T) {
	root := t.TempDir()
	old := sysfs
	sysfs = root
	t.Cleanup(func() { sysfs = old })
	write := func(p, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("block/dm-0/dm/name", "banger-helper")
	write("block/dm-0/slaves/loop3/loop/autoclear", "1")
	write("block/dm-0/slaves/loop4/loop/autoclear", "1")
	write("block/dm-1/dm/name", "banger-rootmode")
	write("block/dm-1/slaves/loop5/loop/autoclear", "0")
	write("block/dm-1/slaves/loop6/loop/autoclear", "1")
	write("block/dm-2/dm/name", "banger-ondisk")
	write("block/dm-2/slaves/sda2/size", "100")
	write("block/dm-3/dm/name", "banger-halfmade") // a create cut short: no table
	write("block/dm-3/size", "0")
	write("block/dm-4/dm/name", "banger-linear") // a table of no devices, yet sized
	write("block/dm-4/size", "2048")
	for name, ok := range map[string]bool{"banger-helper": true, "banger-gone": true, "banger-rootmode": false, "banger-ondisk": false,
		"banger-halfmade": true, "banger-linear": false} {
		if err := madeByHelper(name); (err == nil) != ok {
			t.Errorf("%s: %v, want allowed=%v", name, err, ok)
		}
	}
	// Through the helper: a root daemon's snapshot is refused before
	// anything is removed.
	rec := &recorder{}
	s := &Server{Ops: rec, Policy: testPolicy(t)}
	h := dmsnap.Handles{DMName: "banger-rootmode", DMDev: "/dev/mapper/banger-rootmode", AutoClear: true}
	if resp, _ := s.do(request{Op: opDetachSnapshot, Handles: &h}, nil); resp.Error == nil || !strings.Contains(resp.Error.Message, "not an autoclearing loop") {
		t.Errorf("detach of a root daemon's snapshot: %+v", resp.Error)
	}
	h.DMName = "banger-helper"
	if resp, _ := s.do(request{Op: opDetachSnapshot, Handles: &h}, nil); resp.Error != nil {
		t.Errorf("detach of the helper's own: %v", resp.Error)
	}
	if got := rec.seen(); !slices.Equal(got, []string{"detach banger-helper"}) {
		t.Errorf("calls %q", got)
	}
}
