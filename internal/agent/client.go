package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Client timing. A call or a dial whose context has no deadline gets these.
const (
	DefaultCallTimeout      = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// helloRetry is how long the handshake waits for an answer before it
	// sends a new hello; helloMinGap is the least time between two hellos.
	helloRetry  = time.Second
	helloMinGap = 100 * time.Millisecond
	// maxWaste is how many bytes of garbage and stale frames the client
	// reads, since its last useful frame, before it gives the stream up.
	maxWaste = 4 * MaxFrameSize
	// waitAttemptTimeout bounds one WaitHealthy attempt.
	waitAttemptTimeout = 10 * time.Second
)

// VersionError is the handshake's refusal of an agent whose protocol version
// this package does not speak.
type VersionError struct {
	Agent        int    // the protocol version the agent answered with
	AgentVersion string // its build version, when it said
}

func (e *VersionError) Error() string {
	ours := strconv.Itoa(MinProtocolVersion)
	if MinProtocolVersion != ProtocolVersion {
		ours += ".." + strconv.Itoa(ProtocolVersion)
	}
	who := "the guest agent"
	if e.AgentVersion != "" {
		who += " (" + e.AgentVersion + ")"
	}
	return fmt.Sprintf("%s speaks protocol %d, this banger speaks %s: rebuild the image or update banger",
		who, e.Agent, ours)
}

// Client is the host side of one stream to a guest agent. Its methods are
// safe for concurrent use; requests are matched to responses by id. A
// Client that hit a transport or protocol error stays failed: close it and
// dial again.
//
// With QEMU the VM's virtio-serial socket accepts one connection at a time;
// a second Client on the same VM waits (its handshake times out) until the
// first is closed. Keep one Client per VM, or dial per use.
type Client struct {
	conn net.Conn
	fr   *frameReader

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	pending map[uint64]chan *frame
	err     error // why the client failed; set once

	hellos chan *frame
	shook  atomic.Bool // the handshake is over: hellos are stale
	nextID atomic.Uint64
	done   chan struct{} // closed when the read loop ends
	closed atomic.Bool

	stale   atomic.Int64 // frames read that answered nobody
	version int
	agent   string
}

// DialQEMU connects to socketPath, the host unix socket backing a QEMU VM's
// org.banger.agent virtio-serial port (qemu.AgentSocket), and shakes hands.
func DialQEMU(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("guest agent: %w", err)
	}
	return NewClient(ctx, conn)
}

// DialFirecracker connects to vsockUDS, a Firecracker VM's hybrid-vsock unix
// socket (firecracker.AgentSocket), asks Firecracker for guest vsock port
// port ("CONNECT <port>\n", answered "OK <hostport>\n"), then shakes hands.
func DialFirecracker(ctx context.Context, vsockUDS string, port uint32) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", vsockUDS)
	if err != nil {
		return nil, fmt.Errorf("guest agent: %w", err)
	}
	if err := hybridConnect(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("guest agent: hybrid vsock %s: %w", vsockUDS, err)
	}
	return NewClient(ctx, conn)
}

// hybridConnect does Firecracker's hybrid-vsock CONNECT exchange on conn. It
// reads the answer a byte at a time so nothing past its newline is taken
// from the stream.
func hybridConnect(ctx context.Context, conn net.Conn, port uint32) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(DefaultHandshakeTimeout))
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return ctxErr(ctx, fmt.Errorf("CONNECT %d: %w", port, err))
	}
	var line []byte
	var b [1]byte
	for {
		_, err := conn.Read(b[:])
		if err != nil {
			if len(line) == 0 && isEOF(err) {
				return fmt.Errorf("CONNECT %d: firecracker closed the connection (is the agent listening on guest vsock port %d yet?)", port, port)
			}
			return ctxErr(ctx, fmt.Errorf("CONNECT %d: reading the answer: %w", port, err))
		}
		if b[0] == '\n' {
			break
		}
		if len(line) >= 64 {
			return fmt.Errorf("CONNECT %d: answer too long: %q", port, line)
		}
		line = append(line, b[0])
	}
	if !stop() {
		return ctx.Err()
	}
	if ans := string(line); !strings.HasPrefix(ans, "OK ") {
		return fmt.Errorf("CONNECT %d: answered %q, want \"OK <port>\"", port, ans)
	}
	return conn.SetDeadline(time.Time{})
}

// NewClient shakes hands over conn, an established byte stream to an agent,
// and returns a Client that owns conn. The handshake sends a hello with a
// fresh nonce and skips everything but the hello that echoes it: stale
// responses and hellos left in the stream by earlier connections, and
// partial frames. It sends a new hello when a foreign one arrives or none
// has answered for a second, and fails when ctx ends (or after
// DefaultHandshakeTimeout when ctx has no deadline).
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		fr:      newFrameReader(conn),
		pending: map[uint64]chan *frame{},
		hellos:  make(chan *frame, 8),
		done:    make(chan struct{}),
	}
	c.fr.maxDiscard = maxWaste
	c.nextID.Store(randUint64() >> 12) // below 2^52: exact in any JSON reader
	go c.readLoop()
	if err := c.handshake(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// AgentVersion is the agent's build version from the handshake.
func (c *Client) AgentVersion() string { return c.agent }

// Protocol is the protocol version the handshake settled on.
func (c *Client) Protocol() int { return c.version }

// Close closes the stream; calls in flight fail.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		<-c.done
		return nil
	}
	c.fail(net.ErrClosed)
	err := c.conn.Close()
	<-c.done
	return err
}

// Health asks the agent for a Health snapshot.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.call(ctx, MethodHealth, &h)
	return h, err
}

// Ports asks the agent for the guest's listening sockets.
func (c *Client) Ports(ctx context.Context) ([]Port, error) {
	var p []Port
	err := c.call(ctx, MethodPorts, &p)
	return p, err
}

// fail records why the client stopped (first reason wins).
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// failure is the error calls see once the read loop has ended.
func (c *Client) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(c.err, net.ErrClosed) {
		return fmt.Errorf("guest agent: client closed: %w", net.ErrClosed)
	}
	return fmt.Errorf("guest agent: connection lost: %w", c.err)
}

// readLoop routes frames to the handshake and to pending calls until the
// stream fails. Frames that answer nobody are stale (from an earlier
// connection, or a call that gave up) and are dropped; their bytes count
// towards maxWaste like garbage does.
func (c *Client) readLoop() {
	defer close(c.done)
	for {
		p, err := c.fr.next()
		if err != nil {
			if errors.Is(err, errTooMuchGarbage) {
				err = fmt.Errorf("protocol error: %w", err)
			} else if isEOF(err) {
				err = fmt.Errorf("agent closed the stream: %w", err)
			}
			c.fail(err)
			_ = c.conn.Close()
			return
		}
		var f frame
		if json.Unmarshal(p, &f) != nil {
			c.waste(len(p))
			continue
		}
		switch f.Type {
		case typeHello:
			if c.shook.Load() {
				c.waste(len(p))
				continue
			}
			select {
			case c.hellos <- &f:
			default: // nobody is waiting for so many hellos
				c.waste(len(p))
			}
		case typeResponse:
			c.mu.Lock()
			ch := c.pending[f.ID]
			delete(c.pending, f.ID)
			c.mu.Unlock()
			if ch == nil {
				c.waste(len(p))
				continue
			}
			select {
			case ch <- &f: // buffered for the one response per id
			default: // cannot happen: the id was deleted above
			}
		default:
			c.waste(len(p))
		}
	}
}

// waste counts a frame nobody wanted towards maxWaste.
func (c *Client) waste(n int) {
	c.stale.Add(1)
	c.fr.sinceGood += int64(headerSize + n)
}

func (c *Client) write(ctx context.Context, f *frame) error {
	b, err := encodeFrame(f)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(DefaultCallTimeout)
	}
	_ = c.conn.SetWriteDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetWriteDeadline(time.Now()) })
	_, err = c.conn.Write(b)
	stop()
	if err != nil {
		// A partial frame may be on the wire: this stream is done.
		err = ctxErr(ctx, err)
		c.fail(fmt.Errorf("write: %w", err))
		_ = c.conn.Close()
		return fmt.Errorf("guest agent: write: %w", err)
	}
	return nil
}

func (c *Client) handshake(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultHandshakeTimeout)
		defer cancel()
	}
	start := time.Now()
	sent := map[string]bool{}
	var last time.Time
	foreign := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			nonce := newNonce()
			sent[nonce] = true
			last = time.Now()
			err := c.write(ctx, &frame{Type: typeHello, Version: ProtocolVersion, MinVersion: MinProtocolVersion, Nonce: nonce})
			if err != nil {
				return fmt.Errorf("guest agent handshake: %w", err)
			}
			timer.Reset(helloRetry)
		case f := <-c.hellos:
			if !sent[f.Nonce] {
				// A hello answering an earlier connection: the stream had
				// leftovers that may have eaten ours, so ask again soon.
				foreign++
				timer.Reset(max(0, helloMinGap-time.Since(last)))
				continue
			}
			if f.Version < MinProtocolVersion || f.Version > ProtocolVersion {
				return &VersionError{Agent: f.Version, AgentVersion: f.AgentVersion}
			}
			c.version, c.agent = f.Version, f.AgentVersion
			c.shook.Store(true)
			return nil
		case <-c.done:
			return fmt.Errorf("guest agent handshake: %w", c.failure())
		case <-ctx.Done():
			return fmt.Errorf("guest agent handshake: no answer in %s (%d hellos sent, %d foreign hellos, %d bytes discarded): %w",
				time.Since(start).Round(time.Millisecond), len(sent), foreign, c.discarded(), ctx.Err())
		}
	}
}

// discarded is how many bytes the read loop dropped as garbage.
func (c *Client) discarded() int64 { return c.fr.discarded.Load() }

// call sends one request and waits for its response, ctx's end, or the
// stream's failure (DefaultCallTimeout when ctx has no deadline).
func (c *Client) call(ctx context.Context, method string, out any) error {
	return c.callWith(ctx, method, nil, out)
}

// callWith is call with params (a JSON value, or nil for none).
func (c *Client) callWith(ctx context.Context, method string, params json.RawMessage, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	id := c.nextID.Add(1)
	ch := make(chan *frame, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.failure()
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if err := c.write(ctx, &frame{Type: typeRequest, ID: id, Method: method, Params: params}); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case f := <-ch:
		if f.Error != nil {
			return f.Error
		}
		if err := json.Unmarshal(f.Result, out); err != nil {
			return fmt.Errorf("guest agent: %s: bad result: %w", method, err)
		}
		return nil
	case <-c.done:
		return fmt.Errorf("%s: %w", method, c.failure())
	case <-ctx.Done():
		return fmt.Errorf("guest agent: %s: no answer: %w", method, ctx.Err())
	}
}

// WaitHealthy dials and asks for health until an attempt succeeds or ctx
// ends, waiting interval between attempts; each attempt is also bounded by
// waitAttemptTimeout. A VersionError ends it at once: retrying cannot help.
// Otherwise its error wraps ctx's and says what the last attempt saw.
func WaitHealthy(ctx context.Context, dial func(ctx context.Context) (*Client, error), interval time.Duration) (Health, error) {
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		h, err := healthOnce(ctx, dial)
		if err == nil {
			return h, nil
		}
		if _, ok := errors.AsType[*VersionError](err); ok {
			return Health{}, err
		}
		t := time.NewTimer(interval)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return Health{}, fmt.Errorf("guest agent not healthy after %d attempts in %s: %w; last attempt: %w",
				attempt, time.Since(start).Round(time.Millisecond), ctx.Err(), err)
		}
	}
}

func healthOnce(ctx context.Context, dial func(ctx context.Context) (*Client, error)) (Health, error) {
	ctx, cancel := context.WithTimeout(ctx, waitAttemptTimeout)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		return Health{}, err
	}
	defer c.Close()
	return c.Health(ctx)
}

// ctxErr prefers ctx's error when ctx ended, since a deadline it set on the
// conn otherwise reads as a bare i/o timeout.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func randUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

func newNonce() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
