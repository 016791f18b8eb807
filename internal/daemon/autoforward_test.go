package daemon

import (
	"net/netip"
	"reflect"
	"testing"

	"banger/internal/agent"
	"banger/internal/forward"
)

func TestAutoForwardPlan(t *testing.T) {
	guest := func(port uint16, auto bool) forward.Forward {
		return forward.Forward{Spec: forward.Spec{VM: "web", GuestAddr: netip.AddrPortFrom(netip.MustParseAddr("172.30.0.2"), port),
			Proto: forward.TCP, HostPort: port, Auto: auto}}
	}
	ports := []agent.Port{
		{Proto: "tcp", Addr: "0.0.0.0", Port: 22},     // ssh: never
		{Proto: "tcp", Addr: "0.0.0.0", Port: 8000},   // new: forward
		{Proto: "tcp6", Addr: "::", Port: 3000},       // new over IPv6: forward
		{Proto: "tcp", Addr: "127.0.0.1", Port: 5432}, // the guest's own loopback: unreachable, skip
		{Proto: "udp", Addr: "0.0.0.0", Port: 53},     // UDP: not auto-forwarded
		{Proto: "tcp", Addr: "0.0.0.0", Port: 9000},   // already forwarded by hand
	}
	have := []forward.Forward{guest(9000, false), guest(4000, true), guest(7000, false)}
	add, remove := autoForwardPlan(ports, have)
	if want := []uint16{3000, 8000}; !reflect.DeepEqual(add, want) {
		t.Errorf("add = %v, want %v", add, want)
	}
	// 4000 was auto-forwarded and no longer listens; 7000 was made by hand
	// and stays whatever the guest does.
	if len(remove) != 1 || remove[0].GuestAddr.Port() != 4000 {
		t.Errorf("remove = %+v, want only the auto forward of 4000", remove)
	}
	if add, remove := autoForwardPlan(nil, nil); len(add)+len(remove) != 0 {
		t.Errorf("nothing listening, nothing forwarded: %v %v", add, remove)
	}
}
