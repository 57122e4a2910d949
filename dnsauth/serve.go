package dnsauth

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/lore"
)

// maxAddrs is how many A or AAAA records an answer holds without allocating.
const maxAddrs = 8

// answer is the per-query scratch space, pooled so that the answer path does not allocate.
type answer struct {
	msg   dns.Msg
	an    [maxAddrs + 2]dns.RR
	ns    [2]dns.RR
	ex    [maxAddrs + 2]dns.RR
	a     [maxAddrs]dns.A
	aaaa  [maxAddrs]dns.AAAA
	ip    [maxAddrs][16]byte
	v4    [maxAddrs]netip.Addr
	v6    [maxAddrs]netip.Addr
	opt   dns.OPT
	optv  [1]dns.EDNS0
	cook  dns.EDNS0_COOKIE
	class uint64 // what RRL counts the answer as
	// nocache: the answer came from the challenge store (or an ACME name), which changes
	// without the directory: a PacketServer must not reuse it.
	nocache bool
	valid   bool // the query carried a valid server cookie
	cname   dns.CNAME
	hinfo   dns.HINFO
	buf     []byte
	ctx     *queryCtx
}

func newAnswer() any {
	return &answer{buf: make([]byte, 2048), ctx: &queryCtx{}}
}

func (a *answer) reset() {
	clear(a.an[:])
	clear(a.ns[:])
	clear(a.ex[:])
	a.msg = dns.Msg{}
	a.msg.Answer = a.an[:0]
	a.msg.Ns = a.ns[:0]
	a.msg.Extra = a.ex[:0]
	a.nocache = false
}

// ServeDNS answers one query. It implements dns.Handler.
func (h *Handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var start time.Time
	if h.m != nil {
		start = time.Now()
	}
	a := h.pool.Get().(*answer)
	a.reset()
	udp := false
	var ip netip.Addr
	if w != nil {
		switch ra := w.RemoteAddr().(type) {
		case *net.UDPAddr:
			udp, ip = true, ra.AddrPort().Addr()
		case *net.TCPAddr:
			ip = ra.AddrPort().Addr()
		}
	}
	limit, send := h.build(a, req, udp, ip)
	if send && udp && h.rrl != nil && !a.valid && ip.IsValid() {
		switch h.rrl.decide(ip, a.class) {
		case rrlDrop:
			send = false
			if h.m != nil {
				h.m.rrl.WithLabelValues("dropped").Inc()
			}
		case rrlSlip:
			a.slip()
			if h.m != nil {
				h.m.rrl.WithLabelValues("slipped").Inc()
			}
		}
	}
	if pw, ok := w.(*packetWriter); ok {
		pw.nocache = a.nocache
	}
	truncated := false
	if send {
		if h.write == WriteMessage || (h.write == WriteAuto && !ownWriter(w)) {
			if len(a.msg.Answer)+len(a.msg.Ns)+len(a.msg.Extra) > 0 && udp {
				before := a.msg.Truncated
				a.msg.Truncate(limit)
				truncated = a.msg.Truncated && !before
			}
			_ = w.WriteMsg(&a.msg) // a write error means the client is gone; nothing to answer
		} else {
			var buf []byte
			buf, truncated = h.pack(a, limit)
			if buf != nil {
				_, _ = w.Write(buf) // a write error means the client is gone; nothing to answer
			}
		}
	}
	if h.m != nil {
		var qtype uint16
		if len(req.Question) == 1 {
			qtype = req.Question[0].Qtype
		}
		h.m.observe(qtype, a.msg.Rcode, send, truncated, time.Since(start))
	}
	a.ctx.finish(a)
	a.reset()
	h.pool.Put(a)
}

// ownWriter reports whether w is miekg/dns's own ResponseWriter, not a middleware's wrapper.
func ownWriter(w dns.ResponseWriter) bool {
	if _, ok := w.(*packetWriter); ok {
		return true
	}
	t := reflect.TypeOf(w)
	return t != nil && t.Kind() == reflect.Pointer && t.Elem().Name() == "response" && t.Elem().PkgPath() == "github.com/miekg/dns"
}

// slip turns the answer into the empty, truncated one RRL sends instead of dropping: the
// client retries over TCP.
func (a *answer) slip() {
	m := &a.msg
	m.Answer, m.Ns = m.Answer[:0], m.Ns[:0]
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	m.Truncated = true
}

// build fills a.msg with the response to req. It returns the largest response the client
// accepts and whether to answer at all.
func (h *Handler) build(a *answer, req *dns.Msg, udp bool, ip netip.Addr) (limit int, send bool) {
	m := &a.msg
	a.class = fnv1a(fnvOffset, "error")
	if req.Response {
		return 0, false // never answer a response: that is how loops start
	}
	m.Id = req.Id
	m.Response = true
	m.Opcode = req.Opcode
	m.RecursionDesired = req.RecursionDesired
	m.CheckingDisabled = req.CheckingDisabled

	var reqOpt *dns.OPT
	nopt := 0
	for _, rr := range req.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			reqOpt = o
			nopt++
		}
	}
	limit = dns.MaxMsgSize
	if udp {
		limit = dns.MinMsgSize
		if reqOpt != nil {
			limit = int(min(max(reqOpt.UDPSize(), dns.MinMsgSize), h.udpSize))
		}
	}
	var cookie string
	cookieErr := false
	if reqOpt != nil && h.cookies != nil {
		for _, o := range reqOpt.Option {
			if c, ok := o.(*dns.EDNS0_COOKIE); ok {
				var err error
				cookie, a.valid, err = h.cookies.cookie(c.Cookie, ip)
				cookieErr = err != nil
				if h.m != nil {
					label := "none"
					if a.valid {
						label = "valid"
					}
					h.m.cookies.WithLabelValues(label).Inc()
				}
				break
			}
		}
	}
	defer func() {
		if reqOpt != nil {
			a.opt = dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: h.udpSize}}
			a.opt.Hdr.Ttl = reqOpt.Hdr.Ttl & 0x8000 // echo DO; version 0
			if cookie != "" {
				a.cook = dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: cookie}
				a.optv[0] = &a.cook
				a.opt.Option = a.optv[:1]
			}
			m.Extra = append(m.Extra, &a.opt)
		}
	}()

	if len(req.Question) == 1 {
		m.Question = req.Question
	}
	switch {
	case len(req.Question) != 1 || nopt > 1:
		m.Rcode = dns.RcodeFormatError
		return limit, true
	case reqOpt != nil && reqOpt.Version() != 0:
		m.Rcode = dns.RcodeBadVers
		return limit, true
	case req.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		return limit, true
	case cookieErr:
		m.Rcode = dns.RcodeFormatError // a malformed COOKIE option (RFC 7873 §5.2.2)
		return limit, true
	}
	q := req.Question[0]
	switch {
	case q.Qtype == dns.TypeOPT:
		m.Rcode = dns.RcodeFormatError
		return limit, true
	case q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY,
		q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		m.Rcode = dns.RcodeRefused
		return limit, true
	}
	name := strings.ToLower(q.Name) // returns q.Name itself, without allocating, when it has no upper case
	z, rel := h.findZone(name)
	if z == nil {
		m.Rcode = dns.RcodeRefused
		return limit, true
	}
	m.Authoritative = true
	m.Rcode = h.lookup(a, z, rel, name, q)
	switch m.Rcode {
	case dns.RcodeSuccess: // one name and type
		a.class = fnv1a(fnv1a(fnvOffset, name), dns.TypeToString[q.Qtype])
	case dns.RcodeNameError: // every nonexistent name of the zone together (random-subdomain floods)
		a.class = fnv1a(fnv1a(fnvOffset, "nxdomain "), z.fqdn)
	}
	if m.Rcode == dns.RcodeServerFailure {
		m.Answer, m.Ns, m.Extra = m.Answer[:0], m.Ns[:0], m.Extra[:0]
		m.Authoritative = false
	} else if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, z.soa) // NXDOMAIN and NODATA carry the SOA (RFC 2308)
	}
	return limit, true
}

// lookup answers q for name (lowercase), rel being name relative to z's apex. It returns the rcode.
func (h *Handler) lookup(a *answer, z *zone, rel, name string, q dns.Question) int {
	m := &a.msg
	if rel == "" {
		switch q.Qtype {
		case dns.TypeSOA, dns.TypeANY:
			m.Answer = append(m.Answer, z.soa)
		case dns.TypeNS:
			m.Answer = append(m.Answer, z.ns...)
			m.Extra = append(m.Extra, z.glue...)
		}
		return dns.RcodeSuccess
	}
	if rrs, ok := z.hosts[rel]; ok {
		for _, rr := range rrs {
			if t := rr.Header().Rrtype; t == q.Qtype || q.Qtype == dns.TypeANY {
				m.Answer = append(m.Answer, rr)
			}
		}
		return dns.RcodeSuccess
	}
	if z.ChallengeZone {
		return h.servedTXT(a, z, name, q)
	}
	if rel == acmeLabel || strings.HasPrefix(rel, acmeLabel+".") {
		return h.acme(a, z, rel, name, q)
	}
	dot := strings.LastIndexByte(rel, '.')
	if dot < 0 {
		// <owner>.<zone> and id.<zone> are empty non-terminals: they own no records but names
		// exist below them. Whether an owner has repls is not worth a directory call; answering
		// NODATA for an owner without repls is harmless, a wrong NXDOMAIN would not be (RFC 8020).
		return dns.RcodeSuccess
	}
	owner, slug := rel[dot+1:], rel[:dot]
	if !validLabel(owner) || !validLabel(slug) {
		return dns.RcodeNameError
	}
	ctx := a.ctx.start(h.timeout)
	var (
		r   lore.Repl
		err error
	)
	if owner == "id" {
		r, err = h.dir.Repl(ctx, slug)
	} else {
		r, err = h.dir.ReplByName(ctx, owner, slug)
	}
	if errors.Is(err, lore.ErrNotFound) {
		return dns.RcodeNameError
	}
	if err != nil {
		h.dirError("repl", name, err)
		return dns.RcodeServerFailure
	}
	v4, v6, err := h.hostingAddrs(ctx, a, r.Cluster)
	if err != nil {
		// A repl whose cluster is missing is a directory inconsistency, not a missing name.
		h.dirError("cluster", name, err)
		return dns.RcodeServerFailure
	}
	switch q.Qtype {
	case dns.TypeA:
		h.addA(a, q.Name, v4)
	case dns.TypeAAAA:
		h.addAAAA(a, q.Name, v6)
	case dns.TypeANY:
		// RFC 8482: answer one RRset, not all of them.
		if h.addA(a, q.Name, v4); len(m.Answer) == 0 {
			if h.addAAAA(a, q.Name, v6); len(m.Answer) == 0 {
				a.hinfo = dns.HINFO{Hdr: hdr(q.Name, dns.TypeHINFO, h.ttl), Cpu: "RFC8482"}
				m.Answer = append(m.Answer, &a.hinfo)
			}
		}
	}
	return dns.RcodeSuccess
}

// hostingAddrs returns the cluster's hosting addresses, through AppendHosting into a's buffers
// when the directory has it.
func (h *Handler) hostingAddrs(ctx context.Context, a *answer, cluster string) (v4, v6 []netip.Addr, err error) {
	if h.hosting != nil {
		return h.hosting.AppendHosting(ctx, cluster, a.v4[:0], a.v6[:0])
	}
	c, err := h.dir.Cluster(ctx, cluster)
	return c.Hosting4, c.Hosting6, err
}

func (h *Handler) addA(a *answer, owner string, addrs []netip.Addr) {
	for i, ip := range addrs {
		if !ip.Is4() && !ip.Is4In6() {
			continue
		}
		var rr *dns.A
		if i < maxAddrs {
			*(*[4]byte)(a.ip[i][:4]) = ip.As4()
			a.a[i] = dns.A{Hdr: hdr(owner, dns.TypeA, h.ttl), A: a.ip[i][:4]}
			rr = &a.a[i]
		} else {
			rr = &dns.A{Hdr: hdr(owner, dns.TypeA, h.ttl), A: ip.Unmap().AsSlice()}
		}
		a.msg.Answer = append(a.msg.Answer, rr)
	}
}

func (h *Handler) addAAAA(a *answer, owner string, addrs []netip.Addr) {
	for i, ip := range addrs {
		if !ip.Is6() || ip.Is4In6() {
			continue
		}
		var rr *dns.AAAA
		if i < maxAddrs {
			a.ip[i] = ip.As16()
			a.aaaa[i] = dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA, h.ttl), AAAA: a.ip[i][:]}
			rr = &a.aaaa[i]
		} else {
			rr = &dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA, h.ttl), AAAA: ip.AsSlice()}
		}
		a.msg.Answer = append(a.msg.Answer, rr)
	}
}

const acmeLabel = "_acme-challenge"

// acme answers _acme-challenge.<name>.<zone>: a CNAME when the zone delegates validation,
// otherwise the challenge store's TXT values.
func (h *Handler) acme(a *answer, z *zone, rel, name string, q dns.Question) int {
	a.nocache = true
	m := &a.msg
	target := ""
	if z.ACMEDelegate != nil {
		validated := strings.TrimSuffix(strings.TrimPrefix(name, acmeLabel+"."), ".")
		t, err := z.ACMEDelegate(a.ctx.start(h.timeout), validated)
		if err != nil {
			h.dirError("acme_delegate", name, err)
			return dns.RcodeServerFailure
		}
		if t != "" {
			target = dns.Fqdn(strings.ToLower(t))
		}
	}
	if target == "" {
		target = z.acmeTgt
	}
	if target == "" {
		return h.servedTXT(a, z, name, q)
	}
	a.cname = dns.CNAME{Hdr: hdr(q.Name, dns.TypeCNAME, h.acmeTTL), Target: target}
	m.Answer = append(m.Answer, &a.cname)
	if q.Qtype != dns.TypeTXT && q.Qtype != dns.TypeANY {
		return dns.RcodeSuccess
	}
	// Follow the CNAME when its target is a challenge zone of ours, as an authoritative server
	// does for its own data; resolvers chase it otherwise.
	if tz, _ := h.findZone(target); tz != nil && tz.ChallengeZone {
		if rc := h.addTXT(a, target, q); rc != dns.RcodeSuccess {
			return rc
		}
	}
	return dns.RcodeSuccess
}

// servedTXT answers a challenge name from the store: TXT values for TXT and ANY, else NODATA.
// A challenge name without values is NODATA rather than NXDOMAIN, so that a resolver's negative
// cache of "nothing here yet" never outlives a validation (a SOA-bounded NODATA is the same risk,
// but NXDOMAIN would also deny every name below, RFC 8020).
func (h *Handler) servedTXT(a *answer, z *zone, name string, q dns.Question) int {
	a.nocache = true
	if q.Qtype != dns.TypeTXT && q.Qtype != dns.TypeANY {
		return dns.RcodeSuccess
	}
	return h.addTXT(a, name, q)
}

func (h *Handler) addTXT(a *answer, name string, q dns.Question) int {
	if h.challenges == nil {
		return dns.RcodeSuccess
	}
	owner := name
	if owner == strings.ToLower(q.Name) {
		owner = q.Name
	}
	vals, err := h.challenges.TXT(a.ctx.start(h.timeout), strings.TrimSuffix(name, "."))
	if err != nil {
		h.dirError("challenges", name, err)
		return dns.RcodeServerFailure
	}
	for _, v := range vals {
		a.msg.Answer = append(a.msg.Answer, &dns.TXT{Hdr: hdr(owner, dns.TypeTXT, h.acmeTTL), Txt: []string{v}})
	}
	return dns.RcodeSuccess
}

func (h *Handler) dirError(op, name string, err error) {
	if h.m != nil {
		h.m.dirErrors.WithLabelValues(op).Inc()
	}
	// During an outage every query fails: log the first failure of each second and how many
	// were not logged since, rather than one line per query.
	now := time.Now().UnixNano()
	last := h.lastLog.Load()
	if now-last < int64(time.Second) || !h.lastLog.CompareAndSwap(last, now) {
		h.suppressed.Add(1)
		return
	}
	h.log.Warn("dnsauth: directory lookup failed; answering SERVFAIL", "op", op, "name", name, "err", err,
		"suppressed", h.suppressed.Swap(0))
}

// pack packs a.msg within limit bytes: uncompressed when it fits (no compression map to
// allocate), compressed when that makes it fit, truncated with TC set otherwise.
func (h *Handler) pack(a *answer, limit int) (buf []byte, truncated bool) {
	m := &a.msg
	buf, err := m.PackBuffer(a.buf)
	if err == nil && len(buf) > limit {
		m.Compress = true
		buf, err = m.PackBuffer(a.buf)
	}
	if err == nil && len(buf) > limit {
		m.Truncate(limit)
		m.Truncated = true
		truncated = true
		buf, err = m.PackBuffer(a.buf)
	}
	if err != nil {
		// Only a record the handler built itself can fail to pack; answer SERVFAIL rather than
		// nothing so the client does not wait for its timeout.
		h.log.Error("dnsauth: packing the response failed", "err", err)
		opt := m.IsEdns0()
		m.Answer, m.Ns, m.Extra = m.Answer[:0], m.Ns[:0], m.Extra[:0]
		if opt != nil {
			m.Extra = append(m.Extra, opt)
		}
		m.Rcode = dns.RcodeServerFailure
		m.Compress = false
		if buf, err = m.PackBuffer(a.buf); err != nil {
			return nil, false
		}
	}
	if cap(buf) > cap(a.buf) {
		a.buf = buf[:cap(buf)]
	}
	return buf, truncated
}

// validLabel reports whether s is a plain host label (letters, digits, hyphen, underscore),
// the only kind the directory holds.
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Interface check.
var _ dns.Handler = (*Handler)(nil)

// background is the parent of no query context: queries are not tied to the server's lifetime,
// only bounded by Timeout.
var _ context.Context = (*queryCtx)(nil)
