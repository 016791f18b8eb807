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
	"io/fs"
	"os"
	"strings"
)

// Runner runs a host command from argv (internal/system.Exec in bangerd).
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// Host describes where systemd-resolved keeps its state; tests point it
// at temporary files.
type Host struct {
	// RuntimeDir is systemd-resolved's runtime directory
	// (/run/systemd/resolve); it exists while resolved runs.
	RuntimeDir string
	// NetNS and InitNetNS are the network namespace links of this process
	// and of PID 1. resolved lives in the initial namespace and resolves
	// link names there: routing from another namespace would name the
	// wrong link (or none).
	NetNS, InitNetNS string
	// readlink reads a namespace link (os.Readlink; tests replace it).
	readlink func(string) (string, error)
}

// SystemHost is the real host.
var SystemHost = Host{RuntimeDir: "/run/systemd/resolve", NetNS: "/proc/self/ns/net", InitNetNS: "/proc/1/ns/net"}

// ErrNotManaged says systemd-resolved does not manage this host's DNS
// (or banger runs in another network namespace than resolved).
var ErrNotManaged = errors.New("systemd-resolved does not manage this host's DNS")

// Check says whether routing through resolved can work here.
func (h Host) Check() error {
	if _, err := os.Stat(h.RuntimeDir); err != nil {
		return fmt.Errorf("%w (%s: %v)", ErrNotManaged, h.RuntimeDir, err)
	}
	readlink := h.readlink
	if readlink == nil {
		readlink = os.Readlink
	}
	self, err1 := readlink(h.NetNS)
	init, err2 := readlink(h.InitNetNS)
	if err1 == nil && errors.Is(err2, fs.ErrPermission) {
		// PID 1's namespace is hidden from a root process without
		// CAP_SYS_PTRACE — banger's root helper, whose unit bounds its
		// capabilities. It is a system service in the host's namespace,
		// where resolved is; a test's namespace it is run in is not
		// hidden from it (it runs there with every capability).
		return nil
	}
	if err1 != nil || err2 != nil || self != init {
		return fmt.Errorf("%w in this network namespace (bangerd runs in %s, systemd-resolved in %s)", ErrNotManaged, self, init)
	}
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
