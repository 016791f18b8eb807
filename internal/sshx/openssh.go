package sshx

import (
	"strconv"
	"strings"
)

// OpenSSHOptions describes one `ssh` invocation into a guest.
type OpenSSHOptions struct {
	Binary         string   // ssh binary; "ssh" when empty
	KeyPath        string   // banger's private key (Layout.SSHKey)
	KnownHostsPath string   // banger's known_hosts (Layout.KnownHosts)
	Host           string   // the guest's IP address
	HostKeyAlias   string   // name the host key is looked up under; Host when empty
	Port           int      // 0 or 22 for the default port
	User           string   // "root" when empty
	Interactive    bool     // allocate a terminal (-t)
	Command        []string // command words; none for a login shell
	// ControlPath, when set, is the socket of a shared connection to the
	// guest (OpenSSH ControlMaster): the first call opens it and keeps it
	// for ControlPersist, later calls skip the handshake.
	ControlPath string
}

// controlPersist is how long a shared connection outlives its last use.
const controlPersist = "300"

// OpenSSHArgv is the argv (argv[0] included) that runs the system ssh
// client into a guest with banger's key and known_hosts. Host keys are
// checked strictly: the daemon pinned the guest's key when it first
// connected, so an unknown or changed key is an error, never a prompt.
//
// The command words follow "--", so a first word starting with '-' is not
// read as an ssh option; ssh joins them with spaces and the guest's shell
// parses the result, as with any ssh command.
func OpenSSHArgv(opts OpenSSHOptions) []string {
	bin := opts.Binary
	if bin == "" {
		bin = "ssh"
	}
	user := opts.User
	if user == "" {
		user = "root"
	}
	alias := opts.HostKeyAlias
	if alias == "" {
		alias = opts.Host
	}
	// The user's own ssh_config is not read (-F /dev/null): its
	// ForwardAgent or ProxyCommand must not reach into a sandbox.
	argv := []string{bin, "-F", "/dev/null",
		"-i", escapePercent(opts.KeyPath),
		"-o", "UserKnownHostsFile=" + configPath(opts.KnownHostsPath),
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "IdentitiesOnly=yes",
		"-o", "ForwardAgent=no",
		"-o", "ClearAllForwardings=yes",
		"-o", "HostKeyAlias=" + alias,
		"-o", "LogLevel=ERROR",
	}
	if opts.ControlPath != "" {
		argv = append(argv, "-o", "ControlMaster=auto", "-o", "ControlPath="+configPath(opts.ControlPath),
			"-o", "ControlPersist="+controlPersist, "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")
	}
	if opts.Port != 0 && opts.Port != 22 {
		argv = append(argv, "-p", strconv.Itoa(opts.Port))
	}
	if opts.Interactive {
		argv = append(argv, "-t")
	}
	// The user goes with -l, never in user@host: a user name is not
	// parsed as an option or a host whatever it holds.
	argv = append(argv, "-l", user, opts.Host)
	if len(opts.Command) > 0 {
		argv = append(argv, "--")
		argv = append(argv, opts.Command...)
	}
	return argv
}

// escapePercent protects a path from ssh's %-token expansion.
func escapePercent(path string) string {
	return strings.ReplaceAll(path, "%", "%%")
}

// configPath writes a path as an -o option value: %-escaped, and quoted
// when it holds whitespace (UserKnownHostsFile takes a list split on it).
func configPath(path string) string {
	path = escapePercent(path)
	if strings.ContainsAny(path, " \t") {
		return `"` + path + `"`
	}
	return path
}
