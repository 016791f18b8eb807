package sshx

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestRunReturnsStatusAndOutput(t *testing.T) {
	tests := []struct {
		cmd        string
		stdin      string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{cmd: "echo hello world", wantCode: 0, wantStdout: "hello world\n"},
		{cmd: "exit 3", wantCode: 3},
		{cmd: "exit 0", wantCode: 0},
		{cmd: "stderr oops", wantCode: 0, wantStderr: "oops\n"},
		{cmd: "cat", stdin: "line one\nline two\n", wantCode: 0, wantStdout: "line one\nline two\n"},
		{cmd: "nosuch", wantCode: 127, wantStderr: "nosuch: command not found\n"},
	}
	client := newSigner(t)
	srv := listenSSH(t, newSigner(t), client.PublicKey(), len(tests))
	cfg := ClientConfig("root", client, HostKeyCallback(filepath.Join(t.TempDir(), "known_hosts")))
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stdout, stderr strings.Builder
			code, err := Run(ctx, cfg, srv.Addr, tt.cmd, strings.NewReader(tt.stdin), &stdout, &stderr)
			if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode || stdout.String() != tt.wantStdout || stderr.String() != tt.wantStderr {
				t.Fatalf("Run(%q) = %d, stdout %q, stderr %q; want %d, %q, %q",
					tt.cmd, code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

func TestRunWithUnknownClientKeyFails(t *testing.T) {
	srv := listenSSH(t, newSigner(t), newSigner(t).PublicKey(), 1)
	cfg := ClientConfig("root", newSigner(t), HostKeyCallback(filepath.Join(t.TempDir(), "known_hosts")))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := Run(ctx, cfg, srv.Addr, "echo hi", nil, nil, nil)
	if err == nil || code != -1 || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("Run with a key the server does not accept = %d, %v", code, err)
	}
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	client := newSigner(t)
	srv := listenSSH(t, newSigner(t), client.PublicKey(), 1)
	cfg := ClientConfig("root", client, HostKeyCallback(filepath.Join(t.TempDir(), "known_hosts")))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	code, err := Run(ctx, cfg, srv.Addr, "hang", nil, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || code != -1 {
		t.Fatalf("Run(hang) = %d, %v; want -1 and a deadline error", code, err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("Run took %s to notice the deadline", elapsed)
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestWaitForSSHSucceedsOnceServerListens(t *testing.T) {
	client := newSigner(t)
	hostKey := newSigner(t)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	addr := freeAddr(t)
	const delay = 400 * time.Millisecond

	listenErr := make(chan error, 1)
	timer := time.AfterFunc(delay, func() {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			serveSSH(t, ln, hostKey, client.PublicKey(), 4)
		}
		listenErr <- err
	})
	t.Cleanup(func() { timer.Stop() })

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	err := WaitForSSH(ctx, addr, "root", client, HostKeyCallback(kh, "web.vm"), 50*time.Millisecond)
	elapsed := time.Since(start)
	select {
	case lerr := <-listenErr:
		if lerr != nil {
			t.Skipf("could not listen on %s after the delay (port taken meanwhile): %v", addr, lerr)
		}
	default:
		t.Fatalf("WaitForSSH returned (%v) before the server started", err)
	}
	if err != nil {
		t.Fatalf("WaitForSSH = %v", err)
	}
	if elapsed < delay {
		t.Fatalf("WaitForSSH returned after %s, before the server listened at %s", elapsed, delay)
	}
	// Waiting pinned the host key, as the CLI's strict ssh relies on.
	check, err := knownhosts.New(kh)
	if err != nil {
		t.Fatal(err)
	}
	tcp, _ := net.ResolveTCPAddr("tcp", addr)
	if err := check("web.vm:22", tcp, hostKey.PublicKey()); err != nil {
		t.Fatalf("host key not pinned under web.vm: %v", err)
	}
}

func TestWaitForSSHTimesOut(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := WaitForSSH(ctx, addr, "root", newSigner(t), HostKeyCallback(filepath.Join(t.TempDir(), "known_hosts")), 50*time.Millisecond)
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("WaitForSSH ran %s past a 400ms deadline", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one wrapping context.DeadlineExceeded", err)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("err = %v, want the last attempt's connection refused wrapped too", err)
	}
	if !strings.Contains(err.Error(), "ssh on "+addr+" not ready after") {
		t.Fatalf("err = %q does not say what timed out", err)
	}
}

func TestWaitForSSHGivesUpAtOnceOnChangedHostKey(t *testing.T) {
	client := newSigner(t)
	srv := listenSSH(t, newSigner(t), client.PublicKey(), 4)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	stale := knownhosts.Line([]string{srv.Addr}, newSigner(t).PublicKey()) + "\n"
	if err := os.WriteFile(kh, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := WaitForSSH(ctx, srv.Addr, "root", client, HostKeyCallback(kh), 50*time.Millisecond)
	var changed *HostKeyChangedError
	if !errors.As(err, &changed) {
		t.Fatalf("err = %v, want *HostKeyChangedError", err)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("WaitForSSH kept retrying for %s on a changed host key", elapsed)
	}
}

func TestClientConfigPrefersEd25519(t *testing.T) {
	cfg := ClientConfig("root", newSigner(t), ssh.InsecureIgnoreHostKey())
	if cfg.User != "root" || len(cfg.Auth) != 1 || cfg.HostKeyAlgorithms[0] != ssh.KeyAlgoED25519 {
		t.Fatalf("ClientConfig = %+v", cfg)
	}
}
