package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Transport names, as the agent's --transport flag takes them.
const (
	TransportAuto         = "auto"
	TransportVirtioSerial = "virtio-serial"
	TransportVsock        = "vsock"
)

// Reopen backoff of the virtio-serial port. portIdleMax bounds the wait
// between reads while no host is connected (the port reads EOF then), which
// is also how late the agent may notice a newly connected host.
var (
	portBackoffMin = 20 * time.Millisecond
	portIdleMax    = 250 * time.Millisecond
	portErrorMax   = 2 * time.Second
	detectEvery    = time.Second
	// maxConns caps concurrent vsock connections.
	maxConns = 16
)

// Options selects the transport Run serves.
type Options struct {
	// Transport is TransportAuto (or ""), TransportVirtioSerial or
	// TransportVsock.
	Transport string
	// PortName is the virtio-serial port name (PortName when empty).
	PortName string
	// VsockPort is the AF_VSOCK port (VsockPort when 0).
	VsockPort uint32
	// DevDir and SysDir are where devtmpfs and sysfs are ("/dev", "/sys"
	// when empty).
	DevDir, SysDir string
}

// Run serves the transport opt names until ctx ends, then returns nil. With
// TransportAuto it waits for one to appear (see DetectTransport).
func (s *Server) Run(ctx context.Context, opt Options) error {
	if opt.PortName == "" {
		opt.PortName = PortName
	}
	if opt.VsockPort == 0 {
		opt.VsockPort = VsockPort
	}
	if opt.DevDir == "" {
		opt.DevDir = "/dev"
	}
	if opt.SysDir == "" {
		opt.SysDir = "/sys"
	}
	log := s.logger()
	t := opt.Transport
	switch t {
	case "", TransportAuto:
		waiting := false
		for {
			if t = DetectTransport(opt.DevDir, opt.SysDir, opt.PortName); t != "" {
				break
			}
			if !waiting {
				log.Warn("no agent transport yet, waiting: no virtio-serial port and no virtio vsock device",
					"port", opt.PortName)
				waiting = true
			}
			if !sleepCtx(ctx, detectEvery) {
				return nil
			}
		}
	case TransportVirtioSerial, TransportVsock:
	default:
		return fmt.Errorf("unknown transport %q (want %s, %s or %s)", t, TransportAuto, TransportVirtioSerial, TransportVsock)
	}
	switch t {
	case TransportVirtioSerial:
		log.Info("serving on virtio-serial", "port", opt.PortName)
		return s.ServePort(ctx, func() (io.ReadWriteCloser, error) {
			p, err := FindVirtioPort(opt.DevDir, opt.SysDir, opt.PortName)
			if err != nil {
				return nil, err
			}
			return os.OpenFile(p, os.O_RDWR, 0)
		})
	default:
		backoff := portBackoffMin
		for {
			l, err := ListenVsock(opt.VsockPort)
			if err == nil {
				log.Info("serving on vsock", "port", opt.VsockPort)
				return s.ServeListener(ctx, l)
			}
			s.rl().warn("vsock listen failed, retrying", "port", opt.VsockPort, "err", err)
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, portErrorMax)
		}
	}
}

// DetectTransport says which transport this guest offers: virtio-serial
// when the named port exists (QEMU), vsock when a virtio vsock device does
// (Firecracker; device id 0x0013 in /sys/bus/virtio/devices), "" when
// neither does yet. The port wins: it is banger's own channel, whereas a
// vsock device could be there for something else.
func DetectTransport(devDir, sysDir, portName string) string {
	if _, err := FindVirtioPort(devDir, sysDir, portName); err == nil {
		return TransportVirtioSerial
	}
	devs, _ := filepath.Glob(filepath.Join(sysDir, "bus/virtio/devices/*/device"))
	for _, d := range devs {
		if id, err := readLine(d); err == nil && id == "0x0013" {
			return TransportVsock
		}
	}
	return ""
}

// FindVirtioPort returns the device node of the virtio-serial port named
// name: /dev/virtio-ports/NAME when udev made that link, else the
// /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is NAME (images
// without udev).
func FindVirtioPort(devDir, sysDir, name string) (string, error) {
	link := filepath.Join(devDir, "virtio-ports", name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	names, _ := filepath.Glob(filepath.Join(sysDir, "class/virtio-ports/*/name"))
	for _, n := range names {
		if got, err := readLine(n); err == nil && got == name {
			dev := filepath.Join(devDir, filepath.Base(filepath.Dir(n)))
			if _, err := os.Stat(dev); err != nil {
				return "", fmt.Errorf("virtio-serial port %s: %w", name, err)
			}
			return dev, nil
		}
	}
	return "", fmt.Errorf("virtio-serial port %s: not found in %s or %s: %w",
		name, filepath.Join(devDir, "virtio-ports"), filepath.Join(sysDir, "class/virtio-ports"), os.ErrNotExist)
}

// ServePort serves a virtio-serial style port: one byte stream for the VM's
// whole life, shared by every host connection in turn. open opens it (each
// time it must be reopened). A read of EOF means no host is connected: the
// port stays open and is read again after a backoff (portBackoffMin doubling
// up to portIdleMax). Any other failure (EIO, EPIPE, ENODEV, a write that
// blocked past WriteTimeout because the host went away) closes the port and
// reopens it after a backoff (up to portErrorMax). A new read after either
// starts a fresh frame reader, dropping a partial frame. Failures are logged
// at most once a minute each. It returns nil when ctx ends.
func (s *Server) ServePort(ctx context.Context, open func() (io.ReadWriteCloser, error)) error {
	var port io.ReadWriteCloser
	defer func() {
		if port != nil {
			port.Close()
		}
	}()
	backoff := portBackoffMin
	for ctx.Err() == nil {
		if port == nil {
			p, err := open()
			if err != nil {
				s.rl().warn("cannot open the agent port, retrying", "err", err)
				backoff = min(2*backoff, portErrorMax)
				if !sleepCtx(ctx, backoff) {
					return nil
				}
				continue
			}
			s.rl().reset("cannot open the agent port, retrying")
			port = p
		}
		// Close the port when ctx ends in case it has no deadlines.
		p := port
		stop := context.AfterFunc(ctx, func() { p.Close() })
		served, err := s.serveStream(ctx, port)
		if !stop() || ctx.Err() != nil {
			port = nil // closed by the AfterFunc
			return nil
		}
		if served > 0 {
			backoff = portBackoffMin
		}
		if errors.Is(err, io.EOF) {
			backoff = min(2*backoff, portIdleMax)
		} else {
			s.rl().warn("agent port failed, reopening", "err", err)
			port.Close()
			port = nil
			backoff = min(2*backoff, portErrorMax)
		}
		if !sleepCtx(ctx, backoff) {
			return nil
		}
	}
	return nil
}

// ServeListener serves every connection l accepts (at most maxConns at a
// time) until ctx ends; it closes l. Each connection is an independent
// stream, as on vsock.
func (s *Server) ServeListener(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxConns)
	backoff := portBackoffMin
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		conn, err := l.Accept()
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			s.rl().warn("accept failed", "err", err)
			backoff = min(2*backoff, portErrorMax)
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			continue
		}
		backoff = portBackoffMin
		wg.Go(func() {
			defer func() { <-sem }()
			defer conn.Close()
			if err := s.ServeConn(ctx, conn); err != nil && !isEOF(err) {
				s.logger().Debug("connection ended", "remote", conn.RemoteAddr(), "err", err)
			}
		})
	}
}

// ListenVsock listens on AF_VSOCK port port of any local CID (VMADDR_PORT_ANY
// picks a free port). The standard library cannot wrap a vsock socket in a
// net.Listener (net.FileListener refuses the address family), so this does
// it with x/sys/unix and the runtime poller through *os.File.
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", os.NewSyscallError("socket", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock port %d: %w", port, os.NewSyscallError("bind", err))
	}
	if err := unix.Listen(fd, 32); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock port %d: %w", port, os.NewSyscallError("listen", err))
	}
	addr := vsockAddr{CID: unix.VMADDR_CID_ANY, Port: port}
	if sa, err := unix.Getsockname(fd); err == nil {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			addr = vsockAddr{CID: vm.CID, Port: vm.Port}
		}
	}
	f := os.NewFile(uintptr(fd), "vsock:"+addr.String())
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &vsockListener{f: f, rc: rc, addr: addr}, nil
}

type vsockAddr struct{ CID, Port uint32 }

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.CID, a.Port) }

type vsockListener struct {
	f      *os.File
	rc     syscall.RawConn
	addr   vsockAddr
	closed atomic.Bool
}

func (l *vsockListener) Addr() net.Addr { return l.addr }

func (l *vsockListener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}

func (l *vsockListener) Accept() (net.Conn, error) {
	var (
		nfd  int
		sa   unix.Sockaddr
		aerr error
	)
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if aerr != unix.EINTR {
				return aerr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		if l.closed.Load() || errors.Is(err, os.ErrClosed) {
			err = net.ErrClosed // the poller says "use of closed file"
		}
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: err}
	}
	if aerr != nil {
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: os.NewSyscallError("accept4", aerr)}
	}
	remote := vsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = vsockAddr{CID: vm.CID, Port: vm.Port}
	}
	f := os.NewFile(uintptr(nfd), "vsock:"+remote.String())
	return &vsockConn{File: f, local: l.addr, remote: remote}, nil
}

// vsockConn is an accepted vsock stream: a pollable *os.File (so it has
// deadlines) with net.Conn's address methods.
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// sleepCtx sleeps d, returning false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
