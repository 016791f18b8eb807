// Package dns owns banger's small authoritative DNS server for the ".vm"
// zone: a query for NAME.vm answers the IPv4 of the VM called NAME. It is
// built on github.com/miekg/dns and holds three pieces:
//
//   - Zone, the concurrency-safe set of records (VM name → IPv4) that the
//     daemon keeps in step with its database (Set, Delete, Replace);
//   - Server, which answers the zone on any number of listeners, each
//     serving UDP and TCP on one address, and either forwards other names to
//     the host's resolvers or refuses them;
//   - HostUpstreams, which reads the host's resolvers from resolv.conf
//     (systemd-resolved's real upstreams first) and follows changes to it.
//
// The daemon runs two listeners; a query goes like this:
//
//	guest ─▶ 172.30.0.1:53    bridge listener, forward=true
//	host  ─▶ 127.0.0.1:PORT   dns_listen,      forward=false
//	           │
//	           ├─ NAME.vm ──────▶ Zone (A record, TTL 5 s, authoritative)
//	           └─ other names ──▶ forward=true:  HostUpstreams (UDP, TCP if truncated)
//	                              forward=false: REFUSED
//
// Everything it accepts is bounded: forwarded queries in number and time,
// TCP connections in number, in queries each and in idle time. A malformed
// packet is answered with FORMERR or dropped; it never stops a listener.
//
// The package must not run commands, configure interfaces or resolv.conf,
// or know where the records come from; it only reads resolv.conf files and
// serves the names it is given. It is no general resolver: it caches
// nothing and serves no zone but "vm.".
package dns
