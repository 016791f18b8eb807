//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"banger/internal/dns"
	"banger/internal/hostnet"
	"banger/internal/rpc"
)

// TestBenchNetwork is `make bench`'s network figures: a tap claimed from
// the warm pool against one created cold, the .vm DNS server against a
// bare miekg/dns handler, and banger's host-side create time with and
// without the pool.
func TestBenchNetwork(t *testing.T) {
	if os.Getenv("BANGER_BENCH") == "" {
		t.Skip("benchmark: run with make bench (BANGER_BENCH=1)")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root (network namespaces, taps)")
	}
	res := map[string]any{"date": time.Now().UTC().Format(time.RFC3339)}
	benchTapClaim(t, res)
	benchDNS(t, res)
	benchCreateWithPool(t, res)
	writeBenchResult(t, "network", res)
}

func benchTapClaim(t *testing.T, res map[string]any) {
	ns := fmt.Sprintf("banger-bench-tap-%d", os.Getpid())
	_ = exec.Command("ip", "netns", "delete", ns).Run()
	ipn(t, "netns", "add", ns)
	defer exec.Command("ip", "netns", "delete", ns).Run()
	const rounds, size = 30, 2
	var pool *hostnet.Pool
	inNS(t, ns, func() error {
		if err := hostnet.EnsureBridge("bgbench0", "10.213.0.1/24"); err != nil {
			return err
		}
		var err error
		if pool, err = hostnet.NewPool("bgbench0", size, nil); err != nil {
			return err
		}
		return pool.Start(context.Background(), func(string) bool { return false })
	})
	defer pool.Close()
	var warm, cold []time.Duration
	for i := 0; i < rounds; i++ {
		deadline := time.Now().Add(5 * time.Second)
		for len(pool.Idle()) < size && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		inNS(t, ns, func() error {
			start := time.Now()
			name, err := pool.Claim(fmt.Sprintf("bg-w%d", i))
			if err != nil {
				return err
			}
			warm = append(warm, time.Since(start))
			if err := hostnet.DeleteTap(name); err != nil {
				return err
			}
			name = fmt.Sprintf("bg-c%d", i)
			start = time.Now()
			if err := hostnet.CreateTap(name, "bgbench0"); err != nil {
				return err
			}
			cold = append(cold, time.Since(start))
			return hostnet.DeleteTap(name)
		})
	}
	ratio := median(warm).Seconds() / median(cold).Seconds()
	res["tap_claim_warm_ms"] = median(warm).Seconds() * 1000
	res["tap_create_cold_ms"] = median(cold).Seconds() * 1000
	res["ratio_tap_claim_warm_vs_cold"] = ratio
	fmt.Printf("\ntap from the warm pool: %.3f ms, created cold: %.3f ms (median of %d): ratio %.3f (target <= 0.2)\n",
		median(warm).Seconds()*1000, median(cold).Seconds()*1000, rounds, ratio)
}

// dnsLoad sends queries for names in the zone from workers UDP clients to
// addr, at most total queries and at most limit long; it returns queries
// per second and the 99th percentile latency.
func dnsLoad(t *testing.T, addr string, names []string, workers, total int, limit time.Duration) (float64, time.Duration) {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	deadline := time.Now().Add(limit)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := &mdns.Client{Timeout: time.Second}
			conn, err := c.Dial(addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			local := make([]time.Duration, 0, total/workers)
			for i := 0; i < total/workers && time.Now().Before(deadline); i++ {
				m := new(mdns.Msg)
				m.SetQuestion(names[(w+i)%len(names)]+".vm.", mdns.TypeA)
				r, rtt, err := c.ExchangeWithConn(m, conn)
				if err != nil || r.Rcode != mdns.RcodeSuccess {
					t.Errorf("query: %v %v", err, r)
					return
				}
				local = append(local, rtt)
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) == 0 {
		t.Fatal("no DNS query answered")
	}
	return float64(len(lat)) / elapsed.Seconds(), lat[len(lat)*99/100]
}

func benchDNS(t *testing.T, res map[string]any) {
	zone := dns.NewZone()
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("vm%d", i)
		zone.Set(names[i], netip.AddrFrom4([4]byte{172, 30, byte(i / 250), byte(1 + i%250)}))
	}
	srv := dns.New(dns.Options{Zone: zone})
	if err := srv.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := srv.Addrs()[0].String()

	// Baseline: a bare miekg/dns server answering one fixed A record.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bare := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 5},
			A: net.IPv4(172, 30, 0, 2)}}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = bare.ActivateAndServe() }()
	defer bare.Shutdown()

	const workers, total = 8, 40000
	var qps, bareQPS []float64
	var p99, bareP99 []time.Duration
	for round := 0; round < 3; round++ {
		q, p := dnsLoad(t, addr, names, workers, total, 10*time.Second)
		bq, bp := dnsLoad(t, pc.LocalAddr().String(), names, workers, total, 10*time.Second)
		qps, p99 = append(qps, q), append(p99, p)
		bareQPS, bareP99 = append(bareQPS, bq), append(bareP99, bp)
	}
	sort.Float64s(qps)
	sort.Float64s(bareQPS)
	res["dns_qps"] = qps[1]
	res["dns_p99_ms"] = median(p99).Seconds() * 1000
	res["dns_bare_qps"] = bareQPS[1]
	res["dns_bare_p99_ms"] = median(bareP99).Seconds() * 1000
	res["ratio_dns_qps_vs_bare"] = qps[1] / bareQPS[1]
	fmt.Printf(".vm DNS on loopback (%d clients, %d queries, median of 3): %.0f queries/s, p99 %.3f ms; bare miekg/dns handler: %.0f queries/s, p99 %.3f ms; ratio %.2f\n",
		workers, total, qps[1], median(p99).Seconds()*1000, bareQPS[1], median(bareP99).Seconds()*1000, qps[1]/bareQPS[1])
}

func benchCreateWithPool(t *testing.T, res map[string]any) {
	kernelDir, rootfs := artifacts(t)
	rounds := 2
	hostSide := map[int][]time.Duration{}
	claim := map[int][]time.Duration{}
	for _, size := range []int{2, 0} {
		func() {
			e := newEnv(t, fmt.Sprintf("tap_pool_size = %d", size), `qemu_accel = "tcg"`)
			e.must("kernel", "import", "debian-6.1", "--from", kernelDir)
			e.must("image", "register", "--name", "debian-bookworm", "--rootfs", rootfs, "--kernel", "debian-6.1")
			client := &rpc.Client{SocketPath: e.sock}
			for i := 0; i < rounds; i++ {
				time.Sleep(500 * time.Millisecond) // let the pool refill
				_, host, stages := benchBangerCreateStages(t, e, client, fmt.Sprintf("pool%d-%d", size, i))
				hostSide[size] = append(hostSide[size], host)
				claim[size] = append(claim[size], stages["claim tap"])
			}
		}()
	}
	res["create_host_side_pool_ms"] = median(hostSide[2]).Seconds() * 1000
	res["create_host_side_no_pool_ms"] = median(hostSide[0]).Seconds() * 1000
	res["claim_tap_stage_pool_ms"] = median(claim[2]).Seconds() * 1000
	res["claim_tap_stage_no_pool_ms"] = median(claim[0]).Seconds() * 1000
	fmt.Printf("create host-side time: %.0f ms with the pool, %.0f ms without (claim tap stage %.1f vs %.1f ms)\n\n",
		median(hostSide[2]).Seconds()*1000, median(hostSide[0]).Seconds()*1000,
		median(claim[2]).Seconds()*1000, median(claim[0]).Seconds()*1000)
}
