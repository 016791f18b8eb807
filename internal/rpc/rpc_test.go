package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

type echoParams struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	sock     string
	logs     *syncBuffer
	canceled chan string
	srv      *Server
}

func startServer(t testing.TB, idle time.Duration) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{sock: filepath.Join(dir, "d.sock"), logs: &syncBuffer{}, canceled: make(chan string, 1)}
	methods := Methods{
		"echo": Typed(func(ctx context.Context, p echoParams) (echoParams, error) {
			Logger(ctx).Info("echoing", "name", p.Name)
			return p, nil
		}),
		"fail": func(ctx context.Context, _ json.RawMessage) (any, error) {
			return nil, fmt.Errorf("wrapped: %w", api.Errorf(api.CodeNotFound, `vm "x" not found`))
		},
		"block": func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-ctx.Done():
				h.canceled <- OpID(ctx)
				return nil, ctx.Err()
			case <-time.After(10 * time.Second):
				return nil, errors.New("never cancelled")
			}
		},
		"panic": func(ctx context.Context, _ json.RawMessage) (any, error) { panic("boom") },
	}
	h.srv = &Server{Methods: methods, Logger: slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), IdleTimeout: idle}
	ln, err := net.Listen("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		h.srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

func rawExchange(t *testing.T, sock string, payload []byte) map[string]any {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if payload != nil {
		if _, err := conn.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("reply %q: %v", line, err)
	}
	return m
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	d, _ := e["data"].(map[string]any)
	s, _ := d["code"].(string)
	return s
}

func TestCallRoundTripAndOpIDLogged(t *testing.T) {
	h := startServer(t, 0)
	c := &Client{SocketPath: h.sock}
	var out echoParams
	if err := c.Call(context.Background(), "echo", echoParams{Name: "web", Count: 3}, &out); err != nil {
		t.Fatal(err)
	}
	if out.Name != "web" || out.Count != 3 {
		t.Fatalf("echo = %+v", out)
	}
	// Every log line the request caused carries the same op id.
	var opID string
	for _, line := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		id, _ := rec["op_id"].(string)
		if id == "" {
			t.Fatalf("log line without op_id: %s", line)
		}
		if opID == "" {
			opID = id
		} else if id != opID {
			t.Fatalf("op id changed within one request: %s vs %s", id, opID)
		}
	}
	if !strings.Contains(h.logs.String(), `"msg":"echoing"`) {
		t.Fatalf("handler's own log line missing: %s", h.logs.String())
	}
}

func TestErrorsCarryCodes(t *testing.T) {
	h := startServer(t, 0)
	c := &Client{SocketPath: h.sock}
	cases := []struct {
		name   string
		method string
		params any
		code   api.Code
		msg    string
	}{
		{"typed error through wrap", "fail", nil, api.CodeNotFound, `vm "x" not found`},
		{"unknown method", "nope", nil, api.CodeUnknownMethod, `unknown method "nope"`},
		{"wrong param type", "echo", map[string]any{"name": 7}, api.CodeBadRequest, `field "name"`},
		{"unknown param", "echo", map[string]any{"nmae": "x"}, api.CodeBadRequest, `unknown field "nmae"`},
		{"panic contained", "panic", nil, api.CodeOperationFailed, "internal error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Call(context.Background(), tc.method, tc.params, nil)
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want *api.Error", err)
			}
			if ae.Code != tc.code || !strings.Contains(ae.Message, tc.msg) {
				t.Fatalf("got %s %q, want %s containing %q", ae.Code, ae.Message, tc.code, tc.msg)
			}
		})
	}
	// The server still serves after all of that.
	if err := c.Call(context.Background(), "echo", echoParams{Name: "ok"}, nil); err != nil {
		t.Fatalf("server stopped serving: %v", err)
	}
}

func TestBadVersion(t *testing.T) {
	h := startServer(t, 0)
	c := &Client{SocketPath: h.sock, ProtocolVersion: api.ProtocolVersion + 1}
	err := c.Call(context.Background(), "echo", echoParams{}, nil)
	if !api.IsCode(err, api.CodeBadVersion) {
		t.Fatalf("err = %v, want bad_version", err)
	}
	m := rawExchange(t, h.sock, []byte(`{"jsonrpc":"2.0","id":1,"method":"echo"}`+"\n"))
	if errCode(m) != string(api.CodeBadVersion) {
		t.Fatalf("missing version: %v", m)
	}
}

func TestMalformedAndOversizedAndIdle(t *testing.T) {
	h := startServer(t, 300*time.Millisecond)
	cases := []struct {
		name    string
		payload []byte
		code    api.Code
		msg     string
	}{
		{"malformed json", []byte("{not json\n"), api.CodeBadRequest, "malformed JSON"},
		{"not jsonrpc", []byte(`{"method":"echo","protocol_version":1}` + "\n"), api.CodeBadRequest, "jsonrpc"},
		{"oversized", append(bytes.Repeat([]byte("x"), MaxRequestBytes+10), '\n'), api.CodeBadRequest, "larger than"},
		{"silent client", nil, api.CodeBadRequest, "no request received"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := rawExchange(t, h.sock, tc.payload)
			e, _ := m["error"].(map[string]any)
			if errCode(m) != string(tc.code) || !strings.Contains(fmt.Sprint(e["message"]), tc.msg) {
				t.Fatalf("reply %v, want %s with %q", m, tc.code, tc.msg)
			}
		})
	}
	c := &Client{SocketPath: h.sock}
	if err := c.Call(context.Background(), "echo", echoParams{Name: "still"}, nil); err != nil {
		t.Fatalf("server stopped serving after bad input: %v", err)
	}
}

func TestClientDisconnectCancelsRequest(t *testing.T) {
	h := startServer(t, 0)
	c := &Client{SocketPath: h.sock}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Call(ctx, "block", nil, nil) }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case id := <-h.canceled:
		if !strings.HasPrefix(id, "op-") {
			t.Fatalf("cancelled request had op id %q", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler context was not cancelled when the client went away")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client err = %v", err)
	}
}

func TestUnreachableDaemon(t *testing.T) {
	c := &Client{SocketPath: filepath.Join(t.TempDir(), "none.sock")}
	err := c.Call(context.Background(), "ping", nil, nil)
	if !errors.Is(err, ErrDaemonUnreachable) {
		t.Fatalf("err = %v, want ErrDaemonUnreachable", err)
	}
}

// TestPeerCredentials runs a client as another uid (the test binary
// re-executed as nobody) and expects unauthorized.
func TestPeerCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	h := startServer(t, 0)
	if err := os.Chmod(filepath.Dir(h.sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(h.sock, 0o777); err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a private build dir; give nobody a copy.
	binDir := t.TempDir()
	for _, d := range []string{binDir, filepath.Dir(binDir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "rpc.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestHelperClient$")
	cmd.Env = append(os.Environ(), "BANGER_RPC_HELPER_SOCK="+h.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper client: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "CODE=unauthorized") {
		t.Fatalf("other uid was not refused: %s", out)
	}
	// Root (this process) is still answered.
	if err := (&Client{SocketPath: h.sock}).Call(context.Background(), "echo", echoParams{}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestHelperClient(t *testing.T) {
	sock := os.Getenv("BANGER_RPC_HELPER_SOCK")
	if sock == "" {
		t.Skip("helper process only")
	}
	err := (&Client{SocketPath: sock}).Call(context.Background(), "echo", echoParams{}, nil)
	fmt.Printf("CODE=%s ERR=%v\n", api.CodeOf(err), err)
}

// TestClientRefusesAStrangersDaemon: a socket served by another uid (a
// local user who made the runtime directory first) is never sent a byte.
func TestClientRefusesAStrangersDaemon(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a server as another uid")
	}
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "rpc.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "bangerd.sock")
	cmd := exec.Command(bin, "-test.run=^TestHelperServer$")
	cmd.Env = append(os.Environ(), "BANGER_RPC_HELPER_SERVE="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The socket's file exists from bind(), a moment before listen():
	// refused until then.
	for i := 0; i < 100; i++ {
		err = (&Client{SocketPath: sock}).Call(context.Background(), "vm.ssh_info", api.VMRef{Name: "web"}, nil)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !errors.Is(err, ErrUntrustedDaemon) || !strings.Contains(err.Error(), "is served by uid 65534, neither root nor you (uid 0)") {
		t.Fatalf("Call to a stranger's socket = %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper server: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "GOT 0 bytes") {
		t.Fatalf("the client sent the stranger something: %s", out.String())
	}
	// Trusting that uid explicitly lets the call through to the stranger.
	c := &Client{SocketPath: sock, TrustUID: func(uid int) bool { return uid == 65534 }}
	if c.trusted(65534) != true || (&Client{}).trusted(65534) {
		t.Fatal("TrustUID is not what decides")
	}
}

func TestHelperServer(t *testing.T) {
	sock := os.Getenv("BANGER_RPC_HELPER_SERVE")
	if sock == "" {
		t.Skip("helper process only")
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _ := io.Copy(io.Discard, conn)
	fmt.Printf("GOT %d bytes\n", n)
}
