// Package acmednstest is the conformance suite every acmedns.Store must pass, so a shared
// backend (etcd) behaves exactly as the in-process MemStore does.
package acmednstest

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
)

// Factory returns two stores over the same state, both reading the clock now: the suite writes
// through w and reads through r. An in-process store returns itself twice; a shared backend
// returns two replicas on separate connections, so the suite also checks they see each other's
// writes. Each call must start from empty state.
type Factory func(t *testing.T, now func() time.Time) (w, r acmedns.Store)

// Run runs the suite against the stores newStores makes.
func Run(t *testing.T, newStores Factory) {
	t.Run("Values", func(t *testing.T) { testValues(t, newStores) })
	t.Run("Accounts", func(t *testing.T) { testAccounts(t, newStores) })
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func testValues(t *testing.T, newStores Factory) {
	ctx := context.Background()
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	w, r := newStores(t, clk.Now)
	add := func(name, v string, ttl time.Duration) {
		t.Helper()
		if err := w.AddTXT(ctx, name, v, clk.Now().Add(ttl)); err != nil {
			t.Fatal(err)
		}
	}
	get := func(name string) []string {
		t.Helper()
		v, err := r.TXT(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := get("x.acme.test"); len(v) != 0 {
		t.Fatalf("empty store has %q", v)
	}
	add("X.acme.test.", "one", time.Minute)
	add("x.acme.test", "two", time.Minute)
	if v := get("x.acme.test."); !slices.Equal(v, []string{"two", "one"}) {
		t.Fatalf("two values: %q, want newest first", v)
	}
	add("x.acme.test", "three", 2*time.Minute)
	if v := get("x.acme.test"); !slices.Equal(v, []string{"three", "two"}) {
		t.Fatalf("after a third value: %q, want the 2 most recent", v)
	}
	if v := get("y.acme.test"); len(v) != 0 {
		t.Fatalf("values leaked to another name: %q", v)
	}
	clk.advance(90 * time.Second)
	if v := get("x.acme.test"); !slices.Equal(v, []string{"three"}) {
		t.Fatalf("after expiry: %q", v)
	}
	add("y.acme.test", "four", time.Minute) // a write after expiry (a store may collect then)
	clk.advance(time.Hour)
	if v := get("x.acme.test"); len(v) != 0 {
		t.Fatalf("all expired: %q", v)
	}
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.TXT(ctxDone, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func testAccounts(t *testing.T, newStores Factory) {
	ctx := context.Background()
	w, r := newStores(t, time.Now)
	a := acmedns.Account{Username: "u1", Subdomain: "s1", AllowFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if err := w.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	for _, dup := range []acmedns.Account{{Username: "u1", Subdomain: "s2"}, {Username: "u2", Subdomain: "s1"}} {
		if err := r.CreateAccount(ctx, dup); !errors.Is(err, acmedns.ErrExists) {
			t.Errorf("duplicate %+v: %v, want ErrExists", dup, err)
		}
	}
	got, err := r.Account(ctx, "u1")
	if err != nil || got.Subdomain != "s1" || !got.Allowed(netip.MustParseAddr("10.1.2.3")) || got.Allowed(netip.MustParseAddr("192.0.2.1")) {
		t.Fatalf("account: %+v %v", got, err)
	}
	if _, err := w.Account(ctx, "nobody"); !errors.Is(err, acmedns.ErrNotFound) {
		t.Fatalf("missing account: %v", err)
	}
}
