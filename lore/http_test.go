package lore_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

const (
	adminKey = "admin-secret"
	readKey  = "read-secret"
)

type server struct {
	fixture
	url    string
	admin  *lore.Client
	reader *lore.Client
}

// newServer serves a fixture's directory on a real loopback listener.
func newServer(t testing.TB) server {
	t.Helper()
	f := newFixture(t)
	h := lore.NewHandler(lore.HandlerConfig{Directory: f.dir, AdminKey: adminKey, ReadKey: readKey, MaxBodyBytes: 1024})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(func() {
		f.dir.Close() // ends watch streams
		srv.Close()
	})
	return server{fixture: f, url: srv.URL,
		admin:  lore.NewClient(srv.URL, adminKey, srv.Client()),
		reader: lore.NewClient(srv.URL+"/", readKey, srv.Client()),
	}
}

func TestHTTPClientRepls(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	r, err := s.admin.CreateRepl(ctx, lore.Repl{Owner: "ReplBot", Slug: "blog", Plan: "pro"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Owner != "replbot" || r.Cluster != "a" || r.Plan != "pro" || r.ID == "" || r.Created.IsZero() {
		t.Fatalf("created %+v", r)
	}
	want, _ := s.dir.Repl(ctx, r.ID)
	if !r.Created.Equal(want.Created) {
		t.Fatalf("created time %v vs %v", r.Created, want.Created)
	}
	for name, get := range map[string]func() (lore.Repl, error){
		"id":     func() (lore.Repl, error) { return s.reader.Repl(ctx, r.ID) },
		"name":   func() (lore.Repl, error) { return s.reader.ReplByName(ctx, "replbot", "BLOG") },
		"host":   func() (lore.Repl, error) { return s.reader.ReplByHost(ctx, "blog.replbot.repl.test:443") },
		"idhost": func() (lore.Repl, error) { return s.reader.ReplByHost(ctx, r.ID+".id.repl.test") },
	} {
		got, err := get()
		if err != nil || got.ID != r.ID || got.Owner != "replbot" || got.Slug != "blog" || got.Cluster != "a" {
			t.Errorf("%s: %+v %v", name, got, err)
		}
	}
	list, err := s.reader.Repls(ctx, lore.ReplQuery{Owner: "replbot"})
	if err != nil || len(list.Repls) != 1 || list.Repls[0].ID != r.ID {
		t.Fatalf("list %+v %v", list, err)
	}
	r2, _ := s.admin.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "wiki"})
	page, err := s.reader.Repls(ctx, lore.ReplQuery{Limit: 1})
	if err != nil || len(page.Repls) != 1 || page.Repls[0].ID != r.ID || page.Next != "replbot/blog" {
		t.Fatalf("page 1 %+v %v", page, err)
	}
	page, err = s.reader.Repls(ctx, lore.ReplQuery{Limit: 1, After: page.Next})
	if err != nil || len(page.Repls) != 1 || page.Repls[0].ID != r2.ID || page.Next != "" {
		t.Fatalf("page 2 %+v %v", page, err)
	}
	if _, err := s.reader.Repls(ctx, lore.ReplQuery{Limit: lore.MaxListLimit + 1}); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("huge limit: %v", err)
	}
	s.admin.DeleteRepl(ctx, r2.ID)
	if _, err := s.admin.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"}); !errors.Is(err, lore.ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	var apiErr *lore.APIError
	if _, err := s.admin.CreateRepl(ctx, lore.Repl{Owner: "www", Slug: "blog"}); !errors.Is(err, lore.ErrInvalid) ||
		!errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("reserved: %v", err)
	}
	if _, err := s.reader.CreateRepl(ctx, lore.Repl{Owner: "x", Slug: "y"}); !errors.As(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Fatalf("read key create: %v", err)
	}
	moved, err := s.admin.MoveRepl(ctx, r.ID, "b")
	if err != nil || moved.Cluster != "b" {
		t.Fatalf("move %+v %v", moved, err)
	}
	if _, err := s.admin.MoveRepl(ctx, r.ID, "nope"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("move to unknown: %v", err)
	}
	info, err := s.admin.Connect(ctx, r.ID)
	if err != nil || info.URL != "ws://127.0.2.1:8443/v1/connect" {
		t.Fatalf("connect %+v %v", info, err)
	}
	if _, err := lore.NewKeySet(s.issuer.PublicKey()).Verify(ctx, info.Token, "b"); err != nil {
		t.Fatalf("token: %v", err)
	}
	if _, err := s.reader.Connect(ctx, r.ID); !errors.As(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Fatalf("read key connect: %v", err)
	}
	if _, err := s.admin.Connect(ctx, "nope"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("connect unknown: %v", err)
	}
	if err := s.admin.DeleteRepl(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.admin.DeleteRepl(ctx, r.ID); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.reader.Repl(ctx, r.ID); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	// Client-side validation keeps odd input out of URLs.
	for _, id := range []string{"../clusters", "a/b", "", "a?b"} {
		if _, err := s.admin.Repl(ctx, id); !errors.Is(err, lore.ErrInvalid) {
			t.Errorf("Repl(%q): %v", id, err)
		}
	}
}

func TestHTTPClientClustersDomains(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	cs, err := s.reader.Clusters(ctx)
	if err != nil || len(cs) != 2 || cs[1].Hosting6[0] != netip.MustParseAddr("::1") {
		t.Fatalf("clusters %+v %v", cs, err)
	}
	c := lore.Cluster{ID: "C", Region: "r3", EvalURL: "wss://eval.c.example/v1/connect",
		Hosting4: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Hosting6: []netip.Addr{netip.MustParseAddr("2001:db8::1")}, Healthy: true}
	got, err := s.admin.PutCluster(ctx, c)
	if err != nil || got.ID != "c" {
		t.Fatalf("put %+v %v", got, err)
	}
	got, err = s.reader.Cluster(ctx, "c")
	if err != nil || got.EvalURL != c.EvalURL || got.Hosting6[0] != c.Hosting6[0] || !got.Healthy {
		t.Fatalf("get %+v %v", got, err)
	}
	if _, err := s.reader.PutCluster(ctx, c); err == nil {
		t.Fatal("read key put a cluster")
	}
	if _, err := s.admin.PutCluster(ctx, lore.Cluster{ID: "d", EvalURL: "nope"}); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("bad cluster: %v", err)
	}
	if _, err := s.reader.Cluster(ctx, "zz"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("unknown cluster: %v", err)
	}

	r, _ := s.admin.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	d, err := s.admin.AddDomain(ctx, "Shop.Example.com", r.ID)
	if err != nil || d.Name != "shop.example.com" || d.Verified || d.Challenge == "" {
		t.Fatalf("add %+v %v", d, err)
	}
	if _, err := s.admin.AddDomain(ctx, "shop.example.com", r.ID); !errors.Is(err, lore.ErrExists) {
		t.Fatalf("duplicate domain: %v", err)
	}
	if _, err := s.reader.ReplByDomain(ctx, "shop.example.com"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("unverified domain routes: %v", err)
	}
	if _, err := s.admin.VerifyDomain(ctx, "shop.example.com"); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("verify without record: %v", err)
	}
	s.txt.set(lore.ChallengeName("shop.example.com"), d.Challenge)
	v, err := s.admin.VerifyDomain(ctx, "shop.example.com")
	if err != nil || !v.Verified {
		t.Fatalf("verify %+v %v", v, err)
	}
	if got, err := s.reader.ReplByDomain(ctx, "SHOP.example.com."); err != nil || got.ID != r.ID {
		t.Fatalf("ReplByDomain %+v %v", got, err)
	}
	if got, err := s.reader.Domain(ctx, "shop.example.com"); err != nil || !got.Verified || got.Repl != r.ID {
		t.Fatalf("Domain %+v %v", got, err)
	}
	if err := s.reader.DeleteDomain(ctx, "shop.example.com"); err == nil {
		t.Fatal("read key deleted a domain")
	}
	if err := s.admin.DeleteDomain(ctx, "shop.example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.reader.ReplByDomain(ctx, "shop.example.com"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("deleted domain routes: %v", err)
	}
	keys, err := lore.NewClient(s.url, "", nil).Keys(ctx)
	if err != nil || len(keys) != 1 || !keys[0].Key.Equal(s.issuer.PublicKey().Key) {
		t.Fatalf("keys %+v %v", keys, err)
	}
	if err := lore.NewClient(s.url, "", nil).Health(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestHTTPStatuses checks the raw answers: status, JSON error body, auth, limits.
func TestHTTPStatuses(t *testing.T) {
	s := newServer(t)
	r, _ := s.dir.CreateRepl(context.Background(), lore.Repl{Owner: "replbot", Slug: "blog"})
	big := `{"owner":"` + strings.Repeat("a", 2000) + `","slug":"x"}`
	tests := []struct {
		name, method, path, key, body string
		status                        int
		errSub                        string
	}{
		{"healthz", "GET", "/healthz", "", "", 200, ""},
		{"keys public", "GET", "/v1/keys", "", "", 200, ""},
		{"no auth", "GET", "/v1/repls", "", "", 401, "missing Authorization"},
		{"basic auth", "GET", "/v1/repls", "Basic abc", "", 401, "Bearer"},
		{"wrong key", "GET", "/v1/repls", "Bearer nope", "", 401, "wrong key"},
		{"prefix of key", "GET", "/v1/repls", "Bearer admin-secre", "", 401, "wrong key"},
		{"read key reads", "GET", "/v1/repls", "Bearer " + readKey, "", 200, ""},
		{"read key writes", "POST", "/v1/repls", "Bearer " + readKey, `{"owner":"a","slug":"b"}`, 403, "admin key"},
		{"read key deletes", "DELETE", "/v1/repls/" + r.ID, "Bearer " + readKey, "", 403, "admin key"},
		{"read key watch", "GET", "/v1/watch?x", "Bearer " + readKey, "", 200, ""},
		{"create", "POST", "/v1/repls", "Bearer " + adminKey, `{"owner":"a","slug":"b"}`, 201, ""},
		{"unknown field", "POST", "/v1/repls", "Bearer " + adminKey, `{"owner":"a","slug":"c","oops":1}`, 400, "unknown field"},
		{"not json", "POST", "/v1/repls", "Bearer " + adminKey, `owner=a`, 400, "request body"},
		{"empty body", "POST", "/v1/repls", "Bearer " + adminKey, ``, 400, "request body"},
		{"trailing data", "POST", "/v1/repls", "Bearer " + adminKey, `{"owner":"a","slug":"d"} {}`, 400, "after the JSON"},
		{"too large", "POST", "/v1/repls", "Bearer " + adminKey, big, 413, "larger than 1024"},
		{"duplicate", "POST", "/v1/repls", "Bearer " + adminKey, `{"owner":"replbot","slug":"blog"}`, 409, "already exists"},
		{"reserved", "POST", "/v1/repls", "Bearer " + adminKey, `{"owner":"_dmarc","slug":"x"}`, 400, "owner"},
		{"no healthy named", "POST", "/v1/repls", "Bearer " + adminKey, `{"owner":"a","slug":"e","cluster":"zz"}`, 404, "cluster"},
		{"get missing", "GET", "/v1/repls/nope", "Bearer " + adminKey, "", 404, "not found"},
		{"get bad id", "GET", "/v1/repls/a_b", "Bearer " + adminKey, "", 400, "character"},
		{"method", "PATCH", "/v1/repls/" + r.ID, "Bearer " + adminKey, "", 405, "not allowed"},
		{"method keys", "POST", "/v1/keys", "", "", 405, "not allowed"},
		{"method connect", "GET", "/v1/repls/" + r.ID + "/connect", "Bearer " + adminKey, "", 405, "not allowed"},
		{"limit zero", "GET", "/v1/repls?limit=0", "Bearer " + readKey, "", 400, "limit"},
		{"limit junk", "GET", "/v1/repls?limit=x", "Bearer " + readKey, "", 400, "limit"},
		{"bad cursor", "GET", "/v1/repls?after=x", "Bearer " + readKey, "", 400, "cursor"},
		{"no endpoint", "GET", "/v2/nothing", "Bearer " + adminKey, "", 404, "no endpoint"},
		{"move bad", "POST", "/v1/repls/" + r.ID + "/move", "Bearer " + adminKey, `{"cluster":""}`, 400, "cluster"},
		{"move", "POST", "/v1/repls/" + r.ID + "/move", "Bearer " + adminKey, `{"cluster":"b"}`, 200, ""},
		{"put cluster id mismatch", "PUT", "/v1/clusters/x", "Bearer " + adminKey, `{"id":"y","eval_url":"ws://y"}`, 400, "differs"},
		{"put cluster bad addr", "PUT", "/v1/clusters/x", "Bearer " + adminKey, `{"eval_url":"ws://y","hosting_v4":["nope"]}`, 400, "request body"},
		{"put cluster", "PUT", "/v1/clusters/x", "Bearer " + adminKey, `{"eval_url":"ws://y","hosting_v4":["192.0.2.7"]}`, 200, ""},
		{"domain in zone", "POST", "/v1/domains", "Bearer " + adminKey, `{"domain":"x.y.repl.test","repl":"` + r.ID + `"}`, 400, "platform zone"},
		{"domain", "POST", "/v1/domains", "Bearer " + adminKey, `{"domain":"example.org","repl":"` + r.ID + `"}`, 201, ""},
		{"domain get", "GET", "/v1/domains/example.org", "Bearer " + readKey, "", 200, ""},
		{"domain verify fails", "POST", "/v1/domains/example.org/verify", "Bearer " + adminKey, "", 400, "_switchyard-challenge.example.org"},
		{"domain repl unverified", "GET", "/v1/domains/example.org/repl", "Bearer " + readKey, "", 404, "verified"},
		{"domain delete", "DELETE", "/v1/domains/example.org", "Bearer " + adminKey, "", 204, ""},
		{"delete", "DELETE", "/v1/repls/" + r.ID, "Bearer " + adminKey, "", 204, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, tt.method, s.url+tt.path, strings.NewReader(tt.body))
			if tt.key != "" {
				req.Header.Set("Authorization", tt.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, resp.StatusCode, b, tt.status)
			}
			if tt.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tt.status == 405 && resp.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if tt.path == "/v1/watch?x" {
				return // a stream; the status is what we check here
			}
			if tt.status >= 400 {
				var eb struct{ Error string }
				if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || !strings.Contains(eb.Error, tt.errSub) {
					t.Fatalf("error body %+v %v; want it to contain %q", eb, err, tt.errSub)
				}
				if resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("content type %q", resp.Header.Get("Content-Type"))
				}
			}
		})
	}
}

func TestHTTPNoAdminKey(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(lore.NewHandler(lore.HandlerConfig{Directory: f.dir}))
	defer srv.Close()
	_, err := lore.NewClient(srv.URL, "", nil).CreateRepl(context.Background(), lore.Repl{Owner: "a", Slug: "b"})
	var apiErr *lore.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("no admin key configured: %v", err)
	}
	_, err = lore.NewClient(srv.URL, "anything", nil).Clusters(context.Background())
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("no admin key configured: %v", err)
	}
}

func TestRemoteKeySet(t *testing.T) {
	s := newServer(t)
	var fetches atomic.Int32
	counting := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fetches.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	var clock atomic.Int64 // seconds past start
	start := time.Now()
	now := func() time.Time { return start.Add(time.Duration(clock.Load()) * time.Second) }
	ks := lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: s.url + "/v1/keys", HTTPClient: counting,
		MinRefresh: 10 * time.Second, MaxAge: time.Minute, Now: now})
	ctx := context.Background()
	r, _ := s.dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "s"})
	info, err := s.dir.Connect(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		c, err := ks.Verify(ctx, info.Token, r.Cluster)
		if err != nil || c.Repl != r.ID {
			t.Fatalf("verify %+v %v", c, err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for 5 verifies, want 1", n)
	}
	if _, err := ks.Verify(ctx, info.Token, "b"); !errors.Is(err, lore.ErrTokenAudience) {
		t.Fatalf("audience: %v", err)
	}
	// Unknown kids refetch at most once per MinRefresh.
	stranger := newIssuer(t, newKey(t), "stranger", nil)
	tok, _, _ := stranger.Issue(r.Cluster, r.ID)
	unknown := func(wantFetches int32) {
		t.Helper()
		for i := 0; i < 5; i++ {
			if _, err := ks.Verify(ctx, tok, r.Cluster); !errors.Is(err, lore.ErrTokenUnknownKey) {
				t.Fatalf("unknown kid: %v", err)
			}
		}
		if n := fetches.Load(); n != wantFetches {
			t.Fatalf("%d fetches, want %d", n, wantFetches)
		}
	}
	unknown(1) // fetched just now: no refetch
	clock.Store(11)
	unknown(2) // one refetch for the five
	clock.Store(15)
	unknown(2)
	// Keys older than MaxAge are refetched even for a known kid.
	clock.Store(80)
	if _, err := ks.Verify(ctx, info.Token, r.Cluster); err != nil {
		t.Fatal(err)
	}
	if n := fetches.Load(); n != 3 {
		t.Fatalf("%d fetches after MaxAge, want 3", n)
	}
	// A new key published by lore is found by refetching on its kid.
	fresh := lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: s.url + "/v1/keys"})
	if _, err := fresh.Verify(ctx, info.Token, r.Cluster); err != nil {
		t.Fatal(err)
	}
	// Failures: lore unreachable, bad URL, malformed token (no fetch needed).
	down := lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: "http://127.0.0.1:1/v1/keys"})
	if _, err := down.Verify(ctx, info.Token, r.Cluster); !errors.Is(err, lore.ErrUnavailable) {
		t.Fatalf("lore down: %v", err)
	}
	if _, err := down.Verify(ctx, info.Token, r.Cluster); !errors.Is(err, lore.ErrUnavailable) || !strings.Contains(err.Error(), "retrying") {
		t.Fatalf("lore down, rate limited: %v", err)
	}
	if _, err := lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: "::"}).Verify(ctx, info.Token, "a"); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("bad url: %v", err)
	}
	if _, err := down.Verify(ctx, "x.y", "a"); !errors.Is(err, lore.ErrTokenMalformed) {
		t.Fatalf("malformed: %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestClientOddServers: answers that are not lore's JSON still become clear errors.
func TestClientOddServers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/repls/html":
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>bad gateway</html>")
		case "/v1/repls/gone":
			w.WriteHeader(http.StatusNotFound)
		default:
			io.WriteString(w, "{not json")
		}
	}))
	defer srv.Close()
	c := lore.NewClient(srv.URL, "k", nil)
	ctx := context.Background()
	var apiErr *lore.APIError
	if _, err := c.Repl(ctx, "html"); !errors.As(err, &apiErr) || apiErr.StatusCode != 502 || !strings.Contains(err.Error(), "502") {
		t.Fatalf("html 502: %v", err)
	}
	if _, err := c.Repl(ctx, "gone"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("bare 404: %v", err)
	}
	if _, err := c.Repl(ctx, "junk"); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Fatalf("junk: %v", err)
	}
	srv.Close()
	if _, err := c.Repl(ctx, "x"); err == nil {
		t.Fatal("no error from a closed server")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := lore.NewClient("http://127.0.0.1:1", "", nil).Clusters(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestHTTPHead(t *testing.T) {
	s := newServer(t)
	req, _ := http.NewRequest(http.MethodHead, s.url+"/v1/clusters", nil)
	req.Header.Set("Authorization", "Bearer "+readKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("HEAD = %d", resp.StatusCode)
	}
}

// TestKeyRotation: lore publishes the previous key beside the issuer's during a rotation, so
// proxies verifying through /v1/keys accept tokens from both until the old key is dropped.
func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	oldIss := newIssuer(t, newKey(t), "2026-01", nil)
	newIss := newIssuer(t, newKey(t), "2026-02", nil)
	oldTok, _, _ := oldIss.Issue("a", "r1")
	dir, err := lore.New(lore.Config{Zone: "repl.test", Issuer: newIss, PublishedKeys: []lore.PublicKey{oldIss.PublicKey()}})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	srv := httptest.NewServer(lore.NewHandler(lore.HandlerConfig{Directory: dir, AdminKey: adminKey}))
	defer srv.Close()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	r, _ := dir.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "o", Slug: "s"})
	info, err := dir.Connect(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := lore.NewClient(srv.URL, "", nil).Keys(ctx)
	if err != nil || len(keys) != 2 || keys[0].KeyID != "2026-02" || keys[1].KeyID != "2026-01" {
		t.Fatalf("published keys %+v %v", keys, err)
	}
	// Concurrent first verifications share one fetch.
	var fetches atomic.Int32
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fetches.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	ks := lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: srv.URL + "/v1/keys", HTTPClient: hc})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, tok := range []string{oldTok, info.Token} {
				if _, err := ks.Verify(ctx, tok, "a"); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for 40 concurrent verifications, want 1", n)
	}
}
