package forward

import (
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		arg         string
		guest, host uint16
		err         string
	}{
		{"8000", 8000, 8000, ""},
		{"8000:9000", 8000, 9000, ""},
		{"8000:0", 8000, 0, ""},
		{"1", 1, 1, ""},
		{"65535:65535", 65535, 65535, ""},
		{"22:2222", 22, 2222, ""},
		{"", 0, 0, "empty port forward; want GUEST, GUEST:HOST or GUEST:0"},
		{"0", 0, 0, `port forward "0": guest port 0: port must be 1..65535`},
		{"0:80", 0, 0, `port forward "0:80": guest port 0: port must be 1..65535`},
		{"65536", 0, 0, `port forward "65536": guest port 65536: port must be 1..65535`},
		{"99999999999999999999", 0, 0, "guest port 99999999999999999999: port must be 1..65535"},
		{"80:65536", 0, 0, `port forward "80:65536": host port 65536: port must be 1..65535 (or 0 to pick a free one)`},
		{"http", 0, 0, `port forward "http": guest port "http" is not a number`},
		{"80:x", 0, 0, `port forward "80:x": host port "x" is not a number`},
		{"-1", 0, 0, `guest port "-1" is not a number`},
		{"+80", 0, 0, `guest port "+80" is not a number`},
		{" 80", 0, 0, `guest port " 80" is not a number`},
		{"80:", 0, 0, `port forward "80:": host port is empty`},
		{":80", 0, 0, `port forward ":80": guest port is empty`},
		{"1:2:3", 0, 0, `port forward "1:2:3": want GUEST, GUEST:HOST or GUEST:0`},
		{"80/udp", 0, 0, `guest port "80/udp" is not a number`},
	} {
		g, h, err := ParseSpec(c.arg)
		if c.err == "" {
			if err != nil || g != c.guest || h != c.host {
				t.Errorf("ParseSpec(%q) = %d, %d, %v; want %d, %d", c.arg, g, h, err, c.guest, c.host)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("ParseSpec(%q) error = %v; want it to contain %q", c.arg, err, c.err)
		}
		if g != 0 || h != 0 {
			t.Errorf("ParseSpec(%q) = %d, %d with an error", c.arg, g, h)
		}
	}
}

func TestParseProto(t *testing.T) {
	for in, want := range map[string]Proto{"": TCP, "tcp": TCP, "TCP": TCP, "udp": UDP, "Udp": UDP} {
		if p, err := ParseProto(in); err != nil || p != want {
			t.Errorf("ParseProto(%q) = %q, %v", in, p, err)
		}
	}
	if _, err := ParseProto("sctp"); err == nil || err.Error() != `protocol "sctp": want tcp or udp` {
		t.Errorf("ParseProto(sctp) error = %v", err)
	}
}
