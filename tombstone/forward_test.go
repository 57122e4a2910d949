package tombstone_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/tombstone"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// clusterMap is an in-test cluster registry.
type clusterMap struct {
	mu sync.Mutex
	m  map[string]lore.Cluster
}

func (c *clusterMap) Cluster(_ context.Context, id string) (lore.Cluster, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.m[id]
	if !ok {
		return lore.Cluster{}, lore.ErrNotFound
	}
	return cl, nil
}

func (c *clusterMap) put(cl lore.Cluster) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[cl.ID] = cl
}

// domainResolver resolves custom domains for the forwarder.
type domainResolver map[string]lore.Repl

func (d domainResolver) ResolveRepl(_ context.Context, host string) (lore.Repl, error) {
	if r, ok := d[strings.ToLower(host)]; ok {
		return r, nil
	}
	return lore.Repl{}, lore.ErrNotFound
}

// testCluster is one cluster on loopback: a Forwarder wrapping a stand-in for its hosting proxy
// that answers for the repls it "hosts" and 404 for the rest.
type testCluster struct {
	id    string
	store *tombstone.MemStore
	fwd   *tombstone.Forwarder
	srv   *httptest.Server
	local map[string]bool // repl IDs hosted here
	mu    sync.Mutex
	seen  []*http.Request
}

type platform struct {
	clusters *clusterMap
	byID     map[string]*testCluster
	now      func() time.Time
}

func newPlatform(t *testing.T, ids ...string) *platform {
	p := &platform{clusters: &clusterMap{m: map[string]lore.Cluster{}}, byID: map[string]*testCluster{}, now: time.Now}
	for i, id := range ids {
		p.add(t, id, i+1)
	}
	return p
}

// hosted answers like a hosting proxy that hosts the repls in c.local.
func (c *testCluster) hosted(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.seen = append(c.seen, r)
	c.mu.Unlock()
	name, err := lore.ParseHost(r.Host, "repl.test")
	id := name.ID
	if err == nil && id == "" {
		id = name.Slug // tests name repls so that slug == id
	}
	if strings.EqualFold(r.Host, "www.example.com") {
		id = "r1"
	}
	if !c.local[id] {
		http.Error(w, "no repl is served here", http.StatusNotFound)
		return
	}
	if r.Header.Get("Upgrade") != "" {
		wsEcho(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"cluster": c.id, "host": r.Host, "internal": tombstone.Internal(r), "header": r.Header, "body": string(body),
		"path": r.URL.RequestURI(),
	})
}

var wsEcho = func(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	for {
		typ, b, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, b); err != nil {
			return
		}
	}
}

func (p *platform) add(t *testing.T, id string, n int) *testCluster {
	t.Helper()
	store, err := tombstone.NewMemStore(tombstone.MemStoreConfig{Now: func() time.Time { return p.now() }})
	require.NoError(t, err)
	c := &testCluster{id: id, store: store, local: map[string]bool{}}
	c.fwd, err = tombstone.New(tombstone.Config{
		Cluster: id, Zone: "repl.test", Store: store, Clusters: p.clusters, Secret: testSecret,
		Resolver: domainResolver{"www.example.com": {ID: "r1"}},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	c.srv = httptest.NewUnstartedServer(c.fwd.Wrap(http.HandlerFunc(c.hosted)))
	l, err := net.Listen("tcp", net.JoinHostPort("127.0."+itoa(n)+".1", "0"))
	require.NoError(t, err)
	c.srv.Listener = l
	c.srv.Start()
	t.Cleanup(func() {
		c.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, c.fwd.Shutdown(ctx))
	})
	p.clusters.put(lore.Cluster{ID: id, HostingURL: c.srv.URL, Healthy: true})
	p.byID[id] = c
	return c
}

func itoa(n int) string { return string(rune('0' + n)) }

func (c *testCluster) bury(t *testing.T, repl, to string) {
	t.Helper()
	now := time.Now()
	require.NoError(t, c.store.Put(context.Background(), tombstone.Tombstone{
		Repl: repl, Owner: "alice", Slug: repl, Cluster: to, Created: now, Expires: now.Add(time.Hour),
	}))
}

type answer struct {
	status  int
	header  http.Header
	body    string
	cluster string
	seen    struct {
		Internal bool
		Header   http.Header
		Body     string
		Host     string
		Path     string
	}
}

func get(t *testing.T, c *testCluster, method, host, path string, hdr http.Header, body io.Reader) answer {
	t.Helper()
	req, err := http.NewRequest(method, c.srv.URL+path, body)
	require.NoError(t, err)
	req.Host = host
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if resp.StatusCode == 200 {
		var m struct{ Cluster string }
		_ = json.Unmarshal(b, &m)
		a.cluster = m.Cluster
		_ = json.Unmarshal(b, &a.seen)
	}
	return a
}

func TestForwarding(t *testing.T) {
	p := newPlatform(t, "a", "b")
	a, b := p.byID["a"], p.byID["b"]
	a.local["stay"] = true
	b.local["r1"] = true
	a.bury(t, "r1", "b")

	tests := []struct {
		name    string
		host    string
		status  int
		cluster string
	}{
		{"no tombstone: served here", "stay.alice.repl.test", 200, "a"},
		{"no tombstone, unknown: next answers", "nope.alice.repl.test", 404, ""},
		{"tombstone by id", "r1.id.repl.test", 200, "b"},
		{"tombstone by name", "r1.alice.repl.test", 200, "b"},
		{"tombstone by name, any case and port", "R1.Alice.REPL.test:80", 200, "b"},
		{"tombstone by custom domain", "www.example.com", 200, "b"},
		{"host outside the zone", "other.example.org", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := get(t, a, "GET", tt.host, "/x?y=1", nil, nil)
			require.Equal(t, tt.status, got.status, got.body)
			assert.Equal(t, tt.cluster, got.cluster)
			if got.cluster == "b" {
				assert.True(t, got.seen.Internal, "b knows the request came from a cluster")
				assert.Equal(t, tt.host, got.seen.Host, "the Host is preserved")
				assert.Equal(t, "/x?y=1", got.seen.Path)
				assert.Empty(t, got.seen.Header.Get(tombstone.HopHeader), "the hop header stops at the middleware")
				assert.Equal(t, "switchyard; cluster=a", got.seen.Header.Get("CDN-Loop"))
				assert.Equal(t, "127.0.0.1", got.seen.Header.Get("X-Forwarded-For"),
					"a names the client; b's hosting proxy would append a")
			}
			if got.cluster == "a" {
				assert.False(t, got.seen.Internal)
			}
		})
	}

	t.Run("POST body streams through", func(t *testing.T) {
		got := get(t, a, "POST", "r1.id.repl.test", "/up", nil, strings.NewReader(strings.Repeat("x", 1<<20)))
		require.Equal(t, 200, got.status)
		assert.Equal(t, 1<<20, len(got.seen.Body))
	})
	t.Run("client cannot smuggle headers", func(t *testing.T) {
		got := get(t, a, "GET", "r1.id.repl.test", "/", http.Header{
			"Switchyard-Repl": {"other"}, "X-Forwarded-For": {"6.6.6.6"},
		}, nil)
		require.Equal(t, 200, got.status)
		assert.Empty(t, got.seen.Header.Get("Switchyard-Repl"))
		assert.Equal(t, "127.0.0.1", got.seen.Header.Get("X-Forwarded-For"), "the forged address is dropped")
	})
}

func TestLoopProtection(t *testing.T) {
	p := newPlatform(t, "a", "b", "c")
	a, b, c := p.byID["a"], p.byID["b"], p.byID["c"]
	a.local["home"] = true
	sign := func(via, host, method, target string, at time.Time) string {
		return tombstone.SignHop(testSecret, strings.Split(via, ","), at, host, method, target)
	}
	now := time.Now()
	tests := []struct {
		name   string
		hop    []string
		status int
		reason string
	}{
		{"garbage hop header", []string{"v1; via=b; t=1; sig=abc"}, 508, "does not verify"},
		{"wrong secret", []string{tombstone.SignHop([]byte("another-secret-another-secret-xx"), []string{"b"}, now, "home.alice.repl.test", "GET", "/")}, 508, "does not verify"},
		{"signed for another host", []string{sign("b", "other.alice.repl.test", "GET", "/", now)}, 508, "does not verify"},
		{"signed for another path", []string{sign("b", "home.alice.repl.test", "GET", "/admin", now)}, 508, "does not verify"},
		{"stale", []string{sign("b", "home.alice.repl.test", "GET", "/", now.Add(-2*time.Minute))}, 508, "does not verify"},
		{"two hop headers", []string{sign("b", "home.alice.repl.test", "GET", "/", now), sign("c", "home.alice.repl.test", "GET", "/", now)}, 508, "more than one"},
		{"already passed this cluster", []string{sign("b,a", "home.alice.repl.test", "GET", "/", now)}, 508, "already passed cluster a"},
		{"past the hop limit", []string{sign("b,c,d,e,f", "home.alice.repl.test", "GET", "/", now)}, 508, "the limit is 4"},
		{"valid hop from b", []string{sign("b", "home.alice.repl.test", "GET", "/", now)}, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := get(t, a, "GET", "home.alice.repl.test", "/", http.Header{tombstone.HopHeader: tt.hop}, nil)
			require.Equal(t, tt.status, got.status, got.body)
			if tt.status == 508 {
				assert.Contains(t, got.body, tt.reason)
				assert.Contains(t, got.header.Get("Content-Type"), "application/json")
			} else {
				assert.True(t, got.seen.Internal)
			}
		})
	}

	t.Run("stale tombstones pointing at each other", func(t *testing.T) {
		a.bury(t, "ping", "b")
		b.bury(t, "ping", "a")
		got := get(t, a, "GET", "ping.id.repl.test", "/", nil, nil)
		assert.Equal(t, 508, got.status, got.body)
		assert.Contains(t, got.body, "already passed")
	})
	t.Run("chain a to b to c is followed", func(t *testing.T) {
		a.bury(t, "hop2", "b")
		b.bury(t, "hop2", "c")
		c.local["hop2"] = true
		got := get(t, a, "GET", "hop2.id.repl.test", "/", nil, nil)
		require.Equal(t, 200, got.status, got.body)
		assert.Equal(t, "c", got.cluster)
		assert.Equal(t, "switchyard; cluster=a, switchyard; cluster=b", strings.Join(got.seen.Header.Values("CDN-Loop"), ", "))
		assert.Equal(t, "127.0.0.1, 127.0.0.1", got.seen.Header.Get("X-Forwarded-For"),
			"the client, then cluster a's proxy as b saw it (b trusts a's chain)")
	})
	t.Run("a tombstone to an unknown cluster", func(t *testing.T) {
		a.bury(t, "lost", "nowhere")
		got := get(t, a, "GET", "lost.id.repl.test", "/", nil, nil)
		assert.Equal(t, 502, got.status, got.body)
		assert.NotEmpty(t, got.header.Get("Switchyard-Request-Id"))
	})
	t.Run("a cluster that does not answer", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.4.1:0")
		require.NoError(t, err)
		dead := "http://" + l.Addr().String()
		require.NoError(t, l.Close())
		p.clusters.put(lore.Cluster{ID: "d", HostingURL: dead})
		a.bury(t, "gone", "d")
		got := get(t, a, "GET", "gone.id.repl.test", "/", nil, nil)
		assert.Equal(t, 502, got.status, got.body)
		assert.Contains(t, got.body, "did not answer")
	})
	t.Run("a cluster with a bad hosting URL", func(t *testing.T) {
		p.clusters.put(lore.Cluster{ID: "e", HostingURL: "file:///etc/passwd"})
		a.bury(t, "bad", "e")
		got := get(t, a, "GET", "bad.id.repl.test", "/", nil, nil)
		assert.Equal(t, 502, got.status, got.body)
	})
}

func TestForwardedStreamsAndUpgrades(t *testing.T) {
	p := newPlatform(t, "a", "b")
	a, b := p.byID["a"], p.byID["b"]
	a.bury(t, "r1", "b")
	b.local["r1"] = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(a.srv.URL, "http")+"/ws", &websocket.DialOptions{Host: "r1.id.repl.test"})
	require.NoError(t, err)
	if resp.Body != nil {
		resp.Body.Close()
	}
	defer c.CloseNow()
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, []byte("hello b")))
	_, msg, err := c.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, "hello b", string(msg))
	assert.Equal(t, 1, a.fwd.Upgraded())

	// Shutdown waits for the forwarded WebSocket; at its deadline it closes it.
	sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer scancel()
	assert.ErrorIs(t, a.fwd.Shutdown(sctx), context.DeadlineExceeded)
	_, _, err = c.Read(ctx)
	assert.Error(t, err)
	assert.Equal(t, 0, a.fwd.Upgraded())

	// Now draining: new forwards are refused.
	got := get(t, a, "GET", "r1.id.repl.test", "/", nil, nil)
	assert.Equal(t, 503, got.status)
}

func TestForwardedServerSentEvents(t *testing.T) {
	p := newPlatform(t, "a", "b")
	a, b := p.byID["a"], p.byID["b"]
	a.bury(t, "r1", "b")
	release := make(chan struct{})
	b.srv.Config.Handler = b.fwd.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: two\n\n")
	}))
	req, _ := http.NewRequest("GET", a.srv.URL+"/", nil)
	req.Host = "r1.id.repl.test"
	resp, err := a.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "data: one\n", line, "the first event arrives before the stream ends")
	close(release)
	rest, _ := io.ReadAll(br)
	assert.Equal(t, "\ndata: two\n\n", string(rest))
}

func TestNewConfig(t *testing.T) {
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	ok := tombstone.Config{Cluster: "a", Zone: "z", Store: store, Clusters: &clusterMap{}, Secret: testSecret}
	for _, mod := range []func(*tombstone.Config){
		func(c *tombstone.Config) { c.Cluster = "" },
		func(c *tombstone.Config) { c.Zone = "" },
		func(c *tombstone.Config) { c.Store = nil },
		func(c *tombstone.Config) { c.Clusters = nil },
		func(c *tombstone.Config) { c.Secret = []byte("short") },
	} {
		c := ok
		mod(&c)
		_, err := tombstone.New(c)
		assert.ErrorIs(t, err, tombstone.ErrInvalid)
	}
	_, err := tombstone.New(ok)
	assert.NoError(t, err)
}

func TestSecretRotation(t *testing.T) {
	p := newPlatform(t, "a")
	a := p.byID["a"]
	a.local["home"] = true
	old := []byte("the-old-secret-the-old-secret-xx")
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	fwd, err := tombstone.New(tombstone.Config{Cluster: "a", Zone: "repl.test", Store: store, Clusters: p.clusters,
		Secret: testSecret, PreviousSecrets: [][]byte{old}})
	require.NoError(t, err)
	for _, key := range [][]byte{testSecret, old} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/", nil)
		req.Host = "home.alice.repl.test"
		req.Header.Set(tombstone.HopHeader, tombstone.SignHop(key, []string{"b"}, time.Now(), req.Host, "GET", "/"))
		fwd.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !tombstone.Internal(r) {
				w.WriteHeader(http.StatusTeapot)
			}
		})).ServeHTTP(rec, req)
		assert.Equal(t, 200, rec.Code, rec.Body.String())
	}
}

var _ = errors.New
var _ = bytes.NewReader
