package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"

	"banger/internal/api"
)

// ErrDaemonUnreachable is wrapped by Call when nothing answers on the socket.
var ErrDaemonUnreachable = errors.New("bangerd is not running")

// Client calls methods on a bangerd socket.
type Client struct {
	SocketPath string
	// ProtocolVersion overrides api.ProtocolVersion (tests only).
	ProtocolVersion int
	// TrustUID says whether a daemon running as uid may be talked to;
	// nil trusts root and the caller's own uid only. Whatever answers on a
	// socket someone else could have made is never sent a request.
	TrustUID func(uid int) bool
	seq      atomic.Int64
}

// ErrUntrustedDaemon is wrapped by Call when the process answering on the
// socket runs as a uid the client does not trust.
var ErrUntrustedDaemon = errors.New("the process answering is not a bangerd to trust")

func (c *Client) trusted(uid int) bool {
	if c.TrustUID != nil {
		return c.TrustUID(uid)
	}
	return uid == 0 || uid == os.Getuid()
}

// PeerUID reports the uid of the daemon answering on the socket (one the
// client trusts: root or its own), without sending it anything.
func (c *Client) PeerUID(ctx context.Context) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.SocketPath)
	if err != nil {
		return 0, fmt.Errorf("connect to bangerd at %s: %w", c.SocketPath, err)
	}
	defer conn.Close()
	uid, err := PeerUID(conn)
	if err != nil {
		return 0, err
	}
	if !c.trusted(int(uid)) {
		return 0, fmt.Errorf("%w: %s is served by uid %d", ErrUntrustedDaemon, c.SocketPath, uid)
	}
	return int(uid), nil
}

// Call invokes method with params and decodes the result into result (which
// may be nil). A daemon error comes back as *api.Error. Cancelling ctx
// closes the connection, which cancels the request in the daemon.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.SocketPath)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (no answer on %s): %w", ErrDaemonUnreachable, c.SocketPath, err)
		}
		return fmt.Errorf("connect to bangerd at %s: %w", c.SocketPath, err)
	}
	defer conn.Close()
	// SO_PEERCRED: the uid of the process that listens, checked before a
	// byte is sent (the daemon does the same with its callers).
	uid, err := PeerUID(conn)
	if err != nil {
		return fmt.Errorf("connect to bangerd at %s: cannot tell who answers: %w", c.SocketPath, err)
	}
	if !c.trusted(int(uid)) {
		return fmt.Errorf("%w: %s is served by uid %d, neither root nor you (uid %d); remove it, or point BANGER_SOCKET at your own daemon's socket",
			ErrUntrustedDaemon, c.SocketPath, uid, os.Getuid())
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if params == nil {
		params = struct{}{}
	}
	rawParams, err := json.Marshal(params)
	if err != nil {
		return fmt.Errorf("encode params for %s: %w", method, err)
	}
	pv := c.ProtocolVersion
	if pv == 0 {
		pv = api.ProtocolVersion
	}
	id := c.seq.Add(1)
	req := request{JSONRPC: "2.0", ID: json.RawMessage(fmt.Sprint(id)), Method: method, Params: rawParams, ProtocolVersion: &pv}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, werr := conn.Write(append(b, '\n'))
	if werr != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	// Even when the write failed, the daemon may have answered before it
	// closed the connection (it refuses an unauthorized peer without
	// reading its request): that answer is the useful error.
	br := bufio.NewReaderSize(conn, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if werr != nil {
			return fmt.Errorf("send %s: %w", method, werr)
		}
		return fmt.Errorf("read reply to %s: bangerd closed the connection: %w", method, err)
	}
	var resp response
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("malformed reply to %s: %w", method, err)
	}
	if resp.Error != nil {
		code := resp.Error.Data.Code
		if code == "" {
			code = api.CodeOperationFailed
		}
		return &api.Error{Code: code, Message: resp.Error.Message}
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("decode result of %s: %w", method, err)
		}
	}
	return nil
}
