package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConfig writes body to a config.toml in a fresh temp dir.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var bigHost = HostInfo{CPUs: 16, MemoryBytes: 32 << 30}

func TestLoadMissingFileGivesDefaults(t *testing.T) {
	cfg, err := Load(filepath.Join(t.TempDir(), "absent.toml"), bigHost)
	if err != nil {
		t.Fatal(err)
	}
	want := Default(bigHost)
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("Load of a missing file = %+v, want %+v", cfg, want)
	}
	if cfg.LogLevel != "info" || cfg.DefaultImage != "debian-bookworm" || cfg.BridgeName != "banger0" ||
		cfg.BridgeCIDR != "172.30.0.1/24" || cfg.TapPoolSize != 2 || cfg.DNSListen != "127.0.0.1:42069" ||
		cfg.DefaultDNS != nil || cfg.DefaultNAT || cfg.RootDisk != "auto" || cfg.VMM != "auto" || cfg.FirecrackerBin != "firecracker" ||
		cfg.QEMUBin != "qemu-system-x86_64" || time.Duration(cfg.OpsRetention) != time.Hour ||
		cfg.VMDefaults.DiskSize != "8G" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
}

func TestLoadFullFile(t *testing.T) {
	path := writeConfig(t, `
log_level = "debug"
default_image = "alpine"
bridge_name = "br-test"
bridge_cidr = "10.9.0.254/16"
tap_pool_size = 0
dns_listen = "127.0.0.53:5353"
default_dns = ["1.1.1.1", "2606:4700::1111"]
default_nat = true
warm = true
root_disk = "qcow2"
forward_ports = "auto"
vmm = "qemu"
qemu_accel = "tcg"
firecracker_bin = "/opt/fc/firecracker"
firecracker_jailer = "on"
jailer_bin = "/opt/fc/jailer"
qemu_bin = "/usr/bin/qemu-system-x86_64"
ops_retention = "30m"
update_manifest_url = "https://releases.example/banger/manifest.json"

[vm_defaults]
vcpu = 3
memory_mib = 2048
disk_size = "20GiB"
`)
	cfg, err := Load(path, bigHost)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		LogLevel: "debug", DefaultImage: "alpine", BridgeName: "br-test", BridgeCIDR: "10.9.0.254/16",
		TapPoolSize: 0, DNSListen: "127.0.0.53:5353", DefaultDNS: []string{"1.1.1.1", "2606:4700::1111"},
		DefaultNAT: true, Warm: true, RootDisk: "qcow2", ForwardPorts: "auto", VMM: "qemu", QEMUAccel: "tcg", FirecrackerBin: "/opt/fc/firecracker", QEMUBin: "/usr/bin/qemu-system-x86_64",
		Jailer: "on", JailerBin: "/opt/fc/jailer",
		OpsRetention: Duration(30 * time.Minute), UpdateManifest: "https://releases.example/banger/manifest.json",
		VMDefaults: VMDefaults{VCPU: 3, MemoryMiB: 2048, DiskSize: "20GiB"},
	}
	cfg.sources, want.sources = nil, nil
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("Load = %+v\nwant  %+v", cfg, want)
	}
	cfg, _ = Load(path, bigHost)
	for key, src := range cfg.Sources() {
		if src != SourceConfig {
			t.Errorf("source of %s = %q, want %q", key, src, SourceConfig)
		}
	}
	if n, err := cfg.VMDefaults.DiskBytes(); err != nil || n != 20<<30 {
		t.Errorf("DiskBytes = %d, %v", n, err)
	}
	if cfg.SlogLevel().String() != "DEBUG" {
		t.Errorf("SlogLevel = %v", cfg.SlogLevel())
	}
}

func TestVMDefaultsResolution(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		host     HostInfo
		want     VMDefaults
		wantSrcs map[string]Source
	}{
		{
			name: "unknown host uses built-in constants",
			host: HostInfo{},
			want: VMDefaults{VCPU: 1, MemoryMiB: 1024, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceBuiltin,
				"vm_defaults.memory_mib": SourceBuiltin, "vm_defaults.disk_size": SourceBuiltin},
		},
		{
			name: "small host: floor of 2 vcpus and 512 MiB",
			host: HostInfo{CPUs: 2, MemoryBytes: 2 << 30},
			want: VMDefaults{VCPU: 2, MemoryMiB: 512, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceHost,
				"vm_defaults.memory_mib": SourceHost, "vm_defaults.disk_size": SourceBuiltin},
		},
		{
			name: "one-cpu host: never more vcpus than it has",
			host: HostInfo{CPUs: 1, MemoryBytes: 2 << 30},
			want: VMDefaults{VCPU: 1, MemoryMiB: 512, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceHost,
				"vm_defaults.memory_mib": SourceHost, "vm_defaults.disk_size": SourceBuiltin},
		},
		{
			name: "mid host: a quarter of the cpus, an eighth of the memory",
			host: HostInfo{CPUs: 8, MemoryBytes: 24 << 30},
			want: VMDefaults{VCPU: 2, MemoryMiB: 3072, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceHost,
				"vm_defaults.memory_mib": SourceHost, "vm_defaults.disk_size": SourceBuiltin},
		},
		{
			name: "big host: capped at 4 vcpus and 8 GiB",
			host: HostInfo{CPUs: 128, MemoryBytes: 512 << 30},
			want: VMDefaults{VCPU: 4, MemoryMiB: 8192, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceHost,
				"vm_defaults.memory_mib": SourceHost, "vm_defaults.disk_size": SourceBuiltin},
		},
		{
			name: "config wins where set, the rest fall through",
			file: "[vm_defaults]\nmemory_mib = 700\n",
			host: HostInfo{CPUs: 8},
			want: VMDefaults{VCPU: 2, MemoryMiB: 700, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceHost,
				"vm_defaults.memory_mib": SourceConfig, "vm_defaults.disk_size": SourceBuiltin},
		},
		{
			name: "dotted keys at the top level",
			file: "vm_defaults.vcpu = 6\nvm_defaults.disk_size = \"1T\"\n",
			host: bigHost,
			want: VMDefaults{VCPU: 6, MemoryMiB: 4096, DiskSize: "1T"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceConfig,
				"vm_defaults.memory_mib": SourceHost, "vm_defaults.disk_size": SourceConfig},
		},
		{
			name: "inline table",
			file: "vm_defaults = { vcpu = 5 }\n",
			host: HostInfo{},
			want: VMDefaults{VCPU: 5, MemoryMiB: 1024, DiskSize: "8G"},
			wantSrcs: map[string]Source{"vm_defaults.vcpu": SourceConfig,
				"vm_defaults.memory_mib": SourceBuiltin, "vm_defaults.disk_size": SourceBuiltin},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(writeConfig(t, tt.file), tt.host)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.VMDefaults != tt.want {
				t.Fatalf("VMDefaults = %+v, want %+v", cfg.VMDefaults, tt.want)
			}
			srcs := cfg.Sources()
			for key, want := range tt.wantSrcs {
				if srcs[key] != want {
					t.Errorf("source of %s = %q, want %q", key, srcs[key], want)
				}
			}
			if srcs["log_level"] != SourceBuiltin {
				t.Errorf("source of log_level = %q, want %q", srcs["log_level"], SourceBuiltin)
			}
		})
	}
}

func TestSourcesIsACopy(t *testing.T) {
	cfg := Default(bigHost)
	cfg.Sources()["vm_defaults.vcpu"] = "tampered"
	if cfg.Sources()["vm_defaults.vcpu"] != SourceHost {
		t.Fatal("mutating the Sources map changed the config")
	}
}

func TestLoadErrorsNameKeyAndLine(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		wantLine int
		wantKey  string
		wantMsg  string
	}{
		{"unknown key", "log_level = \"info\"\n\nbridge_nmae = \"br0\"\n", 3, "bridge_nmae",
			`line 3: unknown key "bridge_nmae"; did you mean "bridge_name"?`},
		{"unknown key in table", "[vm_defaults]\nvcpu = 2\ncpus = 2\n", 3, "vm_defaults.cpus",
			`line 3: unknown key "vm_defaults.cpus"`},
		{"unknown table", "# banger\n[network]\n", 2, "network", `line 2: unknown key "network"`},
		{"string for integer", "tap_pool_size = \"4\"\n", 1, "tap_pool_size",
			"line 1: tap_pool_size must be a whole number, not a string"},
		{"integer for string", "\n\nbridge_name = 7\n", 3, "bridge_name",
			"line 3: bridge_name must be a string in quotes, not a whole number"},
		{"update url not http", "update_manifest_url = \"/srv/dist/manifest.json\"\n", 1, "update_manifest_url",
			`line 1: update_manifest_url "/srv/dist/manifest.json" is not an http or https URL (the manifest.json of a release directory)`},
		{"integer duration", "ops_retention = 30\n", 1, "ops_retention",
			`line 1: ops_retention must be a string in quotes such as "30m", not a whole number`},
		{"bad duration", "\nops_retention = \"30 minutes\"\n", 2, "ops_retention",
			`line 2: ops_retention: "30 minutes" is not a duration`},
		{"negative duration", "ops_retention = \"-5m\"\n", 1, "ops_retention",
			"line 1: ops_retention is -5m0s; use a positive duration"},
		{"table scalar", "vm_defaults = 4\n", 1, "vm_defaults",
			"line 1: vm_defaults must be a table ([vm_defaults]), not a whole number"},
		{"list of numbers", "default_dns = [1, 2]\n", 1, "default_dns",
			"line 1: default_dns must be a list of strings"},
		{"bad nameserver", "default_dns = [\"1.1.1.1\", \"dns.google\"]\n", 1, "default_dns",
			`line 1: default_dns entry "dns.google" is not an IP address`},
		{"string for bool", "default_nat = \"yes\"\n", 1, "default_nat",
			"line 1: default_nat must be true or false, not a string"},
		{"bad log level", "log_level = \"verbose\"\n", 1, "log_level",
			`line 1: log_level "verbose" is not a level; use debug, info, warn or error`},
		{"long bridge name", "bridge_name = \"a-very-long-bridge\"\n", 1, "bridge_name",
			`line 1: bridge_name "a-very-long-bridge" is 18 characters; interface names are at most 15`},
		{"bridge name with slash", "bridge_name = \"br/0\"\n", 1, "bridge_name", "contains '/'"},
		{"empty bridge name", "bridge_name = \"\"\n", 1, "bridge_name", "is empty"},
		{"cidr network address", "bridge_cidr = \"172.30.0.0/24\"\n", 1, "bridge_cidr",
			`line 1: bridge_cidr "172.30.0.0/24" is the network address; write the gateway's address instead, e.g. "172.30.0.1/24"`},
		{"cidr broadcast", "bridge_cidr = \"172.30.0.255/24\"\n", 1, "bridge_cidr", "is the broadcast address"},
		{"cidr ipv6", "bridge_cidr = \"fd00::1/64\"\n", 1, "bridge_cidr", "is not IPv4"},
		{"cidr garbage", "bridge_cidr = \"172.30.0.1\"\n", 1, "bridge_cidr", "is not an address/prefix"},
		{"cidr too small", "bridge_cidr = \"10.0.0.1/31\"\n", 1, "bridge_cidr", "has prefix length /31"},
		{"pool too big", "tap_pool_size = 65\n", 1, "tap_pool_size", "tap_pool_size is 65; use a number from 0 to 64"},
		{"pool negative", "tap_pool_size = -1\n", 1, "tap_pool_size", "use a number from 0 to 64"},
		{"dns listen without port", "dns_listen = \"127.0.0.1\"\n", 1, "dns_listen", "is not an address with a port"},
		{"bad vmm", "vmm = \"kvmtool\"\n", 1, "vmm", `vmm "kvmtool" is not a VMM banger drives`},
		{"bad jailer", "firecracker_jailer = \"maybe\"\n", 1, "firecracker_jailer", `firecracker_jailer "maybe" is not one of auto, on, off`},
		{"bad forward mode", "forward_ports = \"all\"\n", 1, "forward_ports", `forward_ports "all" is not a forwarding mode`},
		{"bad root disk", "root_disk = \"zfs\"\n", 1, "root_disk", `root_disk "zfs" is not a root disk strategy; use auto, dm, qcow2, reflink or copy`},
		{"empty image", "default_image = \"  \"\n", 1, "default_image", "default_image is empty"},
		{"zero vcpu", "[vm_defaults]\n\nvcpu = 0\n", 3, "vm_defaults.vcpu",
			"line 3: vm_defaults.vcpu is 0; use a number from 1 to 32"},
		{"tiny memory", "[vm_defaults]\nmemory_mib = 64\n", 2, "vm_defaults.memory_mib", "at least 128 MiB"},
		{"bad disk unit", "[vm_defaults]\ndisk_size = \"8X\"\n", 2, "vm_defaults.disk_size",
			`line 2: vm_defaults.disk_size is invalid: disk size "8X": unknown unit X; use K, M, G or T`},
		{"tiny disk", "[vm_defaults]\ndisk_size = \"1M\"\n", 2, "vm_defaults.disk_size", "too small; use at least 64M"},
		{"integer disk", "[vm_defaults]\ndisk_size = 8\n", 2, "vm_defaults.disk_size",
			`vm_defaults.disk_size must be a string in quotes such as "8G"`},
		{"syntax error", "log_level = \"info\"\nvmm = \n", 2, "", "line 2: not valid TOML: "},
		{"duplicate key", "vmm = \"qemu\"\nvmm = \"auto\"\n", 2, "vmm", "line 2: vmm: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.file)
			_, err := Load(path, bigHost)
			if err == nil {
				t.Fatalf("Load accepted %q", tt.file)
			}
			var ke *KeyError
			if !errors.As(err, &ke) {
				t.Fatalf("error %v (%T) is not a *KeyError", err, err)
			}
			if ke.Line != tt.wantLine || ke.Key != tt.wantKey {
				t.Errorf("error at line %d key %q, want line %d key %q", ke.Line, ke.Key, tt.wantLine, tt.wantKey)
			}
			if !strings.HasPrefix(err.Error(), path+" line ") {
				t.Errorf("error %q does not start with the file and line", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	path := writeConfig(t, "log_level = \"loud\"\ntap_pool_size = 100\n")
	_, err := Load(path, bigHost)
	if err == nil {
		t.Fatal("Load accepted two bad values")
	}
	for _, want := range []string{"line 1: log_level", "line 2: tap_pool_size"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestLoadUnreadableFile(t *testing.T) {
	dir := t.TempDir() // a directory where the file should be
	if _, err := Load(dir, bigHost); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Load(dir) = %v, want an error naming %s", err, dir)
	}
}

func TestDetectHost(t *testing.T) {
	h := DetectHost()
	if h.CPUs < 1 || h.MemoryBytes < 64<<20 {
		t.Fatalf("DetectHost = %+v, want at least 1 CPU and 64 MiB", h)
	}
}
