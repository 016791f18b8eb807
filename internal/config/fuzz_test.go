package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad: whatever config.toml holds, Load returns a config or an
// error that says which line and key, never panics, and a config it
// accepts passes its own validation again.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"log_level = \"debug\"\nvmm = \"qemu\"\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"8G\"\n",
		"bridge_cidr = \"10.0.0.1/8\"\ntap_pool_size = 64\n",
		"default_dns = [\"1.1.1.1\", 5]\n",
		"[vm_defaults]\nvcpu = -1\n",
		"ops_retention = \"1h\"\nwarm = true\nroot_disk = \"dm\"\n",
		"= = =", "[[x]]\n", "disk_size = \"9999999999999999999T\"",
	} {
		f.Add([]byte(seed))
	}
	host := HostInfo{CPUs: 4, MemoryBytes: 8 << 30}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p, host)
		if err != nil {
			return
		}
		if _, err := ParseSize(cfg.VMDefaults.DiskSize); err != nil {
			t.Fatalf("accepted a config whose disk_size %q does not parse: %v", cfg.VMDefaults.DiskSize, err)
		}
	})
}

// FuzzParseSize: no panic; an accepted size is positive.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"8G", "1.5GiB", "512M", "0", "-1G", "1e3K", "18446744073709551615", "9999999999T", " 1 G "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n <= 0 {
			t.Fatalf("ParseSize(%q) = %d, want an error or a positive size", s, n)
		}
	})
}
