package dns

import (
	"net"

	miekg "github.com/miekg/dns"
)

// handler serves the queries of one listener.
type handler struct {
	s       *Server
	forward bool
}

func (h handler) ServeDNS(w miekg.ResponseWriter, r *miekg.Msg) {
	resp := h.s.respond(r, h.forward)
	if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
		resp.Truncate(udpLimit(r))
	}
	if err := w.WriteMsg(resp); err != nil {
		h.s.log.Debug("dns: write reply", "client", w.RemoteAddr().String(), "err", err)
	}
}

// respond builds the reply to r.
func (s *Server) respond(r *miekg.Msg, forward bool) *miekg.Msg {
	if r.Opcode != miekg.OpcodeQuery {
		return reply(r, miekg.RcodeNotImplemented, forward)
	}
	if len(r.Question) != 1 {
		return reply(r, miekg.RcodeFormatError, forward)
	}
	q := r.Question[0]
	switch {
	case miekg.IsSubDomain(zoneApex, q.Name):
		return s.answerZone(r, q, forward)
	case !forward:
		return reply(r, miekg.RcodeRefused, forward)
	}
	if resp := s.forward(r); resp != nil {
		return resp
	}
	return reply(r, miekg.RcodeServerFailure, forward)
}

// answerZone answers a question about a name in the zone.
func (s *Server) answerZone(r *miekg.Msg, q miekg.Question, forward bool) *miekg.Msg {
	if q.Qclass != miekg.ClassINET && q.Qclass != miekg.ClassANY ||
		q.Qtype == miekg.TypeAXFR || q.Qtype == miekg.TypeIXFR {
		return reply(r, miekg.RcodeRefused, forward)
	}
	m := reply(r, miekg.RcodeSuccess, forward)
	m.Authoritative = true
	labels := miekg.SplitDomainName(q.Name) // [..., "vm"]
	switch len(labels) {
	case 1: // the apex
		if q.Qtype == miekg.TypeSOA || q.Qtype == miekg.TypeANY {
			soa := s.soa()
			soa.Hdr.Name = q.Name
			m.Answer = append(m.Answer, soa)
		}
		if q.Qtype == miekg.TypeNS || q.Qtype == miekg.TypeANY {
			m.Answer = append(m.Answer, &miekg.NS{Hdr: header(q.Name, miekg.TypeNS), Ns: zoneApex})
		}
	case 2: // NAME.vm.
		ip, ok := s.zone.Lookup(labels[0])
		switch {
		case !ok:
			m.Rcode = miekg.RcodeNameError
		case q.Qtype == miekg.TypeA || q.Qtype == miekg.TypeANY:
			m.Answer = []miekg.RR{&miekg.A{Hdr: header(q.Name, miekg.TypeA), A: ip.AsSlice()}}
		}
	default: // deeper names do not exist: records are single labels
		m.Rcode = miekg.RcodeNameError
	}
	if len(m.Answer) == 0 {
		m.Ns = []miekg.RR{s.soa()}
	}
	return m
}

// soa is the zone's SOA record; its minimum TTL bounds negative caching.
func (s *Server) soa() *miekg.SOA {
	return &miekg.SOA{
		Hdr:     header(zoneApex, miekg.TypeSOA),
		Ns:      zoneApex,
		Mbox:    "hostmaster." + zoneApex,
		Serial:  s.zone.soaSerial(),
		Refresh: 60,
		Retry:   30,
		Expire:  300,
		Minttl:  recordTTL,
	}
}

func header(name string, rrtype uint16) miekg.RR_Header {
	return miekg.RR_Header{Name: name, Rrtype: rrtype, Class: miekg.ClassINET, Ttl: recordTTL}
}

// reply starts a reply to r with rcode, echoing EDNS when r uses it.
func reply(r *miekg.Msg, rcode int, forward bool) *miekg.Msg {
	m := new(miekg.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = forward
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(ednsUDPSize, opt.Do())
	}
	return m
}

// udpLimit is the largest UDP reply to send for r: what its client
// accepts, but no more than the size we advertise.
func udpLimit(r *miekg.Msg) int {
	if opt := r.IsEdns0(); opt != nil {
		return max(miekg.MinMsgSize, min(int(opt.UDPSize()), ednsUDPSize))
	}
	return miekg.MinMsgSize
}
