package daemon

// A stand-in firecracker process for the lifecycle tests: the test binary
// itself, run under the name "firecracker". It serves Firecracker's API
// (fctest, which checks every request as Firecracker does) on the socket
// the driver names, and plays the guest the daemon waits for: at
// InstanceStart it reads the configuration disk it was given (the tar the
// real initrd applies), answers SSH on the VM's address with the host key
// from that disk and only for the authorized key on it, serves banger's
// agent behind the hybrid vsock socket, and powers off at ctrl-alt-del.
// BANGER_FAKEFC_MODE makes it misbehave the ways a real VM can (see
// fakeModes). It lives in the test's own network namespace (inOwnNetns).

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"

	"banger/internal/agent"
	"banger/internal/configdisk"
	"banger/internal/version"
	"banger/internal/vmm/firecracker/fctest"
)

// fakeModes are the misbehaviours BANGER_FAKEFC_MODE selects.
const (
	modeExitAtLaunch = "exit-at-launch" // dies before its API socket exists
	modeDieAtBoot    = "die-at-boot"    // the guest panics right after InstanceStart
	modeNoSSH        = "no-ssh"         // the guest never answers SSH
	modeNoAgent      = "no-agent"       // SSH answers, the agent never does
	modeDeaf         = "deaf"           // ignores ctrl-alt-del: never powers off
)

// fakeModeEnv selects a mode for the stand-in processes started from now on.
const fakeModeEnv = "BANGER_FAKEFC_MODE"

// fakeRootEnv tells a stand-in firecracker started by the stand-in
// jailer where its jail is: it then reads every path it is given inside it
// (it does not chroot: its binary and libraries are not in the jail).
const fakeRootEnv = "BANGER_FAKEFC_ROOT"

func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "firecracker":
		os.Exit(fakeFirecrackerMain(os.Args[1:]))
	case "jailer":
		os.Exit(fakeJailerMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// cgroupValues is where the stand-in jailer writes the settings of VM
// id's cgroup.
func cgroupValues(id string) string { return "/sys/fs/cgroup/.banger-test-" + id }

// fakeJailerMain plays Firecracker's jailer (docs/jailer.md): it makes
// <chroot-base>/<exec name>/<id>/root owned by --uid/--gid with the
// device nodes a jailed Firecracker needs (failing, as the jailer does,
// when they exist), makes the VM's cgroup under /sys/fs/cgroup/<parent>
// writing each --cgroup value and its pid, and execs the firecracker
// (same pid) with --id=<id> and the arguments after --. Unlike the real
// jailer it neither chroots nor drops privileges.
func fakeJailerMain(args []string) int {
	flags := map[string]string{}
	var cgroups, extra []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			extra = args[i+1:]
			break
		}
		if i+1 >= len(args) {
			fmt.Printf("fake jailer: %s has no value\n", a)
			return 2
		}
		if a == "--cgroup" {
			cgroups = append(cgroups, args[i+1])
		} else {
			flags[a] = args[i+1]
		}
		i++
	}
	exe, id := flags["--exec-file"], flags["--id"]
	if !strings.Contains(filepath.Base(exe), "firecracker") || id == "" || flags["--chroot-base-dir"] == "" {
		fmt.Printf("fake jailer: bad arguments %q\n", args)
		return 2
	}
	var uid, gid int
	if _, err := fmt.Sscan(flags["--uid"], &uid); err != nil {
		return 2
	}
	if _, err := fmt.Sscan(flags["--gid"], &gid); err != nil {
		return 2
	}
	root := filepath.Join(flags["--chroot-base-dir"], filepath.Base(exe), id, "root")
	if err := os.MkdirAll(filepath.Join(root, "dev", "net"), 0o755); err != nil {
		fmt.Println("fake jailer:", err)
		return 1
	}
	for _, n := range []struct {
		path       string
		major, min uint32
	}{{"dev/net/tun", 10, 200}, {"dev/kvm", 10, 232}} {
		if err := syscall.Mknod(filepath.Join(root, n.path), syscall.S_IFCHR|0o600, int(n.major<<8|n.min)); err != nil {
			fmt.Printf("fake jailer: mknod %s: %v\n", n.path, err)
			return 1
		}
		_ = os.Chown(filepath.Join(root, n.path), uid, gid)
	}
	if err := os.Chown(root, uid, gid); err != nil {
		return 1
	}
	if len(cgroups) > 0 {
		// The cgroup directory is made where the real jailer makes it;
		// its settings go beside, in cgroupValues: on the tmpfs that
		// stands for cgroupfs a directory holding files could not be
		// removed with rmdir, as an empty cgroup is.
		parent := flags["--parent-cgroup"]
		if err := os.MkdirAll(filepath.Join("/sys/fs/cgroup", parent, id), 0o755); err != nil {
			fmt.Println("fake jailer:", err)
			return 1
		}
		values := strings.Join(append(cgroups, "cgroup.procs="+fmt.Sprint(os.Getpid())), "\n") + "\n"
		if err := os.WriteFile(cgroupValues(id), []byte(values), 0o644); err != nil {
			fmt.Println("fake jailer:", err)
			return 1
		}
	}
	argv := append([]string{exe, "--id=" + id, "--start-time-us=0", "--start-time-cpu-us=0"}, extra...)
	err := syscall.Exec(exe, argv, append(os.Environ(), fakeRootEnv+"="+root))
	fmt.Println("fake jailer: exec:", err)
	return 1
}

// fakeFirecrackerMain is the stand-in's main: firecracker --api-sock SOCK
// --id ID. It returns when the guest powers off.
func fakeFirecrackerMain(args []string) int {
	var apiSock string
	for i, a := range args {
		if a == "--api-sock" && i+1 < len(args) {
			apiSock = args[i+1]
		}
	}
	mode := os.Getenv(fakeModeEnv)
	root := os.Getenv(fakeRootEnv)
	fmt.Printf("fake firecracker %s: mode %q, jail %q\n", apiSock, mode, root)
	if apiSock == "" || mode == modeExitAtLaunch {
		fmt.Println("fake firecracker: exiting at launch")
		return 3
	}
	g := &standinGuest{mode: mode, root: root, off: make(chan struct{})}
	srv := fctest.New()
	srv.Root = root
	srv.TapExists = func(name string) bool {
		l, err := netlink.LinkByName(name)
		return err == nil && l.Type() == "tuntap"
	}
	srv.OnRun = g.boot
	srv.OnVsock = g.serveVsock
	srv.OnCtrlAltDel = g.powerOff
	ln, err := net.Listen("unix", filepath.Join(root, apiSock))
	if err != nil {
		fmt.Println("fake firecracker:", err)
		return 1
	}
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(ln) }()
	<-g.off
	g.shutdown()
	_ = hs.Close()
	srv.Close()
	fmt.Println("fake guest: powered off")
	return 0
}

// standinGuest is what the stand-in plays once the VM "boots".
type standinGuest struct {
	mode string
	root string // the jail, when jailed: paths it is given are inside
	off  chan struct{}

	mu     sync.Mutex
	tap    string
	files  map[string][]byte // the guest's /etc as banger gave it
	ssh    net.Listener
	ip     net.IP
	br     netlink.Link
	offOne sync.Once
}

// The stand-in guest is the agent's RestoreHost: a restore gives it its
// own files (host keys among them) and, last, its own address, on which
// it then answers SSH.

func (g *standinGuest) AddEntropy(b []byte) error {
	if len(b) < 32 {
		return fmt.Errorf("%d bytes of entropy", len(b))
	}
	return nil
}

func (g *standinGuest) SetClock(int64) error { return nil }

func (g *standinGuest) WriteFile(p string, data []byte, _ fs.FileMode) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.files == nil {
		g.files = map[string][]byte{}
	}
	g.files[p] = data
	return nil
}

func (g *standinGuest) SetHostname(string) error { return nil }
func (g *standinGuest) GrowWork() error          { return nil }

// ReloadSSHD takes the new host key at once when SSH already answers.
func (g *standinGuest) ReloadSSHD() error {
	g.mu.Lock()
	ip := g.ip
	g.mu.Unlock()
	if ip == nil {
		return nil
	}
	return g.serveSSH(ip)
}

func (g *standinGuest) SetNetwork(_, _ net.HardwareAddr, addr netip.Prefix, _ netip.Addr) error {
	fmt.Printf("fake guest: restored as %s\n", addr)
	return g.serveSSH(net.IP(addr.Addr().AsSlice()))
}

// boot runs at InstanceStart (with the API server's lock held: it only
// reads the configuration and starts work).
func (g *standinGuest) boot(s *fctest.Server) {
	args := ""
	if s.Boot != nil && s.Boot.BootArgs != nil {
		args = *s.Boot.BootArgs
	}
	config := ""
	if d, ok := s.Drives["config"]; ok && d.PathOnHost != nil {
		config = *d.PathOnHost
	}
	tap := ""
	if n, ok := s.Ifaces["eth0"]; ok && n.HostDevName != nil {
		tap = *n.HostDevName
	}
	g.mu.Lock()
	g.tap = tap
	g.mu.Unlock()
	if s.Loaded != "" {
		// A restored guest runs on from where it was saved: it reads no
		// configuration disk and answers SSH only once the agent's
		// restore has given it its own address and keys.
		fmt.Println("fake guest: resumed from", s.Loaded)
		return
	}
	go g.run(args, config, tap)
}

func (g *standinGuest) run(bootArgs, configDisk, tap string) {
	fmt.Println("fake guest: booting")
	if g.mode == modeDieAtBoot {
		fmt.Println("fake guest: Kernel panic - not syncing: the test asked for it")
		time.Sleep(100 * time.Millisecond)
		os.Exit(1)
	}
	ip, err := guestIP(bootArgs)
	if err != nil {
		fmt.Println("fake guest:", err)
		return
	}
	files, err := readConfigDisk(filepath.Join(g.root, configDisk))
	if err != nil {
		fmt.Println("fake guest: config disk:", err)
		return
	}
	if g.mode == modeNoSSH {
		fmt.Println("fake guest: not answering SSH")
		return
	}
	g.mu.Lock()
	g.files = files
	g.mu.Unlock()
	if err := g.serveSSH(ip); err != nil {
		fmt.Println("fake guest: ssh:", err)
		return
	}
	fmt.Printf("fake guest: booted, ssh on %s\n", ip)
}

// guestIP reads the address from banger.net=IP/PREFIX,GW,MAC.
func guestIP(bootArgs string) (net.IP, error) {
	for _, f := range strings.Fields(bootArgs) {
		if v, ok := strings.CutPrefix(f, "banger.net="); ok {
			addr, _, _ := strings.Cut(v, "/")
			if ip := net.ParseIP(addr); ip != nil {
				return ip, nil
			}
		}
	}
	return nil, fmt.Errorf("no banger.net= address in the boot arguments %q", bootArgs)
}

// readConfigDisk reads the files a configuration disk carries (a tar:
// banger-config/root/PATH), as the real initrd does.
func readConfigDisk(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if p, ok := strings.CutPrefix(h.Name, configdisk.Magic+"root"); ok && h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				return nil, err
			}
			out[p] = b
		}
	}
}

// serveSSH answers SSH on ip:22 (in place of any earlier listener) with
// the guest's host key, accepting only its authorized key (both from its
// files). It runs only what banger itself runs in a guest (the quiesce
// before a snapshot). The address goes on the bridge the VM's tap is on
// (where the guest is reached): the daemon's dial is then delivered
// locally.
func (g *standinGuest) serveSSH(ip net.IP) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	hostKey, err := ssh.ParsePrivateKey(g.files["/etc/ssh/ssh_host_ed25519_key"])
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	authorized, _, _, _, err := ssh.ParseAuthorizedKey(g.files["/etc/ssh/banger_authorized_keys"])
	if err != nil {
		return fmt.Errorf("authorized key: %w", err)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) == string(authorized.Marshal()) {
			return nil, nil
		}
		return nil, errors.New("unknown key")
	}}
	cfg.AddHostKey(hostKey)
	g.stopSSHLocked()
	br, err := bridgeOf(g.tap)
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "22"))
	if err != nil {
		return err
	}
	g.ssh, g.ip, g.br = ln, ip, br
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveSSHConn(c, cfg)
		}
	}()
	return nil
}

// stopSSHLocked stops answering SSH and takes the guest's address away.
func (g *standinGuest) stopSSHLocked() {
	if g.ssh != nil {
		_ = g.ssh.Close()
		g.ssh = nil
	}
	if g.ip != nil {
		_ = netlink.AddrDel(g.br, &netlink.Addr{IPNet: &net.IPNet{IP: g.ip, Mask: net.CIDRMask(32, 32)}})
		g.ip = nil
	}
}

// guestCommands are what the stand-in guest runs: banger's own.
var guestCommands = map[string]bool{"sync && echo 3 > /proc/sys/vm/drop_caches && sync": true}

func serveSSHConn(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "sessions only")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for r := range creqs {
				if r.Type != "exec" {
					_ = r.Reply(false, nil)
					continue
				}
				var cmd struct{ Command string }
				_ = ssh.Unmarshal(r.Payload, &cmd)
				_ = r.Reply(true, nil)
				code := uint32(0)
				if !guestCommands[cmd.Command] {
					fmt.Fprintf(ch.Stderr(), "the stand-in guest does not run %q\n", cmd.Command)
					code = 127
				}
				_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{code}))
				return
			}
		}()
	}
}

// serveVsock plays the guest end of Firecracker's hybrid vsock: CONNECT
// PORT, OK, then banger's agent on the stream.
func (g *standinGuest) serveVsock(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
				if err != nil || !strings.HasPrefix(line, "CONNECT ") {
					return
				}
				if g.mode == modeNoAgent {
					time.Sleep(time.Minute) // the agent never starts
					return
				}
				if _, err := io.WriteString(c, "OK 1073741824\n"); err != nil {
					return
				}
				_ = (&agent.Server{AgentVersion: version.Version, Host: g}).ServeConn(context.Background(), c)
			}()
		}
	}()
}

// powerOff is ctrl-alt-del: the guest shuts down and the VMM exits.
func (g *standinGuest) powerOff() {
	if g.mode == modeDeaf {
		fmt.Println("fake guest: ignoring ctrl-alt-del")
		return
	}
	g.offOne.Do(func() { close(g.off) })
}

// bridgeOf is the bridge tap is attached to.
func bridgeOf(tap string) (netlink.Link, error) {
	l, err := netlink.LinkByName(tap)
	if err != nil {
		return nil, fmt.Errorf("tap %q: %w", tap, err)
	}
	br, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil {
		return nil, fmt.Errorf("bridge of tap %s: %w", tap, err)
	}
	return br, nil
}

// shutdown stops answering SSH and takes the guest's address away.
func (g *standinGuest) shutdown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopSSHLocked()
}
