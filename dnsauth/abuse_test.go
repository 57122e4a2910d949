package dnsauth_test

import (
	"encoding/hex"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/dnsauth"
)

// mwRecorder is a middleware's ResponseWriter wrapper (CoreDNS's dnstest.Recorder shape): it sees
// only what goes through WriteMsg.
type mwRecorder struct {
	dns.ResponseWriter
	mu   *sync.Mutex
	msgs *[]*dns.Msg
}

func (r mwRecorder) WriteMsg(m *dns.Msg) error {
	r.mu.Lock()
	*r.msgs = append(*r.msgs, m.Copy())
	r.mu.Unlock()
	return r.ResponseWriter.WriteMsg(m)
}

// TestAnswersReachMiddleware: behind a wrapping middleware, every answer goes through
// WriteMsg (the wrapper sees it, and the client gets the same answer over UDP and TCP); forced
// to write bytes, the handler bypasses the wrapper.
func TestAnswersReachMiddleware(t *testing.T) {
	for _, mode := range []dnsauth.WriteMode{dnsauth.WriteAuto, dnsauth.WriteBytes} {
		h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture(), Write: mode})
		var mu sync.Mutex
		var seen []*dns.Msg
		s := serve(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			h.ServeDNS(mwRecorder{ResponseWriter: w, mu: &mu, msgs: &seen}, r)
		}))
		for _, network := range []string{"udp", "tcp"} {
			r := exchange(t, network, s.addr(network), query("blog.replbot.repl.test.", dns.TypeA))
			if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.1.1" {
				t.Fatalf("%v %s: answer %v", mode, network, r.Answer)
			}
		}
		mu.Lock()
		got := len(seen)
		mu.Unlock()
		want := 2
		if mode == dnsauth.WriteBytes {
			want = 0
		}
		if got != want {
			t.Errorf("mode %v: the middleware saw %d answers, want %d", mode, got, want)
		}
	}
}

// flood sends n copies of q from conn as fast as it can, then reads what comes back until the
// replies stop for 200 ms. It returns full answers and truncated ones.
func flood(t *testing.T, conn *net.UDPConn, to *net.UDPAddr, q *dns.Msg, n int) (full, tc int) {
	t.Helper()
	buf, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		rb := make([]byte, 2048)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			k, err := conn.Read(rb)
			if err != nil {
				return
			}
			var m dns.Msg
			if m.Unpack(rb[:k]) != nil {
				continue
			}
			if m.Truncated && len(m.Answer) == 0 {
				tc++
			} else {
				full++
			}
		}
	}()
	for i := 0; i < n; i++ {
		if _, err := conn.WriteToUDP(buf, to); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // keep within the socket buffers: what matters is the rate
		}
	}
	<-done
	return full, tc
}

// TestRRL: a bounded flood (600 queries, loopback only) for one name from one client prefix
// gets about the rate's worth of answers; half the rest come back truncated (slip 2), the
// others are dropped. A client in another prefix, TCP, and a client with a valid cookie are
// not limited.
func TestRRL(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	secret := [16]byte{1, 2, 3}
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture(), Registerer: reg,
		RRL: &dnsauth.RRL{ResponsesPerSecond: 20, Slip: 2}, Cookies: &dnsauth.Cookies{Secret: secret}})
	s := serve(t, h)
	to, _ := net.ResolveUDPAddr("udp", s.udp)
	attacker, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	q := query("blog.replbot.repl.test.", dns.TypeA)
	full, tc := flood(t, attacker, to, q, 600)
	t.Logf("flood of 600: %d answered, %d truncated, %d dropped", full, tc, 600-full-tc)
	if full < 15 || full > 80 {
		t.Errorf("%d full answers, want about the rate (20/s, burst 20)", full)
	}
	if tc < 200 || tc > 310 {
		t.Errorf("%d truncated answers, want about half of the limited ones", tc)
	}
	// Another /24 is another client.
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.9.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if full, _ := flood(t, other, to, q, 5); full != 5 {
		t.Errorf("another prefix got %d of 5 answers", full)
	}
	// TCP is never limited.
	for i := 0; i < 5; i++ {
		if r := exchange(t, "tcp", s.tcp, q); len(r.Answer) != 1 {
			t.Fatalf("tcp answer %v", r)
		}
	}
	// A client that returns a valid server cookie is spared, from the flooded prefix too.
	cq := query("blog.replbot.repl.test.", dns.TypeA)
	cq.SetEdns0(1232, false)
	opt := cq.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	r := exchange(t, "tcp", s.tcp, cq) // over TCP, to get the server cookie for sure
	server := cookieOf(t, r)
	opt.Option[0] = &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: server}
	if full, _ := flood(t, attacker, to, cq, 40); full != 40 {
		t.Errorf("a client with a valid cookie got %d of 40 answers", full)
	}
	if got := counterSum(t, reg, "switchyard_dnsauth_rrl_total"); got < 300 {
		t.Errorf("rrl counted %v limited answers", got)
	}
}

func cookieOf(t *testing.T, r *dns.Msg) string {
	t.Helper()
	if o := r.IsEdns0(); o != nil {
		for _, e := range o.Option {
			if c, ok := e.(*dns.EDNS0_COOKIE); ok {
				return c.Cookie
			}
		}
	}
	t.Fatalf("no cookie in %v", r)
	return ""
}

func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

// TestCookies: RFC 7873 and RFC 9018 server cookies: a client cookie gets a server cookie of
// version 1 back; the client cookie is echoed; a returned cookie validates only for its client;
// a malformed option is FORMERR; without Cookies the option is ignored.
func TestCookies(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	var now atomic.Int64
	now.Store(1_800_000_000)
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture(), Registerer: reg,
		Cookies: &dnsauth.Cookies{Secret: [16]byte{9, 9, 9}, Now: func() time.Time { return time.Unix(now.Load(), 0) }}})
	s := serve(t, h)
	ask := func(cookie string) *dns.Msg {
		q := query("blog.replbot.repl.test.", dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: cookie}}
		return exchange(t, "udp", s.udp, q)
	}
	r := ask("1122334455667788")
	c := cookieOf(t, r)
	b, _ := hex.DecodeString(c)
	if len(b) != 24 || c[:16] != "1122334455667788" || b[8] != 1 {
		t.Fatalf("cookie %s: want the client cookie, version 1, 16 bytes of server cookie", c)
	}
	if got := counterSum(t, reg, "switchyard_dnsauth_cookies_total"); got != 1 {
		t.Fatalf("cookies counted %v", got)
	}
	// Sent back, it is valid, and (fresh) returned as it is.
	if again := cookieOf(t, ask(c)); again != c {
		t.Errorf("a fresh valid cookie came back as %s", again)
	}
	// Tampered, it is not valid: a new server cookie comes back.
	bad := c[:len(c)-2] + "00"
	if c == bad {
		bad = c[:len(c)-2] + "01"
	}
	if got := cookieOf(t, ask(bad)); got == bad {
		t.Error("a tampered cookie was accepted")
	}
	// Malformed: FORMERR.
	for _, m := range []string{"1122", "11223344556677889900"} {
		if r := ask(m); r.Rcode != dns.RcodeFormatError {
			t.Errorf("cookie %s: rcode %s, want FORMERR", m, dns.RcodeToString[r.Rcode])
		}
	}
	// An hour and more later, the cookie has expired: a new one.
	now.Add(2 * 3600)
	if got := cookieOf(t, ask(c)); got == c {
		t.Error("an expired cookie was returned as valid")
	}
}
