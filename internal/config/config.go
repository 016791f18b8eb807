package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
)

// Config is banger's settings, read from config.toml with every value
// resolved: a key absent from the file holds its default.
type Config struct {
	LogLevel       string     `toml:"log_level"`           // debug, info, warn or error
	DefaultImage   string     `toml:"default_image"`       // image for `vm create` without --image
	BridgeName     string     `toml:"bridge_name"`         // host bridge the VMs' taps join
	BridgeCIDR     string     `toml:"bridge_cidr"`         // gateway address and prefix of the VM network
	TapPoolSize    int        `toml:"tap_pool_size"`       // taps kept ready for fast creates
	DNSListen      string     `toml:"dns_listen"`          // where the NAME.vm resolver listens
	DefaultDNS     []string   `toml:"default_dns"`         // upstreams guests' names are forwarded to; empty: the host's
	DefaultNAT     bool       `toml:"default_nat"`         // NAT for VMs created without --nat/--no-nat
	Warm           bool       `toml:"warm"`                // warm an image after its first cold create of the default size
	RootDisk       string     `toml:"root_disk"`           // auto, dm, qcow2, reflink or copy
	ForwardPorts   string     `toml:"forward_ports"`       // "auto": forward every new guest listener; "none"
	VMM            string     `toml:"vmm"`                 // auto, firecracker or qemu
	QEMUAccel      string     `toml:"qemu_accel"`          // auto, kvm or tcg
	FirecrackerBin string     `toml:"firecracker_bin"`     // firecracker binary, by name or path
	Jailer         string     `toml:"firecracker_jailer"`  // auto, on or off: Firecracker under its jailer
	JailerBin      string     `toml:"jailer_bin"`          // jailer binary, by name or path
	QEMUBin        string     `toml:"qemu_bin"`            // qemu binary, by name or path
	OpsRetention   Duration   `toml:"ops_retention"`       // how long finished operations stay listed
	UpdateManifest string     `toml:"update_manifest_url"` // where banger update reads releases (http or https)
	VMDefaults     VMDefaults `toml:"vm_defaults"`

	// sources records where each value came from, by dotted key.
	sources map[string]Source
}

// VMDefaults is the size of a VM created without --vcpu, --memory or
// --disk-size.
type VMDefaults struct {
	VCPU      int    `toml:"vcpu"`
	MemoryMiB int    `toml:"memory_mib"`
	DiskSize  string `toml:"disk_size"` // as ParseSize reads it, e.g. "8G"
}

// DiskBytes is DiskSize in bytes.
func (v VMDefaults) DiskBytes() (int64, error) { return ParseSize(v.DiskSize) }

// Source says where a resolved value came from.
type Source string

// The sources of a value, in the order they are consulted.
const (
	SourceConfig  Source = "config file"
	SourceHost    Source = "host heuristic"
	SourceBuiltin Source = "built-in default"
)

// Built-in defaults.
const (
	DefaultLogLevel       = "info"
	DefaultImageName      = "debian-bookworm"
	DefaultBridgeName     = "banger0"
	DefaultBridgeCIDR     = "172.30.0.1/24"
	DefaultTapPoolSize    = 2
	DefaultDNSListen      = "127.0.0.1:42069"
	DefaultVMM            = "auto"
	DefaultRootDisk       = "auto"
	DefaultQEMUAccel      = "auto"
	DefaultFirecrackerBin = "firecracker"
	DefaultJailer         = "auto"
	DefaultJailerBin      = "jailer"
	DefaultQEMUBin        = "qemu-system-x86_64"
	DefaultOpsRetention   = Duration(time.Hour)
	DefaultVCPU           = 1    // when the host's CPU count is unknown
	DefaultMemoryMiB      = 1024 // when the host's memory size is unknown
	DefaultDiskSize       = "8G"
)

// Bounds checked on load; the CLI applies the same ones to its flags.
const (
	MaxTapPoolSize = 64
	MaxVCPU        = 32 // Firecracker's limit
	MinMemoryMiB   = 128
	MinDiskBytes   = 64 << 20
)

// Sources returns, for every key (top-level names and "vm_defaults.vcpu",
// "vm_defaults.memory_mib", "vm_defaults.disk_size"), where its value came
// from. The map is a copy.
func (c Config) Sources() map[string]Source {
	return maps.Clone(c.sources)
}

// SlogLevel is LogLevel as a slog level.
func (c Config) SlogLevel() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// BridgePrefix is BridgeCIDR parsed: its address is the gateway (the
// bridge's own address) and its mask the VM network.
func (c Config) BridgePrefix() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.BridgeCIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bridge_cidr %q: %w", c.BridgeCIDR, err)
	}
	return p, nil
}

// Default is the configuration used when config.toml sets nothing.
func Default(host HostInfo) Config {
	c := Config{
		LogLevel:       DefaultLogLevel,
		DefaultImage:   DefaultImageName,
		BridgeName:     DefaultBridgeName,
		BridgeCIDR:     DefaultBridgeCIDR,
		TapPoolSize:    DefaultTapPoolSize,
		DNSListen:      DefaultDNSListen,
		VMM:            DefaultVMM,
		RootDisk:       DefaultRootDisk,
		ForwardPorts:   "none",
		QEMUAccel:      DefaultQEMUAccel,
		FirecrackerBin: DefaultFirecrackerBin,
		Jailer:         DefaultJailer,
		JailerBin:      DefaultJailerBin,
		QEMUBin:        DefaultQEMUBin,
		OpsRetention:   DefaultOpsRetention,
		VMDefaults: VMDefaults{
			VCPU:      DefaultVCPU,
			MemoryMiB: DefaultMemoryMiB,
			DiskSize:  DefaultDiskSize,
		},
		sources: map[string]Source{},
	}
	for key := range keyKinds {
		if key != "vm_defaults" {
			c.sources[key] = SourceBuiltin
		}
	}
	if n, ok := vcpuFor(host); ok {
		c.VMDefaults.VCPU = n
		c.sources["vm_defaults.vcpu"] = SourceHost
	}
	if mib, ok := memoryMiBFor(host); ok {
		c.VMDefaults.MemoryMiB = mib
		c.sources["vm_defaults.memory_mib"] = SourceHost
	}
	return c
}

// KeyError is a problem with one key of the config file.
type KeyError struct {
	Path string // the config file
	Line int    // 1-based; 0 when the position is unknown
	Key  string // dotted key, e.g. "vm_defaults.vcpu"
	Msg  string // what is wrong and what to write instead
}

func (e *KeyError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s line %d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

// fileConfig mirrors Config with pointers, so that a key the file sets
// can be told apart from one it leaves out.
type fileConfig struct {
	LogLevel       *string         `toml:"log_level"`
	DefaultImage   *string         `toml:"default_image"`
	BridgeName     *string         `toml:"bridge_name"`
	BridgeCIDR     *string         `toml:"bridge_cidr"`
	TapPoolSize    *int            `toml:"tap_pool_size"`
	DNSListen      *string         `toml:"dns_listen"`
	DefaultDNS     *[]string       `toml:"default_dns"`
	DefaultNAT     *bool           `toml:"default_nat"`
	Warm           *bool           `toml:"warm"`
	RootDisk       *string         `toml:"root_disk"`
	ForwardPorts   *string         `toml:"forward_ports"`
	VMM            *string         `toml:"vmm"`
	QEMUAccel      *string         `toml:"qemu_accel"`
	FirecrackerBin *string         `toml:"firecracker_bin"`
	Jailer         *string         `toml:"firecracker_jailer"`
	JailerBin      *string         `toml:"jailer_bin"`
	QEMUBin        *string         `toml:"qemu_bin"`
	OpsRetention   *Duration       `toml:"ops_retention"`
	UpdateManifest *string         `toml:"update_manifest_url"`
	VMDefaults     *fileVMDefaults `toml:"vm_defaults"`
}

type fileVMDefaults struct {
	VCPU      *int    `toml:"vcpu"`
	MemoryMiB *int    `toml:"memory_mib"`
	DiskSize  *string `toml:"disk_size"`
}

// Load reads the config file at path and resolves every value: the file
// first, then the host heuristic (for VM sizes), then built-in defaults. A
// missing file means all defaults. Errors name the file, line and key.
func Load(path string, host HostInfo) (Config, error) {
	cfg := Default(host)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}

	index, err := indexDocument(data)
	if err != nil {
		// The index uses the same parser as the decoder; let the decoder
		// describe the syntax error with its position.
		if decodeErr := decodeStrict(data, &fileConfig{}, path); decodeErr != nil {
			return Config{}, decodeErr
		}
		return Config{}, &KeyError{Path: path, Msg: fmt.Sprintf("not valid TOML: %v", err)}
	}
	if problems := checkKinds(path, index); len(problems) > 0 {
		return Config{}, errors.Join(problems...)
	}
	var fc fileConfig
	if err := decodeStrict(data, &fc, path); err != nil {
		return Config{}, err
	}
	if problems := cfg.apply(fc, path, index); len(problems) > 0 {
		return Config{}, errors.Join(problems...)
	}
	return cfg, nil
}

// decodeStrict decodes data into fc, refusing keys fileConfig does not
// have, and turns go-toml's errors into KeyErrors.
func decodeStrict(data []byte, fc *fileConfig, path string) error {
	err := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields().Decode(fc)
	if err == nil {
		return nil
	}
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		problems := make([]error, 0, len(strict.Errors))
		for _, e := range strict.Errors {
			key := strings.Join(e.Key(), ".")
			line, _ := e.Position()
			problems = append(problems, &KeyError{Path: path, Line: line, Key: key,
				Msg: fmt.Sprintf("unknown key %q%s", key, suggestKey(key))})
		}
		return errors.Join(problems...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		key := strings.Join(de.Key(), ".")
		line, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if key != "" {
			msg = key + ": " + msg
		} else {
			msg = "not valid TOML: " + msg
		}
		return &KeyError{Path: path, Line: line, Key: key, Msg: msg}
	}
	return fmt.Errorf("decode %s: %w", path, err)
}

// suggestKey names a known key that a misspelt one was probably meant to
// be, as a clause to append to the error.
func suggestKey(key string) string {
	best, bestDist := "", 3
	for known := range keyKinds {
		if d := editDistance(key, known); d < bestDist {
			best, bestDist = known, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// apply overlays the values the file sets onto c, validating each.
func (c *Config) apply(fc fileConfig, path string, index docIndex) []error {
	var problems []error
	fail := func(key, format string, args ...any) {
		problems = append(problems, &KeyError{Path: path, Line: index[key].line, Key: key,
			Msg: key + " " + fmt.Sprintf(format, args...)})
	}
	set := func(key string) { c.sources[key] = SourceConfig }

	if v := fc.LogLevel; v != nil {
		switch *v {
		case "debug", "info", "warn", "error":
			c.LogLevel = *v
			set("log_level")
		default:
			fail("log_level", "%q is not a level; use debug, info, warn or error", *v)
		}
	}
	setString := func(key string, v *string, dst *string) {
		if v == nil {
			return
		}
		if strings.TrimSpace(*v) == "" {
			fail(key, "is empty; remove the line to use the default %q", *dst)
			return
		}
		*dst = *v
		set(key)
	}
	setString("default_image", fc.DefaultImage, &c.DefaultImage)
	setString("firecracker_bin", fc.FirecrackerBin, &c.FirecrackerBin)
	setString("jailer_bin", fc.JailerBin, &c.JailerBin)
	setString("qemu_bin", fc.QEMUBin, &c.QEMUBin)

	if v := fc.BridgeName; v != nil {
		if err := validIfname(*v); err != nil {
			fail("bridge_name", "%q %v", *v, err)
		} else {
			c.BridgeName = *v
			set("bridge_name")
		}
	}
	if v := fc.BridgeCIDR; v != nil {
		if err := validBridgeCIDR(*v); err != nil {
			fail("bridge_cidr", "%q %v", *v, err)
		} else {
			c.BridgeCIDR = *v
			set("bridge_cidr")
		}
	}
	if v := fc.TapPoolSize; v != nil {
		if *v < 0 || *v > MaxTapPoolSize {
			fail("tap_pool_size", "is %d; use a number from 0 to %d", *v, MaxTapPoolSize)
		} else {
			c.TapPoolSize = *v
			set("tap_pool_size")
		}
	}
	if v := fc.DNSListen; v != nil {
		if ap, err := netip.ParseAddrPort(*v); err != nil || ap.Port() == 0 {
			fail("dns_listen", "%q is not an address with a port; use IP:PORT, e.g. %q", *v, DefaultDNSListen)
		} else {
			c.DNSListen = *v
			set("dns_listen")
		}
	}
	if v := fc.DefaultDNS; v != nil {
		ok := true
		for _, ns := range *v {
			if _, err := netip.ParseAddr(ns); err != nil {
				fail("default_dns", "entry %q is not an IP address; list nameserver addresses, e.g. [\"1.1.1.1\"]", ns)
				ok = false
			}
		}
		if ok {
			c.DefaultDNS = append([]string(nil), (*v)...)
			set("default_dns")
		}
	}
	if v := fc.DefaultNAT; v != nil {
		c.DefaultNAT = *v
		set("default_nat")
	}
	if v := fc.Warm; v != nil {
		c.Warm = *v
		set("warm")
	}
	if v := fc.ForwardPorts; v != nil {
		switch *v {
		case "auto", "none":
			c.ForwardPorts = *v
			set("forward_ports")
		default:
			fail("forward_ports", "%q is not a forwarding mode; use \"auto\" (every new guest listener on 127.0.0.1) or \"none\"", *v)
		}
	}
	if v := fc.RootDisk; v != nil {
		switch *v {
		case "auto", "dm", "qcow2", "reflink", "copy":
			c.RootDisk = *v
			set("root_disk")
		default:
			fail("root_disk", "%q is not a root disk strategy; use auto, dm, qcow2, reflink or copy", *v)
		}
	}
	if v := fc.VMM; v != nil {
		switch *v {
		case "auto", "firecracker", "qemu":
			c.VMM = *v
			set("vmm")
		default:
			fail("vmm", "%q is not a VMM banger drives; use auto, firecracker or qemu", *v)
		}
	}
	if v := fc.Jailer; v != nil {
		switch *v {
		case "auto", "on", "off":
			c.Jailer = *v
			set("firecracker_jailer")
		default:
			fail("firecracker_jailer", "%q is not one of auto, on, off", *v)
		}
	}
	if v := fc.QEMUAccel; v != nil {
		switch *v {
		case "auto", "kvm", "tcg":
			c.QEMUAccel = *v
			set("qemu_accel")
		default:
			fail("qemu_accel", "%q is not a QEMU accelerator; use auto, kvm or tcg", *v)
		}
	}
	if v := fc.OpsRetention; v != nil {
		if *v <= 0 {
			fail("ops_retention", "is %s; use a positive duration such as \"30m\"", *v)
		} else {
			c.OpsRetention = *v
			set("ops_retention")
		}
	}
	if v := fc.UpdateManifest; v != nil {
		if u, err := url.Parse(*v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			fail("update_manifest_url", "%q is not an http or https URL (the manifest.json of a release directory)", *v)
		} else {
			c.UpdateManifest = *v
			set("update_manifest_url")
		}
	}
	if vd := fc.VMDefaults; vd != nil {
		if v := vd.VCPU; v != nil {
			if *v < 1 || *v > MaxVCPU {
				fail("vm_defaults.vcpu", "is %d; use a number from 1 to %d", *v, MaxVCPU)
			} else {
				c.VMDefaults.VCPU = *v
				set("vm_defaults.vcpu")
			}
		}
		if v := vd.MemoryMiB; v != nil {
			if *v < MinMemoryMiB {
				fail("vm_defaults.memory_mib", "is %d; a VM needs at least %d MiB", *v, MinMemoryMiB)
			} else {
				c.VMDefaults.MemoryMiB = *v
				set("vm_defaults.memory_mib")
			}
		}
		if v := vd.DiskSize; v != nil {
			if n, err := ParseSize(*v); err != nil {
				fail("vm_defaults.disk_size", "is invalid: %v", err)
			} else if n < MinDiskBytes {
				fail("vm_defaults.disk_size", "%q is too small; use at least %s", *v, FormatSize(MinDiskBytes))
			} else {
				c.VMDefaults.DiskSize = *v
				set("vm_defaults.disk_size")
			}
		}
	}
	return problems
}

// validIfname applies the kernel's rules for a network interface name
// (dev_valid_name): 1 to 15 bytes, not "." or "..", no '/', ':' or space.
func validIfname(name string) error {
	switch {
	case name == "":
		return errors.New("is empty; name the bridge, e.g. \"banger0\"")
	case len(name) > 15:
		return fmt.Errorf("is %d characters; interface names are at most 15", len(name))
	case name == "." || name == "..":
		return errors.New("is not a valid interface name")
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return errors.New("contains '/', ':' or a space, which interface names cannot")
	}
	return nil
}

// validBridgeCIDR checks an IPv4 prefix written as gateway/len: the address
// is the bridge's own, so it must be a usable host address of the prefix.
func validBridgeCIDR(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return errors.New("is not an address/prefix; write the bridge's gateway address and prefix length, e.g. \"172.30.0.1/24\"")
	}
	if !p.Addr().Is4() {
		return errors.New("is not IPv4; the VM network is IPv4, e.g. \"172.30.0.1/24\"")
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return fmt.Errorf("has prefix length /%d; use /8 to /30", p.Bits())
	}
	network := p.Masked().Addr()
	if p.Addr() == network {
		return fmt.Errorf("is the network address; write the gateway's address instead, e.g. \"%s/%d\"", network.Next(), p.Bits())
	}
	a4 := p.Addr().As4()
	host := uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])
	if hostMask := uint32(1)<<(32-p.Bits()) - 1; host&hostMask == hostMask {
		return fmt.Errorf("is the broadcast address; write the gateway's address instead, e.g. \"%s/%d\"", network.Next(), p.Bits())
	}
	return nil
}

// Duration is a time.Duration written in config.toml as a string such as
// "30m" or "2h".
type Duration time.Duration

// UnmarshalText reads a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration; use a number with a unit, e.g. \"30m\" or \"2h\"", string(b))
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String is the duration as time.Duration prints it.
func (d Duration) String() string { return time.Duration(d).String() }
