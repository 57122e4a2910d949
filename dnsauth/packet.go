package dnsauth

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// PacketServer serves a Handler over UDP on its own loop, beside miekg/dns's server (which
// stays the way to serve TCP, and UDP for any other dns.Handler). On Linux each socket is read
// and written in batches (recvmmsg and sendmmsg, no allocation per packet), and answers are kept
// as packed messages for AnswerTTL: a query whose bytes after its ID equal an earlier one's (same
// name with the same case, type, class, flags and EDNS size, no EDNS options) is answered by
// copying that answer and patching in the query's ID, as NSD answers from precompiled packets.
// Response-rate limiting and metrics still apply to every answer; queries with EDNS options
// (cookies) always go through the Handler.
//
// Give it several sockets bound to one address with SO_REUSEPORT (ListenUDP): the kernel
// spreads clients over them and each is served by a goroutine of its own, with a cache of its
// own, without locks.
type PacketServer struct {
	// Handler answers. Required.
	Handler *Handler
	// Conns are the sockets to serve (see ListenUDP). Required.
	Conns []*net.UDPConn
	// AnswerTTL is how long an answer is reused: without Version, a directory change (a move)
	// reaches clients at most this late, on top of the DNS TTL. Zero means 2 s without Version
	// and 1 minute with it (Version then drops changed answers at once; the TTL only bounds
	// what a Version that misses a change could cost). Negative disables the cache.
	AnswerTTL time.Duration
	// Version, if set, is read once per batch of packets: when its value changes, every
	// reused answer is dropped, so a directory change shows in the next answer. Give it the
	// directory's change counter (lore.Directory.Version, etcd.Mirror.Revision). Answers from
	// the challenge store (ACME) are never reused.
	Version func() uint64
	// Batch is how many packets one system call reads or writes. Zero means 64.
	Batch int
	// CacheEntries bounds each socket's cache; when it is full, a new answer replaces a random
	// one. Zero means 131,072 (about 40 MB per socket when full of 80-byte answers).
	CacheEntries int
	// Blocking (Linux) reads each socket with a blocking recvmmsg on an OS thread of the loop's
	// own (runtime.LockOSThread; the thread ends with the loop) instead of waiting in Go's
	// netpoller: no epoll and no goroutine park between batches. The sockets are switched to
	// blocking mode with a 250 ms receive timeout, so closing one directly still ends its loop
	// within that time; Shutdown wakes the loops at once. Elsewhere it has no effect.
	Blocking bool

	mu      sync.Mutex
	wg      sync.WaitGroup
	closed  bool
	closing atomic.Bool // read by the loops: a read of nothing means stop
	tids    chan int    // tests: the loops' thread IDs when Blocking
}

// ListenUDP opens n UDP sockets on addr with SO_REUSEPORT, for a PacketServer (one per core).
func ListenUDP(ctx context.Context, addr string, n int) ([]*net.UDPConn, error) {
	if n <= 0 {
		n = 1
	}
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = setReusePort(fd) })
		return errors.Join(err, serr)
	}}
	var conns []*net.UDPConn
	for i := 0; i < n; i++ {
		a := addr
		if i > 0 {
			a = conns[0].LocalAddr().String() // port 0: the others join the first's port
		}
		pc, err := lc.ListenPacket(ctx, "udp", a)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, pc.(*net.UDPConn))
	}
	return conns, nil
}

// Serve serves every socket until Shutdown; it returns when all loops have ended.
func (s *PacketServer) Serve() error {
	if s.Handler == nil || len(s.Conns) == 0 {
		return errors.New("dnsauth: PacketServer needs a Handler and sockets")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.wg.Add(len(s.Conns))
	s.mu.Unlock()
	for _, c := range s.Conns {
		go func() {
			defer s.wg.Done()
			s.serve(c)
		}()
	}
	s.wg.Wait()
	return nil
}

// Shutdown closes the sockets and waits for the loops, or for ctx.
func (s *PacketServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.closing.Store(true)
	for _, c := range s.Conns {
		wake(c) // a loop blocked in a read returns from it
		c.Close()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// answerCache holds one socket's packed answers, keyed by the query's bytes after its ID.
type answerCache struct {
	ttl     time.Duration
	max     int
	entries map[string]cachedAnswer
	version uint64
}

// sync drops every answer when the directory's version moved.
func (s *PacketServer) sync(c *answerCache) {
	if c == nil || s.Version == nil {
		return
	}
	if v := s.Version(); v != c.version {
		clear(c.entries)
		c.version = v
	}
}

type cachedAnswer struct {
	resp    []byte
	expires time.Time
	class   uint64
	qtype   uint16
	rcode   int
}

// cacheable reports whether a query's answer may be reused for the same bytes after its ID
// (q[2:], the cache key), or must go to the Handler: exactly one question, no answers or authority, at most one
// additional record and that an OPT without options, opcode QUERY, not a response.
func cacheable(q []byte) bool {
	if len(q) < 17 || q[2]&0x80 != 0 || q[2]&0x78 != 0 { // QR or an opcode other than QUERY
		return false
	}
	if binary.BigEndian.Uint16(q[4:]) != 1 || binary.BigEndian.Uint16(q[6:]) != 0 || binary.BigEndian.Uint16(q[8:]) != 0 {
		return false
	}
	ar := binary.BigEndian.Uint16(q[10:])
	i := 12
	for { // the question's name: labels only, no compression
		if i >= len(q) {
			return false
		}
		l := int(q[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 {
			return false
		}
		i += 1 + l
	}
	i += 4 // type, class
	switch {
	case ar == 0 && i == len(q):
	case ar == 1 && len(q) == i+11 && q[i] == 0 && q[i+1] == 0 && q[i+2] == byte(dns.TypeOPT) &&
		q[i+9] == 0 && q[i+10] == 0: // root name, OPT, RDLEN 0
	default:
		return false
	}
	return true
}

func (c *answerCache) get(key []byte, now time.Time) (cachedAnswer, bool) {
	e, ok := c.entries[string(key)]
	if !ok || now.After(e.expires) {
		return cachedAnswer{}, false
	}
	return e, true
}

func (c *answerCache) put(key string, e cachedAnswer) {
	if len(c.entries) >= c.max {
		// Full: forget one answer, whichever a map iteration yields first (its start is random).
		// Clearing the whole cache instead made a working set just above max miss every time.
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = e
}

// packetWriter is the ResponseWriter of one query the loop hands the Handler: the answer's
// bytes land in out.
type packetWriter struct {
	local   net.Addr
	remote  *net.UDPAddr
	out     []byte
	n       int
	nocache bool // the Handler says: do not reuse this answer
}

func (w *packetWriter) LocalAddr() net.Addr  { return w.local }
func (w *packetWriter) RemoteAddr() net.Addr { return w.remote }
func (w *packetWriter) Write(b []byte) (int, error) {
	w.n = copy(w.out, b)
	return w.n, nil
}
func (w *packetWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(w.out)
	if err != nil {
		return err
	}
	if &b[0] != &w.out[0] {
		return errors.New("dnsauth: answer larger than the packet buffer")
	}
	w.n = len(b)
	return nil
}
func (w *packetWriter) Close() error        { return nil }
func (w *packetWriter) TsigStatus() error   { return nil }
func (w *packetWriter) TsigTimersOnly(bool) {}
func (w *packetWriter) Hijack()             {}

// answer produces the response to query q from ip into out (len 0 when there is none), from
// the cache or the Handler.
func (s *PacketServer) answer(c *answerCache, w *packetWriter, q []byte, ip netip.AddrPort, now time.Time) int {
	h := s.Handler
	reuse := cacheable(q) // the key is q[2:]: looked up without a copy, copied only to insert
	if reuse && c != nil {
		if e, ok := c.get(q[2:], now); ok {
			if h.rrl != nil {
				switch h.rrl.decide(ip.Addr(), e.class) {
				case rrlDrop:
					if h.m != nil {
						h.m.rrl.WithLabelValues("dropped").Inc()
						h.m.observe(e.qtype, e.rcode, false, false, 0)
					}
					return 0
				case rrlSlip:
					if h.m != nil {
						h.m.rrl.WithLabelValues("slipped").Inc()
						h.m.observe(e.qtype, e.rcode, true, true, time.Since(now))
					}
					return slipped(w.out, q, e.resp)
				}
			}
			n := copy(w.out, e.resp)
			w.out[0], w.out[1] = q[0], q[1]
			if h.m != nil {
				h.m.observe(e.qtype, e.rcode, true, false, time.Since(now))
			}
			return n
		}
	}
	req := new(dns.Msg)
	if err := req.Unpack(q); err != nil {
		return formErr(w.out, q)
	}
	w.n = 0
	w.remote.IP, w.remote.Port = ip.Addr().AsSlice(), int(ip.Port())
	h.ServeDNS(w, req)
	if w.n > 0 && reuse && c != nil && !w.nocache && w.n >= 12 && w.out[2]&0x02 == 0 { // not truncated
		rcode := int(w.out[3] & 0x0f)
		if rcode == dns.RcodeSuccess || rcode == dns.RcodeNameError {
			resp := make([]byte, w.n)
			copy(resp, w.out[:w.n])
			c.put(string(q[2:]), cachedAnswer{resp: resp, expires: now.Add(s.ttl()), class: answerClass(req, rcode, h), qtype: req.Question[0].Qtype, rcode: rcode})
		}
	}
	return w.n
}

// slipped writes the empty, truncated answer RRL sends instead of dropping: the cached
// answer's header with no records, TC set, the query's question and, when the query had EDNS,
// the answer's OPT record (its last 11 bytes: the query had no options, so neither has it).
func slipped(out, q, resp []byte) int {
	qend := 12
	for qend < len(q) && q[qend] != 0 {
		qend += 1 + int(q[qend])
	}
	qend += 5
	n := copy(out, resp[:12])
	out[0], out[1] = q[0], q[1]
	out[2] |= 0x02 // TC
	binary.BigEndian.PutUint16(out[6:], 0)
	binary.BigEndian.PutUint16(out[8:], 0)
	binary.BigEndian.PutUint16(out[10:], 0)
	n += copy(out[n:], q[12:qend])
	if binary.BigEndian.Uint16(q[10:]) == 1 && len(resp) >= 11 {
		n += copy(out[n:], resp[len(resp)-11:])
		binary.BigEndian.PutUint16(out[10:], 1)
	}
	return n
}

// answerClass is what RRL counts an answer as (as build does).
func answerClass(req *dns.Msg, rcode int, h *Handler) uint64 {
	q := req.Question[0]
	name := lowerASCII(q.Name)
	switch rcode {
	case dns.RcodeSuccess:
		return fnv1a(fnv1a(fnvOffset, name), dns.TypeToString[q.Qtype])
	case dns.RcodeNameError:
		if z, _ := h.findZone(name); z != nil {
			return fnv1a(fnv1a(fnvOffset, "nxdomain "), z.fqdn)
		}
	}
	return fnv1a(fnvOffset, "error")
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// formErr writes a FORMERR header for an unparsable query (its ID, no sections).
func formErr(out, q []byte) int {
	if len(q) < 12 {
		return 0 // not even a header: nothing to answer
	}
	copy(out, q[:12])
	out[2] = 0x80 | (q[2] & 0x79) // QR, opcode and RD kept
	out[3] = byte(dns.RcodeFormatError)
	for i := 4; i < 12; i++ {
		out[i] = 0
	}
	return 12
}

func (s *PacketServer) ttl() time.Duration {
	if s.AnswerTTL == 0 {
		if s.Version != nil {
			return time.Minute
		}
		return 2 * time.Second
	}
	return s.AnswerTTL
}

func (s *PacketServer) newCache() *answerCache {
	if s.AnswerTTL < 0 {
		return nil
	}
	max := s.CacheEntries
	if max <= 0 {
		max = 1 << 17
	}
	return &answerCache{ttl: s.ttl(), max: max, entries: make(map[string]cachedAnswer)}
}
