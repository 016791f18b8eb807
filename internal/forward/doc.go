// Package forward owns banger's port forwards: it makes a port inside a VM
// reachable on the host's loopback, as 127.0.0.1:HOSTPORT, by relaying in
// user space. It runs inside the daemon, so a forward outlives the CLI
// command that asked for it and ends when the daemon ends it: on request
// (Remove), when its VM stops or is deleted (StopVM), or at shutdown
// (Close).
//
//	host: bangerd, the Manager                    VMs on the bridge
//	┌───────────────────────────────────────────┐
//	│ curl ──▶ 127.0.0.1:8000 ── tcp relay ─────┼──▶ 172.30.0.2:80  (VM "web")
//	│            a guest connection per client  │
//	│ dig ───▶ 127.0.0.1:5353 ── udp relay ─────┼──▶ 172.30.0.3:53  (VM "dns")
//	│            one host socket; per client a  │
//	│            session: a socket connected to │
//	│            the guest                      │
//	└───────────────────────────────────────────┘
//
// What it owns: the host sockets it binds (always on 127.0.0.1, never on a
// wildcard or the bridge, so a forward exposes nothing beyond the host),
// the connections and sessions it relays, and the goroutines that do it.
// It knows a VM only by its name and its guest address; it does no NAT,
// firewalling or routing (that is hostnat), and needs no privileges beyond
// those of binding the host port it is given.
//
// TCP. Each accepted connection gets its own connection to the guest
// (dialed with a timeout of a few seconds, aborted at once when the
// forward ends), and bytes are copied both ways by two goroutines. A
// direction that ends in EOF half-closes its destination (CloseWrite) and
// lets the other run on, so request/response protocols that shut down
// their sending side work; a direction that ends in an error tears down
// both connections. A client whose guest port refuses, or does not answer
// within the dial timeout, gets its connection reset.
//
// UDP. One host socket takes every client's datagrams. The first datagram
// from a client address opens a session: a socket connected to the guest,
// whose replies go back to that client from the host socket, so the guest
// sees each client as a distinct source port. A session with no traffic
// either way for the idle timeout (60 s) ends; a later datagram opens a
// new one.
//
// Invariants:
//   - Everything is bounded. A TCP forward holds at most 256 live
//     connections (further ones are reset at once); a UDP forward at most
//     256 sessions (datagrams from further clients are dropped until a
//     session expires). Dials time out; idle sessions expire.
//   - A VM forwards a given protocol and guest port at most once, and a
//     host port is held by at most one forward per protocol.
//   - Remove, StopVM and Close return only after the listener or socket,
//     every connection or session, and every goroutine of what they end
//     are gone: nothing outlives its forward.
//   - Byte counts are live: they grow as data is relayed, not when a
//     connection ends. BytesIn is what clients sent into the guest;
//     BytesOut what the guest sent back out.
//   - Forwards are not persisted: a daemon restart or a VM restart starts
//     with none; the daemon re-adds them if it wants them back.
//
// A Manager is safe for concurrent use. ParseSpec reads the CLI form of a
// forward (GUEST, GUEST:HOST or GUEST:0).
package forward
