package sshx

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/unix"
)

// HostKeyChangedError is returned when a guest offers a host key other than
// the one pinned for it. The daemon may replace Remedy with its own advice.
type HostKeyChangedError struct {
	Name       string   // how the user knows the host, e.g. "web.vm"; may equal Address
	Address    string   // the address dialled, as known_hosts writes it: "172.30.0.2" or "[127.0.0.1]:2222"
	PinnedAs   string   // the name under which the other key is pinned (Address or an alias)
	Pinned     []string // SHA256 fingerprints of the pinned keys
	Offered    string   // SHA256 fingerprint of the key the host offered
	KnownHosts string   // the known_hosts file holding the pin
}

func (e *HostKeyChangedError) Error() string {
	who := e.Address
	if e.Name != "" && e.Name != e.Address {
		who = fmt.Sprintf("%s (%s)", e.Name, e.Address)
	}
	return fmt.Sprintf("host key for %s changed: %s pins %s but the host offered %s; "+
		"if you recreated the VM, run `%s` and connect again, otherwise something else may be answering at that address",
		who, e.KnownHosts, strings.Join(e.Pinned, ", "), e.Offered, e.Remedy())
}

// Remedy is the command that forgets the pinned key (ssh-keygen -R drops
// the whole line, so every name pinned with it goes too).
func (e *HostKeyChangedError) Remedy() string {
	return fmt.Sprintf("ssh-keygen -f %s -R %s", e.KnownHosts, e.PinnedAs)
}

// knownHostsMu serialises known_hosts reads and writes within the process;
// lockKnownHosts adds an flock so that other processes are serialised too.
var knownHostsMu sync.Mutex

func lockKnownHosts(path string) (unlock func(), err error) {
	knownHostsMu.Lock()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		knownHostsMu.Unlock()
		return nil, fmt.Errorf("create directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		knownHostsMu.Unlock()
		return nil, fmt.Errorf("open lock for %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		knownHostsMu.Unlock()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		f.Close() // releases the flock
		knownHostsMu.Unlock()
	}, nil
}

// HostKeyCallback verifies host keys against banger's known_hosts file,
// pinning a host's key the first time it is seen (trust on first use).
//
// The host is known by the address it was dialled at and by each of
// hostAliases (e.g. "web.vm"); all of them are written on the pinned line,
// so ssh finds the key under any of them. A key that differs from one
// pinned under any of those names is refused with a *HostKeyChangedError,
// and nothing is written.
func HostKeyCallback(knownHostsPath string, hostAliases ...string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		unlock, err := lockKnownHosts(knownHostsPath)
		if err != nil {
			return err
		}
		defer unlock()
		return checkOrPin(knownHostsPath, hostname, remote, key, hostAliases)
	}
}

func checkOrPin(path, hostname string, remote net.Addr, key ssh.PublicKey, aliases []string) error {
	if remote == nil {
		remote = &net.TCPAddr{}
	}
	names := []string{withPort(hostname)}
	for _, a := range aliases {
		names = append(names, withPort(a))
	}

	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read known hosts %s: %w", path, err)
	}
	var check ssh.HostKeyCallback
	if len(data) > 0 {
		if check, err = knownhosts.New(path); err != nil {
			return fmt.Errorf("read known hosts %s: %w (fix or remove the bad line)", path, err)
		}
	}

	var unknown []string
	seen := map[string]bool{}
	for _, name := range names {
		norm := knownhosts.Normalize(name)
		if seen[norm] {
			continue
		}
		seen[norm] = true
		if check == nil {
			unknown = append(unknown, norm)
			continue
		}
		err := check(name, remote, key)
		var keyErr *knownhosts.KeyError
		var revoked *knownhosts.RevokedError
		switch {
		case err == nil:
		case errors.As(err, &revoked):
			return fmt.Errorf("host key %s offered by %s is marked @revoked in %s: %w", ssh.FingerprintSHA256(key), norm, path, err)
		case errors.As(err, &keyErr) && len(keyErr.Want) == 0:
			unknown = append(unknown, norm)
		case errors.As(err, &keyErr):
			pinned := make([]string, 0, len(keyErr.Want))
			for _, w := range keyErr.Want {
				pinned = append(pinned, ssh.FingerprintSHA256(w.Key))
			}
			return &HostKeyChangedError{
				Name:       displayName(hostname, aliases),
				Address:    knownhosts.Normalize(hostname),
				PinnedAs:   norm,
				Pinned:     pinned,
				Offered:    ssh.FingerprintSHA256(key),
				KnownHosts: path,
			}
		default:
			return fmt.Errorf("check host key of %s against %s: %w", norm, path, err)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	return appendLine(path, data, knownhosts.Line(unknown, key))
}

// withPort gives a bare host the default SSH port, as the knownhosts
// matcher wants host:port.
func withPort(host string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), "22")
}

func displayName(hostname string, aliases []string) string {
	if len(aliases) > 0 {
		return aliases[0]
	}
	return knownhosts.Normalize(hostname)
}

// appendLine adds line to the file with one O_APPEND write, preceded by a
// newline if the file's last line lacks one.
func appendLine(path string, existing []byte, line string) error {
	buf := make([]byte, 0, len(line)+2)
	if len(existing) > 0 && existing[len(existing)-1] != '\n' {
		buf = append(buf, '\n')
	}
	buf = append(buf, line...)
	buf = append(buf, '\n')
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("pin host key in %s: %w", path, err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pin host key in %s: %w", path, err)
	}
	return nil
}

// RemoveHost rewrites the known_hosts file without the lines that name any
// of hosts (by plain or hashed pattern; a host with port 22 may be given
// with or without it). A line naming several hosts goes as a whole.
// Wildcard and negated patterns are not matched. A missing file, or one
// with nothing to remove, is left alone.
func RemoveHost(knownHostsPath string, hosts ...string) error {
	if len(hosts) == 0 {
		return nil
	}
	unlock, err := lockKnownHosts(knownHostsPath)
	if err != nil {
		return err
	}
	defer unlock()

	data, err := os.ReadFile(knownHostsPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read known hosts %s: %w", knownHostsPath, err)
	}
	targets := make([]string, 0, len(hosts))
	for _, h := range hosts {
		targets = append(targets, knownhosts.Normalize(h))
	}

	var kept bytes.Buffer
	removed := 0
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if lineNamesAny(string(line), targets) {
			removed++
			continue
		}
		kept.Write(line)
	}
	if removed == 0 {
		return nil
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(knownHostsPath); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := writeFileAtomic(knownHostsPath, kept.Bytes(), mode); err != nil {
		return fmt.Errorf("rewrite known hosts %s: %w", knownHostsPath, err)
	}
	return nil
}

// lineNamesAny reports whether a known_hosts line has a host pattern equal
// to one of targets (normalised addresses).
func lineNamesAny(line string, targets []string) bool {
	fields := strings.Fields(line)
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return false
	}
	if strings.HasPrefix(fields[0], "@") { // @cert-authority / @revoked marker
		fields = fields[1:]
		if len(fields) == 0 {
			return false
		}
	}
	for _, pattern := range strings.Split(fields[0], ",") {
		for _, t := range targets {
			if strings.HasPrefix(pattern, "|1|") {
				if hashedMatches(pattern, t) {
					return true
				}
			} else if strings.EqualFold(pattern, t) {
				return true
			}
		}
	}
	return false
}

// hashedMatches checks a HashKnownHosts pattern, |1|base64(salt)|base64(hmac-sha1(salt, host)).
func hashedMatches(pattern, host string) bool {
	parts := strings.Split(pattern, "|")
	if len(parts) != 4 {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	want, err := base64.StdEncoding.DecodeString(parts[3])
	if err != nil {
		return false
	}
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(host))
	return hmac.Equal(mac.Sum(nil), want)
}

// PinHostKey makes key the only key known_hosts holds for hosts: lines
// naming any of them are dropped and one line naming them all is added.
// The daemon pins a VM's host key this way before the VM first boots, so
// no other machine on the bridge can answer in its place (no trust on
// first use).
func PinHostKey(knownHostsPath string, key ssh.PublicKey, hosts ...string) error {
	if len(hosts) == 0 {
		return errors.New("pin host key: no host names")
	}
	unlock, err := lockKnownHosts(knownHostsPath)
	if err != nil {
		return err
	}
	defer unlock()
	data, err := os.ReadFile(knownHostsPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read known hosts %s: %w", knownHostsPath, err)
	}
	names := make([]string, 0, len(hosts))
	for _, h := range hosts {
		names = append(names, knownhosts.Normalize(h))
	}
	var kept bytes.Buffer
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) > 0 && !lineNamesAny(string(line), names) {
			kept.Write(line)
		}
	}
	if kept.Len() > 0 && !bytes.HasSuffix(kept.Bytes(), []byte("\n")) {
		kept.WriteByte('\n')
	}
	kept.WriteString(knownhosts.Line(names, key) + "\n")
	if err := writeFileAtomic(knownHostsPath, kept.Bytes(), 0o600); err != nil {
		return fmt.Errorf("pin host key in %s: %w", knownHostsPath, err)
	}
	return nil
}
