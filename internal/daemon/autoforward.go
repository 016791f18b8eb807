package daemon

import (
	"context"
	"net/netip"
	"slices"

	"banger/internal/agent"
	"banger/internal/forward"
	"banger/internal/store"
)

// Auto-forwarding (vm create --forward-ports, or forward_ports = "auto"):
// the watch loop asks each such VM's agent for its listeners and forwards
// every TCP port reachable from outside the guest to the same port on the
// host's 127.0.0.1 (a free one when that is taken), like lima does; a
// forward it made goes when its listener does. SSH (22) is left out.

// autoForwardPlan compares the guest's listeners with the auto forwards
// in place: the guest ports to forward, and the auto forwards to end.
func autoForwardPlan(ports []agent.Port, have []forward.Forward) (add []uint16, remove []forward.Forward) {
	want := map[uint16]bool{}
	for _, p := range ports {
		if p.Proto != "tcp" && p.Proto != "tcp6" {
			continue
		}
		if p.Port == 22 || p.Addr == "127.0.0.1" || p.Addr == "::1" {
			continue
		}
		want[p.Port] = true
	}
	forwarded := map[uint16]bool{}
	for _, f := range have {
		if f.Proto != forward.TCP {
			continue
		}
		forwarded[f.GuestAddr.Port()] = true
		if f.Auto && !want[f.GuestAddr.Port()] {
			remove = append(remove, f)
		}
	}
	for p := range want {
		if !forwarded[p] {
			add = append(add, p)
		}
	}
	slices.Sort(add)
	return add, remove
}

// autoForward runs one pass for every running VM that asked for it.
func (d *Daemon) autoForward(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	for _, v := range vms {
		if !v.ForwardPorts || v.State != store.StateRunning {
			continue
		}
		d.autoForwardVM(ctx, v)
	}
}

func (d *Daemon) autoForwardVM(ctx context.Context, v store.VM) {
	// Never wait behind a create's or a user's agent call.
	mu := d.agents.of(v.ID)
	if !mu.TryLock() {
		return
	}
	actx, cancel := context.WithTimeout(ctx, agentCallTimeout)
	defer cancel()
	c, err := dialAgent(handleOf(v))(actx)
	if err != nil {
		mu.Unlock()
		return
	}
	ports, err := c.Ports(actx)
	c.Close()
	mu.Unlock()
	if err != nil {
		return
	}
	ip, err := netip.ParseAddr(v.IP)
	if err != nil {
		return
	}
	add, remove := autoForwardPlan(ports, d.fwd.List(v.Name))
	for _, f := range remove {
		if err := d.fwd.Remove(v.Name, f.Proto, f.HostAddr.Port()); err == nil {
			d.log.Info("auto-forward ended: the guest stopped listening", "vm", v.Name, "guest_port", f.GuestAddr.Port())
		}
	}
	for _, port := range add {
		spec := forward.Spec{VM: v.Name, GuestAddr: netip.AddrPortFrom(ip, port), Proto: forward.TCP, HostPort: port, Auto: true}
		f, err := d.fwd.Add(spec)
		if err != nil {
			spec.HostPort = 0 // the same number is taken on the host: any free one
			if f, err = d.fwd.Add(spec); err != nil {
				d.log.Warn("auto-forward", "vm", v.Name, "guest_port", port, "err", err)
				continue
			}
		}
		d.log.Info("auto-forwarded a new guest listener", "vm", v.Name, "guest_port", port, "host", f.HostAddr.String())
	}
}
