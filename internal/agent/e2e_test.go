package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQEMU stands in for QEMU's virtio-serial chardev: a unix listener (the
// VM's agent.sock, one host connection at a time) bridged onto one
// long-lived stream (the port, a socketpair whose other end the agent
// serves). As with the real port, the stream outlives host connections:
// what the agent writes while no host is connected waits for the next one,
// and a chunk that cannot be delivered to a host that just left is lost.
type fakeQEMU struct {
	ln   net.Listener
	port net.Conn

	mu      sync.Mutex
	cond    *sync.Cond
	cur     net.Conn
	held    bool // hold the agent's output (test control)
	closed  bool
	waiting chan struct{} // signalled when the pump holds agent output
}

func newFakeQEMU(t *testing.T, sock string) (*fakeQEMU, *os.File) {
	t.Helper()
	agentEnd, qemuEnd := socketpairFiles(t)
	port, err := net.FileConn(qemuEnd)
	if err != nil {
		t.Fatal(err)
	}
	qemuEnd.Close()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	q := &fakeQEMU{ln: ln, port: port, waiting: make(chan struct{}, 1)}
	q.cond = sync.NewCond(&q.mu)
	go q.acceptLoop()
	go q.pump()
	t.Cleanup(func() {
		ln.Close()
		port.Close()
		q.mu.Lock()
		q.closed = true
		if q.cur != nil {
			q.cur.Close()
		}
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	return q, agentEnd
}

func (q *fakeQEMU) acceptLoop() {
	for {
		c, err := q.ln.Accept()
		if err != nil {
			return
		}
		q.mu.Lock()
		q.cur = c
		q.cond.Broadcast()
		q.mu.Unlock()
		io.Copy(q.port, c) // host -> guest until the host hangs up
		c.Close()
		q.mu.Lock()
		q.cur = nil
		q.cond.Broadcast()
		q.mu.Unlock()
	}
}

func (q *fakeQEMU) pump() {
	buf := make([]byte, 32<<10)
	for {
		n, err := q.port.Read(buf)
		if err != nil {
			return
		}
		select {
		case q.waiting <- struct{}{}:
		default:
		}
		q.mu.Lock()
		for !q.closed && (q.cur == nil || q.held) {
			q.cond.Wait()
		}
		c := q.cur
		q.mu.Unlock()
		if c != nil {
			c.Write(buf[:n]) // lost if the host just left
		}
	}
}

func (q *fakeQEMU) hold(h bool) {
	q.mu.Lock()
	q.held = h
	q.cond.Broadcast()
	q.mu.Unlock()
}

// waitNoHost waits until the current host connection is gone.
func (q *fakeQEMU) waitNoHost(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		idle := q.cur == nil
		q.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("host connection did not go away")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testServer is a real agent server on the fixture /proc.
func testServer(t *testing.T) *Server {
	return &Server{
		AgentVersion: "v9.9.9-test",
		ProcRoot:     fakeProc(t),
		Statfs:       fakeStatfs,
		ByteOrder:    binary.LittleEndian,
		Logger:       discardLogger(),
	}
}

func checkAnswers(t *testing.T, ctx context.Context, c *Client) {
	t.Helper()
	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h, wantHealth) {
		t.Errorf("Health:\n got  %+v\n want %+v", h, wantHealth)
	}
	p, err := c.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p, wantPorts) {
		t.Errorf("Ports:\n got  %+v\n want %+v", p, wantPorts)
	}
}

// TestQEMUPath runs the whole QEMU path: DialQEMU on the VM's agent.sock,
// the fake chardev, the agent's ServePort loop on its end of the port.
func TestQEMUPath(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	q, agentEnd := newFakeQEMU(t, sock)
	srv := testServer(t)
	ctx := ctxFor(t, 30*time.Second)
	opened := 0
	done := make(chan error, 1)
	go func() {
		done <- srv.ServePort(ctx, func() (io.ReadWriteCloser, error) {
			if opened++; opened > 1 {
				return nil, fmt.Errorf("the test's port cannot be reopened")
			}
			return agentEnd, nil
		})
	}()

	dial := func(ctx context.Context) (*Client, error) { return DialQEMU(ctx, sock) }
	h, err := WaitHealthy(ctx, dial, 20*time.Millisecond)
	if err != nil || h.BootID != wantHealth.BootID {
		t.Fatalf("WaitHealthy = %+v, %v", h, err)
	}
	c, err := DialQEMU(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	checkAnswers(t, ctx, c)
	c.Close()
	q.waitNoHost(t)

	// A host that asks and leaves before the answer: the answer waits in
	// the port and reaches the next host, which must skip it.
	q.hold(true)
	select {
	case <-q.waiting: // drop a signal left from the first host
	default:
	}
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write(mustFrame(t, &frame{Type: typeRequest, ID: 4242, Method: MethodPorts}))
	raw.Write(mustFrame(t, &frame{Type: typeHello, Version: ProtocolVersion, Nonce: "gone"}))
	select {
	case <-q.waiting: // the pump holds the first answer
	case <-ctx.Done():
		t.Fatal("the agent did not answer")
	}
	time.Sleep(50 * time.Millisecond) // let the second queue in the port
	raw.Close()
	q.waitNoHost(t)
	q.hold(false)

	c, err = DialQEMU(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkAnswers(t, ctx, c)
	if c.stale.Load() == 0 {
		t.Error("the previous host's answers were not seen as stale")
	}
	if c.AgentVersion() != "v9.9.9-test" {
		t.Errorf("agent version %q", c.AgentVersion())
	}
	select {
	case err := <-done:
		t.Fatalf("ServePort returned early: %v", err)
	default:
	}
	if opened != 1 {
		t.Errorf("port opened %d times", opened)
	}
}

// fakeFirecracker stands in for Firecracker's hybrid vsock: a unix listener
// (the VM's vsock.sock) that reads "CONNECT <port>\n", connects to the
// guest's listener on that port (here a unix socket per port), answers
// "OK <hostport>\n" and splices the two streams.
func fakeFirecracker(t *testing.T, sock string, guest map[uint32]string) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// Byte at a time: nothing past the newline may be taken.
				var line []byte
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					if b[0] == '\n' {
						break
					}
					line = append(line, b[0])
				}
				var port uint32
				if _, err := fmt.Sscanf(string(line), "CONNECT %d", &port); err != nil {
					return
				}
				path, ok := guest[port]
				if !ok {
					return // nobody listens: Firecracker drops the connection
				}
				g, err := net.Dial("unix", path)
				if err != nil {
					return
				}
				defer g.Close()
				fmt.Fprintf(c, "OK %d\n", 1234)
				go func() { io.Copy(g, c); g.(*net.UnixConn).CloseWrite() }()
				io.Copy(c, g)
			}()
		}
	}()
}

// TestFirecrackerPath runs the whole Firecracker path: DialFirecracker on
// the VM's vsock.sock, the fake hybrid vsock, the agent's ServeListener.
func TestFirecrackerPath(t *testing.T) {
	dir := t.TempDir()
	guestSock := filepath.Join(dir, "guest-vsock-52")
	gl, err := net.Listen("unix", guestSock)
	if err != nil {
		t.Fatal(err)
	}
	vsock := filepath.Join(dir, "vsock.sock")
	fakeFirecracker(t, vsock, map[uint32]string{VsockPort: guestSock})
	srv := testServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ctx, gl) }()

	// Two clients at once: vsock streams are independent.
	c1, err := DialFirecracker(ctx, vsock, VsockPort)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := DialFirecracker(ctx, vsock, VsockPort)
	if err != nil {
		t.Fatal(err)
	}
	checkAnswers(t, ctx, c1)
	checkAnswers(t, ctx, c2)
	c1.Close()
	c2.Close()

	h, err := WaitHealthy(ctx, func(ctx context.Context) (*Client, error) {
		return DialFirecracker(ctx, vsock, VsockPort)
	}, 10*time.Millisecond)
	if err != nil || h.Hostname != "dev-vm" {
		t.Errorf("WaitHealthy = %+v, %v", h, err)
	}

	// A port nobody listens on: Firecracker hangs up.
	_, err = DialFirecracker(ctx, vsock, 53)
	if err == nil || !strings.Contains(err.Error(), "firecracker closed the connection") {
		t.Errorf("CONNECT 53: err = %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeListener did not stop")
	}
}

func TestDialFirecrackerBadAnswers(t *testing.T) {
	for name, answer := range map[string]string{
		"refused":  "FAILURE connection refused\n",
		"too long": strings.Repeat("O", 100) + "\n",
		"closed":   "",
	} {
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "vsock.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, answer)
			}()
			_, err = DialFirecracker(ctxFor(t, 5*time.Second), sock, VsockPort)
			if err == nil || !strings.Contains(err.Error(), "CONNECT 52") {
				t.Errorf("err = %v", err)
			}
		})
	}
	// Nobody answers at all: the dial ends with its context.
	sock := filepath.Join(t.TempDir(), "vsock.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	_, err = DialFirecracker(ctxFor(t, 200*time.Millisecond), sock, VsockPort)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("err = %v after %s", err, time.Since(start))
	}
	// No socket: the dial error names it.
	_, err = DialQEMU(t.Context(), filepath.Join(t.TempDir(), "missing.sock"))
	if err == nil || !strings.Contains(err.Error(), "missing.sock") {
		t.Errorf("DialQEMU missing: %v", err)
	}
}
