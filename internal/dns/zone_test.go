package dns

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
)

func TestZoneSetLookupDelete(t *testing.T) {
	z := NewZone()
	ip := netip.MustParseAddr("172.30.0.2")
	z.Set("Web", ip)
	for _, name := range []string{"web", "WEB", "wEb"} {
		if got, ok := z.Lookup(name); !ok || got != ip {
			t.Fatalf("Lookup(%q) = %v, %v; want %v, true", name, got, ok, ip)
		}
	}
	if _, ok := z.Lookup("db"); ok {
		t.Fatal("Lookup(db) found a record that was never set")
	}
	z.Set("web", netip.MustParseAddr("172.30.0.9"))
	if got, _ := z.Lookup("web"); got != netip.MustParseAddr("172.30.0.9") {
		t.Fatalf("Set did not update: got %v", got)
	}
	z.Delete("WEB")
	if _, ok := z.Lookup("web"); ok {
		t.Fatal("Delete(WEB) left the record for web")
	}
	z.Delete("never-there") // harmless
}

func TestZoneIgnoresWhatCannotBeAnswered(t *testing.T) {
	var z Zone // the zero value is usable
	z.Set("a.b", netip.MustParseAddr("10.0.0.1"))
	z.Set("", netip.MustParseAddr("10.0.0.1"))
	z.Set("has space", netip.MustParseAddr("10.0.0.1"))
	z.Set(string(make([]byte, 64)), netip.MustParseAddr("10.0.0.1"))
	z.Set("six", netip.MustParseAddr("2001:db8::1"))
	z.Set("zero", netip.Addr{})
	z.Set("mapped", netip.MustParseAddr("::ffff:10.0.0.3"))
	if got := z.Names(); !slices.Equal(got, []string{"mapped"}) {
		t.Fatalf("Names() = %q, want only [mapped]", got)
	}
	if got, _ := z.Lookup("mapped"); !got.Is4() {
		t.Fatalf("a 4-in-6 address should be stored as IPv4, got %v", got)
	}
}

func TestZoneReplaceAndNames(t *testing.T) {
	z := NewZone()
	z.Set("old", netip.MustParseAddr("10.0.0.1"))
	before := z.soaSerial()
	z.Replace(map[string]netip.Addr{
		"Zeta":  netip.MustParseAddr("10.0.0.3"),
		"alpha": netip.MustParseAddr("10.0.0.2"),
		"b.c":   netip.MustParseAddr("10.0.0.4"), // ignored
	})
	if got := z.Names(); !slices.Equal(got, []string{"alpha", "zeta"}) {
		t.Fatalf("Names() = %q, want [alpha zeta]", got)
	}
	if _, ok := z.Lookup("old"); ok {
		t.Fatal("Replace kept a record that is not in the new set")
	}
	if z.soaSerial() == before {
		t.Fatal("Replace did not change the SOA serial")
	}
}

// TestZoneConcurrent is for the race detector.
func TestZoneConcurrent(t *testing.T) {
	z := NewZone()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				ip := netip.AddrFrom4([4]byte{10, 0, byte(i), byte(j)})
				switch j % 4 {
				case 0:
					z.Set("web", ip)
				case 1:
					z.Lookup("web")
				case 2:
					z.Replace(map[string]netip.Addr{"web": ip, "db": ip})
				case 3:
					z.Names()
					z.Delete("db")
				}
			}
		}()
	}
	wg.Wait()
}
