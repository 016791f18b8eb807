package dns

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"

	miekg "github.com/miekg/dns"
)

// forward asks the upstreams, in order, for r and returns the first good
// answer with r's id, or nil when none answered in time. Each upstream gets
// an equal share of what is left of the forward timeout; one that answers
// SERVFAIL or REFUSED is passed over for the next, but its answer is kept
// should no other do better.
func (s *Server) forward(r *miekg.Msg) *miekg.Msg {
	select {
	case s.fwdSlots <- struct{}{}:
		defer func() { <-s.fwdSlots }()
	default:
		s.log.Debug("dns: too many forwarded queries in flight", "name", r.Question[0].Name)
		return nil
	}
	ups := s.upstreamList()
	if len(ups) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.fwdTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()

	q := r.Copy()
	q.Id = miekg.Id() // our own id towards the upstream, not the client's
	var best *miekg.Msg
	for i, up := range ups {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			break
		}
		actx, acancel := context.WithTimeout(ctx, left/time.Duration(len(ups)-i))
		resp, err := exchange(actx, q, up, s.fwdTimeout)
		acancel()
		if err != nil {
			s.log.Debug("dns: upstream failed", "upstream", up, "name", q.Question[0].Name, "err", err)
			continue
		}
		best = resp
		if resp.Rcode != miekg.RcodeServerFailure && resp.Rcode != miekg.RcodeRefused {
			break
		}
	}
	if best != nil {
		best.Id = r.Id
	}
	return best
}

// upstreamList is the upstreams to try, without our own listeners (the
// host's resolv.conf may point at the bridge listener) and at most
// maxUpstreams of them.
func (s *Server) upstreamList() []string {
	if s.upstreams == nil {
		return nil
	}
	self := *s.self.Load()
	var ups []string
	for _, up := range s.upstreams.Upstreams() {
		if ap, err := netip.ParseAddrPort(up); err == nil &&
			slices.Contains(self, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())) {
			continue
		}
		ups = append(ups, up)
		if len(ups) == maxUpstreams {
			break
		}
	}
	return ups
}

// exchange sends q to upstream over UDP, and again over TCP when the
// answer is truncated. A truncated answer is still returned if TCP fails:
// the client can retry over TCP itself.
func exchange(ctx context.Context, q *miekg.Msg, upstream string, timeout time.Duration) (*miekg.Msg, error) {
	resp, err := exchangeOver(ctx, "udp", q, upstream, timeout)
	if err != nil || !resp.Truncated {
		return resp, err
	}
	if full, err := exchangeOver(ctx, "tcp", q, upstream, timeout); err == nil {
		return full, nil
	}
	return resp, nil
}

var errWrongAnswer = errors.New("upstream's reply does not answer the question")

func exchangeOver(ctx context.Context, network string, q *miekg.Msg, upstream string, timeout time.Duration) (*miekg.Msg, error) {
	c := &miekg.Client{Net: network, Timeout: timeout} // ctx's deadline, if sooner, wins
	conn, err := c.DialContext(ctx, upstream)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The exchange obeys ctx's deadline but not its cancellation (Close).
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	if err != nil {
		return nil, err
	}
	if !resp.Response || !sameQuestion(q, resp) {
		return nil, errWrongAnswer
	}
	return resp, nil
}

func sameQuestion(q, resp *miekg.Msg) bool {
	if len(resp.Question) != 1 {
		return false
	}
	a, b := q.Question[0], resp.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
