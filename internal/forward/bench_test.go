package forward

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
)

const benchTransfer = 64 << 20

// BenchmarkTCPThroughput sends benchTransfer bytes per iteration to a sink
// on the "guest" address, directly and through a forward; the ratio of the
// two MB/s figures is the cost of the forward:
//
//	go test -run '^$' -bench TCPThroughput -benchtime 20x ./internal/forward/
func BenchmarkTCPThroughput(b *testing.B) {
	sink := newServer(b, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		_ = binary.Write(c, binary.BigEndian, uint64(n))
	})
	m := NewManager(nil)
	b.Cleanup(m.Close)
	f, err := m.Add(Spec{VM: "bench", GuestAddr: sink.addr(), Proto: TCP})
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 256<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name string
		addr netip.AddrPort
	}{{"direct", sink.addr()}, {"forwarded", f.HostAddr}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(benchTransfer)
			for b.Loop() {
				sendAll(b, c.addr, chunk)
			}
		})
	}
}

func sendAll(b *testing.B, a netip.AddrPort, chunk []byte) {
	conn, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(a))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	for sent := 0; sent < benchTransfer; sent += len(chunk) {
		if _, err := conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := conn.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var got uint64
	if err := binary.Read(conn, binary.BigEndian, &got); err != nil {
		b.Fatal(err)
	}
	if got != benchTransfer {
		b.Fatalf("sink received %d bytes, want %d", got, benchTransfer)
	}
}
