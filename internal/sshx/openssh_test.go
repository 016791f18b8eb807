package sshx

import (
	"reflect"
	"testing"
)

func TestOpenSSHArgv(t *testing.T) {
	// head is every call's start: no user config, banger's key and
	// known_hosts only, nothing forwarded into the guest.
	head := func(bin, key, kh, alias string) []string {
		return []string{bin, "-F", "/dev/null",
			"-i", key,
			"-o", "UserKnownHostsFile=" + kh,
			"-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "StrictHostKeyChecking=yes",
			"-o", "IdentitiesOnly=yes",
			"-o", "ForwardAgent=no",
			"-o", "ClearAllForwardings=yes",
			"-o", "HostKeyAlias=" + alias,
			"-o", "LogLevel=ERROR",
		}
	}
	base := func(extra ...string) []string {
		return append(head("ssh", "/s/ssh/id_ed25519", "/s/ssh/known_hosts", "172.30.0.2"), extra...)
	}
	opts := func(mod func(*OpenSSHOptions)) OpenSSHOptions {
		o := OpenSSHOptions{KeyPath: "/s/ssh/id_ed25519", KnownHostsPath: "/s/ssh/known_hosts", Host: "172.30.0.2"}
		mod(&o)
		return o
	}
	tests := []struct {
		name string
		opts OpenSSHOptions
		want []string
	}{
		{"login shell", opts(func(o *OpenSSHOptions) {}), base("-l", "root", "172.30.0.2")},
		{"interactive shell", opts(func(o *OpenSSHOptions) { o.Interactive = true }), base("-t", "-l", "root", "172.30.0.2")},
		{"command", opts(func(o *OpenSSHOptions) { o.Command = []string{"uname", "-a"} }),
			base("-l", "root", "172.30.0.2", "--", "uname", "-a")},
		{"command starting with a dash", opts(func(o *OpenSSHOptions) { o.Command = []string{"-v"} }),
			base("-l", "root", "172.30.0.2", "--", "-v")},
		{"interactive command", opts(func(o *OpenSSHOptions) { o.Interactive = true; o.Command = []string{"htop"} }),
			base("-t", "-l", "root", "172.30.0.2", "--", "htop")},
		{"user, port and binary", opts(func(o *OpenSSHOptions) { o.User = "dev"; o.Port = 2222; o.Binary = "/usr/bin/ssh" }),
			append([]string{"/usr/bin/ssh"}, base("-p", "2222", "-l", "dev", "172.30.0.2")[1:]...)},
		// A user name that looks like an option stays a user name.
		{"hostile user", opts(func(o *OpenSSHOptions) { o.User = "-oProxyCommand=sh" }),
			base("-l", "-oProxyCommand=sh", "172.30.0.2")},
		{"port 22 is implied", opts(func(o *OpenSSHOptions) { o.Port = 22 }), base("-l", "root", "172.30.0.2")},
		{"explicit alias", opts(func(o *OpenSSHOptions) { o.HostKeyAlias = "web.vm" }),
			append(head("ssh", "/s/ssh/id_ed25519", "/s/ssh/known_hosts", "web.vm"), "-l", "root", "172.30.0.2")},
		{"shared connection", opts(func(o *OpenSSHOptions) { o.ControlPath = "/run/banger/vms/abc/ssh.ctl" }),
			base("-o", "ControlMaster=auto", "-o", "ControlPath=/run/banger/vms/abc/ssh.ctl", "-o", "ControlPersist=300",
				"-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-l", "root", "172.30.0.2")},
		{"paths with spaces and percent", opts(func(o *OpenSSHOptions) {
			o.KeyPath = "/home/a b/100%/id"
			o.KnownHostsPath = "/home/a b/100%/known_hosts"
		}),
			append(head("ssh", "/home/a b/100%%/id", `"/home/a b/100%%/known_hosts"`, "172.30.0.2"), "-l", "root", "172.30.0.2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := OpenSSHArgv(tt.opts); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("argv =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}
