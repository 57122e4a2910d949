package lore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
)

// fakeTXT is a TXTResolver answering from a map: the real DNS cannot be reached here.
type fakeTXT struct {
	mu   sync.Mutex
	txt  map[string][]string
	fail error
}

func (f *fakeTXT) set(name string, vals ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.txt == nil {
		f.txt = map[string][]string{}
	}
	f.txt[name] = vals
}

func (f *fakeTXT) LookupTXT(_ context.Context, name string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	if v, ok := f.txt[name]; ok {
		return v, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

type fixture struct {
	dir    *lore.Directory
	txt    *fakeTXT
	issuer *lore.Issuer
}

func newFixture(t testing.TB) fixture {
	t.Helper()
	txt := &fakeTXT{}
	iss := newIssuer(t, newKey(t), "k1", nil)
	dir, err := lore.New(lore.Config{Zone: "Repl.Test.", Issuer: iss, Resolver: txt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	ctx := context.Background()
	for _, c := range []lore.Cluster{
		{ID: "a", Region: "r1", EvalURL: "ws://127.0.1.1:8443/v1/connect", HostingURL: "http://127.0.1.1:8080",
			Hosting4: []netip.Addr{netip.MustParseAddr("127.0.1.1")}, Healthy: true},
		{ID: "b", Region: "r2", EvalURL: "ws://127.0.2.1:8443/v1/connect", HostingURL: "http://127.0.2.1:8080",
			Hosting4: []netip.Addr{netip.MustParseAddr("127.0.2.1")}, Hosting6: []netip.Addr{netip.MustParseAddr("::1")}, Healthy: true},
	} {
		if _, err := dir.PutCluster(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	return fixture{dir: dir, txt: txt, issuer: iss}
}

func TestDirectoryRepls(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r, err := f.dir.CreateRepl(ctx, lore.Repl{Owner: "ReplBot", Slug: "Blog", Plan: "Free"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Owner != "replbot" || r.Slug != "blog" || r.Plan != "free" || r.Cluster != "a" || len(r.ID) != 16 || r.Created.IsZero() {
		t.Fatalf("created %+v", r)
	}
	// The default policy spreads: the next repl goes to b (fewest repls), then a (tie → lowest ID).
	r2, _ := f.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "two"})
	r3, _ := f.dir.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "blog"})
	if r2.Cluster != "b" || r3.Cluster != "a" {
		t.Fatalf("policy chose %q, %q", r2.Cluster, r3.Cluster)
	}
	for _, get := range []func() (lore.Repl, error){
		func() (lore.Repl, error) { return f.dir.Repl(ctx, r.ID) },
		func() (lore.Repl, error) { return f.dir.Repl(ctx, strings.ToUpper(r.ID)) },
		func() (lore.Repl, error) { return f.dir.ReplByName(ctx, "REPLBOT", "blog") },
		func() (lore.Repl, error) { return f.dir.ReplByHost(ctx, "blog.replbot.repl.test:443") },
		func() (lore.Repl, error) { return f.dir.ReplByHost(ctx, r.ID+".ID.repl.test.") },
	} {
		got, err := get()
		if err != nil || got != r {
			t.Fatalf("lookup = %+v, %v; want %+v", got, err, r)
		}
	}
	list, err := f.dir.Repls(ctx, lore.ReplQuery{Owner: "REPLBOT"})
	if err != nil || len(list.Repls) != 2 || list.Repls[0].Slug != "blog" || list.Repls[1].Slug != "two" || list.Next != "" {
		t.Fatalf("list %+v %v", list, err)
	}
	if all, _ := f.dir.Repls(ctx, lore.ReplQuery{}); len(all.Repls) != 3 {
		t.Fatalf("all %+v", all)
	}
	if none, err := f.dir.Repls(ctx, lore.ReplQuery{Owner: "replbo"}); err != nil || len(none.Repls) != 0 {
		t.Fatalf("prefix owner listed %+v %v", none, err)
	}
	// Paging through everything one at a time visits each repl once, in order.
	var seen []string
	for q := (lore.ReplQuery{Limit: 1}); ; {
		page, err := f.dir.Repls(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Repls {
			seen = append(seen, r.Owner+"/"+r.Slug)
		}
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if fmt.Sprint(seen) != "[alice/blog replbot/blog replbot/two]" {
		t.Fatalf("paged %v", seen)
	}
	for _, q := range []lore.ReplQuery{{Limit: -1}, {Limit: lore.MaxListLimit + 1}, {After: "nocursor"}, {After: "a/_b"}, {Owner: "a b"}} {
		if _, err := f.dir.Repls(ctx, q); !errors.Is(err, lore.ErrInvalid) {
			t.Errorf("Repls(%+v) = %v, want ErrInvalid", q, err)
		}
	}

	errCases := []struct {
		name string
		r    lore.Repl
		want error
	}{
		{"duplicate name", lore.Repl{Owner: "replbot", Slug: "BLOG"}, lore.ErrExists},
		{"duplicate id", lore.Repl{ID: r.ID, Owner: "x", Slug: "y"}, lore.ErrExists},
		{"reserved owner", lore.Repl{Owner: "www", Slug: "y"}, lore.ErrInvalid},
		{"reserved slug", lore.Repl{Owner: "x", Slug: "_acme-challenge"}, lore.ErrInvalid},
		{"owner id", lore.Repl{Owner: "id", Slug: "y"}, lore.ErrInvalid},
		{"no owner", lore.Repl{Slug: "y"}, lore.ErrInvalid},
		{"no slug", lore.Repl{Owner: "x"}, lore.ErrInvalid},
		{"bad slug", lore.Repl{Owner: "x", Slug: "a.b"}, lore.ErrInvalid},
		{"bad id", lore.Repl{ID: "a b", Owner: "x", Slug: "y"}, lore.ErrInvalid},
		{"reserved id", lore.Repl{ID: "www", Owner: "x", Slug: "y"}, lore.ErrInvalid},
		{"bad cluster", lore.Repl{Owner: "x", Slug: "y", Cluster: "-"}, lore.ErrInvalid},
		{"unknown cluster", lore.Repl{Owner: "x", Slug: "y", Cluster: "zz"}, lore.ErrNotFound},
	}
	for _, tt := range errCases {
		if _, err := f.dir.CreateRepl(ctx, tt.r); !errors.Is(err, tt.want) {
			t.Errorf("%s: CreateRepl = %v, want %v", tt.name, err, tt.want)
		}
	}

	moved, err := f.dir.MoveRepl(ctx, r.ID, "B")
	if err != nil || moved.Cluster != "b" || moved.ID != r.ID {
		t.Fatalf("move %+v %v", moved, err)
	}
	if got, _ := f.dir.ReplByName(ctx, "replbot", "blog"); got.Cluster != "b" {
		t.Fatalf("after move %+v", got)
	}
	if _, err := f.dir.MoveRepl(ctx, r.ID, "zz"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("move to unknown: %v", err)
	}
	if _, err := f.dir.MoveRepl(ctx, "nope", "a"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("move unknown: %v", err)
	}
	if err := f.dir.DeleteRepl(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.dir.DeleteRepl(ctx, r.ID); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := f.dir.ReplByName(ctx, "replbot", "blog"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	// The name is free again.
	if _, err := f.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"}); err != nil {
		t.Fatal(err)
	}
}

func TestDirectoryClusters(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cs, err := f.dir.Clusters(ctx)
	if err != nil || len(cs) != 2 || cs[0].ID != "a" || cs[1].Hosting6[0] != netip.MustParseAddr("::1") {
		t.Fatalf("clusters %+v %v", cs, err)
	}
	bad := []lore.Cluster{
		{ID: "", EvalURL: "ws://x"},
		{ID: "a.b", EvalURL: "ws://x"},
		{ID: "c"},
		{ID: "c", EvalURL: "/relative"},
		{ID: "c", EvalURL: "ftp://x"},
		{ID: "c", EvalURL: "ws://x", HostingURL: "ws://x"},
		{ID: "c", EvalURL: "ws://x", Hosting4: []netip.Addr{netip.MustParseAddr("::1")}},
		{ID: "c", EvalURL: "ws://x", Hosting6: []netip.Addr{netip.MustParseAddr("1.2.3.4")}},
		{ID: "c", EvalURL: "ws://x", Hosting6: []netip.Addr{netip.MustParseAddr("::ffff:1.2.3.4")}},
		{ID: "c", EvalURL: "ws://x", Hosting4: []netip.Addr{{}}},
	}
	for _, c := range bad {
		if _, err := f.dir.PutCluster(ctx, c); !errors.Is(err, lore.ErrInvalid) {
			t.Errorf("PutCluster(%+v) = %v, want ErrInvalid", c, err)
		}
	}
	// Replacing a cluster keeps its repls; an unhealthy cluster gets no new repls.
	c, _ := f.dir.Cluster(ctx, "A")
	c.Healthy = false
	c.Hosting4[0] = netip.MustParseAddr("127.0.1.2")
	if _, err := f.dir.PutCluster(ctx, c); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		r, err := f.dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "s" + string(rune('a'+i))})
		if err != nil || r.Cluster != "b" {
			t.Fatalf("create with a unhealthy: %+v %v", r, err)
		}
	}
	b, _ := f.dir.Cluster(ctx, "b")
	b.Healthy = false
	f.dir.PutCluster(ctx, b)
	if _, err := f.dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "z"}); !errors.Is(err, lore.ErrUnavailable) {
		t.Fatalf("no healthy cluster: %v", err)
	}
	// A named cluster is used even when unhealthy (the caller chose it).
	if r, err := f.dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "z", Cluster: "a"}); err != nil || r.Cluster != "a" {
		t.Fatalf("named cluster: %+v %v", r, err)
	}
	// Values returned are copies: mutating them does not change the directory.
	got, _ := f.dir.Cluster(ctx, "a")
	got.Hosting4[0] = netip.MustParseAddr("10.0.0.1")
	if again, _ := f.dir.Cluster(ctx, "a"); again.Hosting4[0] != netip.MustParseAddr("127.0.1.2") {
		t.Fatalf("aliasing: %v", again.Hosting4)
	}
}

func TestDirectoryPolicy(t *testing.T) {
	var seen []lore.ClusterLoad
	dir, err := lore.New(lore.Config{Zone: "repl.test", ClusterPolicy: func(_ context.Context, r lore.Repl, c []lore.ClusterLoad) (string, error) {
		seen = c
		if r.Plan == "pro" {
			return "b", nil
		}
		return "", errors.New("policy says no")
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	ctx := context.Background()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	dir.PutCluster(ctx, lore.Cluster{ID: "b", EvalURL: "ws://b"})
	if r, err := dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "s", Plan: "pro"}); err != nil || r.Cluster != "b" {
		t.Fatalf("%+v %v", r, err)
	}
	if len(seen) != 2 || seen[1].Cluster.ID != "b" {
		t.Fatalf("candidates %+v", seen)
	}
	if _, err := dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "t"}); err == nil || !strings.Contains(err.Error(), "policy says no") {
		t.Fatalf("policy error: %v", err)
	}
	if _, err := dir.Connect(ctx, "x"); !errors.Is(err, lore.ErrUnavailable) {
		t.Fatalf("connect without issuer: %v", err)
	}
}

func TestDirectoryNew(t *testing.T) {
	for _, z := range []string{"", ".", "a..b", "-x.test", "a b"} {
		if _, err := lore.New(lore.Config{Zone: z}); !errors.Is(err, lore.ErrInvalid) {
			t.Errorf("zone %q: %v", z, err)
		}
	}
	if _, err := lore.New(lore.Config{Zone: "x", PublishedKeys: []lore.PublicKey{{KeyID: "k"}}}); !errors.Is(err, lore.ErrInvalid) {
		t.Errorf("bad published key: %v", err)
	}
}

func TestDirectoryDomains(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r, _ := f.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	d, err := f.dir.AddDomain(ctx, "WWW.Example.com.", r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "www.example.com" || d.Repl != r.ID || d.Verified || !strings.HasPrefix(d.Challenge, "switchyard-verify=") {
		t.Fatalf("domain %+v", d)
	}
	// Unverified: never routes.
	if _, err := f.dir.ReplByDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("unverified routes: %v", err)
	}
	for _, tt := range []struct {
		domain, repl string
		want         error
	}{
		{"www.example.com", r.ID, lore.ErrExists},
		{"other.example", "nope", lore.ErrNotFound},
		{"blog.replbot.repl.test", r.ID, lore.ErrInvalid},
		{"repl.test", r.ID, lore.ErrInvalid},
		{"1.2.3.4", r.ID, lore.ErrInvalid},
		{"com", r.ID, lore.ErrInvalid},
		{"ok.example", "", lore.ErrInvalid},
	} {
		if _, err := f.dir.AddDomain(ctx, tt.domain, tt.repl); !errors.Is(err, tt.want) {
			t.Errorf("AddDomain(%q, %q) = %v, want %v", tt.domain, tt.repl, err, tt.want)
		}
	}
	// No record, a wrong record, a failing resolver: not verified.
	if _, err := f.dir.VerifyDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrInvalid) || !strings.Contains(err.Error(), d.Challenge) {
		t.Fatalf("verify without record: %v", err)
	}
	f.txt.set("_switchyard-challenge.www.example.com", "switchyard-verify=wrong")
	if _, err := f.dir.VerifyDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("verify wrong record: %v", err)
	}
	f.txt.fail = errors.New("SERVFAIL")
	if _, err := f.dir.VerifyDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrUnavailable) {
		t.Fatalf("verify resolver failure: %v", err)
	}
	f.txt.fail = nil
	if _, err := f.dir.ReplByDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("routes after failed verification: %v", err)
	}
	f.txt.set("_switchyard-challenge.www.example.com", "unrelated", d.Challenge)
	v, err := f.dir.VerifyDomain(ctx, "WWW.example.com")
	if err != nil || !v.Verified {
		t.Fatalf("verify: %+v %v", v, err)
	}
	if got, err := f.dir.ReplByDomain(ctx, "www.EXAMPLE.com."); err != nil || got.ID != r.ID {
		t.Fatalf("ReplByDomain %+v %v", got, err)
	}
	if got, _ := f.dir.Domain(ctx, "www.example.com"); !got.Verified {
		t.Fatalf("Domain %+v", got)
	}
	// Deleting the repl deletes its domains.
	if err := f.dir.DeleteRepl(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.dir.Domain(ctx, "www.example.com"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("domain outlived repl: %v", err)
	}
	r2, _ := f.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	d2, _ := f.dir.AddDomain(ctx, "www.example.com", r2.ID)
	if d2.Challenge == d.Challenge {
		t.Fatal("challenge reused")
	}
	// The old record does not verify the new registration.
	if _, err := f.dir.VerifyDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("stale record verified: %v", err)
	}
	if err := f.dir.DeleteDomain(ctx, "www.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := f.dir.DeleteDomain(ctx, "www.example.com"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestDirectoryConnect(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	r, _ := f.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "b"})
	info, err := f.dir.Connect(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if info.URL != "ws://127.0.2.1:8443/v1/connect" || info.ExpiresAt.IsZero() {
		t.Fatalf("info %+v", info)
	}
	ks := lore.NewKeySet(f.dir.Keys()...)
	c, err := ks.Verify(ctx, info.Token, "b")
	if err != nil || c.Repl != r.ID || !c.ExpiresAt.Equal(info.ExpiresAt) {
		t.Fatalf("claims %+v %v", c, err)
	}
	if _, err := ks.Verify(ctx, info.Token, "a"); !errors.Is(err, lore.ErrTokenAudience) {
		t.Fatalf("other cluster accepted the token: %v", err)
	}
	if _, err := f.dir.Connect(ctx, "nope"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("connect unknown: %v", err)
	}
}
