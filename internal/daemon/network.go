package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/dns"
	"banger/internal/hostnat"
	"banger/internal/hostnet"
	"banger/internal/privops"
	"banger/internal/resolved"
	"banger/internal/store"
)

// network is the daemon's network service: the bridge, the warm tap pool,
// the NAT and anti-spoofing rules and the DNS server of the .vm zone. What
// it installs is derived from the VM rows every time (sync), never from
// memory, so a restarted daemon converges on exactly the rules and records
// it should have, and removes the ones it should not.
//
// Lock order: a VM's lifecycle lock may be held when calling sync; sync
// takes mu; store transactions are innermost.
type network struct {
	cfg   config.Config
	log   *slog.Logger
	store *store.Store
	priv  privops.Ops // the bridge, taps, rules and port 53 are its

	gateway netip.Addr
	subnet  netip.Prefix

	// sshConfig, sshKey and knownHosts: the ssh_config file kept current
	// for `banger ssh-config` (empty: none).
	sshConfig, sshKey, knownHosts string

	pool   *hostnet.Pool
	zone   *dns.Zone
	server *dns.Server
	route  *resolverRoute

	mu sync.Mutex // serialises sync and ip_forward bookkeeping
	// live is set once start succeeded: only then does sync touch the
	// kernel's rules (a daemon serving without its network never does).
	live bool
	// ipForward says what banger found and did to net.ipv4.ip_forward:
	// "" (untouched: no NAT VM has run), "already on", "enabled by banger".
	ipForward string
	// natErr is the last error installing rules (nftables missing, say).
	natErr error
}

func newNetwork(cfg config.Config, log *slog.Logger, st *store.Store, priv privops.Ops) (*network, error) {
	gw, bits, err := hostnet.Gateway(cfg.BridgeCIDR)
	if err != nil {
		return nil, err
	}
	gateway := netip.MustParseAddr(gw)
	return &network{cfg: cfg, log: log, store: st, priv: priv, gateway: gateway,
		subnet: netip.PrefixFrom(gateway, bits).Masked(), zone: dns.NewZone()}, nil
}

// start brings up the host side of the VM network: the bridge (after
// checking its subnet against the host's routes), the tap pool, both DNS
// listeners, the rules of the VMs on record and, where systemd-resolved
// runs, the routing of ~vm to banger's server. Configuration problems
// (an overlapping bridge_cidr, a dns_listen in use) are errors naming the
// key; the daemon does not start with them.
func (n *network) start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if err := hostnet.CheckCIDR(n.cfg.BridgeCIDR, n.cfg.BridgeName); err != nil {
		return err
	}
	if err := n.priv.EnsureBridge(n.cfg.BridgeName, n.cfg.BridgeCIDR); err != nil {
		return err
	}
	pool, err := hostnet.NewPool(n.cfg.BridgeName, n.cfg.TapPoolSize, n.log)
	if err != nil {
		return err
	}
	pool.UseLinks(n.priv)
	n.mu.Lock()
	n.pool = pool
	n.mu.Unlock()
	// Taps recorded on VM rows belong to their VMs (a pool tap keeps its
	// name once claimed): the pool never adopts, deletes or re-creates
	// those. The rows are read each time: VMs come and go.
	inUse := func(name string) bool {
		vms, err := n.store.ListVMs(context.Background())
		if err != nil {
			return true // when in doubt, the name is taken
		}
		for _, v := range vms {
			if v.Tap == name {
				return true
			}
		}
		return false
	}
	if err := pool.Start(ctx, inUse); err != nil {
		return err
	}

	var upstreams dns.UpstreamSource = dns.NewHostUpstreams()
	if len(n.cfg.DefaultDNS) > 0 {
		upstreams = staticUpstreams(n.cfg.DefaultDNS)
	}
	n.server = dns.New(dns.Options{Zone: n.zone, Upstreams: upstreams, Logger: n.log.With("component", "dns")})
	if err := n.server.Listen(n.cfg.DNSListen, false); err != nil {
		return fmt.Errorf("dns_listen: %w", err)
	}
	guestAddr := netip.AddrPortFrom(n.gateway, 53).String()
	pc, ln, err := n.priv.ListenDNS(guestAddr)
	if err == nil {
		if err = n.server.ListenOn(pc, ln, true); err != nil {
			pc.Close()
			ln.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("DNS for guests on the bridge address %s: %w (bridge_cidr sets the address)", guestAddr, err)
	}
	n.mu.Lock()
	n.live = true
	n.mu.Unlock()
	if err := n.sync(ctx); err != nil {
		// Rules that cannot be installed are reported by the VMs that need
		// them (a --nat create fails with the reason); the daemon serves.
		n.log.Warn("install network rules", "err", err)
	}
	n.route = routeResolver(n.log, n.priv, n.cfg.BridgeName, guestAddr)
	return nil
}

// close stops the DNS server, empties the tap pool and undoes the
// resolver routing. The bridge and the rules stay: running VMs keep their
// network while the daemon restarts or updates. A create still running
// when it is called fails to claim a tap (the pool is closed) and rolls
// back.
func (n *network) close() {
	if n.route != nil {
		n.route.undo()
		n.route = nil
	}
	if n.server != nil {
		if err := n.server.Close(); err != nil {
			n.log.Warn("stop DNS server", "err", err)
		}
	}
	if pool := n.tapPool(); pool != nil {
		if err := pool.Close(); err != nil {
			n.log.Warn("empty tap pool", "err", err)
		}
	}
}

// isLive reports whether start succeeded (taps and rules are managed).
func (n *network) isLive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.live
}

// tapPool is the pool once start made it (nil before, or without network).
func (n *network) tapPool() *hostnet.Pool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pool
}

// claimTap gives a VM a tap attached to the bridge and up, and returns
// its name: an idle one from the warm pool (it keeps its pool name), or
// one created cold and called fallback.
func (n *network) claimTap(fallback string) (string, error) {
	pool := n.tapPool()
	if pool == nil {
		// The daemon runs without its network (tests of the RPC surface):
		// make the tap the slow way.
		if err := n.priv.EnsureBridge(n.cfg.BridgeName, n.cfg.BridgeCIDR); err != nil {
			return "", err
		}
		return fallback, n.priv.CreateTap(fallback, n.cfg.BridgeName)
	}
	return pool.Claim(fallback)
}

// desired is what the VM rows ask of the network: a NAME.vm record for
// every VM with an address; for every VM with a tap, anti-spoofing rules
// and, with NAT on, masquerade; and whether any NAT VM needs ip_forward.
func (n *network) desired(ctx context.Context) (map[string]netip.Addr, hostnat.Spec, bool, error) {
	vms, err := n.store.ListVMs(ctx)
	if err != nil {
		return nil, hostnat.Spec{}, false, err
	}
	records := make(map[string]netip.Addr, len(vms))
	spec := hostnat.Spec{Bridge: n.cfg.BridgeName, Subnet: n.subnet, Gateway: n.gateway}
	needForward := false
	for _, v := range vms {
		ip, err := netip.ParseAddr(v.IP)
		if err != nil {
			continue
		}
		if v.Purpose == "" {
			records[v.Name] = ip
		}
		if v.Tap == "" {
			continue
		}
		mac, err := net.ParseMAC(v.MAC)
		if err != nil {
			return nil, hostnat.Spec{}, false, fmt.Errorf("vm %s: recorded MAC %q: %w", v.Name, v.MAC, err)
		}
		spec.VMs = append(spec.VMs, hostnat.VM{Name: v.Name, Tap: v.Tap, IP: ip, MAC: mac, NAT: v.NAT})
		needForward = needForward || v.NAT
	}
	return records, spec, needForward, nil
}

// sync makes the DNS zone and the kernel's rules match the VM rows (see
// desired). It enables ip_forward the first time a NAT VM needs it.
func (n *network) sync(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	records, spec, needForward, err := n.desired(ctx)
	if err != nil {
		return err
	}
	n.zone.Replace(records)
	if n.sshConfig != "" {
		if err := writeSSHConfig(n.sshConfig, renderSSHConfig(records, n.sshKey, n.knownHosts)); err != nil {
			n.log.Warn("write ssh_config", "path", n.sshConfig, "err", err)
		}
	}
	if !n.live {
		return nil
	}
	if needForward && n.ipForward == "" {
		wasOn, err := n.priv.EnableIPForward()
		if err != nil {
			n.natErr = err
			return err
		}
		n.ipForward = "enabled by banger"
		if wasOn {
			n.ipForward = "already on"
		}
	}
	err = n.priv.SyncNAT(spec)
	n.natErr = err
	return err
}

// ensureRules re-installs the rules when what the kernel holds differs in
// any way from what the VM rows ask for (a table deleted or flushed by
// hand, a rule changed). The watch loop calls it; when all is in place it
// only reads.
func (n *network) ensureRules(ctx context.Context) {
	n.mu.Lock()
	live := n.live
	n.mu.Unlock()
	if !live {
		return
	}
	_, spec, _, err := n.desired(ctx)
	if err != nil {
		return
	}
	if diff, err := n.priv.NATDiff(spec); err == nil && len(diff) == 0 {
		return
	}
	if err := n.sync(ctx); err != nil {
		n.log.Warn("re-install network rules", "err", err)
	} else {
		n.log.Info("network rules re-installed: the kernel's differed from banger's records")
	}
}

// natNote is what vm show says about NAT on this host.
func (n *network) natNote(v store.VM) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !v.NAT {
		return ""
	}
	if n.natErr != nil {
		return "NAT rules could not be installed: " + n.natErr.Error()
	}
	if n.ipForward != "" {
		return "ip_forward " + n.ipForward
	}
	return ""
}

// natError turns a failure to install rules for a VM that asked for NAT
// into the error its create or vm set reports.
func natError(err error) error {
	if errors.Is(err, hostnat.ErrUnsupported) {
		return api.Errorf(api.CodeOperationFailed, "--nat needs nftables: %v", err)
	}
	return api.Errorf(api.CodeOperationFailed, "install NAT rules: %v", err)
}

// staticUpstreams are the resolvers default_dns names.
type staticUpstreams []string

func (s staticUpstreams) Upstreams() []string {
	out := make([]string, 0, len(s))
	for _, a := range s {
		if ip, err := netip.ParseAddr(a); err == nil {
			out = append(out, netip.AddrPortFrom(ip, 53).String())
		}
	}
	return out
}

// resolverRoute is the routing of ~vm through systemd-resolved, undone on
// shutdown. It is nil where resolved does not run. In system mode the
// root helper runs resolvectl (the owner may not).
type resolverRoute struct {
	log  *slog.Logger
	priv privops.Ops
	link string
}

func routeResolver(log *slog.Logger, priv privops.Ops, link, server string) *resolverRoute {
	if err := priv.RouteDNS(link, server, privops.DNSDomain); err != nil {
		if errors.Is(err, resolved.ErrNotManaged) {
			log.Info("host DNS routing skipped: NAME.vm resolves through dns_listen; see the README for dnsmasq or NetworkManager", "reason", err)
		} else {
			log.Warn("route ~vm through systemd-resolved", "err", err)
		}
		return nil
	}
	log.Info("routed ~vm to banger's DNS server through systemd-resolved", "link", link, "server", server)
	return &resolverRoute{log: log, priv: priv, link: link}
}

func (r *resolverRoute) undo() {
	if err := r.priv.UnrouteDNS(r.link); err != nil {
		r.log.Warn("undo DNS routing", "err", err)
	}
}
