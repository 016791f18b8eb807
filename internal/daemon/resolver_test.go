package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"banger/internal/privops"
	"banger/internal/resolved"
)

// routeOps records the daemon's DNS routing requests; everything else is
// Local's, and unused here.
type routeOps struct {
	privops.Local
	routeErr error
	calls    []string
}

func (r *routeOps) RouteDNS(link, server, domain string) error {
	r.calls = append(r.calls, fmt.Sprintf("route %s %s ~%s", link, server, domain))
	return r.routeErr
}

func (r *routeOps) UnrouteDNS(link string) error {
	r.calls = append(r.calls, "unroute "+link)
	return nil
}

// TestRouteResolverThroughOps: the daemon routes ~vm through its Ops (the
// root helper in system mode, which may run resolvectl where the owner may
// not) and undoes exactly that; a host without systemd-resolved is noted,
// not warned about, and nothing is undone.
func TestRouteResolverThroughOps(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	ops := &routeOps{}
	r := routeResolver(log, ops, "bgt0", "10.203.0.1:53")
	if r == nil {
		t.Fatal("routed, but no route to undo")
	}
	r.undo()
	if want := []string{"route bgt0 10.203.0.1:53 ~vm", "unroute bgt0"}; !slices.Equal(ops.calls, want) {
		t.Errorf("calls %q, want %q", ops.calls, want)
	}

	for _, c := range []struct {
		err   error
		level string
	}{
		{fmt.Errorf("%w (no /run/systemd/resolve)", resolved.ErrNotManaged), "level=INFO"},
		{errors.New("resolvectl: exit status 1"), "level=WARN"},
	} {
		logs.Reset()
		ops := &routeOps{routeErr: c.err}
		if r := routeResolver(log, ops, "bgt0", "10.203.0.1:53"); r != nil {
			t.Errorf("%v: a route to undo, want none", c.err)
		}
		if len(ops.calls) != 1 || !strings.Contains(logs.String(), c.level) || !strings.Contains(logs.String(), c.err.Error()) {
			t.Errorf("%v: calls %q, log %q; want one route and %s naming the error", c.err, ops.calls, logs.String(), c.level)
		}
	}
}
