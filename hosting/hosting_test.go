package hosting

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

const testCredential = "s3cret"

// testDirectory is an in-test lore directory.
type testDirectory struct {
	mu      sync.Mutex
	repls   map[string]lore.Repl
	domains map[string]string
	err     error
}

func (d *testDirectory) Repl(_ context.Context, id string) (lore.Repl, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return lore.Repl{}, d.err
	}
	r, ok := d.repls[id]
	if !ok {
		return lore.Repl{}, lore.ErrNotFound
	}
	return r, nil
}

func (d *testDirectory) ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return lore.Repl{}, d.err
	}
	for _, r := range d.repls {
		if r.Owner == owner && r.Slug == slug {
			return r, nil
		}
	}
	return lore.Repl{}, lore.ErrNotFound
}

func (d *testDirectory) ReplByDomain(ctx context.Context, domain string) (lore.Repl, error) {
	d.mu.Lock()
	id, ok := d.domains[domain]
	d.mu.Unlock()
	if !ok {
		return lore.Repl{}, lore.ErrNotFound
	}
	return d.Repl(ctx, id)
}

// testPlacer places every repl on the first VM not avoided.
type testPlacer struct {
	mu    sync.Mutex
	vms   []placement.VM
	err   error
	calls []placement.Request
}

func (p *testPlacer) Place(_ context.Context, req placement.Request) (placement.Assignment, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, req)
	if p.err != nil {
		return placement.Assignment{}, p.err
	}
next:
	for _, vm := range p.vms {
		for _, a := range req.Avoid {
			if a == vm.ID {
				continue next
			}
		}
		return placement.Assignment{Repl: req.Repl, VM: vm.ID, Addr: vm.Addr}, nil
	}
	return placement.Assignment{}, placement.ErrNoCapacity
}

// conmanStub is a real HTTP server speaking conman's hosting contract: it checks the
// credential, and hands requests for a repl to app (which plays the repl's web port).
func conmanStub(t *testing.T, app http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(conman.HeaderCredential) != testCredential {
			w.Header().Set(conman.HeaderError, "bad credential")
			revproxy.WriteError(w, r, http.StatusUnauthorized, "bad credential", "")
			return
		}
		if r.Header.Get(conman.HeaderRepl) == "" {
			revproxy.WriteError(w, r, http.StatusBadRequest, "no repl", "")
			return
		}
		_ = http.NewResponseController(w).EnableFullDuplex()
		r.Header.Set("X-Test-Repl", r.Header.Get(conman.HeaderRepl))
		revproxy.StripSwitchyardHeaders(r.Header)
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// echoApp answers with the request it saw, as JSON.
var echoApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"host": r.Host, "path": r.URL.RequestURI(), "method": r.Method, "header": r.Header, "body": string(body),
	})
})

type testFixture struct {
	dir    *testDirectory
	placer *testPlacer
	h      *Proxy
	srv    *httptest.Server
	fast   *Server // set under TestFastPath
	// fastClient is the client of fast.
	fastClient *http.Client
	logs       *syncBuffer
	reg        *prometheus.Registry
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newTestFixture(t *testing.T, app http.Handler, mod func(*Config)) *testFixture {
	t.Helper()
	conman := conmanStub(t, app)
	f := &testFixture{
		dir: &testDirectory{
			repls: map[string]lore.Repl{
				"r1": {ID: "r1", Owner: "alice", Slug: "blog", Cluster: "a"},
				"r2": {ID: "r2", Owner: "bob", Slug: "shop", Cluster: "b"},
			},
			domains: map[string]string{"www.example.com": "r1"},
		},
		placer: &testPlacer{vms: []placement.VM{{ID: "vm1", Addr: conman.URL}}},
		logs:   &syncBuffer{},
		reg:    prometheus.NewRegistry(),
	}
	cfg := Config{
		Zone: "repl.test", Cluster: "a", Directory: f.dir, Placer: f.placer, Credential: testCredential,
		Logger:     slog.New(slog.NewTextHandler(f.logs, nil)),
		Registerer: f.reg,
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	require.NoError(t, err)
	f.h = h
	if onFastPath(t) {
		// The same test through Server: its fast path, and net/http for what it hands off.
		fs, err := NewServer(ServerConfig{Proxy: h, EventLoops: fastLoops(t)})
		require.NoError(t, err)
		f.fast = fs
		tr := &http.Transport{}
		f.fastClient = &http.Client{Transport: tr}
		t.Cleanup(tr.CloseIdleConnections)
		f.srv = httptest.NewUnstartedServer(h)
		l := f.srv.Listener
		f.srv.URL = "http://" + l.Addr().String()
		serveFast(t, fs, l, h.Shutdown)
		return f
	}
	f.srv = httptest.NewServer(h)
	t.Cleanup(func() {
		f.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, h.Shutdown(ctx))
	})
	return f
}

// client returns an HTTP client of the fixture's server.
func (f *testFixture) client() *http.Client {
	if f.fast == nil {
		return f.srv.Client()
	}
	return f.fastClient
}

// onFastPath reports whether t runs under TestFastPath: then the fixture serves Proxy with a
// Server instead of a plain http.Server.
func onFastPath(t *testing.T) bool {
	return strings.HasPrefix(t.Name(), "TestFastPath/") || strings.HasPrefix(t.Name(), "TestFastPathGoroutines/")
}

// fastLoops is ServerConfig.EventLoops for the test: TestFastPathGoroutines runs the suite with
// none (every request on a goroutine), TestFastPath with the default.
func fastLoops(t *testing.T) int {
	if strings.HasPrefix(t.Name(), "TestFastPathGoroutines/") {
		return -1
	}
	return 0
}

func (f *testFixture) do(t *testing.T, method, host, path string, body io.Reader, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, body)
	require.NoError(t, err)
	req.Host = host
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := f.client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func TestHostingRouting(t *testing.T) {
	f := newTestFixture(t, echoApp, nil)
	tests := []struct {
		name     string
		host     string
		status   int
		repl     string
		errorHas string
	}{
		{"name", "blog.alice.repl.test", 200, "r1", ""},
		{"name any case with port", "BLOG.Alice.Repl.Test:8080", 200, "r1", ""},
		{"name trailing dot", "blog.alice.repl.test.", 200, "r1", ""},
		{"id", "r1.id.repl.test", 200, "r1", ""},
		{"custom domain", "www.example.com", 200, "r1", ""},
		{"custom domain with port", "WWW.example.com:443", 200, "r1", ""},
		{"unknown name", "nope.alice.repl.test", 404, "", "no repl is served at nope.alice.repl.test"},
		{"unknown id", "zz.id.repl.test", 404, "", "no repl is served"},
		{"malformed in zone", "a.b.c.repl.test", 404, "", "no repl is served"},
		{"zone apex", "repl.test", 404, "", "no repl is served"},
		{"unverified or unknown domain", "evil.example.org", 404, "", "no repl is served"},
		{"ip literal", "127.0.0.1", 404, "", "no repl is served"},
		{"repl in another cluster", "shop.bob.repl.test", 404, "", "in this cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(t, "GET", tt.host, "/p?q=1", nil, nil)
			require.Equal(t, tt.status, resp.StatusCode, string(body))
			assert.NotEmpty(t, resp.Header.Get(HeaderRequestID))
			if tt.status == 200 {
				var got struct {
					Host, Path string
					Header     http.Header
				}
				require.NoError(t, json.Unmarshal(body, &got))
				assert.Equal(t, tt.repl, got.Header.Get("X-Test-Repl"))
				assert.Equal(t, tt.host, got.Host)
				assert.Equal(t, "/p?q=1", got.Path)
				return
			}
			var e struct {
				Error     string `json:"error"`
				RequestID string `json:"request_id"`
			}
			require.NoError(t, json.Unmarshal(body, &e), string(body))
			assert.Contains(t, e.Error, tt.errorHas)
			assert.Equal(t, resp.Header.Get(HeaderRequestID), e.RequestID)
		})
	}
	// A browser gets a page that says so.
	resp, body := f.do(t, "GET", "nope.alice.repl.test", "/", nil, http.Header{"Accept": {"text/html,*/*"}})
	assert.Equal(t, 404, resp.StatusCode)
	assert.Contains(t, resp.Header.Get("Content-Type"), "text/html")
	assert.Contains(t, string(body), "no repl is served at nope.alice.repl.test")
}

func TestHostingHeaders(t *testing.T) {
	tests := []struct {
		name      string
		trusted   []netip.Prefix
		wantXFF   string
		wantXFH   string
		wantProto string
		wantFwd   string
	}{
		{"untrusted peer: chain starts here", nil, "127.0.0.1", "blog.alice.repl.test", "http",
			"for=127.0.0.1;host=blog.alice.repl.test;proto=http"},
		{"trusted peer: chain appended", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, "203.0.113.7, 127.0.0.1",
			"orig.example", "https", "for=203.0.113.7;proto=https, for=127.0.0.1;host=blog.alice.repl.test;proto=http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFixture(t, echoApp, func(c *Config) { c.TrustedProxies = tt.trusted })
			resp, body := f.do(t, "POST", "blog.alice.repl.test", "/x", strings.NewReader("hello"), http.Header{
				"X-Forwarded-For":       {"203.0.113.7"},
				"X-Forwarded-Host":      {"orig.example"},
				"X-Forwarded-Proto":     {"https"},
				"Forwarded":             {"for=203.0.113.7;proto=https"},
				"Switchyard-Repl":       {"r2"},
				"Switchyard-Credential": {"forged"},
				"Switchyard-Anything":   {"x"},
				"Authorization":         {"Bearer app-token"},
			})
			require.Equal(t, 200, resp.StatusCode, string(body))
			var got struct {
				Header http.Header
				Body   string
				Method string
			}
			require.NoError(t, json.Unmarshal(body, &got))
			assert.Equal(t, "r1", got.Header.Get("X-Test-Repl"), "a client cannot choose the repl")
			assert.Empty(t, got.Header.Get("Switchyard-Anything"))
			assert.Equal(t, "Bearer app-token", got.Header.Get("Authorization"), "the app's own auth header passes")
			assert.Equal(t, tt.wantXFF, got.Header.Get("X-Forwarded-For"))
			assert.Equal(t, tt.wantXFH, got.Header.Get("X-Forwarded-Host"))
			assert.Equal(t, tt.wantProto, got.Header.Get("X-Forwarded-Proto"))
			assert.Equal(t, tt.wantFwd, got.Header.Get("Forwarded"))
			assert.Equal(t, "hello", got.Body)
			assert.Equal(t, "POST", got.Method)
		})
	}
}

func TestHostingFailures(t *testing.T) {
	t.Run("directory down", func(t *testing.T) {
		f := newTestFixture(t, echoApp, nil)
		f.dir.err = errors.New("lore unreachable")
		resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
		assert.Equal(t, 503, resp.StatusCode, string(body))
		assert.Contains(t, string(body), "directory is unavailable")
		assert.Equal(t, 1.0, testMetricValue(f.h.metrics.requests.WithLabelValues(outcomeDirectory)))
	})
	t.Run("placement down", func(t *testing.T) {
		f := newTestFixture(t, echoApp, nil)
		f.placer.err = errors.New("connection refused")
		resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
		assert.Equal(t, 503, resp.StatusCode, string(body))
		assert.Contains(t, string(body), "placement is unavailable")
		assert.Equal(t, 1.0, testMetricValue(f.h.metrics.requests.WithLabelValues(outcomePlacement)))
	})
	t.Run("no capacity", func(t *testing.T) {
		f := newTestFixture(t, echoApp, nil)
		f.placer.err = fmt.Errorf("pool full: %w", placement.ErrNoCapacity)
		resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
		assert.Equal(t, 503, resp.StatusCode)
		assert.Contains(t, string(body), "no VM can run this repl")
	})
	t.Run("repl cannot start", func(t *testing.T) {
		failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(conman.HeaderError, "start: exec format error")
			revproxy.WriteError(w, r, http.StatusBadGateway, "repl could not start", "")
		})
		f := newTestFixture(t, failing, nil)
		resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
		assert.Equal(t, 502, resp.StatusCode, string(body))
		id := resp.Header.Get(HeaderRequestID)
		require.NotEmpty(t, id)
		assert.Contains(t, string(body), id)
		assert.Empty(t, resp.Header.Get(conman.HeaderError), "conman's internals stay inside")
		logs := f.logs.String()
		assert.Contains(t, logs, "request_id="+id)
		assert.Contains(t, logs, "exec format error", "the operator finds the reason by request id")
		assert.Equal(t, 1.0, testMetricValue(f.h.metrics.requests.WithLabelValues(outcomeBackend)))
	})
	t.Run("app's own 502 passes through", func(t *testing.T) {
		app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "the app's upstream is down")
		})
		f := newTestFixture(t, app, nil)
		resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
		assert.Equal(t, 502, resp.StatusCode)
		assert.Equal(t, "the app's upstream is down", string(body))
		assert.Equal(t, 1.0, testMetricValue(f.h.metrics.requests.WithLabelValues(outcomeOK)))
	})
	t.Run("conman unreachable everywhere", func(t *testing.T) {
		f := newTestFixture(t, echoApp, nil)
		f.placer.vms = []placement.VM{{ID: "dead1", Addr: deadAddr(t)}, {ID: "dead2", Addr: deadAddr(t)}}
		resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
		assert.Equal(t, 502, resp.StatusCode, string(body))
		assert.Contains(t, f.logs.String(), "request_id="+resp.Header.Get(HeaderRequestID))
		assert.Len(t, f.placer.calls, 2)
	})
	t.Run("no host", func(t *testing.T) {
		f := newTestFixture(t, echoApp, nil)
		conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		_, err = io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		defer resp.Body.Close()
		assert.Equal(t, 400, resp.StatusCode)
	})
}

// deadAddr returns the URL of a loopback port nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "http://" + addr
}

func TestHostingRetriesOnAnotherVM(t *testing.T) {
	for _, name := range []string{"dial error", "draining"} {
		t.Run(name, func(t *testing.T) {
			f := newTestFixture(t, echoApp, nil)
			first := deadAddr(t)
			if name == "draining" {
				draining := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					w.Header().Set(conman.HeaderError, "draining")
					revproxy.WriteError(w, r, http.StatusServiceUnavailable, "draining", "")
				}))
				t.Cleanup(draining.Close)
				first = draining.URL
			}
			good := f.placer.vms[0]
			f.placer.vms = []placement.VM{{ID: "bad", Addr: first}, good}
			resp, body := f.do(t, "PUT", "blog.alice.repl.test", "/up", strings.NewReader("payload"), nil)
			require.Equal(t, 200, resp.StatusCode, string(body))
			assert.Contains(t, string(body), `"body":"payload"`, "the body is replayed on the second VM")
			require.Len(t, f.placer.calls, 2)
			assert.Equal(t, []string{"bad"}, f.placer.calls[1].Avoid)
			assert.Equal(t, 1.0, testMetricValue(f.h.metrics.retries))
		})
	}
	t.Run("large body is not retried", func(t *testing.T) {
		f := newTestFixture(t, echoApp, func(c *Config) { c.MaxReplayBody = 4 })
		f.placer.vms = []placement.VM{{ID: "bad", Addr: deadAddr(t)}, f.placer.vms[0]}
		resp, _ := f.do(t, "PUT", "blog.alice.repl.test", "/up", strings.NewReader("payload"), nil)
		assert.Equal(t, 502, resp.StatusCode)
		assert.Len(t, f.placer.calls, 1)
	})
}

func TestHostingStreamsAndTrailers(t *testing.T) {
	release := make(chan struct{})
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: one\n\n")
			w.(http.Flusher).Flush()
			<-release
			_, _ = io.WriteString(w, "data: two\n\n")
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			_, _ = io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc")
		case "/upload":
			// Echo the request body as it arrives.
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			buf := make([]byte, 5)
			for {
				n, err := r.Body.Read(buf)
				if n > 0 {
					_, _ = w.Write(buf[:n])
					w.(http.Flusher).Flush()
				}
				if err != nil {
					return
				}
			}
		}
	})
	f := newTestFixture(t, app, nil)

	t.Run("server-sent events arrive before the response ends", func(t *testing.T) {
		req, _ := http.NewRequest("GET", f.srv.URL+"/events", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := f.client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "data: one\n", line)
		close(release)
		rest, err := io.ReadAll(br)
		require.NoError(t, err)
		assert.Equal(t, "\ndata: two\n\n", string(rest))
	})
	t.Run("trailers", func(t *testing.T) {
		req, _ := http.NewRequest("GET", f.srv.URL+"/trailers", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := f.client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		assert.Equal(t, "body", string(b))
		assert.Equal(t, "abc", resp.Trailer.Get("X-Checksum"))
	})
	t.Run("request body streams both ways", func(t *testing.T) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", f.srv.URL+"/upload", pr)
		req.Host = "blog.alice.repl.test"
		done := make(chan *http.Response, 1)
		go func() {
			resp, err := f.client().Do(req)
			if err != nil {
				_ = pw.CloseWithError(err)
				close(done)
				return
			}
			done <- resp
		}()
		_, err := io.WriteString(pw, "hello")
		require.NoError(t, err)
		resp := <-done
		require.NotNil(t, resp)
		defer resp.Body.Close()
		buf := make([]byte, 5)
		_, err = io.ReadFull(resp.Body, buf)
		require.NoError(t, err)
		assert.Equal(t, "hello", string(buf), "the first chunk came back while the upload is still open")
		require.NoError(t, pw.Close())
		rest, _ := io.ReadAll(resp.Body)
		assert.Empty(t, rest)
	})
}

// wsEcho is an app that accepts a WebSocket and echoes messages.
var wsEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
})

func dialHostingWS(t *testing.T, ctx context.Context, f *testFixture) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.srv.URL, "http")+"/ws", &websocket.DialOptions{
		Host: "blog.alice.repl.test",
	})
	require.NoError(t, err)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	return c
}

func TestHostingWebSocketAndDrain(t *testing.T) {
	f := newTestFixture(t, wsEcho, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := dialHostingWS(t, ctx, f)
	defer c.CloseNow()
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, []byte("ping")))
	_, b, err := c.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(b))
	assert.Equal(t, 1, f.h.Upgraded())
	assert.Equal(t, 1.0, testMetricValue(f.h.metrics.upgrades))

	// Shutdown waits for the upgraded connection...
	shut := make(chan error, 1)
	go func() { shut <- f.h.Shutdown(ctx) }()
	require.Eventually(t, func() bool { return f.h.drain.Closing() }, 5*time.Second, time.Millisecond)
	// ...which keeps working meanwhile, while new requests are refused.
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, []byte("still here")))
	_, b, err = c.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, "still here", string(b))
	resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
	assert.Equal(t, 503, resp.StatusCode)
	assert.Contains(t, string(body), "shutting down")
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a live upgraded connection", err)
	default:
	}
	require.NoError(t, c.Close(websocket.StatusNormalClosure, "bye"))
	require.NoError(t, <-shut)
	assert.Equal(t, 0, f.h.Upgraded())
}

func TestHostingShutdownDeadlineClosesUpgrades(t *testing.T) {
	f := newTestFixture(t, wsEcho, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := dialHostingWS(t, ctx, f)
	defer c.CloseNow()
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("x")))
	_, _, err := c.Read(ctx)
	require.NoError(t, err)

	sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	assert.ErrorIs(t, f.h.Shutdown(sctx), context.DeadlineExceeded)
	_, _, err = c.Read(ctx)
	assert.Error(t, err, "the upgraded connection was closed at the deadline")
	assert.Equal(t, 0, f.h.Upgraded())
}

func TestHostingConcurrentLoad(t *testing.T) {
	var served atomic.Int64
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		_, _ = io.WriteString(w, "ok")
	})
	f := newTestFixture(t, app, nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 25; j++ {
				req, _ := http.NewRequest("GET", f.srv.URL+"/", nil)
				req.Host = "r1.id.repl.test"
				resp, err := f.client().Do(req)
				if !assert.NoError(t, err) {
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				assert.Equal(t, 200, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(200), served.Load())
	// The fast path counts a request after its last byte was written: the client may be first.
	assert.Eventually(t, func() bool { return testMetricValue(f.h.metrics.requests.WithLabelValues(outcomeOK)) == 200 },
		5*time.Second, time.Millisecond)
}

func TestNewHostingConfig(t *testing.T) {
	ok := Config{Zone: "z", Directory: &testDirectory{}, Placer: &testPlacer{}, Credential: "c"}
	for _, mod := range []func(*Config){
		func(c *Config) { c.Zone = "" },
		func(c *Config) { c.Directory = nil },
		func(c *Config) { c.Placer = nil },
		func(c *Config) { c.Credential = "" },
	} {
		c := ok
		mod(&c)
		_, err := New(c)
		assert.Error(t, err)
	}
	reg := prometheus.NewRegistry()
	c := ok
	c.Registerer = reg
	_, err := New(c)
	require.NoError(t, err)
	_, err = New(c)
	assert.Error(t, err, "registering the metrics twice is an error")
}

// testMetricValue reads a counter's or gauge's value.
func testMetricValue(m prometheus.Metric) float64 {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		panic(err)
	}
	if pb.Counter != nil {
		return pb.Counter.GetValue()
	}
	return pb.Gauge.GetValue()
}

func TestHostingShutdownWaitsForInflightRequests(t *testing.T) {
	release := make(chan struct{})
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first ")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "second")
	})
	f := newTestFixture(t, app, nil)
	req, _ := http.NewRequest("GET", f.srv.URL+"/", nil)
	req.Host = "blog.alice.repl.test"
	resp, err := f.client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	buf := make([]byte, 6)
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- f.h.Shutdown(ctx) }()
	require.Eventually(t, func() bool { return f.h.drain.Closing() }, 5*time.Second, time.Millisecond)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a response was streaming", err)
	default:
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "second", string(rest), "the in-flight response finished")
	require.NoError(t, <-shut)
}

// TestFastPath runs the Proxy's tests through Server (see newTestFixture), with its event loops.
func TestFastPath(t *testing.T) { fastPathSuite(t) }

// TestFastPathGoroutines runs them through a Server without event loops.
func TestFastPathGoroutines(t *testing.T) { fastPathSuite(t) }

func fastPathSuite(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"Routing":                  TestHostingRouting,
		"Headers":                  TestHostingHeaders,
		"Failures":                 TestHostingFailures,
		"RetriesOnAnotherVM":       TestHostingRetriesOnAnotherVM,
		"StreamsAndTrailers":       TestHostingStreamsAndTrailers,
		"WebSocketAndDrain":        TestHostingWebSocketAndDrain,
		"ShutdownDeadline":         TestHostingShutdownDeadlineClosesUpgrades,
		"ConcurrentLoad":           TestHostingConcurrentLoad,
		"ShutdownWaitsForInflight": TestHostingShutdownWaitsForInflightRequests,
		"StaleCachedRoute":         TestStaleCachedRoute,
	} {
		t.Run(name, test)
	}
}
