package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/agent"
	"banger/internal/api"
	"banger/internal/configdisk"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
)

// agentWaitTimeout bounds how long a booted guest may take to start its
// agent after SSH answers (a variable for the lifecycle tests, as the
// timeouts in vm.go).
var agentWaitTimeout = 60 * time.Second

// agentCallTimeout bounds one agent call made for a read (vm show).
const agentCallTimeout = 3 * time.Second

// agentUnit starts banger-agent in every guest; the binary and the unit
// reach the guest on its configuration disk, so every image gets the
// agent of the banger that boots it.
const agentUnit = `[Unit]
Description=banger guest agent (health, listening ports)

[Service]
ExecStart=/usr/local/bin/banger-agent
Restart=always
RestartSec=1
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
`

// agentBinary finds the banger-agent binary to put in guests: beside
// bangerd (a checkout's bin/, or the install prefix), else on PATH.
var agentBinary = sync.OnceValues(func() ([]byte, error) {
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "banger-agent")
		if data, err := os.ReadFile(p); err == nil {
			return data, nil
		}
		tried = append(tried, p)
	}
	if p, err := system.LookPath("banger-agent"); err == nil {
		return os.ReadFile(p)
	}
	tried = append(tried, "PATH")
	return nil, fmt.Errorf("banger-agent not found (looked in %v); install it beside bangerd (make install does)", tried)
})

// agentFiles are the config-disk files that install and start the agent.
func agentFiles() ([]configdisk.File, error) {
	bin, err := agentBinary()
	if err != nil {
		return nil, err
	}
	return []configdisk.File{
		{Path: "/usr/local/bin/banger-agent", Data: bin, Mode: 0o755},
		{Path: "/etc/systemd/system/banger-agent.service", Data: []byte(agentUnit)},
		{Path: "/etc/systemd/system/multi-user.target.wants/banger-agent.service", Target: "/etc/systemd/system/banger-agent.service"},
	}, nil
}

// agentLocks serialises the daemon's connections to one VM's agent: the
// QEMU channel takes one host connection at a time.
type agentLocks struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (a *agentLocks) of(id string) *sync.Mutex {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.locks == nil {
		a.locks = map[string]*sync.Mutex{}
	}
	m, ok := a.locks[id]
	if !ok {
		m = &sync.Mutex{}
		a.locks[id] = m
	}
	return m
}

// dialAgent connects to a running VM's agent by its VMM's channel.
func dialAgent(h vmm.Handle) func(ctx context.Context) (*agent.Client, error) {
	sock := vmm.AgentSocket(h)
	return func(ctx context.Context) (*agent.Client, error) {
		if h.Driver == firecracker.DriverName {
			return agent.DialFirecracker(ctx, sock, agent.VsockPort)
		}
		return agent.DialQEMU(ctx, sock)
	}
}

// withAgent runs fn with a connection to v's agent.
func (d *Daemon) withAgent(ctx context.Context, v store.VM, fn func(*agent.Client) error) error {
	if v.State != store.StateRunning {
		return api.Errorf(api.CodeNotRunning, "vm %q is not running (state %s); start it with banger vm start %s", v.Name, v.State, v.Name)
	}
	return d.withBootingAgent(ctx, v, fn)
}

// withBootingAgent is withAgent for a boot step: the VM is not running
// yet, its VMM is.
func (d *Daemon) withBootingAgent(ctx context.Context, v store.VM, fn func(*agent.Client) error) error {
	mu := d.agents.of(v.ID)
	mu.Lock()
	defer mu.Unlock()
	c, err := dialAgent(handleOf(v))(ctx)
	if err != nil {
		return agentError(v, err)
	}
	defer c.Close()
	if err := fn(c); err != nil {
		return agentError(v, err)
	}
	return nil
}

func agentError(v store.VM, err error) error {
	var ve *agent.VersionError
	if errors.As(err, &ve) {
		return api.Errorf(api.CodeOperationFailed, "vm %s: %v", v.Name, err)
	}
	return api.Errorf(api.CodeOperationFailed, "the guest agent of %s does not answer: %v", v.Name, err)
}

// waitAgent waits for a booting VM's agent to report health.
func (d *Daemon) waitAgent(ctx context.Context, v store.VM) (agent.Health, error) {
	mu := d.agents.of(v.ID)
	mu.Lock()
	defer mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, agentWaitTimeout)
	defer cancel()
	return agent.WaitHealthy(wctx, dialAgent(handleOf(v)), 250*time.Millisecond)
}

func toAPIHealth(h agent.Health) *api.AgentHealth {
	out := &api.AgentHealth{AgentVersion: h.AgentVersion, UptimeS: h.UptimeS, Load1: h.Load1, Load5: h.Load5, Load15: h.Load15,
		MemTotal: h.MemTotal, MemAvailable: h.MemAvailable, Hostname: h.Hostname, BootID: h.BootID, Warnings: h.Warnings}
	for _, disk := range h.Disks {
		out.Disks = append(out.Disks, api.AgentDisk{Path: disk.Path, Size: disk.Size, Used: disk.Used, Avail: disk.Avail})
	}
	return out
}

func (d *Daemon) vmHealth(ctx context.Context, p api.VMRef) (api.AgentHealth, error) {
	v, err := d.getVM(ctx, p.Name)
	if err != nil {
		return api.AgentHealth{}, err
	}
	var h agent.Health
	err = d.withAgent(ctx, v, func(c *agent.Client) error {
		var err error
		h, err = c.Health(ctx)
		return err
	})
	if err != nil {
		return api.AgentHealth{}, err
	}
	return *toAPIHealth(h), nil
}

func (d *Daemon) vmPorts(ctx context.Context, p api.VMRef) (api.VMPortsResult, error) {
	v, err := d.getVM(ctx, p.Name)
	if err != nil {
		return api.VMPortsResult{}, err
	}
	var ports []agent.Port
	err = d.withAgent(ctx, v, func(c *agent.Client) error {
		var err error
		ports, err = c.Ports(ctx)
		return err
	})
	if err != nil {
		return api.VMPortsResult{}, err
	}
	out := api.VMPortsResult{Name: v.Name, DNSName: v.Name + ".vm", Ports: []api.GuestPort{}}
	for _, p := range ports {
		out.Ports = append(out.Ports, api.GuestPort{Proto: p.Proto, Addr: p.Addr, Port: p.Port, PID: p.PID, Process: p.Process})
	}
	probeHTTP(ctx, v, out.Ports)
	return out, nil
}

// probeHTTP marks the TCP ports reachable from the host (not bound to
// the guest's loopback) that answer an HTTP request, at most 16 at once,
// each bounded.
func probeHTTP(ctx context.Context, v store.VM, ports []api.GuestPort) {
	client := &http.Client{Timeout: 700 * time.Millisecond, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range ports {
		p := &ports[i]
		if !strings.HasPrefix(p.Proto, "tcp") || p.Addr == "127.0.0.1" || p.Addr == "::1" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, err := http.NewRequestWithContext(ctx, http.MethodHead, fmt.Sprintf("http://%s:%d/", v.IP, p.Port), nil)
			if err != nil {
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
			p.URL = fmt.Sprintf("http://%s.vm:%d/", v.Name, p.Port)
		}()
	}
	wg.Wait()
}
