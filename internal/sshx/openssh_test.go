package sshx

import (
	"reflect"
	"testing"
)

func TestOpenSSHArgv(t *testing.T) {
	base := func(extra ...string) []string {
		argv := []string{"ssh",
			"-i", "/s/ssh/id_ed25519",
			"-o", "UserKnownHostsFile=/s/ssh/known_hosts",
			"-o", "StrictHostKeyChecking=yes",
			"-o", "IdentitiesOnly=yes",
			"-o", "HostKeyAlias=172.30.0.2",
			"-o", "LogLevel=ERROR",
		}
		return append(argv, extra...)
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
		{"login shell", opts(func(o *OpenSSHOptions) {}), base("root@172.30.0.2")},
		{"interactive shell", opts(func(o *OpenSSHOptions) { o.Interactive = true }), base("-t", "root@172.30.0.2")},
		{"command", opts(func(o *OpenSSHOptions) { o.Command = []string{"uname", "-a"} }),
			base("root@172.30.0.2", "--", "uname", "-a")},
		{"command starting with a dash", opts(func(o *OpenSSHOptions) { o.Command = []string{"-v"} }),
			base("root@172.30.0.2", "--", "-v")},
		{"interactive command", opts(func(o *OpenSSHOptions) { o.Interactive = true; o.Command = []string{"htop"} }),
			base("-t", "root@172.30.0.2", "--", "htop")},
		{"user, port and binary", opts(func(o *OpenSSHOptions) { o.User = "dev"; o.Port = 2222; o.Binary = "/usr/bin/ssh" }),
			append([]string{"/usr/bin/ssh"}, base("-p", "2222", "dev@172.30.0.2")[1:]...)},
		{"port 22 is implied", opts(func(o *OpenSSHOptions) { o.Port = 22 }), base("root@172.30.0.2")},
		{"explicit alias", opts(func(o *OpenSSHOptions) { o.HostKeyAlias = "web.vm" }),
			[]string{"ssh", "-i", "/s/ssh/id_ed25519", "-o", "UserKnownHostsFile=/s/ssh/known_hosts",
				"-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "HostKeyAlias=web.vm",
				"-o", "LogLevel=ERROR", "root@172.30.0.2"}},
		{"paths with spaces and percent", opts(func(o *OpenSSHOptions) {
			o.KeyPath = "/home/a b/100%/id"
			o.KnownHostsPath = "/home/a b/100%/known_hosts"
		}),
			[]string{"ssh", "-i", "/home/a b/100%%/id", "-o", `UserKnownHostsFile="/home/a b/100%%/known_hosts"`,
				"-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "HostKeyAlias=172.30.0.2",
				"-o", "LogLevel=ERROR", "root@172.30.0.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := OpenSSHArgv(tt.opts); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("argv =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}
