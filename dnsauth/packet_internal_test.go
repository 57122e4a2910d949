package dnsauth

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/lore"
)

type oneRepl struct{}

func (oneRepl) Repl(context.Context, string) (lore.Repl, error) { return lore.Repl{}, lore.ErrNotFound }
func (oneRepl) ReplByName(_ context.Context, owner, slug string) (lore.Repl, error) {
	if owner == "replbot" && slug == "blog" {
		return lore.Repl{ID: "r1", Owner: owner, Slug: slug, Cluster: "a"}, nil
	}
	return lore.Repl{}, lore.ErrNotFound
}
func (oneRepl) Cluster(context.Context, string) (lore.Cluster, error) {
	return lore.Cluster{ID: "a", Hosting4: []netip.Addr{netip.MustParseAddr("127.0.1.1")}}, nil
}

// TestPacketServerReuseDoesNotAllocate: an answer reused from the cache costs no allocation
// (the cache key is looked up in place; only an insert copies it).
func TestPacketServerReuseDoesNotAllocate(t *testing.T) {
	h, err := New(Config{Zones: []Zone{{Name: "repl.test"}}, Directory: oneRepl{}})
	if err != nil {
		t.Fatal(err)
	}
	s := &PacketServer{Handler: h, AnswerTTL: time.Hour}
	c := s.newCache()
	w := &packetWriter{remote: &net.UDPAddr{}, out: make([]byte, 4096)}
	m := new(dns.Msg)
	m.SetQuestion("blog.replbot.repl.test.", dns.TypeA)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddrPort("127.0.0.1:5300")
	now := time.Now()
	if n := s.answer(c, w, q, ip, now); n == 0 {
		t.Fatal("no answer")
	}
	if allocs := testing.AllocsPerRun(1000, func() { s.answer(c, w, q, ip, now) }); allocs != 0 {
		t.Fatalf("a reused answer costs %v allocations", allocs)
	}
	var r dns.Msg
	if err := r.Unpack(w.out[:s.answer(c, w, q, ip, now)]); err != nil || len(r.Answer) != 1 || r.Id != m.Id {
		t.Fatalf("reused answer %v, %v", r, err)
	}
}
