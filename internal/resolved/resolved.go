// Package resolved routes the host's lookups of one DNS domain to a
// server of banger's through systemd-resolved, the way `resolvectl` does
// it by hand:
//
//	resolvectl dns    banger0 172.30.0.1    queries for ~vm go to banger's server
//	resolvectl domain banger0 ~vm           on the bridge link, and only those
//	resolvectl default-route banger0 false  (other names keep their resolvers)
//	resolvectl revert banger0               undo, on daemon shutdown
//
// It owns nothing but that per-link setting. It must not edit
// /etc/resolv.conf or any other file: on hosts without systemd-resolved it
// does nothing, and `banger doctor` / the README give the recipe for
// dnsmasq, NetworkManager or plain `dig @`.
package resolved

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Runner runs a host command from argv (internal/system.Exec in bangerd).
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Host describes where systemd-resolved is; tests point it at their own
// directory and listener.
type Host struct {
	// RuntimeDir is systemd-resolved's runtime directory
	// (/run/systemd/resolve); it exists while resolved runs.
	RuntimeDir string
	// Stub is resolved's stub listener (127.0.0.53:53). It answers only
	// in the network namespace resolved runs in, which is what tells
	// that this process is there too: resolvectl names a link by its
	// index in the caller's namespace, and from another one would route
	// some host link (or none). Reading PID 1's namespace instead needs
	// CAP_SYS_PTRACE, which banger's root helper does not have, and
	// names the wrong namespace in a PID namespace of a test's.
	Stub string
}

// SystemHost is the real host.
var SystemHost = Host{RuntimeDir: "/run/systemd/resolve", Stub: "127.0.0.53:53"}

// ErrNotManaged says systemd-resolved does not manage this host's DNS
// (or banger runs in another network namespace than resolved).
var ErrNotManaged = errors.New("systemd-resolved does not manage this host's DNS")

// stubTimeout bounds the probe of resolved's stub listener.
const stubTimeout = time.Second

// Check says whether routing through resolved can work here: resolved
// runs, and its stub listener answers from this network namespace (a
// host whose resolved has DNSStubListener=no is taken for one without
// resolved: NAME.vm then resolves through dns_listen).
func (h Host) Check() error {
	if _, err := os.Stat(h.RuntimeDir); err != nil {
		return fmt.Errorf("%w (%s: %v)", ErrNotManaged, h.RuntimeDir, err)
	}
	c, err := net.DialTimeout("tcp", h.Stub, stubTimeout)
	if err != nil {
		return fmt.Errorf("%w in this network namespace (its stub listener %s does not answer here: %v)", ErrNotManaged, h.Stub, err)
	}
	c.Close()
	return nil
}

// Route sends queries for domain (e.g. "vm") made on this host to server
// (an IP, optionally with :port) over link.
func Route(ctx context.Context, r Runner, link, server, domain string) error {
	if link == "" || server == "" || domain == "" || strings.ContainsAny(link+server+domain, " \t\n") {
		return fmt.Errorf("route ~%s to %s over %s: empty or malformed argument", domain, server, link)
	}
	steps := [][]string{
		{"resolvectl", "dns", link, server},
		{"resolvectl", "domain", link, "~" + domain},
		{"resolvectl", "default-route", link, "false"},
	}
	for _, argv := range steps {
		if _, err := r.Run(ctx, argv...); err != nil {
			_ = Unroute(context.WithoutCancel(ctx), r, link)
			return fmt.Errorf("route ~%s to %s over %s: %w", domain, server, link, err)
		}
	}
	return nil
}

// Unroute drops every per-link DNS setting of link.
func Unroute(ctx context.Context, r Runner, link string) error {
	if _, err := r.Run(ctx, "resolvectl", "revert", link); err != nil {
		return fmt.Errorf("undo DNS routing of %s: %w", link, err)
	}
	return nil
}
