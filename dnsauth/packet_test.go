package dnsauth_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

// servePackets runs a PacketServer with n SO_REUSEPORT sockets until the test ends.
func servePackets(t *testing.T, h *dnsauth.Handler, n int, ttl time.Duration) string {
	return servePacketsWith(t, h, n, ttl, false)
}

// servePacketsWith is servePackets, with PacketServer.Blocking as given.
func servePacketsWith(t *testing.T, h *dnsauth.Handler, n int, ttl time.Duration, blocking bool) string {
	t.Helper()
	conns, err := dnsauth.ListenUDP(context.Background(), "127.0.0.1:0", n)
	if err != nil {
		t.Fatal(err)
	}
	ps := &dnsauth.PacketServer{Handler: h, Conns: conns, AnswerTTL: ttl, Blocking: blocking}
	done := make(chan error, 1)
	go func() { done <- ps.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ps.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		<-done
	})
	return conns[0].LocalAddr().String()
}

// TestPacketServerAnswersAsTheHandler: every kind of query gets from the batched loop, first
// from the Handler then from its cache, the answer miekg/dns's server gives with the same
// Handler, ID and question case included.
func TestPacketServerAnswersAsTheHandler(t *testing.T) {
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) { testAnswersAsTheHandler(t, blocking) })
	}
}

func testAnswersAsTheHandler(t *testing.T, blocking bool) {
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture()})
	fast := servePacketsWith(t, h, 2, time.Minute, blocking)
	ref := serve(t, h)
	withEDNS := func(m *dns.Msg) *dns.Msg { m.SetEdns0(1232, true); return m }
	withCookie := func(m *dns.Msg) *dns.Msg {
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
		return m
	}
	for _, q := range []*dns.Msg{
		query("blog.replbot.repl.test.", dns.TypeA),
		query("blog.replbot.repl.test.", dns.TypeAAAA),
		query("BLOG.replbot.REPL.test.", dns.TypeA),
		query("r1abc.id.repl.test.", dns.TypeA),
		query("nope.replbot.repl.test.", dns.TypeA),
		query("repl.test.", dns.TypeSOA),
		query("big.crowd.repl.test.", dns.TypeA), // 40 addresses: truncated over UDP
		query("example.com.", dns.TypeA),         // REFUSED
		withEDNS(query("blog.replbot.repl.test.", dns.TypeA)),
		withCookie(query("blog.replbot.repl.test.", dns.TypeA)),
	} {
		want := exchange(t, "udp", ref.udp, q)
		for round := 0; round < 3; round++ { // the first from the Handler, then the cache
			q.Id = dns.Id()
			got := exchange(t, "udp", fast, q)
			want.Id = q.Id
			if got.String() != want.String() {
				t.Fatalf("%s round %d:\ngot  %v\nwant %v", q.Question[0].String(), round, got, want)
			}
		}
	}
}

// TestPacketServerSeesMoves: a cached answer lives AnswerTTL at most.
func TestPacketServerSeesMoves(t *testing.T) {
	d := fixture()
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d})
	fast := servePackets(t, h, 1, 50*time.Millisecond)
	q := query("blog.replbot.repl.test.", dns.TypeA)
	if r := exchange(t, "udp", fast, q); r.Answer[0].(*dns.A).A.String() != "127.0.1.1" {
		t.Fatalf("before: %v", r.Answer)
	}
	d.putRepl(lore.Repl{ID: "r1abc", Owner: "replbot", Slug: "blog", Cluster: "b"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := exchange(t, "udp", fast, q)
		if r.Answer[0].(*dns.A).A.String() == "127.0.2.1" || r.Answer[0].(*dns.A).A.String() == "127.0.2.2" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still the old answer after the move: %v", r.Answer)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPacketServerVersion: with the directory's change counter, a move shows in the very next
// answer, however long answers are otherwise reused.
func TestPacketServerVersion(t *testing.T) {
	d := fixture()
	var version atomic.Uint64
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d})
	conns, err := dnsauth.ListenUDP(context.Background(), "127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	ps := &dnsauth.PacketServer{Handler: h, Conns: conns, AnswerTTL: time.Hour, Version: version.Load}
	done := make(chan error, 1)
	go func() { done <- ps.Serve() }()
	defer func() { _ = ps.Shutdown(context.Background()); <-done }()
	addr := conns[0].LocalAddr().String()
	q := query("blog.replbot.repl.test.", dns.TypeA)
	for range 3 {
		if r := exchange(t, "udp", addr, q); r.Answer[0].(*dns.A).A.String() != "127.0.1.1" {
			t.Fatalf("before: %v", r.Answer)
		}
	}
	d.putRepl(lore.Repl{ID: "r1abc", Owner: "replbot", Slug: "blog", Cluster: "a2"})
	d.putCluster(lore.Cluster{ID: "a2", Hosting4: addrs("127.0.3.1")})
	version.Add(1)
	if r := exchange(t, "udp", addr, q); r.Answer[0].(*dns.A).A.String() != "127.0.3.1" {
		t.Fatalf("the next answer after a move: %v", r.Answer)
	}
}

// TestPacketServerLimits: RRL applies to answers from the cache too; garbage gets FORMERR or
// nothing, never a crash.
func TestPacketServerLimits(t *testing.T) {
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) { testLimits(t, blocking) })
	}
}

func testLimits(t *testing.T, blocking bool) {
	reg := prometheus.NewPedanticRegistry()
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture(), Registerer: reg,
		RRL: &dnsauth.RRL{ResponsesPerSecond: 20, Slip: 2}})
	fast := servePacketsWith(t, h, 1, time.Minute, blocking)
	to, _ := net.ResolveUDPAddr("udp", fast)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	full, tc := flood(t, c, to, query("blog.replbot.repl.test.", dns.TypeA), 600)
	t.Logf("flood of 600 on the packet server: %d answered, %d truncated", full, tc)
	if full < 15 || full > 80 || tc < 200 || tc > 310 {
		t.Errorf("rrl on the packet server: %d full, %d truncated", full, tc)
	}
	for _, junk := range [][]byte{{1}, make([]byte, 11), append([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 200, 1, 2)} {
		if _, err := c.WriteToUDP(junk, to); err != nil {
			t.Fatal(err)
		}
	}
	// Still serving.
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.8.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if full, _ := flood(t, other, to, query("blog.replbot.repl.test.", dns.TypeA), 3); full != 3 {
		t.Errorf("after junk: %d of 3 answers", full)
	}
}
