package privops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/daemon/dmsnap"
	"banger/internal/hostnat"
	"banger/internal/resolved"
	"banger/internal/rpc"
	"banger/internal/vmm/firecracker"
)

// Operation names on the wire.
const (
	opEnsureBridge    = "ensure_bridge"
	opCreateTap       = "create_tap"
	opDeleteTap       = "delete_tap"
	opOpenTap         = "open_tap"
	opSyncNAT         = "sync_nat"
	opNATDiff         = "nat_diff"
	opEnableIPForward = "enable_ip_forward"
	opListenDNS       = "listen_dns"
	opRouteDNS        = "route_dns"
	opUnrouteDNS      = "unroute_dns"
	opSnapshotsOK     = "snapshots_available"
	opAttachSnapshot  = "attach_snapshot"
	opDetachSnapshot  = "detach_snapshot"
	opJailAvailable   = "jail_available"
	opStartJail       = "start_jail"
	opRemoveJail      = "remove_jail"
	opPing            = "ping"
)

// maxRequest bounds what the helper reads from a caller.
const maxRequest = 1 << 20

// request is one operation and its arguments.
type request struct {
	Op     string        `json:"op"`
	Name   string        `json:"name,omitempty"`
	Bridge string        `json:"bridge,omitempty"`
	CIDR   string        `json:"cidr,omitempty"`
	Addr   string        `json:"addr,omitempty"`
	Domain string        `json:"domain,omitempty"`
	Spec   *hostnat.Spec `json:"spec,omitempty"`
	// Handles name the snapshot detach_snapshot removes.
	Handles *dmsnap.Handles `json:"handles,omitempty"`
	// Jail is what start_jail puts in a jail.
	Jail *firecracker.JailRequest `json:"jail,omitempty"`
}

// maxRequestFDs bounds the descriptors a request may carry
// (attach_snapshot's two).
const maxRequestFDs = 2

// requestFDs is how many descriptors each operation takes with its
// request; any other count is refused.
var requestFDs = map[string]int{opAttachSnapshot: 2, opStartJail: 1}

// response is its outcome; descriptors travel beside it (SCM_RIGHTS), in
// the order the operation documents.
type response struct {
	Error *api.Error `json:"error,omitempty"`
	WasOn bool       `json:"was_on,omitempty"`
	Diff  []string   `json:"diff,omitempty"`
	FDs   int        `json:"fds,omitempty"`
	// Unavailable is why snapshots_available says no ("": they work).
	Unavailable string `json:"unavailable,omitempty"`
	// Handles are what attach_snapshot made.
	Handles *dmsnap.Handles `json:"handles,omitempty"`
	// NotManaged: route_dns failed because systemd-resolved does not
	// manage the host's DNS (resolved.ErrNotManaged), not a fault.
	NotManaged bool `json:"not_managed,omitempty"`
	// PID is the jailer start_jail launched; ExecName the name of the
	// helper's firecracker binary (jail_available), which names the
	// jails' directory, and JailBase where its jails are.
	PID      int    `json:"pid,omitempty"`
	ExecName string `json:"exec_name,omitempty"`
	JailBase string `json:"jail_base,omitempty"`
}

// Server is the root helper: it serves Ops on a Unix socket to root and
// the owner's uid only, after checking each request against Policy.
type Server struct {
	Ops    HelperOps
	Policy Policy
	// Owner is the uid of the daemon the helper serves (besides root);
	// OwnerGID its group. Taps the helper makes are theirs.
	Owner    int
	OwnerGID int
	Log      *slog.Logger
	// Jails, when set, runs Firecracker under its jailer for the owner
	// (nil: the helper refuses to).
	Jails *Jails
	// jailMu serialises jail operations: a start never meets the
	// removal of the same jail.
	jailMu sync.Mutex
	// snapMu serialises snapshot operations, each with its answer: an
	// attach's chown, or the teardown of one whose caller went away,
	// never meets another operation on the same name.
	snapMu sync.Mutex
}

// Serve listens on path (replacing a stale socket), gives the socket to
// the owner (mode 0600: the kernel's check before SO_PEERCRED's), and
// serves until ctx ends.
func (s *Server) Serve(ctx context.Context, path string) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("root helper: remove stale socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("root helper: listen on %s: %w", path, err)
	}
	defer os.Remove(path)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	if err := os.Chown(path, s.Owner, -1); err != nil {
		ln.Close()
		return fmt.Errorf("root helper: give %s to uid %d: %w", path, s.Owner, err)
	}
	s.Log.Info("root helper listening", "socket", path, "owner_uid", s.Owner, "bridge", s.Policy.Bridge)
	var wg sync.WaitGroup
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			s.handle(conn)
		}()
	}
}

func (s *Server) handle(conn *net.UnixConn) {
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	// The request is read (bounded) before anything is answered: closing
	// a connection with unread data would reset it, and the caller would
	// see that instead of the answer.
	// The first read takes the descriptors that came with the request.
	var req request
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*maxRequestFDs))
	n, oobn, flags, _, derr := conn.ReadMsgUnix(buf, oob)
	var files []*os.File
	if derr == nil {
		files, derr = filesFrom(oob[:oobn])
	}
	if derr == nil && flags&unix.MSG_CTRUNC != 0 {
		derr = fmt.Errorf("more than %d descriptors came with the request", maxRequestFDs)
	}
	for _, f := range files {
		defer f.Close()
	}
	if derr == nil {
		var rest []byte
		if rest, derr = io.ReadAll(io.LimitReader(conn, maxRequest)); derr == nil {
			derr = json.Unmarshal(append(buf[:n], rest...), &req)
		}
	}
	puid, err := rpc.PeerUID(conn)
	uid := int(puid)
	if err != nil {
		s.reply(conn, response{Error: api.Errorf(api.CodeUnauthorized, "root helper: cannot tell who is calling: %v", err)}, nil)
		return
	}
	if uid != 0 && uid != s.Owner {
		s.Log.Warn("refused a caller", "uid", uid)
		s.reply(conn, response{Error: api.Errorf(api.CodeUnauthorized, "uid %d may not use banger's root helper; it answers root and uid %d (banger's owner)", uid, s.Owner)}, nil)
		return
	}
	if derr != nil {
		s.reply(conn, response{Error: api.Errorf(api.CodeBadRequest, "root helper: unreadable request: %v", derr)}, nil)
		return
	}
	if req.Op == opAttachSnapshot || req.Op == opDetachSnapshot {
		// Held through the answer and a failed answer's teardown: no
		// other snapshot operation comes between them.
		s.snapMu.Lock()
		defer s.snapMu.Unlock()
	}
	if req.Op == opStartJail || req.Op == opRemoveJail {
		s.jailMu.Lock()
		defer s.jailMu.Unlock()
	}
	resp, out := s.do(req, files)
	for _, f := range out {
		defer f.Close()
	}
	switch {
	case resp.NotManaged:
		s.Log.Info("operation not needed here", "op", req.Op, "uid", uid, "reason", resp.Error.Message)
	case resp.Error != nil:
		s.Log.Warn("operation refused or failed", "op", req.Op, "uid", uid, "err", resp.Error.Message)
	default:
		s.Log.Info("operation done", "op", req.Op, "uid", uid, "name", req.Name)
	}
	if err := s.reply(conn, resp, out); err != nil && resp.Handles != nil {
		// The caller never learns of the snapshot: nothing would remove it.
		if derr := s.Ops.DetachSnapshot(*resp.Handles); derr != nil {
			s.Log.Warn("remove a snapshot whose caller went away", "name", resp.Handles.DMName, "err", derr)
		}
	}
}

// do checks req against the policy, then carries it out.
func (s *Server) do(req request, in []*os.File) (response, []*os.File) {
	fail := func(err error) (response, []*os.File) {
		var ae *api.Error
		if !errors.As(err, &ae) {
			ae = api.Errorf(api.CodeOperationFailed, "%v", err)
		}
		return response{Error: ae}, nil
	}
	p := s.Policy
	if len(in) != requestFDs[req.Op] {
		return fail(refuse("%s takes %d descriptors, not %d", req.Op, requestFDs[req.Op], len(in)))
	}
	switch req.Op {
	case opEnsureBridge:
		if err := p.checkBridge(req.Name); err != nil {
			return fail(err)
		}
		if req.CIDR != p.BridgeCIDR {
			return fail(refuse("bridge address %q: banger's is %q (bridge_cidr)", req.CIDR, p.BridgeCIDR))
		}
		if err := s.Ops.EnsureBridge(req.Name, req.CIDR); err != nil {
			return fail(err)
		}
	case opCreateTap, opDeleteTap, opOpenTap:
		if err := p.checkTap(req.Name); err != nil {
			return fail(err)
		}
		switch req.Op {
		case opCreateTap:
			if err := p.checkBridge(req.Bridge); err != nil {
				return fail(err)
			}
			if err := s.Ops.CreateTap(req.Name, req.Bridge); err != nil {
				return fail(err)
			}
			if s.Owner != 0 {
				// The owner's VMMs attach by name where they can
				// (Firecracker); QEMU gets a descriptor anyway.
				if err := s.Ops.SetTapOwner(req.Name, s.Owner, s.OwnerGID); err != nil {
					// Not half made: a tap the owner cannot use goes.
					if derr := s.Ops.DeleteTap(req.Name); derr != nil {
						err = errors.Join(err, derr)
					}
					return fail(err)
				}
			}
		case opDeleteTap:
			if err := s.Ops.DeleteTap(req.Name); err != nil {
				return fail(err)
			}
		case opOpenTap:
			f, err := s.Ops.OpenTap(req.Name)
			if err != nil {
				return fail(err)
			}
			return response{FDs: 1}, []*os.File{f}
		}
	case opSyncNAT, opNATDiff:
		if req.Spec == nil {
			return fail(refuse("%s without rules", req.Op))
		}
		if err := p.checkSpec(*req.Spec); err != nil {
			return fail(err)
		}
		if req.Op == opSyncNAT {
			if err := s.Ops.SyncNAT(*req.Spec); err != nil {
				return fail(err)
			}
			break
		}
		diff, err := s.Ops.NATDiff(*req.Spec)
		if err != nil {
			return fail(err)
		}
		return response{Diff: diff}, nil
	case opRouteDNS:
		if err := p.checkRoute(req.Name, req.Addr, req.Domain); err != nil {
			return fail(err)
		}
		if err := s.Ops.RouteDNS(req.Name, req.Addr, req.Domain); err != nil {
			resp, files := fail(err)
			resp.NotManaged = errors.Is(err, resolved.ErrNotManaged)
			return resp, files
		}
	case opUnrouteDNS:
		if err := p.checkBridge(req.Name); err != nil {
			return fail(err)
		}
		if err := s.Ops.UnrouteDNS(req.Name); err != nil {
			return fail(err)
		}
	case opSnapshotsOK:
		// An answer either way, not a failure of the helper's.
		if err := s.Ops.SnapshotsAvailable(); err != nil {
			return response{Unavailable: err.Error()}, nil
		}
	case opAttachSnapshot:
		if err := p.checkSnapshotName(req.Name); err != nil {
			return fail(err)
		}
		if err := p.checkSnapshotFiles(in[0], in[1], s.Owner); err != nil {
			return fail(err)
		}
		h, err := s.Ops.AttachSnapshot(req.Name, in[0], in[1])
		if err != nil {
			return fail(err)
		}
		if s.Owner != 0 {
			// The owner's VMM opens it; nobody else may.
			if err := s.Ops.SetDeviceOwner(h.DMDev, s.Owner, s.OwnerGID); err != nil {
				if derr := s.Ops.DetachSnapshot(h); derr != nil {
					err = errors.Join(err, derr)
				}
				return fail(err)
			}
		}
		return response{Handles: &h}, nil
	case opDetachSnapshot:
		if req.Handles == nil {
			return fail(refuse("detach_snapshot without handles"))
		}
		if err := p.checkSnapshotRemoval(*req.Handles); err != nil {
			return fail(err)
		}
		if err := s.Ops.DetachSnapshot(*req.Handles); err != nil {
			return fail(err)
		}
	case opJailAvailable, opStartJail, opRemoveJail:
		if s.Jails == nil {
			if req.Op == opJailAvailable {
				return response{Unavailable: "this root helper runs no jailer"}, nil
			}
			return fail(refuse("this root helper runs no jailer"))
		}
		switch req.Op {
		case opJailAvailable:
			_, fc, err := s.Jails.available()
			if err != nil {
				return response{Unavailable: err.Error()}, nil
			}
			return response{ExecName: filepath.Base(fc), JailBase: s.Jails.Base}, nil
		case opStartJail:
			if req.Jail == nil {
				return fail(refuse("start_jail without a jail"))
			}
			pid, err := s.Jails.start(*req.Jail, in[0], s.Owner, s.OwnerGID)
			if err != nil {
				return fail(err)
			}
			return response{PID: pid}, nil
		case opRemoveJail:
			if err := s.Jails.remove(req.Name, s.Owner); err != nil {
				return fail(err)
			}
		}
	case opPing:
		// Answered once the caller passed the peer check: banger doctor
		// asks whether the helper runs and takes the owner.
	case opEnableIPForward:
		wasOn, err := s.Ops.EnableIPForward()
		if err != nil {
			return fail(err)
		}
		return response{WasOn: wasOn}, nil
	case opListenDNS:
		if err := p.checkDNS(req.Addr); err != nil {
			return fail(err)
		}
		pc, ln, err := s.Ops.ListenDNS(req.Addr)
		if err != nil {
			return fail(err)
		}
		defer pc.Close()
		defer ln.Close()
		uf, err := pc.(*net.UDPConn).File()
		if err != nil {
			return fail(err)
		}
		tf, err := ln.(*net.TCPListener).File()
		if err != nil {
			uf.Close()
			return fail(err)
		}
		return response{FDs: 2}, []*os.File{uf, tf}
	default:
		return fail(api.Errorf(api.CodeUnknownMethod, "root helper: unknown operation %q", req.Op))
	}
	return response{}, nil
}

func (s *Server) reply(conn *net.UnixConn, resp response, files []*os.File) error {
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := conn.WriteMsgUnix(b, oob, nil); err != nil {
		s.Log.Warn("answer a caller", "err", err)
		return err
	}
	return nil
}

// Client asks the root helper listening on SocketPath.
type Client struct {
	SocketPath string
	// Timeout bounds one operation (0: 30 s).
	Timeout time.Duration
	// DialWait is how long a socket that is not there yet (or refuses)
	// is retried (0: 10 s; negative: not at all) until the helper has
	// answered once: a helper that was up and is gone fails at once.
	DialWait time.Duration
	reached  atomic.Bool
}

func (c *Client) dialWait() time.Duration {
	switch {
	case c.DialWait < 0 || c.reached.Load():
		return 0
	case c.DialWait == 0:
		return 10 * time.Second
	}
	return c.DialWait
}

func (c *Client) call(req request, send ...*os.File) (response, []*os.File, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	// The helper may be starting (both units start at boot): wait for
	// its socket a little.
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(c.dialWait()); ; {
		conn, err = net.DialTimeout("unix", c.SocketPath, timeout)
		if err == nil || !(errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return response{}, nil, fmt.Errorf("banger's root helper (%s) does not answer: %w; is bangerd-root.service running? (banger system status)", c.SocketPath, err)
	}
	c.reached.Store(true) // up: no more waiting for it to start
	uc := conn.(*net.UnixConn)
	defer uc.Close()
	_ = uc.SetDeadline(time.Now().Add(timeout))
	b, err := json.Marshal(req)
	if err != nil {
		return response{}, nil, err
	}
	var rights []byte
	if len(send) > 0 {
		fds := make([]int, len(send))
		for i, f := range send {
			fds[i] = int(f.Fd())
		}
		rights = unix.UnixRights(fds...)
	}
	if _, _, err := uc.WriteMsgUnix(b, rights, nil); err != nil {
		return response{}, nil, fmt.Errorf("root helper: send %s: %w", req.Op, err)
	}
	_ = uc.CloseWrite()
	// The descriptors come with the answer's first bytes.
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return response{}, nil, fmt.Errorf("root helper: read the answer to %s: %w", req.Op, err)
	}
	files, ferr := filesFrom(oob[:oobn])
	rest, err := io.ReadAll(io.LimitReader(uc, maxRequest))
	if err == nil {
		err = ferr
	}
	var resp response
	if err == nil {
		err = json.Unmarshal(append(buf[:n], rest...), &resp)
	}
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err == nil && len(files) != resp.FDs {
		err = fmt.Errorf("root helper: %s answered %d descriptors, want %d", req.Op, len(files), resp.FDs)
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return resp, nil, err
	}
	return resp, files, nil
}

func filesFrom(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("root helper: control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "root-helper"))
		}
	}
	return files, nil
}

func (c *Client) simple(req request) error {
	_, _, err := c.call(req)
	return err
}

// Ping asks whether the helper answers (and answers the caller).
func (c *Client) Ping() error { return c.simple(request{Op: opPing}) }

func (c *Client) EnsureBridge(name, cidr string) error {
	return c.simple(request{Op: opEnsureBridge, Name: name, CIDR: cidr})
}

func (c *Client) CreateTap(name, bridge string) error {
	return c.simple(request{Op: opCreateTap, Name: name, Bridge: bridge})
}

func (c *Client) DeleteTap(name string) error { return c.simple(request{Op: opDeleteTap, Name: name}) }

func (c *Client) SyncNAT(spec hostnat.Spec) error {
	return c.simple(request{Op: opSyncNAT, Spec: &spec})
}

func (c *Client) NATDiff(spec hostnat.Spec) ([]string, error) {
	resp, _, err := c.call(request{Op: opNATDiff, Spec: &spec})
	return resp.Diff, err
}

func (c *Client) EnableIPForward() (bool, error) {
	resp, _, err := c.call(request{Op: opEnableIPForward})
	return resp.WasOn, err
}

func (c *Client) OpenTap(name string) (*os.File, error) {
	_, files, err := c.call(request{Op: opOpenTap, Name: name})
	if err != nil {
		return nil, err
	}
	return files[0], nil
}

func (c *Client) RouteDNS(link, server, domain string) error {
	resp, _, err := c.call(request{Op: opRouteDNS, Name: link, Addr: server, Domain: domain})
	if err != nil && resp.NotManaged {
		return fmt.Errorf("%w (the root helper says: %v)", resolved.ErrNotManaged, err)
	}
	return err
}

func (c *Client) UnrouteDNS(link string) error {
	return c.simple(request{Op: opUnrouteDNS, Name: link})
}

func (c *Client) SnapshotsAvailable() error {
	resp, _, err := c.call(request{Op: opSnapshotsOK})
	if err == nil && resp.Unavailable != "" {
		err = fmt.Errorf("the root helper cannot make dm snapshots: %s", resp.Unavailable)
	}
	return err
}

func (c *Client) AttachSnapshot(name string, base, cow *os.File) (dmsnap.Handles, error) {
	resp, _, err := c.call(request{Op: opAttachSnapshot, Name: name}, base, cow)
	if err == nil && resp.Handles == nil {
		err = fmt.Errorf("root helper: attach_snapshot answered no handles")
	}
	if err != nil {
		return dmsnap.Handles{}, err
	}
	return *resp.Handles, nil
}

func (c *Client) DetachSnapshot(h dmsnap.Handles) error {
	return c.simple(request{Op: opDetachSnapshot, Handles: &h})
}

func (c *Client) ListenDNS(addr string) (net.PacketConn, net.Listener, error) {
	_, files, err := c.call(request{Op: opListenDNS, Addr: addr})
	if err != nil {
		return nil, nil, err
	}
	defer files[0].Close()
	defer files[1].Close()
	pc, err := net.FilePacketConn(files[0])
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.FileListener(files[1])
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	return pc, ln, nil
}

// JailAvailable asks whether the helper can run Firecracker under its
// jailer, the name of its firecracker binary (which names the jails'
// directory) and where its jails are; the error says why not.
func (c *Client) JailAvailable() (execName, base string, err error) {
	resp, _, err := c.call(request{Op: opJailAvailable})
	if err != nil {
		return "", "", err
	}
	if resp.Unavailable != "" {
		return "", "", errors.New(resp.Unavailable)
	}
	return resp.ExecName, resp.JailBase, nil
}

// StartJail asks the helper to make req's jail and launch the jailer in
// it, its output appended to console (firecracker.JailHelper).
func (c *Client) StartJail(req firecracker.JailRequest, console *os.File) (int, error) {
	resp, _, err := c.call(request{Op: opStartJail, Name: req.ID, Jail: &req}, console)
	if err != nil {
		return 0, err
	}
	return resp.PID, nil
}

// RemoveJail asks the helper to remove the jail and cgroups of id.
func (c *Client) RemoveJail(id string) error {
	return c.simple(request{Op: opRemoveJail, Name: id})
}
