// Package agent is banger's guest agent channel: the wire protocol, the
// guest side (Server, run by cmd/banger-agent inside every VM) and the host
// side (Client, used by the daemon). The agent answers two questions about
// a running guest: "health" (uptime, load, memory, disk usage, hostname,
// boot id) and "ports" (the listening TCP and UDP sockets and the processes
// that own them).
//
//	        host (bangerd)                          guest (banger-agent, root)
//	QEMU:   DialQEMU(<runtime>/agent.sock) ── virtio-serial ──▶ /dev/virtio-ports/org.banger.agent
//	FC:     DialFirecracker(<runtime>/vsock.sock, 52)
//	          "CONNECT 52\n" ◀─▶ "OK <hostport>\n" ── vsock ──▶ AF_VSOCK listener, port 52
//
// It owns the protocol on both ends, the guest's transports (opening and
// reopening the virtio-serial port, the AF_VSOCK listener, picking one) and
// the guest's /proc readers. It does not create the host sockets (the vmm
// drivers do: qemu.AgentSocket, firecracker.AgentSocket), does not start
// or stop VMs, and does not know about the daemon's RPC: Health, Port and
// Disk carry JSON tags so the daemon can pass them on as they are.
//
// Wire format. Both directions carry frames: a 4-byte big-endian payload
// length (1..MaxFrameSize, 1 MiB) followed by that many bytes of one JSON
// object whose "type" is "hello", "request" or "response". An exchange (the
// lengths in brackets):
//
//	host  → [0000004F] {"type":"hello","version":1,"min_version":1,"nonce":"5f0c3a9d2b7e41c8a6f0d3e1"}
//	agent → [00000058] {"type":"hello","version":1,"agent_version":"v0.4.0","nonce":"5f0c3a9d2b7e41c8a6f0d3e1"}
//	host  → [00000034] {"type":"request","id":1837265519,"method":"health"}
//	agent → [00000142] {"type":"response","id":1837265519,"result":{"agent_version":"v0.4.0","uptime_s":12.3,
//	                    "load1":0.1,"load5":0.05,"load15":0.01,"mem_total":1033457664,"mem_available":901292032,
//	                    "disks":[{"path":"/","size":4160421888,"used":1288491008,"avail":2659385344}],
//	                    "hostname":"dev-vm","boot_id":"3f2c1a9e-5b7d-4e21-9c0a-8d6f4b2e1c77"}}
//	host  → [00000033] {"type":"request","id":1837265520,"method":"ports"}
//	agent → [00000074] {"type":"response","id":1837265520,"result":[{"proto":"tcp","addr":"0.0.0.0","port":22,"pid":241,"process":"sshd"}]}
//	host  → [00000034] {"type":"request","id":1837265521,"method":"reboot"}
//	agent → [00000086] {"type":"response","id":1837265521,"error":{"code":"unknown_method",
//	                    "message":"unknown method \"reboot\" (agent v0.4.0, protocol 1)"}}
//
// (the long payloads are wrapped here; on the wire they are one line).
//
// The handshake: the host sends a hello with its protocol range and a
// fresh random nonce; the agent answers with the version it will speak
// and the same nonce. The host accepts only a hello echoing a nonce it
// sent, and refuses a version outside MinProtocolVersion..ProtocolVersion
// with a VersionError ("the guest agent speaks protocol 3, this banger
// speaks 1..2: rebuild the image or update banger"). Requests carry an id
// (a per-Client random start, then +1), responses echo it; the agent
// answers in order, one request at a time, and ignores unknown types.
//
// Why nonces and ids: under QEMU the virtio-serial port is one byte stream
// for the VM's whole life, shared by every host connection in turn. What
// the agent writes while no host is connected waits and reaches the next
// host; a host that leaves mid-frame leaves half a frame behind. So a new
// Client skips everything until the hello with its own nonce (sending a new
// hello when a foreign one arrives, or after a second of silence), and
// after that drops responses whose id no call is waiting for ("stale").
//
// Resynchronisation. A frame reader accepts a candidate at the current
// position only if the header announces 1..MaxFrameSize bytes and the
// payload starts with '{', holds no NUL byte and is valid JSON; otherwise it
// moves on by one byte, straight to the next NUL. Every header starts with
// a NUL (lengths are below 1<<24) and JSON never holds one, so the next
// real frame ends any bogus candidate: whatever garbage precedes it (boot
// noise, a truncated frame, a header claiming 0xFFFFFFFF bytes), a frame
// written whole is read back (FuzzFrameReaderResync checks this), without
// waiting for bytes that will not come.
//
// Transports, guest side. Run picks one: virtio-serial when the port
// org.banger.agent exists (/dev/virtio-ports/NAME, or the /dev/vportNpM
// that /sys/class/virtio-ports names, for images without udev), vsock when
// a virtio vsock device (id 0x0013) exists, else it waits for one. On the
// port (ServePort), a read of EOF means no host is connected: the agent
// keeps the port open and reads again after a backoff (20ms doubling to
// 250ms, which is also how late it may notice a new host); any other error
// (EIO, EPIPE, ENODEV, or a response write blocked for WriteTimeout
// because the host went away) closes and reopens it (backoff up to 2s).
// On vsock (ServeListener) each connection is its own stream, served
// concurrently (up to 16). Repeated failures are logged once a minute.
//
// Invariants:
//   - Memory: a reader holds at most one frame (headerSize+MaxFrameSize)
//     plus a 64 KiB buffer, whatever the peer sends. A Client gives the
//     stream up with a protocol error after 4 MiB of garbage and stale
//     frames without a useful frame in between.
//   - Time: every Client operation ends by its context's deadline, or
//     DefaultCallTimeout / DefaultHandshakeTimeout when it has none; a
//     write that cannot complete fails the Client (a partial frame may be
//     on the wire). WaitHealthy bounds each attempt too.
//   - A failed Client stays failed: close it and dial again.
//   - QEMU's socket chardev takes one host connection at a time; a second
//     Client for the same VM waits until the first is closed.
//   - The agent only reads: /proc, statfs. Ports are capped at 4096 and the
//     /proc/*/fd scan at Server.MaxFDs entries.
package agent
