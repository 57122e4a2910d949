package dnsauth_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

// countingDir counts the calls that reach the backend.
type countingDir struct {
	*mapDir
	calls atomic.Int64
}

func (d *countingDir) Repl(ctx context.Context, id string) (lore.Repl, error) {
	d.calls.Add(1)
	return d.mapDir.Repl(ctx, id)
}

func (d *countingDir) ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error) {
	d.calls.Add(1)
	return d.mapDir.ReplByName(ctx, owner, slug)
}

func (d *countingDir) Cluster(ctx context.Context, id string) (lore.Cluster, error) {
	d.calls.Add(1)
	return d.mapDir.Cluster(ctx, id)
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestCacheServesThroughOutage(t *testing.T) {
	backend := &countingDir{mapDir: fixture()}
	clk := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	reg := prometheus.NewPedanticRegistry()
	cache, err := dnsauth.NewCache(dnsauth.CacheConfig{Directory: backend, Stale: 10 * time.Minute, RetryAfter: 5 * time.Second, Now: clk.Now, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: cache})
	ask := func(name string) *dns.Msg {
		t.Helper()
		rw := &recorder{network: "udp"}
		h.ServeDNS(rw, query(name, dns.TypeA))
		if rw.msg == nil {
			t.Fatalf("%s: no answer", name)
		}
		return rw.msg
	}
	expect := func(step, name string, rcode, answers int) {
		t.Helper()
		r := ask(name)
		if r.Rcode != rcode || len(r.Answer) != answers {
			t.Fatalf("%s: %s: %s with %d answers, want %s with %d", step, name, dns.RcodeToString[r.Rcode], len(r.Answer),
				dns.RcodeToString[rcode], answers)
		}
	}
	expect("warm", "blog.replbot.repl.test.", dns.RcodeSuccess, 1)
	expect("warm", "r2def.id.repl.test.", dns.RcodeSuccess, 2)
	expect("warm", "nope.replbot.repl.test.", dns.RcodeNameError, 0)

	backend.setFail(errDown)
	expect("outage", "blog.replbot.repl.test.", dns.RcodeSuccess, 1)
	expect("outage", "r2def.id.repl.test.", dns.RcodeSuccess, 2)
	expect("outage, never seen", "shop.replbot.repl.test.", dns.RcodeServerFailure, 0)
	expect("outage, was NXDOMAIN", "nope.replbot.repl.test.", dns.RcodeServerFailure, 0)
	before := backend.calls.Load()
	for range 50 {
		expect("outage, backend not retried", "blog.replbot.repl.test.", dns.RcodeSuccess, 1)
	}
	if got := backend.calls.Load() - before; got != 0 {
		t.Fatalf("%d backend calls within RetryAfter, want 0", got)
	}
	clk.advance(6 * time.Second)
	expect("outage, retried", "blog.replbot.repl.test.", dns.RcodeSuccess, 1)
	if backend.calls.Load() == before {
		t.Fatal("backend not retried after RetryAfter")
	}
	if got := gatherSum(t, reg, "switchyard_dnsauth_cache_stale_answers_total"); got < 50 {
		t.Fatalf("stale answers counted %v", got)
	}
	clk.advance(11 * time.Minute)
	expect("outage past Stale", "blog.replbot.repl.test.", dns.RcodeServerFailure, 0)

	backend.setFail(nil)
	clk.advance(6 * time.Second)
	expect("recovered", "blog.replbot.repl.test.", dns.RcodeSuccess, 1)
	backend.deleteRepl("r1abc")
	expect("deleted", "blog.replbot.repl.test.", dns.RcodeNameError, 0)
	backend.setFail(errDown)
	expect("deleted, then outage: forgotten", "blog.replbot.repl.test.", dns.RcodeServerFailure, 0)
}

func TestCacheBounded(t *testing.T) {
	backend := fixture()
	cache, err := dnsauth.NewCache(dnsauth.CacheConfig{Directory: backend, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, id := range []string{"r1abc", "r2def", "r3big"} {
		if _, err := cache.Repl(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	backend.setFail(errDown)
	served := 0
	for _, id := range []string{"r1abc", "r2def", "r3big"} {
		if _, err := cache.Repl(ctx, id); err == nil {
			served++
		} else if !errors.Is(err, errDown) {
			t.Fatalf("error %v does not wrap the backend's", err)
		}
	}
	if served != 2 {
		t.Fatalf("%d entries served from a cache of 2", served)
	}
	if _, err := dnsauth.NewCache(dnsauth.CacheConfig{}); !errors.Is(err, dnsauth.ErrConfig) {
		t.Fatalf("NewCache without a directory: %v", err)
	}
}

// gatherSum returns the sum of a counter's series in reg.
func gatherSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
