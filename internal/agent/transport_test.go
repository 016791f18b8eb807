package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// scriptedPort is a virtio-serial port whose reads follow a script: a
// chunk of bytes, eofChunk (no host connected: read returns EOF) or
// eioChunk (the device failed).
type scriptedPort struct {
	reads  chan []byte
	writes chan []byte
	once   sync.Once
	closed chan struct{}
}

var (
	eofChunk = []byte("<eof>")
	eioChunk = []byte("<eio>")
)

func newScriptedPort() *scriptedPort {
	return &scriptedPort{reads: make(chan []byte, 16), writes: make(chan []byte, 16), closed: make(chan struct{})}
}

func (p *scriptedPort) Read(b []byte) (int, error) {
	select {
	case c := <-p.reads:
		switch {
		case &c[0] == &eofChunk[0]:
			return 0, io.EOF
		case &c[0] == &eioChunk[0]:
			return 0, syscall.EIO
		}
		return copy(b, c), nil
	case <-p.closed:
		return 0, os.ErrClosed
	}
}

func (p *scriptedPort) Write(b []byte) (int, error) {
	select {
	case p.writes <- append([]byte(nil), b...):
		return len(b), nil
	case <-p.closed:
		return 0, os.ErrClosed
	}
}

func (p *scriptedPort) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *scriptedPort) isClosed() bool {
	select {
	case <-p.closed:
		return true
	default:
		return false
	}
}

func readHelloAnswer(t *testing.T, p *scriptedPort) frame {
	t.Helper()
	select {
	case b := <-p.writes:
		var f frame
		if err := json.Unmarshal(b[headerSize:], &f); err != nil {
			t.Fatal(err)
		}
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("no answer from the agent")
	}
	return frame{}
}

// TestServePortReopen: EOF (no host connected) keeps the port open and
// reads it again; an I/O error closes and reopens it; open failures are
// retried.
func TestServePortReopen(t *testing.T) {
	ports := []*scriptedPort{newScriptedPort(), newScriptedPort()}
	var opens, failures atomic.Int32
	srv := &Server{Logger: discardLogger()}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- srv.ServePort(ctx, func() (io.ReadWriteCloser, error) {
			if failures.Add(1) <= 2 {
				return nil, errors.New("no such device") // not there yet
			}
			n := opens.Add(1)
			if int(n) > len(ports) {
				return nil, errors.New("no more ports")
			}
			return ports[n-1], nil
		})
	}()

	hello := func(nonce string) []byte {
		return mustFrame(t, &frame{Type: typeHello, Version: ProtocolVersion, Nonce: nonce})
	}
	p := ports[0]
	p.reads <- eofChunk
	p.reads <- eofChunk
	h := hello("one")
	p.reads <- h[:7] // a partial frame, then the host leaves
	p.reads <- eofChunk
	p.reads <- hello("two")
	if f := readHelloAnswer(t, p); f.Nonce != "two" {
		t.Errorf("answer %+v", f)
	}
	if opens.Load() != 1 || p.isClosed() {
		t.Fatalf("EOF reopened the port (opens %d)", opens.Load())
	}
	p.reads <- eioChunk
	p2 := ports[1]
	p2.reads <- hello("three")
	if f := readHelloAnswer(t, p2); f.Nonce != "three" {
		t.Errorf("answer %+v", f)
	}
	if !p.isClosed() || opens.Load() != 2 {
		t.Errorf("EIO did not reopen: closed %v, opens %d", p.isClosed(), opens.Load())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServePort: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServePort did not stop")
	}
	if !p2.isClosed() {
		t.Error("port left open after ctx ended")
	}
}

// TestServePortWriteTimeout: a write that blocks (no host connected on a
// real port) times out and the port is reopened rather than the agent
// hanging.
func TestServePortWriteTimeout(t *testing.T) {
	agentEnd, hostEnd := socketpairFiles(t)
	defer hostEnd.Close()
	// Fill the socket buffers so the agent's writes block.
	unix.SetsockoptInt(int(agentEnd.Fd()), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	srv := &Server{Logger: discardLogger(), WriteTimeout: 100 * time.Millisecond}
	var opens atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServePort(ctx, func() (io.ReadWriteCloser, error) {
			if opens.Add(1) > 1 {
				return nil, errors.New("gone")
			}
			return agentEnd, nil
		})
	}()
	// Many hellos, never reading the answers.
	for i := range 2000 {
		hostEnd.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := hostEnd.Write(mustFrame(t, &frame{Type: typeHello, Version: 1, Nonce: string(rune('a' + i%26))})); err != nil {
			break
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for opens.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the blocked write never timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

func TestFindVirtioPort(t *testing.T) {
	dev, sys := t.TempDir(), t.TempDir()
	if _, err := FindVirtioPort(dev, sys, PortName); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty: err = %v", err)
	}
	// Without udev: only sysfs names the port.
	mustWrite(t, filepath.Join(sys, "class/virtio-ports/vport0p1/name"), "org.qemu.guest_agent.0\n")
	mustWrite(t, filepath.Join(sys, "class/virtio-ports/vport1p1/name"), PortName+"\n")
	if _, err := FindVirtioPort(dev, sys, PortName); err == nil {
		t.Error("found a port whose /dev node is missing")
	}
	mustWrite(t, filepath.Join(dev, "vport1p1"), "")
	if got, err := FindVirtioPort(dev, sys, PortName); err != nil || got != filepath.Join(dev, "vport1p1") {
		t.Errorf("sysfs: %q, %v", got, err)
	}
	// With udev's link.
	mustWrite(t, filepath.Join(dev, "virtio-ports", PortName), "")
	if got, err := FindVirtioPort(dev, sys, PortName); err != nil || got != filepath.Join(dev, "virtio-ports", PortName) {
		t.Errorf("udev: %q, %v", got, err)
	}
}

func TestDetectTransport(t *testing.T) {
	dev, sys := t.TempDir(), t.TempDir()
	if got := DetectTransport(dev, sys, PortName); got != "" {
		t.Errorf("nothing: %q", got)
	}
	// Firecracker: block, net and a vsock device (id 0x0013).
	mustWrite(t, filepath.Join(sys, "bus/virtio/devices/virtio0/device"), "0x0002\n")
	mustWrite(t, filepath.Join(sys, "bus/virtio/devices/virtio1/device"), "0x0001\n")
	if got := DetectTransport(dev, sys, PortName); got != "" {
		t.Errorf("no vsock: %q", got)
	}
	mustWrite(t, filepath.Join(sys, "bus/virtio/devices/virtio2/device"), "0x0013\n")
	if got := DetectTransport(dev, sys, PortName); got != TransportVsock {
		t.Errorf("vsock device: %q", got)
	}
	// Our port wins.
	mustWrite(t, filepath.Join(dev, "virtio-ports", PortName), "")
	if got := DetectTransport(dev, sys, PortName); got != TransportVirtioSerial {
		t.Errorf("port: %q", got)
	}
}

// TestListenVsock needs AF_VSOCK (a VM with a vsock device, or the
// vsock_loopback module); it binds a free port, never port 52.
func TestListenVsock(t *testing.T) {
	l, err := ListenVsock(unix.VMADDR_PORT_ANY)
	if err != nil {
		t.Skipf("no AF_VSOCK here: %v", err)
	}
	a := l.Addr().(vsockAddr)
	if a.Port == unix.VMADDR_PORT_ANY || a.Network() != "vsock" {
		t.Errorf("addr %v", a)
	}
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Accept")
	}
	// ServeListener on a vsock listener stops with its context.
	l, err = ListenVsock(unix.VMADDR_PORT_ANY)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := (&Server{Logger: discardLogger()}).ServeListener(ctx, l); err != nil {
		t.Errorf("ServeListener: %v", err)
	}
}

func TestRunTransports(t *testing.T) {
	srv := &Server{Logger: discardLogger()}
	if err := srv.Run(t.Context(), Options{Transport: "serial"}); err == nil {
		t.Error("unknown transport accepted")
	}

	// auto with nothing there waits until ctx ends.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Run(ctx, Options{DevDir: t.TempDir(), SysDir: t.TempDir()}); err != nil {
		t.Errorf("auto, nothing: %v", err)
	}

	// auto finds a virtio-serial port (a FIFO here) and opens it.
	dev := t.TempDir()
	mustMkdir(t, filepath.Join(dev, "virtio-ports"))
	fifo := filepath.Join(dev, "virtio-ports", PortName)
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, Options{DevDir: dev, SysDir: t.TempDir()}) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// O_WRONLY|O_NONBLOCK on a FIFO fails with ENXIO until a reader
		// (the agent) has it open.
		fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK, 0)
		if err == nil {
			unix.Close(fd)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never opened the port: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}
