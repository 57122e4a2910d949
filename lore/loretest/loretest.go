// Package loretest is the conformance suite every lore.Store must pass.
//
// A backend's test calls Run with a constructor of empty stores:
//
//	func TestConformance(t *testing.T) {
//		loretest.Run(t, func(t *testing.T) lore.Store {
//			s, err := lore.NewMemStore(lore.MemStoreConfig{})
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// The suite checks lookups by ID, by (owner, slug) and by custom domain; listing; uniqueness of
// IDs, names and domains under concurrent writers; references (a repl's cluster, a domain's
// repl); moves; deletes with their cascade to domains; copies (no aliasing of returned values);
// and the watch contract: every change after Watch, in commit order with growing indexes, and a
// watcher that falls behind is told so by a closed channel, never by a silent gap.
//
// Values given to the store are already valid and normalized (the Directory does that), so the
// suite does not test validation.
package loretest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

// Run runs the suite. newStore returns an empty store and arranges its cleanup.
func Run(t *testing.T, newStore func(t *testing.T) lore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s lore.Store)
	}{
		{"Clusters", testClusters},
		{"Repls", testRepls},
		{"ConcurrentUniqueness", testConcurrentUniqueness},
		{"Move", testMove},
		{"Delete", testDelete},
		{"Domains", testDomains},
		{"Watch", testWatch},
		{"WatchConcurrentWriters", testWatchConcurrent},
		{"WatchSlowWatcher", testWatchSlow},
		{"WatchCancel", testWatchCancel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

// eventTimeout bounds how long the suite waits for an event a write has committed.
const eventTimeout = 10 * time.Second

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func cluster(id string) lore.Cluster {
	return lore.Cluster{ID: id, Region: "region-" + id, EvalURL: "ws://" + id + ".example/v1/connect",
		HostingURL: "http://" + id + ".example", Hosting4: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Hosting6: []netip.Addr{netip.MustParseAddr("2001:db8::1")}, Healthy: true}
}

var created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func repl(id, owner, slug, cl string) lore.Repl {
	return lore.Repl{ID: id, Owner: owner, Slug: slug, Cluster: cl, Plan: "free", Created: created}
}

type result[T any] struct {
	v   T
	err error
}

// ok wraps a call's results; .must(t) fails the test on an error.
func ok[T any](v T, err error) result[T] { return result[T]{v, err} }

func (r result[T]) must(t *testing.T) T {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.v
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func equalRepl(a, b lore.Repl) bool {
	return a.ID == b.ID && a.Owner == b.Owner && a.Slug == b.Slug && a.Cluster == b.Cluster && a.Plan == b.Plan && a.Created.Equal(b.Created)
}

func setup(t *testing.T, s lore.Store, clusters ...string) {
	t.Helper()
	for _, c := range clusters {
		ok(s.PutCluster(ctx(t), cluster(c))).must(t)
	}
}

func testClusters(t *testing.T, s lore.Store) {
	c := ctx(t)
	if cs := ok(s.Clusters(c)).must(t); len(cs) != 0 {
		t.Fatalf("empty store lists clusters %+v", cs)
	}
	_, err := s.Cluster(c, "a")
	wantErr(t, "Cluster on empty store", err, lore.ErrNotFound)
	setup(t, s, "b", "a", "c")
	cs := ok(s.Clusters(c)).must(t)
	if len(cs) != 3 || cs[0].ID != "a" || cs[1].ID != "b" || cs[2].ID != "c" {
		t.Fatalf("Clusters not ordered by ID: %+v", cs)
	}
	got := ok(s.Cluster(c, "b")).must(t)
	want := cluster("b")
	if got.EvalURL != want.EvalURL || got.Region != want.Region || got.HostingURL != want.HostingURL || !got.Healthy ||
		len(got.Hosting4) != 1 || got.Hosting4[0] != want.Hosting4[0] || len(got.Hosting6) != 1 || got.Hosting6[0] != want.Hosting6[0] {
		t.Fatalf("Cluster = %+v, want %+v", got, want)
	}
	// Replace.
	want.Healthy = false
	want.Hosting4 = []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("192.0.2.10")}
	ok(s.PutCluster(c, want)).must(t)
	got = ok(s.Cluster(c, "b")).must(t)
	if got.Healthy || len(got.Hosting4) != 2 || got.Hosting4[1] != want.Hosting4[1] {
		t.Fatalf("replaced cluster = %+v", got)
	}
	// No aliasing: neither the value put nor the value got is shared with the store.
	want.Hosting4[0] = netip.MustParseAddr("10.9.9.9")
	got.Hosting4[1] = netip.MustParseAddr("10.9.9.9")
	again := ok(s.Cluster(c, "b")).must(t)
	if again.Hosting4[0] != netip.MustParseAddr("192.0.2.9") || again.Hosting4[1] != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("store shares slices with callers: %v", again.Hosting4)
	}
	ok(s.CreateRepl(c, repl("r1", "o", "s1", "a"))).must(t)
	ok(s.CreateRepl(c, repl("r2", "o", "s2", "a"))).must(t)
	ok(s.CreateRepl(c, repl("r3", "o", "s3", "c"))).must(t)
	loads := ok(s.ClusterLoads(c)).must(t)
	counts := map[string]int{}
	for _, l := range loads {
		counts[l.Cluster.ID] = l.Repls
	}
	if len(loads) != 3 || loads[0].Cluster.ID != "a" || counts["a"] != 2 || counts["b"] != 0 || counts["c"] != 1 {
		t.Fatalf("ClusterLoads = %+v", loads)
	}
}

func testRepls(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a", "b")
	r := repl("r1", "bob", "blog", "a")
	got := ok(s.CreateRepl(c, r)).must(t)
	if !equalRepl(got, r) {
		t.Fatalf("CreateRepl = %+v, want %+v", got, r)
	}
	for name, get := range map[string]func() (lore.Repl, error){
		"Repl":       func() (lore.Repl, error) { return s.Repl(c, "r1") },
		"ReplByName": func() (lore.Repl, error) { return s.ReplByName(c, "bob", "blog") },
	} {
		if got, err := get(); err != nil || !equalRepl(got, r) {
			t.Fatalf("%s = %+v, %v; want %+v", name, got, err, r)
		}
	}
	_, err := s.Repl(c, "r2")
	wantErr(t, "Repl(unknown)", err, lore.ErrNotFound)
	_, err = s.ReplByName(c, "bob", "blogx")
	wantErr(t, "ReplByName(unknown)", err, lore.ErrNotFound)
	_, err = s.ReplByName(c, "blog", "bob")
	wantErr(t, "ReplByName(swapped)", err, lore.ErrNotFound)

	_, err = s.CreateRepl(c, repl("r1", "bob", "other", "a"))
	wantErr(t, "CreateRepl(same id)", err, lore.ErrExists)
	_, err = s.CreateRepl(c, repl("r2", "bob", "blog", "b"))
	wantErr(t, "CreateRepl(same name)", err, lore.ErrExists)
	_, err = s.CreateRepl(c, repl("r2", "bob", "x", "nope"))
	wantErr(t, "CreateRepl(unknown cluster)", err, lore.ErrNotFound)
	if _, err := s.Repl(c, "r2"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("a failed create left repl r2 behind: %v", err)
	}

	// Listing: by owner then slug; owner "bo" is not a prefix match for "bob".
	ok(s.CreateRepl(c, repl("r3", "bob", "alpha", "b"))).must(t)
	ok(s.CreateRepl(c, repl("r4", "bobby", "a", "b"))).must(t)
	ok(s.CreateRepl(c, repl("r5", "al", "z", "b"))).must(t)
	list := ok(s.Repls(c, lore.ReplQuery{Owner: "bob"})).must(t)
	if len(list) != 2 || list[0].ID != "r3" || list[1].ID != "r1" {
		t.Fatalf("Repls(bob) = %+v", list)
	}
	if l := ok(s.Repls(c, lore.ReplQuery{Owner: "bo"})).must(t); len(l) != 0 {
		t.Fatalf("Repls(bo) = %+v", l)
	}
	all := ok(s.Repls(c, lore.ReplQuery{})).must(t)
	var ids []string
	for _, r := range all {
		ids = append(ids, r.ID)
	}
	if fmt.Sprint(ids) != "[r5 r3 r1 r4]" {
		t.Fatalf("Repls(all) ids = %v, want [r5 r3 r1 r4]", ids)
	}
	// Pages: Limit, and After as a cursor "<owner>/<slug>" (exclusive), with and without Owner.
	for _, tt := range []struct {
		q    lore.ReplQuery
		want string
	}{
		{lore.ReplQuery{Limit: 2}, "[r5 r3]"},
		{lore.ReplQuery{After: "bob/alpha", Limit: 2}, "[r1 r4]"},
		{lore.ReplQuery{After: "bob/blog"}, "[r4]"},
		{lore.ReplQuery{After: "bobby/a"}, "[]"},
		{lore.ReplQuery{After: "a/a"}, "[r5 r3 r1 r4]"},
		{lore.ReplQuery{After: "bob/b"}, "[r1 r4]"}, // a cursor need not name an existing repl
		{lore.ReplQuery{Owner: "bob", After: "bob/alpha"}, "[r1]"},
		{lore.ReplQuery{Owner: "bob", After: "al/z"}, "[r3 r1]"},
		{lore.ReplQuery{Owner: "bob", After: "bobby/a"}, "[]"},
		{lore.ReplQuery{Owner: "bob", Limit: 1}, "[r3]"},
	} {
		var got []string
		for _, r := range ok(s.Repls(c, tt.q)).must(t) {
			got = append(got, r.ID)
		}
		if g := fmt.Sprint(got); g != tt.want && !(tt.want == "[]" && len(got) == 0) {
			t.Errorf("Repls(%+v) = %v, want %s", tt.q, g, tt.want)
		}
	}
}

func testConcurrentUniqueness(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a", "b")
	const writers, names = 8, 40
	var (
		mu   sync.Mutex
		wins = map[string][]int{} // name -> writers that won it
		ids  = map[string]int{}   // id -> wins
		wg   sync.WaitGroup
		errs = make(chan error, writers*names*2)
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < names; n++ {
				// Every writer races for the same names, with its own IDs; and for the same IDs
				// ("shared-<n>") with its own names.
				name := fmt.Sprintf("s%d", n)
				id := fmt.Sprintf("w%dn%d", w, n)
				if _, err := s.CreateRepl(c, repl(id, "owner", name, "a")); err == nil {
					mu.Lock()
					wins[name] = append(wins[name], w)
					ids[id]++
					mu.Unlock()
				} else if !errors.Is(err, lore.ErrExists) {
					errs <- err
				}
				shared := fmt.Sprintf("shared%d", n)
				if _, err := s.CreateRepl(c, repl(shared, fmt.Sprintf("w%d", w), name, "b")); err == nil {
					mu.Lock()
					ids[shared]++
					mu.Unlock()
				} else if !errors.Is(err, lore.ErrExists) {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("unexpected error: %v", err)
	}
	for n := 0; n < names; n++ {
		name := fmt.Sprintf("s%d", n)
		if len(wins[name]) != 1 {
			t.Fatalf("name owner/%s created by %d writers, want exactly 1", name, len(wins[name]))
		}
		got := ok(s.ReplByName(c, "owner", name)).must(t)
		if want := fmt.Sprintf("w%dn%d", wins[name][0], n); got.ID != want {
			t.Fatalf("owner/%s is %s, but %s won", name, got.ID, want)
		}
		if ids[fmt.Sprintf("shared%d", n)] != 1 {
			t.Fatalf("id shared%d created %d times", n, ids[fmt.Sprintf("shared%d", n)])
		}
	}
	if all := ok(s.Repls(c, lore.ReplQuery{})).must(t); len(all) != 2*names {
		t.Fatalf("store holds %d repls, want %d", len(all), 2*names)
	}
}

func testMove(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a", "b")
	ok(s.CreateRepl(c, repl("r1", "bob", "blog", "a"))).must(t)
	got, from, err := s.MoveRepl(c, "r1", "b")
	if err != nil || got.Cluster != "b" || from != "a" || got.Owner != "bob" || !got.Created.Equal(created) {
		t.Fatalf("MoveRepl = %+v, %q, %v", got, from, err)
	}
	for _, r := range []lore.Repl{ok(s.Repl(c, "r1")).must(t), ok(s.ReplByName(c, "bob", "blog")).must(t)} {
		if r.Cluster != "b" {
			t.Fatalf("after move, lookup says cluster %q", r.Cluster)
		}
	}
	got, from, err = s.MoveRepl(c, "r1", "b")
	if err != nil || got.Cluster != "b" || from != "b" {
		t.Fatalf("MoveRepl to its own cluster = %+v, %q, %v", got, from, err)
	}
	_, _, err = s.MoveRepl(c, "r1", "nope")
	wantErr(t, "MoveRepl(unknown cluster)", err, lore.ErrNotFound)
	_, _, err = s.MoveRepl(c, "nope", "a")
	wantErr(t, "MoveRepl(unknown repl)", err, lore.ErrNotFound)
	if r := ok(s.Repl(c, "r1")).must(t); r.Cluster != "b" {
		t.Fatalf("failed move changed the repl: %+v", r)
	}
	loads := ok(s.ClusterLoads(c)).must(t)
	if loads[0].Repls != 0 || loads[1].Repls != 1 {
		t.Fatalf("loads after move %+v", loads)
	}
}

func testDelete(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a")
	ok(s.CreateRepl(c, repl("r1", "bob", "blog", "a"))).must(t)
	ok(s.CreateRepl(c, repl("r2", "bob", "wiki", "a"))).must(t)
	ok(s.CreateDomain(c, lore.Domain{Name: "one.example", Repl: "r1", Challenge: "c1", Created: created})).must(t)
	ok(s.CreateDomain(c, lore.Domain{Name: "two.example", Repl: "r1", Challenge: "c2", Created: created})).must(t)
	ok(s.VerifyDomain(c, "two.example", "c2")).must(t)
	ok(s.CreateDomain(c, lore.Domain{Name: "three.example", Repl: "r2", Challenge: "c3", Created: created})).must(t)
	old := ok(s.DeleteRepl(c, "r1")).must(t)
	if old.ID != "r1" || old.Slug != "blog" {
		t.Fatalf("DeleteRepl returned %+v", old)
	}
	_, err := s.Repl(c, "r1")
	wantErr(t, "Repl after delete", err, lore.ErrNotFound)
	_, err = s.ReplByName(c, "bob", "blog")
	wantErr(t, "ReplByName after delete", err, lore.ErrNotFound)
	_, err = s.ReplByDomain(c, "two.example")
	wantErr(t, "ReplByDomain after delete", err, lore.ErrNotFound)
	for _, d := range []string{"one.example", "two.example"} {
		_, err = s.Domain(c, d)
		wantErr(t, "domain of a deleted repl", err, lore.ErrNotFound)
	}
	ok(s.Domain(c, "three.example")).must(t)
	_, err = s.DeleteRepl(c, "r1")
	wantErr(t, "second DeleteRepl", err, lore.ErrNotFound)
	if l := ok(s.Repls(c, lore.ReplQuery{Owner: "bob"})).must(t); len(l) != 1 || l[0].ID != "r2" {
		t.Fatalf("Repls after delete %+v", l)
	}
	// The name and the ID are free again.
	ok(s.CreateRepl(c, repl("r1", "bob", "blog", "a"))).must(t)
	if loads := ok(s.ClusterLoads(c)).must(t); loads[0].Repls != 2 {
		t.Fatalf("loads %+v", loads)
	}
}

func testDomains(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a")
	ok(s.CreateRepl(c, repl("r1", "bob", "blog", "a"))).must(t)
	d := lore.Domain{Name: "www.example.com", Repl: "r1", Challenge: "secret", Created: created}
	got := ok(s.CreateDomain(c, d)).must(t)
	if got.Name != d.Name || got.Repl != "r1" || got.Verified || got.Challenge != "secret" {
		t.Fatalf("CreateDomain = %+v", got)
	}
	_, err := s.CreateDomain(c, d)
	wantErr(t, "CreateDomain(same)", err, lore.ErrExists)
	_, err = s.CreateDomain(c, lore.Domain{Name: "x.example", Repl: "nope", Challenge: "c"})
	wantErr(t, "CreateDomain(unknown repl)", err, lore.ErrNotFound)
	_, err = s.ReplByDomain(c, d.Name)
	wantErr(t, "ReplByDomain(unverified)", err, lore.ErrNotFound)
	_, err = s.VerifyDomain(c, d.Name, "stale")
	wantErr(t, "VerifyDomain(wrong challenge)", err, lore.ErrNotFound)
	_, err = s.ReplByDomain(c, d.Name)
	wantErr(t, "ReplByDomain after a failed verify", err, lore.ErrNotFound)
	v := ok(s.VerifyDomain(c, d.Name, "secret")).must(t)
	if !v.Verified {
		t.Fatalf("VerifyDomain = %+v", v)
	}
	ok(s.VerifyDomain(c, d.Name, "secret")).must(t) // idempotent
	if r := ok(s.ReplByDomain(c, d.Name)).must(t); r.ID != "r1" {
		t.Fatalf("ReplByDomain = %+v", r)
	}
	if g := ok(s.Domain(c, d.Name)).must(t); !g.Verified || g.Challenge != "secret" || !g.Created.Equal(created) {
		t.Fatalf("Domain = %+v", g)
	}
	// The domain follows its repl across a move.
	ok(s.PutCluster(c, cluster("b"))).must(t)
	if _, _, err := s.MoveRepl(c, "r1", "b"); err != nil {
		t.Fatal(err)
	}
	if r := ok(s.ReplByDomain(c, d.Name)).must(t); r.Cluster != "b" {
		t.Fatalf("ReplByDomain after move = %+v", r)
	}
	old := ok(s.DeleteDomain(c, d.Name)).must(t)
	if old.Name != d.Name || !old.Verified {
		t.Fatalf("DeleteDomain returned %+v", old)
	}
	_, err = s.DeleteDomain(c, d.Name)
	wantErr(t, "second DeleteDomain", err, lore.ErrNotFound)
	_, err = s.ReplByDomain(c, d.Name)
	wantErr(t, "ReplByDomain after delete", err, lore.ErrNotFound)
	_, err = s.VerifyDomain(c, d.Name, "secret")
	wantErr(t, "VerifyDomain after delete", err, lore.ErrNotFound)
}

// next receives one event or fails.
func next(t *testing.T, ch <-chan lore.Event) lore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(eventTimeout):
		t.Fatal("no event within", eventTimeout)
	}
	return lore.Event{}
}

func testWatch(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a", "b") // before Watch: not delivered
	ok(s.CreateRepl(c, repl("r0", "bob", "old", "a"))).must(t)
	wctx, cancel := context.WithCancel(c)
	defer cancel()
	ch := ok(s.Watch(wctx)).must(t)

	ok(s.CreateRepl(c, repl("r1", "bob", "blog", "a"))).must(t)
	if _, _, err := s.MoveRepl(c, "r1", "b"); err != nil {
		t.Fatal(err)
	}
	_, _, _ = s.MoveRepl(c, "r1", "b") // no-op: no event
	ok(s.PutCluster(c, cluster("c"))).must(t)
	ok(s.CreateDomain(c, lore.Domain{Name: "x.example", Repl: "r1", Challenge: "k"})).must(t)
	ok(s.VerifyDomain(c, "x.example", "k")).must(t)
	ok(s.DeleteDomain(c, "x.example")).must(t)
	ok(s.CreateDomain(c, lore.Domain{Name: "y.example", Repl: "r1", Challenge: "k"})).must(t)
	ok(s.DeleteRepl(c, "r1")).must(t)
	_, _ = s.CreateRepl(c, repl("r1", "bob", "old", "a")) // fails (name taken): no event

	var last uint64
	check := func(kind lore.EventKind, f func(ev lore.Event) bool) {
		t.Helper()
		ev := next(t, ch)
		if ev.Kind != kind || !f(ev) {
			t.Fatalf("event %+v (repl %+v, cluster %+v, domain %+v), want kind %s", ev, ev.Repl, ev.Cluster, ev.Domain, kind)
		}
		if ev.Index == 0 || ev.Index < last {
			t.Fatalf("event index %d after %d", ev.Index, last)
		}
		last = ev.Index
	}
	check(lore.ReplCreated, func(ev lore.Event) bool { return ev.Repl != nil && ev.Repl.ID == "r1" && ev.Repl.Cluster == "a" })
	check(lore.ReplMoved, func(ev lore.Event) bool { return ev.Repl != nil && ev.Repl.Cluster == "b" && ev.FromCluster == "a" })
	check(lore.ClusterChanged, func(ev lore.Event) bool { return ev.Cluster != nil && ev.Cluster.ID == "c" })
	check(lore.DomainChanged, func(ev lore.Event) bool {
		return ev.Domain != nil && ev.Domain.Name == "x.example" && !ev.Domain.Verified
	})
	check(lore.DomainChanged, func(ev lore.Event) bool { return ev.Domain != nil && ev.Domain.Verified })
	check(lore.DomainDeleted, func(ev lore.Event) bool { return ev.Domain != nil && ev.Domain.Name == "x.example" })
	check(lore.DomainChanged, func(ev lore.Event) bool { return ev.Domain != nil && ev.Domain.Name == "y.example" })
	check(lore.DomainDeleted, func(ev lore.Event) bool { return ev.Domain != nil && ev.Domain.Name == "y.example" })
	check(lore.ReplDeleted, func(ev lore.Event) bool { return ev.Repl != nil && ev.Repl.ID == "r1" && ev.Repl.Cluster == "b" })
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("unexpected event %+v (a no-op or failed write published)", ev)
		}
		t.Fatal("watch channel closed early")
	default:
	}
}

func testWatchConcurrent(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a")
	const writers, each = 4, 25
	var watchers []<-chan lore.Event
	for i := 0; i < 3; i++ {
		watchers = append(watchers, ok(s.Watch(c)).must(t))
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := s.CreateRepl(c, repl(fmt.Sprintf("w%di%d", w, i), fmt.Sprintf("w%d", w), fmt.Sprintf("s%d", i), "a")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Every watcher sees every event, in the same order, with growing indexes, and each writer's
	// events in the order it wrote them.
	var first []string
	for i, ch := range watchers {
		var seq []string
		var last uint64
		pos := map[int]int{}
		for n := 0; n < writers*each; n++ {
			ev := next(t, ch)
			if ev.Kind != lore.ReplCreated || ev.Index <= last && n > 0 {
				t.Fatalf("watcher %d: event %d: %+v after index %d", i, n, ev, last)
			}
			last = ev.Index
			var w, k int
			fmt.Sscanf(ev.Repl.ID, "w%di%d", &w, &k)
			if k != pos[w] {
				t.Fatalf("watcher %d: writer %d's events out of order: got %d, want %d", i, w, k, pos[w])
			}
			pos[w]++
			seq = append(seq, ev.Repl.ID)
		}
		if i == 0 {
			first = seq
		} else if fmt.Sprint(seq) != fmt.Sprint(first) {
			t.Fatalf("watchers saw different orders")
		}
	}
}

func testWatchSlow(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a")
	wctx, cancel := context.WithCancel(c)
	defer cancel()
	slow := ok(s.Watch(wctx)).must(t)
	const n = 6000
	for i := 0; i < n; i++ {
		ok(s.CreateRepl(c, repl(fmt.Sprintf("r%d", i), "o", fmt.Sprintf("s%d", i), "a"))).must(t)
	}
	// The slow watcher gets either every event, or a gap-free prefix and then a closed channel
	// while its context is live: never a silent gap.
	got := 0
	for got < n {
		select {
		case ev, ok := <-slow:
			if !ok {
				if wctx.Err() != nil {
					t.Fatal("closed only because the context ended")
				}
				t.Logf("slow watcher cut off after %d of %d events", got, n)
				return
			}
			if want := fmt.Sprintf("r%d", got); ev.Repl == nil || ev.Repl.ID != want {
				t.Fatalf("event %d is %+v, want repl %s: a gap", got, ev.Repl, want)
			}
			got++
		case <-time.After(eventTimeout):
			t.Fatalf("after %d of %d events the channel neither delivers nor closes", got, n)
		}
	}
}

func testWatchCancel(t *testing.T, s lore.Store) {
	c := ctx(t)
	setup(t, s, "a")
	wctx, cancel := context.WithCancel(c)
	ch := ok(s.Watch(wctx)).must(t)
	other := ok(s.Watch(c)).must(t)
	cancel()
	select {
	case _, ok := <-ch:
		for ok { // drain anything already queued
			_, ok = <-ch
		}
	case <-time.After(eventTimeout):
		t.Fatal("channel not closed after its context ended")
	}
	// Other watchers are unaffected.
	ok(s.CreateRepl(c, repl("r1", "o", "s", "a"))).must(t)
	if ev := next(t, other); ev.Kind != lore.ReplCreated {
		t.Fatalf("event %+v", ev)
	}
	done, dcancel := context.WithCancel(c)
	dcancel()
	if _, err := s.Watch(done); err == nil {
		t.Fatal("Watch with an ended context succeeded")
	}
}
