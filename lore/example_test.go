package lore_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"

	"github.com/switchyard-dev/switchyard/lore"
)

// A directory with two clusters: create a repl, look it up by its hostname, and get a session
// URL and token that the cluster's sessions proxy verifies.
func Example() {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	issuer, _ := lore.NewIssuer(lore.IssuerConfig{Key: key, KeyID: "2026-01"})
	dir, err := lore.New(lore.Config{Zone: "repl.test", Issuer: issuer})
	if err != nil {
		panic(err)
	}
	defer dir.Close()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.1.1:8443/v1/connect",
		Hosting4: []netip.Addr{netip.MustParseAddr("127.0.1.1")}, Healthy: true})
	dir.PutCluster(ctx, lore.Cluster{ID: "b", EvalURL: "ws://127.0.2.1:8443/v1/connect",
		Hosting4: []netip.Addr{netip.MustParseAddr("127.0.2.1")}, Healthy: false})

	r, err := dir.CreateRepl(ctx, lore.Repl{Owner: "ReplBot", Slug: "Blog"})
	if err != nil {
		panic(err)
	}
	fmt.Println(lore.Hostname(r, dir.Zone()), "lives in cluster", r.Cluster)

	found, _ := dir.ReplByHost(ctx, "BLOG.replbot.repl.test:443")
	fmt.Println("found by host:", found.ID == r.ID)

	info, _ := dir.Connect(ctx, r.ID)
	fmt.Println("connect to", info.URL)

	// The sessions proxy of cluster a verifies with the published keys.
	claims, err := lore.NewKeySet(dir.Keys()...).Verify(ctx, info.Token, "a")
	fmt.Println("token for", claims.Cluster, "valid:", err == nil, "repl matches:", claims.Repl == r.ID)
	_, err = lore.NewKeySet(dir.Keys()...).Verify(ctx, info.Token, "b")
	fmt.Println(errors.Is(err, lore.ErrTokenAudience))
	// Output:
	// blog.replbot.repl.test lives in cluster a
	// found by host: true
	// connect to ws://127.0.1.1:8443/v1/connect
	// token for a valid: true repl matches: true
	// true
}

func ExampleParseHost() {
	for _, host := range []string{
		"blog.replbot.repl.test",
		"Blog.ReplBot.Repl.Test.:8080",
		"k3zq7m2xa4bcdefg.id.repl.test",
		"www.example.com",
		"blog.www.repl.test",
	} {
		h, err := lore.ParseHost(host, "repl.test")
		fmt.Printf("%+v %v\n", h, err)
	}
	// Output:
	// {Owner:replbot Slug:blog ID:} <nil>
	// {Owner:replbot Slug:blog ID:} <nil>
	// {Owner: Slug: ID:k3zq7m2xa4bcdefg} <nil>
	// {Owner: Slug: ID:} lore: invalid: host "www.example.com" is not under zone "repl.test"
	// {Owner: Slug: ID:} lore: invalid: owner "www" is a reserved label
}

// Serving the API and using it through the Client, as a DNS server in another region would.
func ExampleNewHandler() {
	ctx := context.Background()
	dir, _ := lore.New(lore.Config{Zone: "repl.test"})
	defer dir.Close()
	srv := httptest.NewServer(lore.NewHandler(lore.HandlerConfig{Directory: dir, AdminKey: "s3cret", ReadKey: "r34d"}))
	defer srv.Close()

	admin := lore.NewClient(srv.URL, "s3cret", nil)
	admin.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.1.1:8443/v1/connect", Healthy: true})
	r, _ := admin.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})

	reader := lore.NewClient(srv.URL, "r34d", nil)
	got, _ := reader.ReplByName(ctx, "replbot", "blog")
	fmt.Println(got.ID == r.ID, got.Cluster)

	_, err := reader.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "wiki"})
	fmt.Println(err)
	_, err = admin.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	fmt.Println(errors.Is(err, lore.ErrExists), err)
	// Output:
	// true a
	// lore: the read key may not call this endpoint; it needs the admin key
	// true lore: already exists: repl replbot/blog
}

// A cache kept current by Watch; a closed channel with a live context means "re-read".
func ExampleDirectory_Watch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, _ := lore.New(lore.Config{Zone: "repl.test"})
	defer dir.Close()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	dir.PutCluster(ctx, lore.Cluster{ID: "b", EvalURL: "ws://b", Healthy: true})

	events, _ := dir.Watch(ctx)
	r, _ := dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	dir.MoveRepl(ctx, r.ID, "b")
	dir.DeleteRepl(ctx, r.ID)
	for i := 0; i < 3; i++ {
		ev, ok := <-events
		if !ok {
			fmt.Println("fell behind: re-read and watch again")
			return
		}
		fmt.Println(ev.Kind, ev.Repl.Slug, ev.FromCluster, ev.Repl.Cluster)
	}
	// Output:
	// repl_created blog  a
	// repl_moved blog a b
	// repl_deleted blog  b
}

// Custom domains route only once the owner proved control with a TXT record.
func ExampleDirectory_AddDomain() {
	ctx := context.Background()
	txt := &fakeTXT{}
	dir, _ := lore.New(lore.Config{Zone: "repl.test", Resolver: txt})
	defer dir.Close()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	r, _ := dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})

	d, _ := dir.AddDomain(ctx, "www.example.com", r.ID)
	_, err := dir.ReplByDomain(ctx, "www.example.com")
	fmt.Println("before:", errors.Is(err, lore.ErrNotFound))

	// The owner publishes the challenge (here: in the fake resolver).
	txt.set(lore.ChallengeName(d.Name), d.Challenge)
	d, _ = dir.VerifyDomain(ctx, "www.example.com")
	got, _ := dir.ReplByDomain(ctx, "www.example.com")
	fmt.Println("after:", d.Verified, got.ID == r.ID)
	// Output:
	// before: true
	// after: true true
}

// A sessions proxy verifying connect tokens with keys fetched from lore's /v1/keys. Each
// rejection has its own error.
func ExampleRemoteKeySet() {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	issuer, _ := lore.NewIssuer(lore.IssuerConfig{Key: key, KeyID: "2026-01"})
	dir, _ := lore.New(lore.Config{Zone: "repl.test", Issuer: issuer})
	defer dir.Close()
	srv := httptest.NewServer(lore.NewHandler(lore.HandlerConfig{Directory: dir}))
	defer srv.Close()

	keys := lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: srv.URL + "/v1/keys"})
	token, _, _ := issuer.Issue("a", "k3zq7m2xa4bcdefg")

	claims, err := keys.Verify(ctx, token, "a")
	fmt.Println(claims.Repl, err)
	_, err = keys.Verify(ctx, token, "b")
	fmt.Println(errors.Is(err, lore.ErrTokenAudience))
	_, err = keys.Verify(ctx, token[:len(token)-4]+"AAAA", "a")
	fmt.Println(errors.Is(err, lore.ErrTokenSignature))
	_, err = keys.Verify(ctx, "not-a-token", "a")
	fmt.Println(errors.Is(err, lore.ErrTokenMalformed))
	// Output:
	// k3zq7m2xa4bcdefg <nil>
	// true
	// true
	// true
}
