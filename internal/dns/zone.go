package dns

import (
	"net/netip"
	"sort"
	"strings"
	"sync"
)

// Zone is the set of records in the "vm." zone: VM name → IPv4. Names are
// single DNS labels (the part before ".vm") and match case-insensitively;
// they are stored lower-case. It is safe for concurrent use, and changes
// are seen by the next query. The zero value is an empty zone.
//
// A name that is not a single label of 1-63 letters, digits, '-' or '_',
// or an address that is not IPv4, could never be answered, so Set and
// Replace ignore it.
type Zone struct {
	mu      sync.RWMutex
	records map[string]netip.Addr
	serial  uint32 // bumped on every change; the SOA serial
}

// NewZone returns an empty zone.
func NewZone() *Zone { return &Zone{} }

// Set adds or updates the record for name.
func (z *Zone) Set(name string, ip netip.Addr) {
	name, ip, ok := normalize(name, ip)
	if !ok {
		return
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.records == nil {
		z.records = make(map[string]netip.Addr)
	}
	z.records[name] = ip
	z.serial++
}

// Delete removes the record for name, if there is one.
func (z *Zone) Delete(name string) {
	name = strings.ToLower(name)
	z.mu.Lock()
	defer z.mu.Unlock()
	if _, ok := z.records[name]; ok {
		delete(z.records, name)
		z.serial++
	}
}

// Replace swaps the whole set of records for records in one step, so a
// query sees either the old set or the new one, never a mix.
func (z *Zone) Replace(records map[string]netip.Addr) {
	next := make(map[string]netip.Addr, len(records))
	for name, ip := range records {
		if name, ip, ok := normalize(name, ip); ok {
			next[name] = ip
		}
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records = next
	z.serial++
}

// Lookup returns the IPv4 recorded for name.
func (z *Zone) Lookup(name string) (netip.Addr, bool) {
	name = strings.ToLower(name)
	z.mu.RLock()
	defer z.mu.RUnlock()
	ip, ok := z.records[name]
	return ip, ok
}

// Names returns the recorded names, sorted.
func (z *Zone) Names() []string {
	z.mu.RLock()
	names := make([]string, 0, len(z.records))
	for name := range z.records {
		names = append(names, name)
	}
	z.mu.RUnlock()
	sort.Strings(names)
	return names
}

// soaSerial is the zone's SOA serial: it changes whenever the records do.
func (z *Zone) soaSerial() uint32 {
	z.mu.RLock()
	defer z.mu.RUnlock()
	return z.serial
}

// normalize lower-cases name and unmaps ip, and reports whether the pair
// can be a record.
func normalize(name string, ip netip.Addr) (string, netip.Addr, bool) {
	name = strings.ToLower(name)
	ip = ip.Unmap()
	return name, ip, validLabel(name) && ip.Is4()
}

// validLabel reports whether name (already lower-case) is one DNS label
// made of letters, digits, '-' and '_'.
func validLabel(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
