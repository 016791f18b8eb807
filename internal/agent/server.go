package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Server is the guest side: it answers frames on a stream. The zero value
// serves the real /proc; tests point ProcRoot at a fixture tree.
type Server struct {
	// AgentVersion is reported in the hello answer and in Health.
	AgentVersion string
	// ProcRoot is where procfs is mounted ("/proc" when empty).
	ProcRoot string
	// Statfs measures one filesystem (statfs(2) when nil).
	Statfs func(path string) (Disk, error)
	// ByteOrder is how /proc/net prints addresses: the kernel's native
	// order (binary.NativeEndian when nil).
	ByteOrder binary.ByteOrder
	// MaxFDs caps how many /proc/*/fd entries Ports reads to map sockets
	// to processes (DefaultMaxFDs when 0).
	MaxFDs int
	// WriteTimeout bounds one response write on a stream that has write
	// deadlines (DefaultWriteTimeout when 0). A virtio-serial write blocks
	// while no host is connected; after this the stream is reopened.
	WriteTimeout time.Duration
	// Logger receives the agent's log (slog.Default() when nil).
	Logger *slog.Logger
	// Host changes the guest for a restore (the real system when nil).
	Host RestoreHost

	limOnce sync.Once
	lim     *rateLog
}

// Defaults for the Server's knobs.
const (
	DefaultMaxFDs       = 100_000
	DefaultWriteTimeout = 10 * time.Second
	// maxPorts caps the ports answer so it stays far below MaxFrameSize.
	maxPorts = 4096
)

func (s *Server) procRoot() string {
	if s.ProcRoot == "" {
		return "/proc"
	}
	return s.ProcRoot
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// rl is the server's rate-limited logger for things a misbehaving peer or a
// disconnected port can repeat endlessly.
func (s *Server) rl() *rateLog {
	s.limOnce.Do(func() { s.lim = &rateLog{log: s.logger(), every: time.Minute} })
	return s.lim
}

// ServeConn answers frames on rw until rw fails or ctx ends; it does not
// close rw. It answers requests in order, one at a time, and skips anything
// that is not a frame (see frameReader). When ctx ends it returns nil, after
// unblocking a pending read if rw has deadlines (net.Conn and pollable
// *os.File do).
func (s *Server) ServeConn(ctx context.Context, rw io.ReadWriter) error {
	_, err := s.serveStream(ctx, rw)
	return err
}

type deadliner interface {
	SetDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// serveStream is ServeConn that also reports how many frames it answered.
func (s *Server) serveStream(ctx context.Context, rw io.ReadWriter) (int, error) {
	dl, _ := rw.(deadliner)
	if dl != nil {
		// Clear a deadline a previous serve left behind, then arm ctx.
		_ = dl.SetDeadline(time.Time{})
		stop := context.AfterFunc(ctx, func() { _ = dl.SetDeadline(time.Now()) })
		defer stop()
	}
	wt := s.WriteTimeout
	if wt <= 0 {
		wt = DefaultWriteTimeout
	}
	fr := newFrameReader(rw)
	served := 0
	var reported int64
	for {
		p, err := fr.next()
		if d := fr.discarded.Load(); d > reported {
			s.rl().warn("discarded bytes that were not frames", "bytes", d-reported)
			reported = d
		}
		if err != nil {
			if ctx.Err() != nil {
				return served, nil
			}
			return served, err
		}
		var in frame
		if err := json.Unmarshal(p, &in); err != nil {
			s.rl().warn("ignored a frame that is not a message", "err", err)
			continue
		}
		out := s.handle(&in)
		if out == nil {
			continue
		}
		b, err := encodeFrame(out)
		if errors.Is(err, errFrameTooLarge) && out.Type == typeResponse {
			b, err = encodeFrame(&frame{Type: typeResponse, ID: out.ID,
				Error: &RemoteError{Code: CodeTooLarge, Message: err.Error()}})
		}
		if err != nil {
			return served, fmt.Errorf("encode answer: %w", err)
		}
		if dl != nil {
			_ = dl.SetWriteDeadline(time.Now().Add(wt))
		}
		if _, err := rw.Write(b); err != nil {
			if ctx.Err() != nil {
				return served, nil
			}
			return served, fmt.Errorf("write answer: %w", err)
		}
		served++
	}
}

// handle returns the answer to one frame, or nil for frames that get none.
func (s *Server) handle(in *frame) *frame {
	switch in.Type {
	case typeHello:
		return &frame{
			Type:         typeHello,
			Version:      negotiate(in.MinVersion, in.Version),
			AgentVersion: s.AgentVersion,
			Nonce:        in.Nonce,
		}
	case typeRequest:
		out := &frame{Type: typeResponse, ID: in.ID}
		var (
			result any
			err    error
		)
		switch in.Method {
		case MethodHealth:
			result = s.Health()
		case MethodPorts:
			result, err = s.Ports()
		case MethodRestore:
			var p RestoreParams
			if err = json.Unmarshal(in.Params, &p); err == nil {
				result, err = s.restore(p)
			}
		default:
			out.Error = &RemoteError{Code: CodeUnknownMethod,
				Message: fmt.Sprintf("unknown method %q (agent %s, protocol %d)", in.Method, s.AgentVersion, ProtocolVersion)}
			return out
		}
		if err == nil {
			out.Result, err = json.Marshal(result)
		}
		if err != nil {
			out.Error = &RemoteError{Code: CodeInternal, Message: fmt.Sprintf("%s: %v", in.Method, err)}
		}
		return out
	default:
		// Unknown types are ignored, so a newer host can probe.
		return nil
	}
}

// negotiate picks the protocol version to answer a host hello with: the
// newest both speak, or this agent's newest when they share none (the host
// then refuses it with a clear message).
func negotiate(hostMin, hostMax int) int {
	if hostMin <= 0 {
		hostMin = hostMax
	}
	v := min(hostMax, ProtocolVersion)
	if v < MinProtocolVersion || v < hostMin {
		return ProtocolVersion
	}
	return v
}

// rateLog logs a message at most once per interval per message, counting
// what it suppressed, so a port that keeps failing cannot flood the journal.
type rateLog struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	supp map[string]int
}

func (r *rateLog) warn(msg string, args ...any) {
	r.mu.Lock()
	if r.last == nil {
		r.last, r.supp = map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if t, ok := r.last[msg]; ok && now.Sub(t) < r.every {
		r.supp[msg]++
		r.mu.Unlock()
		return
	}
	if n := r.supp[msg]; n > 0 {
		args = append(args, "suppressed", n)
	}
	r.last[msg], r.supp[msg] = now, 0
	r.mu.Unlock()
	r.log.Warn(msg, args...)
}

// reset forgets msg, so its next occurrence is logged at once.
func (r *rateLog) reset(msg string) {
	r.mu.Lock()
	delete(r.last, msg)
	delete(r.supp, msg)
	r.mu.Unlock()
}

// isNotExist reports whether err says a file is missing.
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
