package api

import (
	"strings"
	"testing"
)

func TestSSHInfoValidate(t *testing.T) {
	good := VMSSHInfo{Name: "web", IP: "172.30.0.2", User: "root", KeyPath: "/home/u/.local/state/banger/ssh/id_ed25519",
		KnownHostsPath: "/home/u/.local/state/banger/ssh/known_hosts", HostAlias: "web.vm", ControlPath: "/run/user/1000/banger/vms/x/ssh.ctl"}
	if err := good.Validate(); err != nil {
		t.Fatalf("a daemon's real answer refused: %v", err)
	}
	noCtl := good
	noCtl.ControlPath = ""
	if err := noCtl.Validate(); err != nil {
		t.Errorf("no control path refused: %v", err)
	}
	cases := map[string]func(i *VMSSHInfo){
		"option as user":     func(i *VMSSHInfo) { i.User = "-oProxyCommand=touch /tmp/pwned" },
		"user with at":       func(i *VMSSHInfo) { i.User = "root@evil" },
		"host is a name":     func(i *VMSSHInfo) { i.IP = "-oProxyCommand=x" },
		"option as alias":    func(i *VMSSHInfo) { i.HostAlias = "-x" },
		"relative key":       func(i *VMSSHInfo) { i.KeyPath = "id_ed25519" },
		"key with space":     func(i *VMSSHInfo) { i.KeyPath = "/tmp/a b" },
		"unclean known":      func(i *VMSSHInfo) { i.KnownHostsPath = "/a/../b" },
		"newline in control": func(i *VMSSHInfo) { i.ControlPath = "/run/x\nProxyCommand y" },
	}
	for name, mutate := range cases {
		i := good
		mutate(&i)
		err := i.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), `ssh info of "web": `) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
}
