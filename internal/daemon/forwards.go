package daemon

import (
	"context"
	"net/netip"

	"banger/internal/api"
	"banger/internal/forward"
	"banger/internal/store"
)

// Forwards live in the daemon (internal/forward), so they outlive the CLI
// that asked for them, and end when their VM stops (releaseRuntime).

func toAPIForward(f forward.Forward) api.Forward {
	return api.Forward{Name: f.VM, Proto: string(f.Proto), GuestPort: f.GuestAddr.Port(), HostAddr: f.HostAddr.String(),
		Started: f.Started, BytesIn: f.BytesIn, BytesOut: f.BytesOut, Conns: f.Conns}
}

func (d *Daemon) vmForward(ctx context.Context, p api.VMForwardParams) (api.Forward, error) {
	proto, err := forward.ParseProto(p.Proto)
	if err != nil {
		return api.Forward{}, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	if p.GuestPort == 0 {
		return api.Forward{}, api.Errorf(api.CodeBadRequest, "missing the guest port: banger vm forward NAME GUEST[:HOST]")
	}
	v, unlock, err := d.lockVM(ctx, p.Name)
	if err != nil {
		return api.Forward{}, err
	}
	defer unlock()
	if v.State != store.StateRunning {
		return api.Forward{}, api.Errorf(api.CodeNotRunning, "vm %q is not running (state %s); start it first: forwards end when their VM stops", v.Name, v.State)
	}
	ip, err := netip.ParseAddr(v.IP)
	if err != nil {
		return api.Forward{}, err
	}
	f, err := d.fwd.Add(forward.Spec{VM: v.Name, GuestAddr: netip.AddrPortFrom(ip, p.GuestPort), Proto: proto, HostPort: p.HostPort})
	if err != nil {
		return api.Forward{}, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	return toAPIForward(f), nil
}

func (d *Daemon) vmForwardList(ctx context.Context, p api.VMRef) (api.VMForwardListResult, error) {
	if p.Name != "" {
		if _, err := d.store.GetVM(ctx, p.Name); err != nil {
			return api.VMForwardListResult{}, err
		}
	}
	out := api.VMForwardListResult{Forwards: []api.Forward{}}
	for _, f := range d.fwd.List(p.Name) {
		out.Forwards = append(out.Forwards, toAPIForward(f))
	}
	return out, nil
}

func (d *Daemon) vmForwardStop(ctx context.Context, p api.VMForwardParams) (api.VMForwardListResult, error) {
	proto, err := forward.ParseProto(p.Proto)
	if err != nil {
		return api.VMForwardListResult{}, api.Errorf(api.CodeBadRequest, "%v", err)
	}
	if err := d.fwd.Remove(p.Name, proto, p.HostPort); err != nil {
		return api.VMForwardListResult{}, api.Errorf(api.CodeNotFound, "%v", err)
	}
	return d.vmForwardList(ctx, api.VMRef{Name: p.Name})
}
