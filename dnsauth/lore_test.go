package dnsauth_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

// The real directory and its HTTP client satisfy the handler's interface.
var (
	_ dnsauth.Directory = (*lore.Directory)(nil)
	_ dnsauth.Directory = (*lore.Client)(nil)

	_ dnsauth.HostingDirectory = (*lore.Directory)(nil)
)

// TestLoreClientThroughOutage serves DNS from lore's HTTP API through lore.Client behind a
// Cache, then stops the API: cached names keep answering, others get SERVFAIL, none NXDOMAIN.
func TestLoreClientThroughOutage(t *testing.T) {
	d := loreFixture(t)
	api := httptest.NewServer(lore.NewHandler(lore.HandlerConfig{Directory: d, AdminKey: "admin", ReadKey: "reader"}))
	t.Cleanup(api.Close)
	client := lore.NewClient(api.URL, "reader", api.Client())
	cache, err := dnsauth.NewCache(dnsauth.CacheConfig{Directory: client})
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, newHandler(t, dnsauth.Config{Zones: testZones(), Directory: cache, Timeout: time.Second}))
	ask := func(name string) *dns.Msg { return exchange(t, "udp", s.udp, query(name, dns.TypeA)) }
	for _, name := range []string{"blog.replbot.repl.test.", "r2def.id.repl.test."} {
		if r := ask(name); r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Fatalf("%s over lore's API: %v", name, r)
		}
	}
	if r := ask("nope.replbot.repl.test."); r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown name over lore's API: %s", dns.RcodeToString[r.Rcode])
	}
	api.CloseClientConnections()
	api.Close()
	for _, tc := range []struct {
		name  string
		rcode int
	}{
		{"blog.replbot.repl.test.", dns.RcodeSuccess},
		{"r2def.id.repl.test.", dns.RcodeSuccess},
		{"shop.replbot.repl.test.", dns.RcodeServerFailure},
		{"nope.replbot.repl.test.", dns.RcodeServerFailure},
	} {
		if r := ask(tc.name); r.Rcode != tc.rcode {
			t.Errorf("lore down: %s: %s, want %s", tc.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
		}
	}
	// Without the cache, everything that needs the directory is SERVFAIL.
	bare := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: client, Timeout: time.Second})
	for _, name := range []string{"blog.replbot.repl.test.", "nope.replbot.repl.test."} {
		rw := &recorder{network: "udp"}
		bare.ServeDNS(rw, query(name, dns.TypeA))
		if rw.msg == nil || rw.msg.Rcode != dns.RcodeServerFailure {
			t.Errorf("lore down, no cache: %s: %v", name, rw.msg)
		}
	}
}

// loreFixture is fixture() in a real lore Directory over its memdb store (without the repl whose
// cluster is missing, which lore refuses to create).
func loreFixture(t testing.TB) *lore.Directory {
	t.Helper()
	d, err := lore.New(lore.Config{Zone: "repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx := context.Background()
	src := fixture()
	for _, c := range src.clusters {
		c.EvalURL = "ws://127.0.0.1:8443/v1/connect"
		if _, err := d.PutCluster(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range src.repls {
		if r.Cluster == "vanished" {
			continue
		}
		if _, err := d.CreateRepl(ctx, r); err != nil {
			t.Fatalf("create %+v: %v", r, err)
		}
	}
	return d
}
