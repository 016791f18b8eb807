package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"path"
	"strings"
	"time"
)

// RestoreHost is what a restore changes in the guest: the kernel's RNG
// and clock, files, the hostname, the network, the work disk's
// filesystem and sshd. The zero Server uses the real system (SystemHost);
// tests give a recording fake.
type RestoreHost interface {
	AddEntropy(b []byte) error
	SetClock(unixNano int64) error
	WriteFile(path string, data []byte, mode fs.FileMode) error
	SetHostname(name string) error
	SetNetwork(oldMAC, mac net.HardwareAddr, addr netip.Prefix, gw netip.Addr) error
	GrowWork() error
	ReloadSSHD() error
}

// minEntropy is the least host randomness a restore accepts: the CRNG is
// reseeded from it, so it must carry a full seed.
const minEntropy = 32

// checkRestore validates p before anything changes.
func checkRestore(p RestoreParams) (old, mac net.HardwareAddr, addr netip.Prefix, gw netip.Addr, err error) {
	if len(p.Entropy) < minEntropy {
		return nil, nil, addr, gw, fmt.Errorf("entropy: %d bytes, want at least %d", len(p.Entropy), minEntropy)
	}
	if p.Hostname == "" || len(p.Hostname) > 64 || strings.ContainsAny(p.Hostname, "/ \n\x00") {
		return nil, nil, addr, gw, fmt.Errorf("hostname %q is not a host name", p.Hostname)
	}
	if old, err = net.ParseMAC(p.OldMAC); err != nil {
		return nil, nil, addr, gw, fmt.Errorf("old_mac: %w", err)
	}
	if mac, err = net.ParseMAC(p.MAC); err != nil {
		return nil, nil, addr, gw, fmt.Errorf("mac: %w", err)
	}
	if addr, err = netip.ParsePrefix(p.Address); err != nil || !addr.Addr().Is4() {
		return nil, nil, addr, gw, fmt.Errorf("address %q: want IPv4/len", p.Address)
	}
	if gw, err = netip.ParseAddr(p.Gateway); err != nil || !addr.Contains(gw) {
		return nil, nil, addr, gw, fmt.Errorf("gateway %q is not in %s", p.Gateway, addr.Masked())
	}
	for _, f := range p.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || !strings.HasPrefix(f.Path, "/etc/") {
			return nil, nil, addr, gw, fmt.Errorf("file %q: a restore writes only clean paths under /etc", f.Path)
		}
	}
	return old, mac, addr, gw, nil
}

// restore makes the guest p's: fresh randomness first (everything after
// it, sshd's host keys included, draws from a reseeded CRNG), the clock,
// the files, the hostname, sshd, and last the network, so nothing answers
// under the new address before it is the VM's own.
func (s *Server) restore(p RestoreParams) (RestoreResult, error) {
	h := s.Host
	if h == nil {
		h = SystemHost{}
	}
	old, mac, addr, gw, err := checkRestore(p)
	if err != nil {
		return RestoreResult{}, err
	}
	var res RestoreResult
	step := func(name string, fn func() error) error {
		start := time.Now()
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.Steps = append(res.Steps, RestoreStep{Name: name, DurationMS: float64(time.Since(start).Microseconds()) / 1000})
		return nil
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"reseed rng", func() error { return h.AddEntropy(p.Entropy) }},
		{"set clock", func() error { return h.SetClock(p.UnixNano) }},
		{"write files", func() error {
			var errs []error
			for _, f := range p.Files {
				if err := h.WriteFile(f.Path, f.Data, fs.FileMode(f.Mode&0o7777)); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		}},
		{"set hostname", func() error { return h.SetHostname(p.Hostname) }},
	}
	if p.ReloadSSHD {
		steps = append(steps, struct {
			name string
			fn   func() error
		}{"reload sshd", h.ReloadSSHD})
	}
	steps = append(steps, struct {
		name string
		fn   func() error
	}{"network", func() error { return h.SetNetwork(old, mac, addr, gw) }})
	if p.GrowWork {
		steps = append(steps, struct {
			name string
			fn   func() error
		}{"grow work disk", h.GrowWork})
	}
	for _, st := range steps {
		if err := step(st.name, st.fn); err != nil {
			return res, err
		}
	}
	s.logger().Info("restored identity", "hostname", p.Hostname, "address", p.Address)
	return res, nil
}
