package sshx

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// newSigner makes a fresh ed25519 signer for a test.
func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testServer is a minimal SSH server on loopback. It accepts at most
// maxConns connections, authenticates one client key, and answers "exec"
// requests with a tiny command language instead of a shell:
//
//	echo WORDS...   WORDS on stdout, exit 0
//	stderr WORDS... WORDS on stderr, exit 0
//	exit N          exit status N
//	cat             stdin copied to stdout, exit 0
//	hang            wait until the client goes away
type testServer struct {
	Addr string

	ln   net.Listener
	cfg  *ssh.ServerConfig
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]bool
}

// serveSSH starts a test server on ln (already listening on loopback);
// everything it started is stopped in t.Cleanup.
func serveSSH(t *testing.T, ln net.Listener, hostKey ssh.Signer, clientKey ssh.PublicKey, maxConns int) *testServer {
	t.Helper()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), clientKey.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown client key %s", ssh.FingerprintSHA256(key))
		},
	}
	cfg.AddHostKey(hostKey)
	s := &testServer{Addr: ln.Addr().String(), ln: ln, cfg: cfg, open: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.acceptLoop(maxConns)
	t.Cleanup(s.close)
	return s
}

// listenSSH listens on a free loopback port and serves on it.
func listenSSH(t *testing.T, hostKey ssh.Signer, clientKey ssh.PublicKey, maxConns int) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveSSH(t, ln, hostKey, clientKey, maxConns)
}

func (s *testServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *testServer) acceptLoop(maxConns int) {
	defer s.wg.Done()
	for range maxConns {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.open[conn] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				conn.Close()
				s.mu.Lock()
				delete(s.open, conn)
				s.mu.Unlock()
			}()
			s.handle(conn)
		}()
	}
}

func (s *testServer) handle(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(20 * time.Second)) // bound a stuck test
	sc, chans, reqs, err := ssh.NewServerConn(conn, s.cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	connDone := make(chan struct{})
	go func() {
		sc.Wait()
		close(connDone)
	}()
	var sessions sync.WaitGroup
	defer sessions.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			return
		}
		sessions.Add(1)
		go func() {
			defer sessions.Done()
			serveSession(ch, chReqs, connDone)
		}()
	}
}

func serveSession(ch ssh.Channel, reqs <-chan *ssh.Request, connDone <-chan struct{}) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			req.Reply(false, nil)
			continue
		}
		var payload struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
			req.Reply(false, nil)
			return
		}
		req.Reply(true, nil)
		status := runTestCommand(ch, payload.Command, connDone)
		if status < 0 {
			return
		}
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
		return
	}
}

func runTestCommand(ch ssh.Channel, cmd string, connDone <-chan struct{}) int {
	words := strings.Fields(cmd)
	if len(words) == 0 {
		return 127
	}
	switch words[0] {
	case "echo":
		fmt.Fprintln(ch, strings.Join(words[1:], " "))
		return 0
	case "stderr":
		fmt.Fprintln(ch.Stderr(), strings.Join(words[1:], " "))
		return 0
	case "exit":
		n, err := strconv.Atoi(words[1])
		if err != nil {
			return 2
		}
		return n
	case "cat":
		io.Copy(ch, ch)
		return 0
	case "hang":
		select { // until the client goes away, or a bound for a broken test
		case <-connDone:
		case <-time.After(20 * time.Second):
		}
		return -1
	}
	fmt.Fprintf(ch.Stderr(), "%s: command not found\n", words[0])
	return 127
}
