package dnsauth_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// mapDir is a Directory over maps, with an injectable failure, for tests that need a directory
// to fail or to be changed between two queries.
type mapDir struct {
	mu       sync.RWMutex
	repls    map[string]lore.Repl // by ID
	byName   map[string]string    // owner/slug → ID
	clusters map[string]lore.Cluster
	fail     error
}

func newMapDir() *mapDir {
	return &mapDir{repls: map[string]lore.Repl{}, byName: map[string]string{}, clusters: map[string]lore.Cluster{}}
}

func (d *mapDir) putCluster(c lore.Cluster) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clusters[c.ID] = c
}

func (d *mapDir) putRepl(r lore.Repl) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.repls[r.ID] = r
	d.byName[r.Owner+"/"+r.Slug] = r.ID
}

func (d *mapDir) deleteRepl(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.repls[id]
	delete(d.repls, id)
	delete(d.byName, r.Owner+"/"+r.Slug)
}

func (d *mapDir) setFail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = err
}

func (d *mapDir) Repl(ctx context.Context, id string) (lore.Repl, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.fail != nil {
		return lore.Repl{}, d.fail
	}
	r, ok := d.repls[id]
	if !ok {
		return lore.Repl{}, fmt.Errorf("repl %q: %w", id, lore.ErrNotFound)
	}
	return r, nil
}

func (d *mapDir) ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error) {
	d.mu.RLock()
	id, ok := d.byName[owner+"/"+slug]
	d.mu.RUnlock()
	if !ok {
		d.mu.RLock()
		defer d.mu.RUnlock()
		if d.fail != nil {
			return lore.Repl{}, d.fail
		}
		return lore.Repl{}, fmt.Errorf("repl %s/%s: %w", owner, slug, lore.ErrNotFound)
	}
	return d.Repl(ctx, id)
}

func (d *mapDir) Cluster(ctx context.Context, id string) (lore.Cluster, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.fail != nil {
		return lore.Cluster{}, d.fail
	}
	c, ok := d.clusters[id]
	if !ok {
		return lore.Cluster{}, fmt.Errorf("cluster %q: %w", id, lore.ErrNotFound)
	}
	return c, nil
}

var errDown = errors.New("lore: connection refused")

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// fixture is the directory most tests use: clusters a (v4+v6), b (v4 only), big (40 v4) and
// lonely (no addresses), and a repl in each.
func fixture() *mapDir {
	d := newMapDir()
	d.putCluster(lore.Cluster{ID: "a", Hosting4: addrs("127.0.1.1"), Hosting6: addrs("fd00::1:1")})
	d.putCluster(lore.Cluster{ID: "b", Hosting4: addrs("127.0.2.1", "127.0.2.2")})
	var many []string
	for i := 1; i <= 40; i++ {
		many = append(many, fmt.Sprintf("10.0.0.%d", i))
	}
	d.putCluster(lore.Cluster{ID: "big", Hosting4: addrs(many...)})
	d.putCluster(lore.Cluster{ID: "lonely"})
	d.putRepl(lore.Repl{ID: "r1abc", Owner: "replbot", Slug: "blog", Cluster: "a"})
	d.putRepl(lore.Repl{ID: "r2def", Owner: "replbot", Slug: "shop", Cluster: "b"})
	d.putRepl(lore.Repl{ID: "r3big", Owner: "crowd", Slug: "big", Cluster: "big"})
	d.putRepl(lore.Repl{ID: "r4lone", Owner: "nobody", Slug: "lone", Cluster: "lonely"})
	d.putRepl(lore.Repl{ID: "r5gone", Owner: "ghost", Slug: "orphan", Cluster: "vanished"})
	return d
}

// server is a miekg/dns server on loopback UDP and TCP serving h.
type server struct {
	udp, tcp string
}

func serve(t testing.TB, h dns.Handler) server {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, h, pc, ln)
}

// serveOn serves h on pc (UDP) and ln (TCP) until the test ends.
func serveOn(t testing.TB, h dns.Handler, pc net.PacketConn, ln net.Listener) server {
	t.Helper()
	var s server
	s.udp, s.tcp = pc.LocalAddr().String(), ln.Addr().String()
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: h},
		// miekg closes a TCP connection after 128 queries by default; lift it so pipelining
		// clients keep their connection (what every embedder should do).
		{Listener: ln, Handler: h, MaxTCPQueries: -1},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan error, 1)
		go func() { done <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("dns server: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatal("dns server did not start")
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.ShutdownContext(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			<-done
		})
	}
	return s
}

func (s server) addr(network string) string {
	if network == "tcp" {
		return s.tcp
	}
	return s.udp
}

func exchange(t testing.TB, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s exchange %s: %v", network, m.Question[0].String(), err)
	}
	if r.Id != m.Id {
		t.Fatalf("id %d, want %d", r.Id, m.Id)
	}
	return r
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = false
	return m
}

// rrStrings renders RRs in presentation format, tabs collapsed, for comparison with a table.
func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

func newHandler(t testing.TB, cfg dnsauth.Config) *dnsauth.Handler {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h, err := dnsauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func testZones() []dnsauth.Zone {
	return []dnsauth.Zone{
		{
			Name:   "repl.test",
			Serial: 2026112201,
			NS: []dnsauth.NameServer{
				{Name: "ns1.repl.test", Addrs: addrs("127.0.0.53", "fd00::53")},
				{Name: "ns.example.net"},
			},
		},
		{Name: "Other.Test.", Serial: 7, NegativeTTL: 30 * time.Second},
	}
}
