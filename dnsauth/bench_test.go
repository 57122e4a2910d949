package dnsauth_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

const benchRepls = 100_000

// benchDirectories returns a lore Directory and a map directory, each holding benchRepls repls
// named s<i>.o<i/10>.repl.test (IDs r<i>) spread over 4 clusters with one v4 and one v6 address.
func benchDirectories(b *testing.B) (*lore.Directory, *mapDir) {
	b.Helper()
	ld, err := lore.New(lore.Config{Zone: "repl.test"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ld.Close() })
	md := newMapDir()
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		c := lore.Cluster{ID: fmt.Sprintf("c%d", i), EvalURL: "ws://127.0.0.1:1/",
			Hosting4: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, byte(i + 1), 1})},
			Hosting6: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("fd00::%d:1", i+1))}}
		if _, err := ld.PutCluster(ctx, c); err != nil {
			b.Fatal(err)
		}
		md.putCluster(c)
	}
	for i := 0; i < benchRepls; i++ {
		r := lore.Repl{ID: fmt.Sprintf("r%d", i), Owner: fmt.Sprintf("o%d", i/10), Slug: fmt.Sprintf("s%d", i), Cluster: fmt.Sprintf("c%d", i%4)}
		if _, err := ld.CreateRepl(ctx, r); err != nil {
			b.Fatal(err)
		}
		md.putRepl(r)
	}
	return ld, md
}

// BenchmarkServeDNS measures the handler's answer path (directory lookups, building the reply,
// packing it into the pooled buffer) with a ResponseWriter that discards; the request is
// unpacked once, as a server would before calling the handler.
func BenchmarkServeDNS(b *testing.B) {
	ld, md := benchDirectories(b)
	for _, d := range []struct {
		name string
		dir  dnsauth.Directory
		mode dnsauth.WriteMode
	}{{"lore", ld, dnsauth.WriteBytes}, {"map", md, dnsauth.WriteBytes}, {"map-writemsg", md, dnsauth.WriteMessage}} {
		// WriteBytes is what miekg/dns's own writers get under WriteAuto; WriteMessage is what a
		// middleware's wrapper gets (the message packed by WriteMsg).
		h, err := dnsauth.New(dnsauth.Config{Zones: testZones(), Directory: d.dir, Write: d.mode})
		if err != nil {
			b.Fatal(err)
		}
		for _, q := range []struct {
			name  string
			qname string
			qtype uint16
		}{
			{"A", "s54321.o5432.repl.test.", dns.TypeA},
			{"AAAA", "s54321.o5432.repl.test.", dns.TypeAAAA},
			{"A-by-id", "r54321.id.repl.test.", dns.TypeA},
			{"A-mixed-case", "S54321.o5432.REPL.test.", dns.TypeA},
			{"NXDOMAIN", "nope.o5432.repl.test.", dns.TypeA},
		} {
			b.Run(d.name+"/"+q.name, func(b *testing.B) {
				req := query(q.qname, q.qtype)
				req.SetEdns0(1232, false)
				w := &discard{}
				h.ServeDNS(w, req)
				if w.n == 0 {
					b.Fatal("no answer")
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					h.ServeDNS(w, req)
				}
			})
		}
	}
}

// discard is a UDP ResponseWriter that only counts bytes.
type discard struct {
	recorder
	n   int
	buf [2048]byte
}

func (d *discard) Write(b []byte) (int, error) { d.n += len(b); return len(b), nil }

// WriteMsg packs m, as miekg/dns's own writer does, and discards it.
func (d *discard) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(d.buf[:])
	d.n += len(b)
	return err
}

func (d *discard) RemoteAddr() net.Addr { return udpPeer }

var udpPeer = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
