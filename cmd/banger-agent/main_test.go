package main

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStaticBuild builds the agent as the image build will (CGO_ENABLED=0)
// and checks the ELF has no interpreter and no shared libraries: it has to
// run in any guest image, whatever libc it has or lacks.
func TestStaticBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			t.Skip("no go tool in PATH")
		}
	}
	out := filepath.Join(t.TempDir(), "banger-agent")
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a PT_INTERP: it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("imported libraries %v (%v)", libs, err)
	}
	v, err := exec.Command(out, "--version").Output()
	if err != nil || !strings.HasPrefix(string(v), "banger-agent ") {
		t.Errorf("--version: %q, %v", v, err)
	}
}

func TestFlags(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--version"}, 0, "protocol 1"},
		{[]string{"--transport", "serial"}, 2, `--transport "serial"`},
		{[]string{"--vsock-port", "0"}, 2, "out of range"},
		{[]string{"--nope"}, 2, "flag provided but not defined"},
		{[]string{"extra"}, 2, "unexpected arguments"},
		{[]string{"-h"}, 0, "-port-name"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String()+stderr.String(), tc.want) {
			t.Errorf("%q: code %d, output %q; want %d with %q", tc.args, code, stdout.String()+stderr.String(), tc.code, tc.want)
		}
	}
}

// TestRunStops: the agent serves until its context ends (SIGTERM in main)
// and exits 0, here while retrying to open a virtio-serial port that does
// not exist (so the test touches no real device).
func TestRunStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := run(ctx, []string{"--transport", "virtio-serial", "--port-name", "org.banger.test-absent", "--proc", t.TempDir()}, &stdout, &stderr)
	if code != 0 {
		t.Errorf("code %d: %s", code, stderr.String())
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %s to stop", time.Since(start))
	}
	log := stderr.String()
	if !strings.Contains(log, "banger-agent starting") || !strings.Contains(log, "cannot open the agent port") {
		t.Errorf("log: %s", log)
	}
	// Bounded logging: one line for the repeated open failure.
	if n := strings.Count(log, "cannot open the agent port"); n != 1 {
		t.Errorf("open failure logged %d times:\n%s", n, log)
	}
}
