package etcd_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
)

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

// The same cases as acmedns's MemStore tests, against etcd: two stores on separate clients
// (two DNS replicas) see each other's values.
func TestACMEStore(t *testing.T) {
	c := etcdtest.New(t, 1)
	ctx := context.Background()
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	p := prefix("acme")
	newStore := func() *etcd.ACMEStore {
		s, err := etcd.NewACMEStore(etcd.ACMEStoreConfig{Client: c.Client(t), Prefix: p, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s, replica := newStore(), newStore()
	var _ acmedns.Store = s

	t.Run("Values", func(t *testing.T) {
		add := func(name, v string, ttl time.Duration) {
			t.Helper()
			if err := s.AddTXT(ctx, name, v, clk.Now().Add(ttl)); err != nil {
				t.Fatal(err)
			}
		}
		get := func(name string) []string {
			t.Helper()
			v, err := replica.TXT(ctx, name)
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
		clk.advance(time.Hour)
		if v := get("x.acme.test"); len(v) != 0 {
			t.Fatalf("all expired: %q", v)
		}
		ctxDone, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.TXT(ctxDone, "x"); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled context: %v", err)
		}
	})
	t.Run("Accounts", func(t *testing.T) {
		a := acmedns.Account{Username: "u1", Subdomain: "s1", AllowFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		if err := s.CreateAccount(ctx, a); err != nil {
			t.Fatal(err)
		}
		for _, dup := range []acmedns.Account{{Username: "u1", Subdomain: "s2"}, {Username: "u2", Subdomain: "s1"}} {
			if err := replica.CreateAccount(ctx, dup); !errors.Is(err, acmedns.ErrExists) {
				t.Errorf("duplicate %+v: %v, want ErrExists", dup, err)
			}
		}
		got, err := replica.Account(ctx, "u1")
		if err != nil || got.Subdomain != "s1" || !got.Allowed(netip.MustParseAddr("10.1.2.3")) || got.Allowed(netip.MustParseAddr("192.0.2.1")) {
			t.Fatalf("account: %+v %v", got, err)
		}
		if _, err := s.Account(ctx, "nobody"); !errors.Is(err, acmedns.ErrNotFound) {
			t.Fatalf("missing account: %v", err)
		}
	})
}
