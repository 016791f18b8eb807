package daemon

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// sshConfigFile is the OpenSSH client configuration the daemon keeps
// current for `banger ssh-config --install`: every VM by its name and
// NAME.vm, with banger's key and known_hosts, and a *.vm fallback.
func sshConfigFile(stateDir string) string { return filepath.Join(stateDir, "ssh_config") }

// renderSSHConfig writes the file's text for records (VM name → address).
func renderSSHConfig(records map[string]netip.Addr, key, knownHosts string) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by bangerd; it changes as VMs come and go. `banger ssh-config --install`\n")
	b.WriteString("# includes it from ~/.ssh/config and `--uninstall` removes that line.\n")
	common := fmt.Sprintf("  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n"+
		"  StrictHostKeyChecking yes\n  ForwardAgent no\n", sshQuote(key), sshQuote(knownHosts))
	names := make([]string, 0, len(records))
	for n := range records {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "\nHost %s %s.vm\n  HostName %s\n  HostKeyAlias %s.vm\n%s", n, n, records[n], n, common)
	}
	fmt.Fprintf(&b, "\nHost *.vm\n%s", common)
	return b.Bytes()
}

func sshQuote(path string) string {
	if strings.ContainsAny(path, " \t\"") {
		return `"` + strings.ReplaceAll(path, `"`, `\"`) + `"`
	}
	return path
}

// writeSSHConfig replaces the file when its text changed.
func writeSSHConfig(path string, text []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, text) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, text, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
