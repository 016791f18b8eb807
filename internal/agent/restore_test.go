package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// recordingHost is a RestoreHost that records what a restore asked for.
type recordingHost struct {
	calls []string
	fail  string // the call that fails
}

func (h *recordingHost) do(call string) error {
	h.calls = append(h.calls, call)
	if h.fail != "" && strings.HasPrefix(call, h.fail) {
		return errors.New("injected")
	}
	return nil
}
func (h *recordingHost) AddEntropy(b []byte) error { return h.do(fmt.Sprintf("entropy %d", len(b))) }
func (h *recordingHost) SetClock(n int64) error    { return h.do(fmt.Sprintf("clock %d", n)) }
func (h *recordingHost) WriteFile(p string, data []byte, mode fs.FileMode) error {
	return h.do(fmt.Sprintf("file %s %q %o", p, data, mode))
}
func (h *recordingHost) SetHostname(n string) error { return h.do("hostname " + n) }
func (h *recordingHost) SetNetwork(old, mac net.HardwareAddr, addr netip.Prefix, gw netip.Addr) error {
	return h.do(fmt.Sprintf("network %s->%s %s via %s", old, mac, addr, gw))
}
func (h *recordingHost) GrowWork() error   { return h.do("grow") }
func (h *recordingHost) ReloadSSHD() error { return h.do("sshd") }

func validRestore() RestoreParams {
	return RestoreParams{Hostname: "web", OldMAC: "52:54:00:00:00:02", MAC: "52:54:00:00:00:09",
		Address: "172.31.250.9/24", Gateway: "172.31.250.1", Entropy: make([]byte, 64), UnixNano: 42,
		Files:    []RestoreFile{{Path: "/etc/hostname", Data: []byte("web\n"), Mode: 0o644}, {Path: "/etc/ssh/ssh_host_ed25519_key", Data: []byte("k"), Mode: 0o600}},
		GrowWork: true, ReloadSSHD: true}
}

// TestRestoreOverTheWire: the host's Restore reaches the server, which
// changes the guest in order: randomness first, the network last but the
// work disk.
func TestRestoreOverTheWire(t *testing.T) {
	host := &recordingHost{}
	hostEnd, agentEnd := net.Pipe()
	srv := &Server{AgentVersion: "test", Host: host}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.ServeConn(ctx, agentEnd)
	c, err := NewClient(ctx, hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Restore(ctx, validRestore())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"entropy 64", "clock 42",
		`file /etc/hostname "web\n" 644`, `file /etc/ssh/ssh_host_ed25519_key "k" 600`,
		"hostname web", "sshd",
		"network 52:54:00:00:00:02->52:54:00:00:00:09 172.31.250.9/24 via 172.31.250.1",
		"grow",
	}
	if strings.Join(host.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(host.calls, "\n"), strings.Join(want, "\n"))
	}
	if len(res.Steps) != 7 || res.Steps[0].Name != "reseed rng" || res.Steps[6].Name != "grow work disk" {
		t.Errorf("steps = %+v", res.Steps)
	}
}

func TestRestoreRefusesBadParams(t *testing.T) {
	cases := map[string]func(p *RestoreParams){
		"little entropy":   func(p *RestoreParams) { p.Entropy = make([]byte, 31) },
		"bad hostname":     func(p *RestoreParams) { p.Hostname = "a/b" },
		"bad mac":          func(p *RestoreParams) { p.MAC = "nope" },
		"ipv6 address":     func(p *RestoreParams) { p.Address = "fd00::2/64" },
		"gateway outside":  func(p *RestoreParams) { p.Gateway = "10.0.0.1" },
		"file outside etc": func(p *RestoreParams) { p.Files = []RestoreFile{{Path: "/root/.ssh/authorized_keys"}} },
		"unclean path":     func(p *RestoreParams) { p.Files = []RestoreFile{{Path: "/etc/../bin/sh"}} },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			host := &recordingHost{}
			p := validRestore()
			mutate(&p)
			if _, err := (&Server{Host: host}).restore(p); err == nil {
				t.Fatal("accepted")
			}
			if len(host.calls) != 0 {
				t.Errorf("a refused restore changed the guest: %v", host.calls)
			}
		})
	}
}

// A failing step stops the restore there and is named.
func TestRestoreStopsAtFailure(t *testing.T) {
	host := &recordingHost{fail: "hostname"}
	_, err := (&Server{Host: host}).restore(validRestore())
	if err == nil || !strings.Contains(err.Error(), "set hostname: injected") {
		t.Fatalf("err = %v", err)
	}
	if last := host.calls[len(host.calls)-1]; last != "hostname web" {
		t.Errorf("went on after the failure: %v", host.calls)
	}
}
