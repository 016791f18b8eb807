package hostnet

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestAllocateIP(t *testing.T) {
	tests := []struct {
		name string
		cidr string
		used []string
		want string
	}{
		{"empty subnet gets first after gateway", "172.30.0.1/24", nil, "172.30.0.2"},
		{"network address means gateway .1", "172.30.0.0/24", nil, "172.30.0.2"},
		{"skips used", "172.30.0.1/24", []string{"172.30.0.2", "172.30.0.3"}, "172.30.0.4"},
		{"fills a gap", "172.30.0.1/24", []string{"172.30.0.2", "172.30.0.4"}, "172.30.0.3"},
		{"gateway in used is harmless", "172.30.0.1/24", []string{"172.30.0.1"}, "172.30.0.2"},
		{"addresses outside the subnet are ignored", "172.30.0.1/24", []string{"10.0.0.2"}, "172.30.0.2"},
		{"gateway in the middle wraps around", "10.0.0.6/29", []string{"10.0.0.2"}, "10.0.0.1"},
		{"last host before broadcast", "10.0.0.1/29", []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}, "10.0.0.6"},
		{"slash 30 has one VM address", "192.168.7.1/30", nil, "192.168.7.2"},
		{"crosses an octet", "10.9.0.1/16", seq("10.9.0.", 2, 255), "10.9.1.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AllocateIP(tc.cidr, tc.used)
			if err != nil {
				t.Fatalf("AllocateIP(%q, %v): %v", tc.cidr, tc.used, err)
			}
			if got != tc.want {
				t.Fatalf("AllocateIP(%q, %v) = %s, want %s", tc.cidr, tc.used, got, tc.want)
			}
		})
	}
}

func seq(prefix string, from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

func TestAllocateIPFull(t *testing.T) {
	_, err := AllocateIP("10.0.0.1/29", seq("10.0.0.", 2, 6))
	if !errors.Is(err, ErrSubnetFull) {
		t.Fatalf("want ErrSubnetFull, got %v", err)
	}
	for _, want := range []string{"10.0.0.1/29", "bridge_cidr"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestAllocateIPBadInput(t *testing.T) {
	tests := []struct {
		name    string
		cidr    string
		used    []string
		badReq  bool
		mention string
	}{
		{"not a cidr", "172.30.0.1", nil, true, "172.30.0.1"},
		{"ipv6", "fd00::1/64", nil, true, "IPv4"},
		{"slash 31", "10.0.0.0/31", nil, true, "/30"},
		{"slash 32", "10.0.0.1/32", nil, true, "/30"},
		{"gateway on broadcast", "10.0.0.255/24", nil, true, "broadcast"},
		{"corrupt used entry", "10.0.0.1/24", []string{"10.0.0.2", "banana"}, false, "banana"},
		{"ipv6 used entry", "10.0.0.1/24", []string{"::1"}, false, "::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ip, err := AllocateIP(tc.cidr, tc.used)
			if err == nil {
				t.Fatalf("AllocateIP(%q) = %s, want error", tc.cidr, ip)
			}
			if got := api.IsCode(err, api.CodeBadRequest); got != tc.badReq {
				t.Errorf("bad_request = %v, want %v (%v)", got, tc.badReq, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestGateway(t *testing.T) {
	tests := []struct {
		cidr string
		ip   string
		bits int
	}{
		{"172.30.0.1/24", "172.30.0.1", 24},
		{"172.30.0.0/24", "172.30.0.1", 24},
		{"10.1.2.200/16", "10.1.2.200", 16},
	}
	for _, tc := range tests {
		ip, bits, err := Gateway(tc.cidr)
		if err != nil || ip != tc.ip || bits != tc.bits {
			t.Errorf("Gateway(%q) = %s, %d, %v; want %s, %d", tc.cidr, ip, bits, err, tc.ip, tc.bits)
		}
	}
}

func TestMACFor(t *testing.T) {
	tests := []struct {
		ip   string
		want string
	}{
		{"172.30.0.2", "52:54:ac:1e:00:02"},
		{"10.0.0.255", "52:54:0a:00:00:ff"},
		{"0.0.0.0", "52:54:00:00:00:00"},
	}
	for _, tc := range tests {
		got, err := MACFor(tc.ip)
		if err != nil || got != tc.want {
			t.Errorf("MACFor(%q) = %q, %v; want %q", tc.ip, got, err, tc.want)
		}
		// Locally administered (bit 1) and unicast (bit 0 clear).
		first, perr := strconv.ParseUint(got[:2], 16, 8)
		if perr != nil || first&0x02 == 0 || first&0x01 != 0 {
			t.Errorf("MACFor(%q) = %q is not a locally administered unicast address", tc.ip, got)
		}
	}
	a, _ := MACFor("172.30.0.2")
	b, _ := MACFor("172.30.0.3")
	if a == b {
		t.Errorf("different IPs gave the same MAC %s", a)
	}
	for _, bad := range []string{"", "fd00::1", "172.30.0", "x"} {
		if got, err := MACFor(bad); err == nil {
			t.Errorf("MACFor(%q) = %q, want error", bad, got)
		}
	}
}

func TestTapName(t *testing.T) {
	tests := []struct {
		id   string
		want string // "" means: hashed form, checked by shape
	}{
		{"abc123", "bg-abc123"},
		{"0123456789ab", "bg-0123456789ab"},
		{"0123456789abc", ""},
		{"01HZX3K9Q8W7", ""}, // upper case
		{"vm with/odd:chars", ""},
		{"", ""},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got := TapName(tc.id)
		if got != TapName(tc.id) {
			t.Errorf("TapName(%q) is not deterministic", tc.id)
		}
		if len(got) > 15 || !strings.HasPrefix(got, TapPrefix) {
			t.Errorf("TapName(%q) = %q: want %q prefix and at most 15 bytes", tc.id, got, TapPrefix)
		}
		if err := validIfName("tap", got); err != nil {
			t.Errorf("TapName(%q) = %q is not a valid interface name: %v", tc.id, got, err)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("TapName(%q) = %q, want %q", tc.id, got, tc.want)
		}
		if tc.want == "" && len(got) != 15 {
			t.Errorf("TapName(%q) = %q, want a 12-digit hash suffix", tc.id, got)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("TapName(%q) and TapName(%q) collide: %s", prev, tc.id, got)
		}
		seen[got] = tc.id
	}
	// ULID-like ids created in the same millisecond share a long prefix;
	// they must still get different taps.
	if TapName("01HZX3K9Q8W7AAAA") == TapName("01HZX3K9Q8W7BBBB") {
		t.Error("ids sharing a 12-character prefix collide")
	}
}
