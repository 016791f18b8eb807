package rpc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
)

// Limits applied to every connection.
const (
	MaxRequestBytes    = 1 << 20
	DefaultIdleTimeout = 10 * time.Second
)

// JSON-RPC 2.0 error codes.
const (
	codeParseError     = -32700
	codeInvalidRequest = -32600
	codeMethodNotFound = -32601
	codeInvalidParams  = -32602
	codeServerError    = -32000
)

// Handler serves one method. params is the raw "params" member (nil when
// absent). The returned value is marshalled as the result; an error becomes
// a JSON-RPC error with the banger code from api.CodeOf.
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Methods is the dispatch table: method name → handler.
type Methods map[string]Handler

// Names returns the sorted method names.
func (m Methods) Names() []string {
	out := make([]string, 0, len(m))
	for name := range m {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Typed adapts a function taking a decoded params struct. Unknown fields,
// wrong types and malformed params become bad_request errors that name the
// problem.
func Typed[P any, R any](fn func(ctx context.Context, p P) (R, error)) Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p P
		if len(bytes.TrimSpace(raw)) > 0 && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&p); err != nil {
				return nil, api.Errorf(api.CodeBadRequest, "invalid params: %s", describeDecodeError(err))
			}
		}
		return fn(ctx, p)
	}
}

func describeDecodeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "params"
		}
		return fmt.Sprintf("field %q must be %s, not %s", field, te.Type.String(), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

type request struct {
	JSONRPC         string          `json:"jsonrpc"`
	ID              json.RawMessage `json:"id"`
	Method          string          `json:"method"`
	Params          json.RawMessage `json:"params"`
	ProtocolVersion *int            `json:"protocol_version"`
}

type wireError struct {
	Code    int       `json:"code"`
	Message string    `json:"message"`
	Data    errorData `json:"data"`
}

type errorData struct {
	Code api.Code `json:"code"`
}

type response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *wireError      `json:"error,omitempty"`
}

// Server serves a dispatch table on a listener.
type Server struct {
	Methods Methods
	Logger  *slog.Logger
	// AllowedUIDs are the peer uids answered besides root. Empty means the
	// server's own uid only.
	AllowedUIDs []uint32
	IdleTimeout time.Duration

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

type ctxKey int

const opIDKey ctxKey = 0

// OpID returns the op id of the request that ctx belongs to ("" outside one).
func OpID(ctx context.Context) string {
	id, _ := ctx.Value(opIDKey).(string)
	return id
}

// WithOpID returns ctx carrying id, for work started outside a request.
func WithOpID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, opIDKey, id)
}

// NewOpID returns a fresh random op id.
func NewOpID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "op-" + hex.EncodeToString(b[:])
}

// Serve accepts connections until ln is closed. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	if s.Logger == nil {
		s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			continue
		}
		if s.conns == nil {
			s.conns = make(map[net.Conn]struct{})
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, conn)
				s.mu.Unlock()
				conn.Close()
			}()
			s.handleConn(conn)
		}()
	}
}

// Close stops accepting, closes open connections (cancelling their
// requests) and waits for handlers to return.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) handleConn(conn net.Conn) {
	opID := NewOpID()
	log := s.Logger.With("op_id", opID)

	if uid, err := PeerUID(conn); err != nil {
		log.Warn("peer credentials unavailable", "err", err)
		s.writeError(conn, nil, codeServerError, api.Errorf(api.CodeUnauthorized, "cannot verify the caller's identity: %v", err))
		return
	} else if !s.allowed(uid) {
		log.Warn("refused peer", "uid", uid)
		s.writeError(conn, nil, codeServerError, api.Errorf(api.CodeUnauthorized,
			"uid %d may not use this bangerd (it answers root and uid %d); run banger as that user", uid, os.Getuid()))
		return
	}

	idle := s.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	_ = conn.SetReadDeadline(time.Now().Add(idle))
	br := bufio.NewReaderSize(conn, 64<<10)
	line, err := readLine(br, MaxRequestBytes)
	if err != nil {
		switch {
		case errors.Is(err, errTooLarge):
			log.Warn("request too large")
			s.writeError(conn, nil, codeInvalidRequest, api.Errorf(api.CodeBadRequest, "request larger than %d bytes; send smaller params", MaxRequestBytes))
		case isTimeout(err):
			log.Warn("client sent no request", "timeout", idle)
			s.writeError(conn, nil, codeInvalidRequest, api.Errorf(api.CodeBadRequest, "no request received within %s", idle))
		case errors.Is(err, io.EOF) && len(line) == 0:
			// Connected and left: nothing to answer.
		default:
			log.Warn("read request", "err", err)
		}
		if len(line) == 0 || errors.Is(err, errTooLarge) || isTimeout(err) {
			return
		}
	}
	_ = conn.SetReadDeadline(time.Time{})

	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		s.writeError(conn, nil, codeParseError, api.Errorf(api.CodeBadRequest, "malformed JSON request: %s", strings.TrimPrefix(err.Error(), "json: ")))
		return
	}
	if req.JSONRPC != "2.0" || req.Method == "" {
		s.writeError(conn, req.ID, codeInvalidRequest, api.Errorf(api.CodeBadRequest, `invalid JSON-RPC request: need "jsonrpc":"2.0" and a "method"`))
		return
	}
	log = log.With("method", req.Method)
	if req.ProtocolVersion == nil || *req.ProtocolVersion != api.ProtocolVersion {
		got := "none"
		if req.ProtocolVersion != nil {
			got = fmt.Sprint(*req.ProtocolVersion)
		}
		log.Warn("protocol version mismatch", "got", got)
		s.writeError(conn, req.ID, codeInvalidRequest, api.Errorf(api.CodeBadVersion,
			"protocol version %s does not match bangerd's %d; use a banger CLI of the same release as bangerd (banger update, or restart bangerd)", got, api.ProtocolVersion))
		return
	}
	h, ok := s.Methods[req.Method]
	if !ok {
		s.writeError(conn, req.ID, codeMethodNotFound, api.Errorf(api.CodeUnknownMethod, "unknown method %q; see docs/rpc.md for the list", req.Method))
		return
	}

	ctx, cancel := context.WithCancel(WithOpID(context.Background(), opID))
	defer cancel()
	ctx = withLogger(ctx, log)
	// The connection carries exactly one request: any further read
	// completing means the client hung up (or misbehaved), so cancel.
	go func() {
		var b [1]byte
		_, _ = br.Read(b[:])
		cancel()
	}()

	start := time.Now()
	log.Debug("request")
	result, herr := safeCall(ctx, h, req.Params)
	if herr != nil {
		code := api.CodeOf(herr)
		jcode := codeServerError
		if code == api.CodeBadRequest {
			jcode = codeInvalidParams
		}
		log.Info("request failed", "code", code, "err", herr, "duration", time.Since(start))
		s.writeError(conn, req.ID, jcode, herr)
		return
	}
	raw, err := json.Marshal(result)
	if err != nil {
		s.writeError(conn, req.ID, codeServerError, fmt.Errorf("encode result: %w", err))
		return
	}
	// Debug: status polls would otherwise fill the log during a long pull.
	log.Debug("request done", "duration", time.Since(start))
	s.write(conn, response{JSONRPC: "2.0", ID: req.ID, Result: raw})
}

func safeCall(ctx context.Context, h Handler, params json.RawMessage) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	return h(ctx, params)
}

func (s *Server) allowed(uid uint32) bool {
	if uid == 0 {
		return true
	}
	if len(s.AllowedUIDs) == 0 {
		return uid == uint32(os.Getuid())
	}
	for _, u := range s.AllowedUIDs {
		if u == uid {
			return true
		}
	}
	return false
}

func (s *Server) writeError(conn net.Conn, id json.RawMessage, jcode int, err error) {
	msg := err.Error()
	s.write(conn, response{JSONRPC: "2.0", ID: id, Error: &wireError{Code: jcode, Message: msg, Data: errorData{Code: api.CodeOf(err)}}})
}

func (s *Server) write(conn net.Conn, resp response) {
	if resp.ID == nil {
		resp.ID = json.RawMessage("null")
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _ = conn.Write(append(b, '\n'))
}

var errTooLarge = errors.New("request too large")

// readLine reads one newline-terminated line of at most max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > max {
			return nil, errTooLarge
		}
		if err == nil {
			return bytes.TrimRight(buf, "\r\n"), nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(bytes.TrimSpace(buf)) > 0 {
			return bytes.TrimSpace(buf), nil
		}
		return bytes.TrimSpace(buf), err
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// PeerUID is the uid of the process at the other end of a Unix socket
// connection (SO_PEERCRED: its credentials when it connected).
func PeerUID(conn net.Conn) (uint32, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cred.Uid, nil
}

type loggerKey struct{}

func withLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// Logger returns the request's logger (carrying op_id and method), or
// slog.Default outside a request.
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// WithLogger attaches a logger to ctx (for async work that outlives the
// request that started it).
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return withLogger(ctx, l)
}
