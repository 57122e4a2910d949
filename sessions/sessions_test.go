package sessions

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

const (
	testCluster    = "a"
	testCredential = "internal-secret"
)

// testConman is a real WebSocket server implementing conman's attach contract: it checks
// the credential, answers the configured failure before the upgrade, and after it sends a
// banner and echoes every message. Text commands steer it: "close:<code>" closes with that
// code, "drop" cuts the TCP connection, "size" answers the cols/rows it was given.
type testConman struct {
	id      string
	srv     *httptest.Server
	mu      sync.Mutex
	fail    int // non-zero: answer this status before the upgrade
	hits    int
	stopped []string // repls a proxy asked it to stop (DELETE), with the right credential
}

func newTestConman(t testing.TB, id string) *testConman {
	t.Helper()
	c := &testConman{id: id}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/repls/{id}/attach", c.attach)
	mux.HandleFunc("DELETE /v1/repls/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Switchyard-Credential") != testCredential {
			httpjson.Error(w, http.StatusUnauthorized, "bad credential")
			return
		}
		c.mu.Lock()
		c.stopped = append(c.stopped, r.PathValue("id"))
		c.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	c.srv = httptest.NewServer(mux)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *testConman) setFail(status int) {
	c.mu.Lock()
	c.fail = status
	c.mu.Unlock()
}

func (c *testConman) hitCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits
}

func (c *testConman) attach(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits++
	fail := c.fail
	c.mu.Unlock()
	if r.Header.Get("Switchyard-Credential") != testCredential {
		httpjson.Error(w, http.StatusUnauthorized, "bad credential")
		return
	}
	if fail != 0 {
		if fail == http.StatusBadGateway {
			w.Header().Set("Switchyard-Error", conman.ErrorRepl) // what conman says of a repl's own failure
			httpjson.Error(w, fail, "fork: resource temporarily unavailable")
			return
		}
		httpjson.Error(w, fail, "repl cannot start here")
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(64 << 20)
	ctx := context.Background()
	if err := ws.Write(ctx, websocket.MessageText, []byte("hello from "+c.id+" repl "+r.PathValue("id"))); err != nil {
		return
	}
	for {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			return
		}
		if typ == websocket.MessageText {
			s := string(b)
			switch {
			case strings.HasPrefix(s, "close:"):
				var code int
				fmt.Sscanf(s, "close:%d", &code)
				ws.Close(websocket.StatusCode(code), "asked to")
				return
			case s == "drop":
				return // CloseNow: no close frame
			case s == "size":
				b = []byte(r.URL.RawQuery)
			case strings.HasPrefix(s, "big:"):
				var n int
				fmt.Sscanf(s, "big:%d", &n)
				b = make([]byte, n)
				typ = websocket.MessageBinary
			case s == "flood":
				// Stream 3000-byte messages until the connection ends.
				msg := bytes.Repeat([]byte("f"), 3000)
				for ws.Write(ctx, websocket.MessageBinary, msg) == nil {
				}
				return
			}
		}
		if err := ws.Write(ctx, typ, b); err != nil {
			return
		}
	}
}

func (c *testConman) vm() placement.VM {
	return placement.VM{ID: c.id, Addr: c.srv.URL, State: placement.Active}
}

// testPlacer places a repl on the first VM of its list that the request does not avoid,
// and records every request. A non-nil err is returned instead; block makes Place wait for ctx.
type testPlacer struct {
	mu    sync.Mutex
	vms   []placement.VM
	err   error
	block chan struct{} // closed once Place is waiting, when non-nil
	calls []placement.Request
}

func (p *testPlacer) Place(ctx context.Context, req placement.Request) (placement.Assignment, error) {
	p.mu.Lock()
	p.calls = append(p.calls, placement.Request{Repl: req.Repl, Avoid: append([]string(nil), req.Avoid...)})
	err, block, vms := p.err, p.block, p.vms
	p.mu.Unlock()
	if block != nil {
		close(block)
		<-ctx.Done()
		return placement.Assignment{}, ctx.Err()
	}
	if err != nil {
		return placement.Assignment{}, err
	}
	for _, vm := range vms {
		if !contains(req.Avoid, vm.ID) {
			return placement.Assignment{Repl: req.Repl, VM: vm.ID, Addr: vm.Addr}, nil
		}
	}
	return placement.Assignment{}, placement.ErrNoCapacity
}

func (p *testPlacer) requests() []placement.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]placement.Request(nil), p.calls...)
}

type testEnv struct {
	t      testing.TB
	issuer *lore.Issuer
	keys   *lore.KeySet
	placer *testPlacer
	conman *testConman
	proxy  *Proxy
	srv    *httptest.Server
	url    string
	logs   *testLog
}

// testLog collects log lines for assertions.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newTestIssuer(t testing.TB, now func() time.Time) *lore.Issuer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := lore.NewIssuer(lore.IssuerConfig{Key: priv, TTL: time.Minute, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// testLoopBudget is shared by the test proxies, as one process's proxies should share one.
var testLoopBudget = new(LoopBudget)

func newTestEnv(t testing.TB, mode RelayMode, tweak func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, logs: &testLog{}}
	e.issuer = newTestIssuer(t, nil)
	e.keys = lore.NewKeySet(e.issuer.PublicKey())
	e.conman = newTestConman(t, "vm-1")
	e.placer = &testPlacer{vms: []placement.VM{e.conman.vm()}}
	cfg := Config{
		Cluster:      testCluster,
		Tokens:       e.keys,
		Placer:       e.placer,
		Credential:   testCredential,
		Mode:         mode,
		RetryBackoff: time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:   prometheus.NewRegistry(),
	}
	if mode == testSpliceLoop {
		cfg.Mode, cfg.EventLoops, cfg.LoopBudget = Splice, 1, testLoopBudget
	}
	// Most tests open many sessions to one repl from one address; the caps have their test.
	cfg.MaxSessionsPerRepl, cfg.MaxSessionsPerToken, cfg.MaxSessionsPerIP = -1, -1, -1
	if tweak != nil {
		tweak(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	mux := http.NewServeMux()
	mux.Handle("GET /v1/connect", p)
	e.srv = httptest.NewServer(mux)
	e.url = "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/v1/connect"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Shutdown: %v", err)
		}
		e.srv.Close()
	})
	return e
}

func (e *testEnv) token(repl string) string {
	e.t.Helper()
	tok, _, err := e.issuer.Issue(testCluster, repl)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *testEnv) dial(ctx context.Context, repl string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(ctx, e.url+"?token="+e.token(repl), nil)
	return c, err
}

// drain waits for every session to end (Shutdown) so the metrics are final.
func (e *testEnv) drain() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.proxy.Shutdown(ctx); err != nil {
		e.t.Fatalf("Shutdown: %v", err)
	}
}

// stages returns the outcome counters that are not zero.
func (e *testEnv) stages() map[string]int {
	out := map[string]int{}
	for _, st := range allStages {
		if n := int(testValue(e.proxy.metrics.outcomes.WithLabelValues(st))); n != 0 {
			out[st] = n
		}
	}
	return out
}

func testReadBanner(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	c.SetReadLimit(64 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("reading banner: %v", err)
	}
	if typ != websocket.MessageText || !strings.HasPrefix(string(b), "hello from ") {
		t.Fatalf("banner = %v %q", typ, b)
	}
	return string(b)
}

// testOpen opens a session to repl r1 and reads conman's banner.
func testOpen(t testing.TB, e *testEnv, ctx context.Context) *websocket.Conn {
	t.Helper()
	c, err := e.dial(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	testReadBanner(t, c)
	return c
}

func testEcho(t testing.TB, c *websocket.Conn, typ websocket.MessageType, msg []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	gt, got, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if gt != typ || !bytes.Equal(got, msg) {
		t.Fatalf("echo mismatch: type %v len %d, want %v len %d", gt, len(got), typ, len(msg))
	}
}

// testOutcome is what a client saw: an HTTP refusal or the close code of its session.
type testOutcome struct {
	status    int    // HTTP status before upgrade, or 0 when the upgrade succeeded
	errSubstr string // the JSON error message
	closeCode websocket.StatusCode
}

// testModes are the relays every mode-generic test runs through: Splice with a goroutine
// pair per session, Splice on an event loop (testSpliceLoop), and Frame.
var testModes = []RelayMode{Splice, testSpliceLoop, Frame}

// testSpliceLoop stands for Splice mode with one event loop (Config.EventLoops) in
// newTestEnv.
const testSpliceLoop RelayMode = -1

func testModeName(m RelayMode) string {
	if m == testSpliceLoop {
		return "splice-loop"
	}
	return m.String()
}

func TestSessionsRelay(t *testing.T) {
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) {
			carriers := []struct {
				name string
				dial func(e *testEnv) (*websocket.Conn, *http.Response, error)
			}{
				{"query", func(e *testEnv) (*websocket.Conn, *http.Response, error) {
					return websocket.Dial(context.Background(), e.url+"?token="+e.token("r1")+"&cols=120&rows=40", nil)
				}},
				{"bearer", func(e *testEnv) (*websocket.Conn, *http.Response, error) {
					return websocket.Dial(context.Background(), e.url+"?cols=120&rows=40", &websocket.DialOptions{
						HTTPHeader: http.Header{"Authorization": {"Bearer " + e.token("r1")}}})
				}},
				{"subprotocol", func(e *testEnv) (*websocket.Conn, *http.Response, error) {
					return websocket.Dial(context.Background(), e.url+"?cols=120&rows=40", &websocket.DialOptions{
						Subprotocols: []string{Subprotocol, TokenSubprotocolPrefix + e.token("r1")}})
				}},
			}
			for _, tc := range carriers {
				t.Run(tc.name, func(t *testing.T) {
					e := newTestEnv(t, mode, nil)
					c, resp, err := tc.dial(e)
					if err != nil {
						t.Fatalf("dial: %v", err)
					}
					defer c.CloseNow()
					if tc.name == "subprotocol" && c.Subprotocol() != Subprotocol {
						t.Errorf("subprotocol = %q, want %q", c.Subprotocol(), Subprotocol)
					}
					if p := resp.Header.Get("Sec-WebSocket-Protocol"); strings.Contains(p, "token") {
						t.Errorf("token echoed in Sec-WebSocket-Protocol: %q", p)
					}
					if b := testReadBanner(t, c); b != "hello from vm-1 repl r1" {
						t.Errorf("banner %q", b)
					}
					testEcho(t, c, websocket.MessageText, []byte("size"[:0]))
					ctx := context.Background()
					c.Write(ctx, websocket.MessageText, []byte("size"))
					if _, b, err := c.Read(ctx); err != nil || string(b) != "cols=120&rows=40" {
						t.Errorf("size = %q, %v", b, err)
					}
					for _, n := range []int{1, 125, 126, batchMin, batchMin + 1, 65535, 65536, 64<<10 + 7, smallFrame, smallFrame + 1, 300 << 10, 3 << 20} {
						msg := make([]byte, n)
						rand.Read(msg)
						testEcho(t, c, websocket.MessageBinary, msg)
					}
					if e.proxy.Active() != 1 {
						t.Errorf("Active = %d", e.proxy.Active())
					}
					if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
						t.Errorf("close: %v", err)
					}
					e.drain()
					if got := e.stages(); len(got) != 1 || got[StageOK] != 1 {
						t.Errorf("stages = %v, want ok:1", got)
					}
					if n := testValue(e.proxy.metrics.bytes.WithLabelValues("backend_to_client")); n < 3<<20 {
						t.Errorf("bytes backend_to_client = %v", n)
					}
					if !strings.Contains(e.logs.String(), "repl=r1") || !strings.Contains(e.logs.String(), "vm=vm-1") {
						t.Errorf("logs lack session fields:\n%s", e.logs)
					}
				})
			}
		})
	}
}

// TestSessionsStages injects one fault per case and checks the client's answer and that exactly
// one outcome, of the right stage, was counted.
func TestSessionsStages(t *testing.T) {
	type result = testOutcome
	cases := []struct {
		name  string
		tweak func(*Config)
		setup func(e *testEnv)
		run   func(t *testing.T, e *testEnv) result
		stage string
	}{
		{name: "no token", stage: StageToken, run: func(t *testing.T, e *testEnv) result {
			return testHTTP(t, e.url, nil)
		}},
		{name: "garbage token", stage: StageToken, run: func(t *testing.T, e *testEnv) result {
			return testHTTP(t, e.url+"?token=abc.def.ghi", nil)
		}},
		{name: "wrong cluster", stage: StageToken, run: func(t *testing.T, e *testEnv) result {
			tok, _, _ := e.issuer.Issue("b", "r1")
			return testHTTP(t, e.url+"?token="+tok, nil)
		}},
		{name: "expired", stage: StageToken, run: func(t *testing.T, e *testEnv) result {
			iss := newTestIssuer(t, func() time.Time { return time.Now().Add(-time.Hour) })
			e.keys.Add(iss.PublicKey())
			tok, _, _ := iss.Issue(testCluster, "r1")
			return testHTTP(t, e.url+"?token="+tok, nil)
		}},
		{name: "unknown key", stage: StageToken, run: func(t *testing.T, e *testEnv) result {
			tok, _, _ := newTestIssuer(t, nil).Issue(testCluster, "r1")
			return testHTTP(t, e.url+"?token="+tok, nil)
		}},
		{name: "no upgrade", stage: StageClient, run: func(t *testing.T, e *testEnv) result {
			resp, err := http.Get(strings.Replace(e.url, "ws://", "http://", 1) + "?token=" + e.token("r1"))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			return testResult(t, resp)
		}},
		{name: "bad key", stage: StageClient, run: func(t *testing.T, e *testEnv) result {
			return testHTTP(t, e.url+"?token="+e.token("r1"), http.Header{"Sec-WebSocket-Key": {"short"}})
		}},
		{name: "oversized headers", stage: StageLimit, run: func(t *testing.T, e *testEnv) result {
			return testHTTP(t, e.url+"?token="+e.token("r1"), http.Header{"X-Big": {strings.Repeat("x", 9000)}})
		}},
		{name: "no capacity", stage: StagePlacement, setup: func(e *testEnv) { e.placer.err = placement.ErrNoCapacity },
			run: func(t *testing.T, e *testEnv) result { return testHTTP(t, e.url+"?token="+e.token("r1"), nil) }},
		{name: "repl not found", stage: StagePlacement, setup: func(e *testEnv) { e.placer.err = fmt.Errorf("lookup: %w", placement.ErrNotFound) },
			run: func(t *testing.T, e *testEnv) result { return testHTTP(t, e.url+"?token="+e.token("r1"), nil) }},
		{name: "conman refuses", stage: StageDial, tweak: func(c *Config) { c.RetryBudget = 50 * time.Millisecond },
			setup: func(e *testEnv) { e.conman.setFail(http.StatusServiceUnavailable) },
			run:   func(t *testing.T, e *testEnv) result { return testHTTP(t, e.url+"?token="+e.token("r1"), nil) }},
		{name: "wrong credential", stage: StageDial, tweak: func(c *Config) { c.Credential = "nope"; c.RetryBudget = -1 },
			run: func(t *testing.T, e *testEnv) result { return testHTTP(t, e.url+"?token="+e.token("r1"), nil) }},
		{name: "conman closes 1011", stage: StageBackend, run: func(t *testing.T, e *testEnv) result {
			return testCommand(t, e, "close:1011")
		}},
		{name: "conman drops", stage: StageBackend, run: func(t *testing.T, e *testEnv) result {
			return testCommand(t, e, "drop")
		}},
		{name: "conman closes 1000", stage: StageOK, run: func(t *testing.T, e *testEnv) result {
			return testCommand(t, e, "close:1000")
		}},
		{name: "client leaves during setup", stage: StageClient,
			setup: func(e *testEnv) { e.placer.block = make(chan struct{}) },
			run: func(t *testing.T, e *testEnv) result {
				conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(conn, "GET /v1/connect?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", e.token("r1"))
				<-e.placer.block
				conn.Close()
				return result{}
			}},
		{name: "handshake timeout", stage: StagePlacement, tweak: func(c *Config) { c.HandshakeTimeout = 100 * time.Millisecond },
			setup: func(e *testEnv) { e.placer.block = make(chan struct{}) },
			run:   func(t *testing.T, e *testEnv) result { return testHTTP(t, e.url+"?token="+e.token("r1"), nil) }},
		{name: "too many sessions", stage: StageLimit, tweak: func(c *Config) { c.MaxSessions = 1 },
			run: func(t *testing.T, e *testEnv) result {
				c, err := e.dial(context.Background(), "r1")
				if err != nil {
					t.Fatal(err)
				}
				testReadBanner(t, c)
				r := testHTTP(t, e.url+"?token="+e.token("r2"), nil)
				// The first session is still fine and ends normally but is counted as ok: the
				// expected stage count below accounts for it.
				c.Close(websocket.StatusNormalClosure, "")
				return r
			}},
	}
	want := map[string]result{
		"no token":           {status: 401, errSubstr: "missing connect token"},
		"garbage token":      {status: 401, errSubstr: "invalid connect token"},
		"wrong cluster":      {status: 401, errSubstr: "invalid connect token"},
		"expired":            {status: 401, errSubstr: "invalid connect token"},
		"unknown key":        {status: 401, errSubstr: "invalid connect token"},
		"no upgrade":         {status: 426, errSubstr: "upgrade required"},
		"bad key":            {status: 400, errSubstr: "Sec-WebSocket-Key"},
		"oversized headers":  {status: 431, errSubstr: "too large"},
		"no capacity":        {status: 503, errSubstr: "no VM"},
		"repl not found":     {status: 404, errSubstr: "not found"},
		"conman refuses":     {status: 502, errSubstr: "could not attach"},
		"wrong credential":   {status: 502, errSubstr: "could not attach"},
		"conman closes 1011": {closeCode: 1011},
		"conman drops":       {closeCode: 1014},
		"conman closes 1000": {closeCode: 1000},
		"too many sessions":  {status: 503, errSubstr: "too many sessions"},
		"handshake timeout":  {status: 504, errSubstr: "timed out"},
	}
	for _, mode := range testModes {
		for _, tc := range cases {
			t.Run(testModeName(mode)+"/"+tc.name, func(t *testing.T) {
				e := newTestEnv(t, mode, tc.tweak)
				if tc.setup != nil {
					tc.setup(e)
				}
				got := tc.run(t, e)
				if w, ok := want[tc.name]; ok && got != w {
					if !(w.errSubstr != "" && got.status == w.status && strings.Contains(strings.ToLower(got.errSubstr), strings.ToLower(w.errSubstr))) {
						t.Errorf("result = %+v, want %+v", got, w)
					}
				}
				e.drain()
				wantStages := map[string]int{tc.stage: 1}
				if tc.name == "too many sessions" {
					wantStages[StageOK] = 1
				}
				if got := e.stages(); fmt.Sprint(got) != fmt.Sprint(wantStages) {
					t.Errorf("stages = %v, want %v\nlogs:\n%s", got, wantStages, e.logs)
				}
			})
		}
	}
}

// testHTTP sends a WebSocket upgrade request with plain net/http and returns the refusal.
func testHTTP(t *testing.T, url string, extra http.Header) testOutcome {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, strings.Replace(url, "ws://", "http://", 1), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	for k, v := range extra {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return testResult(t, resp)
}

func testResult(t *testing.T, resp *http.Response) testOutcome {
	t.Helper()
	var body struct {
		Error string `json:"error"`
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("unexpected upgrade")
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Errorf("status %d: body is not a JSON error: %v", resp.StatusCode, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	return testOutcome{status: resp.StatusCode, errSubstr: body.Error}
}

// testCommand opens a session, sends one command to the fake conman and returns the close
// code the client saw.
func testCommand(t *testing.T, e *testEnv, cmd string) testOutcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := testOpen(t, e, ctx)
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte(cmd)); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Read(ctx)
	code := websocket.CloseStatus(err)
	if code == -1 {
		t.Errorf("read after %q: %v, want a close frame", cmd, err)
	}
	return testOutcome{closeCode: code}
}

// TestSessionsRetry: the first K dials fail in different ways; the session connects to the next
// VM, placement was asked K+1 times avoiding every failed VM, and nothing reached the client.
func TestSessionsRetry(t *testing.T) {
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) {
			e := newTestEnv(t, mode, nil)
			refused, _ := net.Listen("tcp", "127.0.0.1:0")
			refusedAddr := "http://" + refused.Addr().String()
			refused.Close() // connection refused from now on
			hung, _ := net.Listen("tcp", "127.0.0.1:0")
			defer hung.Close() // accepts in the kernel, never answers: the dial times out
			bad := newTestConman(t, "vm-503")
			bad.setFail(http.StatusServiceUnavailable)
			good := newTestConman(t, "vm-good")
			e.placer.vms = []placement.VM{
				{ID: "vm-refused", Addr: refusedAddr},
				{ID: "vm-hung", Addr: "http://" + hung.Addr().String()},
				bad.vm(),
				good.vm(),
			}
			e.proxy.cfg.AttachTimeout = 100 * time.Millisecond
			c, err := e.dial(context.Background(), "r1")
			if err != nil {
				t.Fatalf("dial: %v\n%s", err, e.logs)
			}
			if b := testReadBanner(t, c); b != "hello from vm-good repl r1" {
				t.Errorf("banner %q", b)
			}
			testEcho(t, c, websocket.MessageBinary, []byte("after retries"))
			c.Close(websocket.StatusNormalClosure, "")
			e.drain()
			reqs := e.placer.requests()
			wantAvoid := [][]string{nil, {"vm-refused"}, {"vm-refused", "vm-hung"}, {"vm-refused", "vm-hung", "vm-503"}}
			if len(reqs) != len(wantAvoid) {
				t.Fatalf("placement asked %d times: %+v", len(reqs), reqs)
			}
			for i, r := range reqs {
				if fmt.Sprint(r.Avoid) != fmt.Sprint(wantAvoid[i]) {
					t.Errorf("request %d avoided %v, want %v", i, r.Avoid, wantAvoid[i])
				}
			}
			if n := testValue(e.proxy.metrics.retries); n != 3 {
				t.Errorf("retries = %v, want 3", n)
			}
			if got := e.stages(); fmt.Sprint(got) != fmt.Sprint(map[string]int{StageOK: 1}) {
				t.Errorf("stages = %v", got)
			}
			if bad.hitCount() != 1 || e.conman.hitCount() != 0 {
				t.Errorf("hits: vm-503 %d, vm-1 %d", bad.hitCount(), e.conman.hitCount())
			}
		})
	}
}

// TestSessionsRetryExhaustsAvoid: with a single VM that fails twice then recovers, placement
// runs out of VMs to try, the avoid list is reset, and the session connects within the budget.
func TestSessionsRetryExhaustsAvoid(t *testing.T) {
	e := newTestEnv(t, Splice, nil)
	e.conman.setFail(http.StatusServiceUnavailable)
	fails := 0
	e.proxy.cfg.Placer = testPlacerFunc(func(ctx context.Context, req placement.Request) (placement.Assignment, error) {
		a, err := e.placer.Place(ctx, req)
		if err == nil {
			fails++
			if fails == 2 {
				e.conman.setFail(0)
			}
		}
		return a, err
	})
	c, err := e.dial(context.Background(), "r1")
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, e.logs)
	}
	testReadBanner(t, c)
	c.Close(websocket.StatusNormalClosure, "")
	e.drain()
	if got := e.stages(); got[StageOK] != 1 || len(got) != 1 {
		t.Errorf("stages = %v", got)
	}
}

type testPlacerFunc func(ctx context.Context, req placement.Request) (placement.Assignment, error)

func (f testPlacerFunc) Place(ctx context.Context, req placement.Request) (placement.Assignment, error) {
	return f(ctx, req)
}

// TestSessionsFrameLimits: a message past MaxMessageBytes closes the sender's leg with 1009.
func TestSessionsFrameLimits(t *testing.T) {
	e := newTestEnv(t, Frame, func(c *Config) { c.MaxMessageBytes = 1 << 10 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := testOpen(t, e, ctx)
	defer c.CloseNow()
	testEcho(t, c, websocket.MessageBinary, make([]byte, 1<<10))
	if err := c.Write(ctx, websocket.MessageBinary, make([]byte, 1<<10+1)); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Read(ctx)
	if code := websocket.CloseStatus(err); code != websocket.StatusMessageTooBig {
		t.Errorf("close = %v (%v), want 1009", code, err)
	}
	e.drain()
	if got := e.stages(); got[StageOK] != 1 || len(got) != 1 {
		t.Errorf("stages = %v", got)
	}
}

// TestSessionsFrameBackendLimits: conman's oversized message closes conman's leg with 1009 and
// tells the client 1009 too (a backend failure); an idle session ends with 1001 after
// IdleTimeout (ok).
func TestSessionsFrameBackendLimits(t *testing.T) {
	cases := []struct {
		name  string
		tweak func(*Config)
		send  string
		code  websocket.StatusCode
		stage string
	}{
		{"conman message too big", func(c *Config) { c.MaxMessageBytes = 1 << 10 }, "big:2000", websocket.StatusMessageTooBig, StageBackend},
		{"idle timeout", func(c *Config) { c.IdleTimeout = 100 * time.Millisecond }, "", websocket.StatusGoingAway, StageOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, Frame, tc.tweak)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c := testOpen(t, e, ctx)
			defer c.CloseNow()
			if tc.send != "" {
				c.Write(ctx, websocket.MessageText, []byte(tc.send))
			}
			_, _, err := c.Read(ctx)
			if code := websocket.CloseStatus(err); code != tc.code {
				t.Errorf("client saw %v (%v), want %v", code, err, tc.code)
			}
			e.drain()
			if got := e.stages(); got[tc.stage] != 1 || len(got) != 1 {
				t.Errorf("stages = %v, want %s:1", got, tc.stage)
			}
		})
	}
}

// TestSessionsFrameDeadPeer: a client that stops answering pings is found and the session ends.
func TestSessionsFrameDeadPeer(t *testing.T) {
	e := newTestEnv(t, Frame, func(c *Config) {
		c.PingInterval = 20 * time.Millisecond
		c.PingTimeout = 50 * time.Millisecond
	})
	// A raw client that completes the handshake and then never reads: pongs never come.
	conn := testRawUpgrade(t, e, nil)
	defer conn.Close()
	e.drain() // returns once the proxy declared the client dead
	if got := e.stages(); got[StageOK] != 1 || len(got) != 1 {
		t.Errorf("stages = %v", got)
	}
	if !strings.Contains(e.logs.String(), "did not answer ping") {
		t.Errorf("logs:\n%s", e.logs)
	}
}

// testRawUpgrade upgrades over a plain TCP connection, writing extra right behind the
// request (so the proxy's reader buffers it), and returns the connection after the 101.
func testRawUpgrade(t *testing.T, e *testEnv, extra []byte) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	req := fmt.Sprintf("GET /v1/connect?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", e.token("r1"))
	if _, err := conn.Write(append([]byte(req), extra...)); err != nil {
		t.Fatal(err)
	}
	var resp bytes.Buffer
	b := make([]byte, 1)
	for !bytes.HasSuffix(resp.Bytes(), []byte("\r\n\r\n")) {
		if _, err := conn.Read(b); err != nil {
			t.Fatalf("reading 101: %v (%q)", err, resp.String())
		}
		resp.WriteByte(b[0])
	}
	if !strings.HasPrefix(resp.String(), "HTTP/1.1 101 ") || !strings.Contains(resp.String(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
		t.Fatalf("response %q", resp.String())
	}
	return conn
}

// testMaskedFrame builds a client-to-server frame.
func testMaskedFrame(opcode byte, payload []byte) []byte {
	key := [4]byte{1, 2, 3, 4}
	f := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n < 1<<16:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	f = append(f, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i%4])
	}
	return f
}

// TestSessionsPending: bytes the client sent right behind its request, which the HTTP server's
// reader already buffered, reach conman first and intact, in both modes.
func TestSessionsPending(t *testing.T) {
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) { testPending(t, mode) })
	}
}

func testPending(t *testing.T, mode RelayMode) {
	e := newTestEnv(t, mode, nil)
	conn := testRawUpgrade(t, e, testMaskedFrame(2, []byte("early bird")))
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	// Banner (text) then the echo of the early frame, unmasked.
	want := append([]byte{0x81, byte(len("hello from vm-1 repl r1"))}, "hello from vm-1 repl r1"...)
	want = append(want, 0x82, 10)
	want = append(want, "early bird"...)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// Close handshake: our close frame goes through, conman answers 1000, then EOF.
	conn.Write(testMaskedFrame(8, []byte{0x03, 0xe8}))
	rest, _ := io.ReadAll(conn) // ends at the proxy's FIN
	conn.Close()
	if !bytes.HasPrefix(rest, []byte{0x88, 2, 0x03, 0xe8}) {
		t.Errorf("after close: %x", rest)
	}
	e.drain()
	if got := e.stages(); got[StageOK] != 1 || len(got) != 1 {
		t.Errorf("stages = %v", got)
	}
}

// TestSessionsCycles: 1,000 connect/disconnect cycles leave no goroutine behind (TestMain's
// goleak check fails the package otherwise) and every one is counted ok.
func TestSessionsCycles(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) {
			e := newTestEnv(t, mode, nil)
			ctx := context.Background()
			for i := range n {
				c, err := e.dial(ctx, "r1")
				if err != nil {
					t.Fatalf("cycle %d: %v", i, err)
				}
				testReadBanner(t, c)
				if i%2 == 0 {
					c.Close(websocket.StatusNormalClosure, "")
				} else {
					c.CloseNow() // abrupt
				}
			}
			e.drain()
			if got := e.stages(); got[StageOK] != n || len(got) != 1 {
				t.Errorf("stages = %v", got)
			}
			if e.proxy.Active() != 0 {
				t.Errorf("Active = %d", e.proxy.Active())
			}
		})
	}
}

// testValue reads a counter or gauge.
func testValue(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// TestSessionsPipelined: many large messages in flight both ways at once arrive intact and in
// order.
func TestSessionsPipelined(t *testing.T) {
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) {
			e := newTestEnv(t, mode, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c := testOpen(t, e, ctx)
			defer c.CloseNow()
			const n = 40
			errc := make(chan error, 1)
			go func() {
				for i := range n {
					msg := bytes.Repeat([]byte{byte(i)}, 64<<10+i*4099)
					if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			for i := range n {
				_, b, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("message %d: %v\n%s", i, err, e.logs)
				}
				if len(b) != 64<<10+i*4099 || b[0] != byte(i) || b[len(b)-1] != byte(i) {
					t.Fatalf("message %d: %d bytes starting %d", i, len(b), b[0])
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// TestSessionsFileLimitWarning: in splice mode New warns when RLIMIT_NOFILE cannot hold six
// descriptors per allowed session, and stays quiet when it can or in frame mode.
func TestSessionsFileLimitWarning(t *testing.T) {
	limit, ok := fileLimit()
	if !ok {
		t.Skip("no RLIMIT_NOFILE here")
	}
	cases := []struct {
		mode RelayMode
		max  int
		warn bool
	}{
		{Splice, int(limit/spliceFDs) + 1, true},
		{Splice, int(limit / spliceFDs), false},
		{Frame, int(limit/spliceFDs) + 1, false},
		{Splice, 0, false},
	}
	for _, tc := range cases {
		var logs testLog
		_, err := New(Config{Cluster: "a", Tokens: lore.NewKeySet(), Placer: &testPlacer{},
			Mode: tc.mode, MaxSessions: tc.max, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), "open-file limit"); got != tc.warn {
			t.Errorf("%v MaxSessions %d (limit %d): warned %v, want %v", tc.mode, tc.max, limit, got, tc.warn)
		}
	}
}

// TestNewSessionsConfig: an unusable configuration is an error, never a half-working proxy.
func TestNewSessionsConfig(t *testing.T) {
	ok := Config{Cluster: "a", Tokens: lore.NewKeySet(), Placer: &testPlacer{}}
	cases := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no cluster", func(c *Config) { c.Cluster = "" }, "Cluster is required"},
		{"no tokens", func(c *Config) { c.Tokens = nil }, "Tokens is required"},
		{"no placer", func(c *Config) { c.Placer = nil }, "Placer is required"},
		{"bad mode", func(c *Config) { c.Mode = 7 }, "unknown relay mode"},
		{"credential with newline", func(c *Config) { c.Credential = "a\r\nX-Evil: 1" }, "CR or LF"},
		{"registered twice", func(c *Config) {
			reg := prometheus.NewRegistry()
			if _, err := New(Config{Cluster: "a", Tokens: lore.NewKeySet(), Placer: &testPlacer{}, Registerer: reg}); err != nil {
				t.Fatal(err)
			}
			c.Registerer = reg
		}, "already registered"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.change(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := New(ok); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

// TestSessionsUpgradedBodyBatch checks the write coalescing Frame mode uses on conman's leg:
// bytes arrive in order and whole, batches hold nothing back once they end, and a write error
// inside a batch is reported by endBatch.
func TestSessionsUpgradedBodyBatch(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	body := &upgradedBody{Conn: a}
	want := make([]byte, 200<<10)
	rand.Read(want)
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(b)
		got <- buf
	}()
	// Unbatched, batched in 4 KiB pieces, one piece bigger than the batch buffer, unbatched.
	write := func(p []byte) {
		t.Helper()
		if n, err := body.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	write(want[:100])
	body.beginBatch()
	off := 100
	for ; off < 100<<10; off += 4 << 10 {
		write(want[off:min(off+4<<10, len(want))])
	}
	write(want[off : off+70<<10])
	off += 70 << 10
	if err := body.endBatch(); err != nil {
		t.Fatal(err)
	}
	write(want[off:])
	a.Close()
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("received %d bytes, not the %d written in order", len(g), len(want))
	}

	// A failed write inside a batch surfaces at endBatch (or at the write that fails).
	c, d := net.Pipe()
	d.Close()
	body = &upgradedBody{Conn: c}
	body.beginBatch()
	_, werr := body.Write(make([]byte, 100))
	if err := body.endBatch(); err == nil && werr == nil {
		t.Fatal("no error from a batch written to a closed connection")
	}
	if body.batch != nil {
		t.Fatal("batch still open after endBatch")
	}
}

// TestSessionsCaps: one token, one repl and one client address each hold a bounded number of
// sessions (an attacker with one token opened 700); over a cap the proxy answers 429 before
// anything reaches conman, and a session that ends gives its place back.
func TestSessionsCaps(t *testing.T) {
	e := newTestEnv(t, Splice, func(c *Config) {
		c.MaxSessionsPerToken, c.MaxSessionsPerRepl, c.MaxSessionsPerIP = 2, 3, 5
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	status := func(tok string) (*websocket.Conn, int) {
		c, resp, err := websocket.Dial(ctx, e.url+"?token="+tok, nil)
		if err == nil {
			return c, http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatal(err)
		}
		return nil, resp.StatusCode
	}
	tok := e.token("r1")
	c1, st := status(tok)
	require.Equal(t, http.StatusSwitchingProtocols, st)
	c2, st := status(tok)
	require.Equal(t, http.StatusSwitchingProtocols, st)
	_, st = status(tok)
	require.Equal(t, http.StatusTooManyRequests, st, "a third session with one token")
	c3, st := status(e.token("r1"))
	require.Equal(t, http.StatusSwitchingProtocols, st, "another token for the repl")
	_, st = status(e.token("r1"))
	require.Equal(t, http.StatusTooManyRequests, st, "a fourth session of one repl")
	c4, st := status(e.token("r2"))
	require.Equal(t, http.StatusSwitchingProtocols, st)
	c5, st := status(e.token("r3"))
	require.Equal(t, http.StatusSwitchingProtocols, st)
	_, st = status(e.token("r4"))
	require.Equal(t, http.StatusTooManyRequests, st, "a sixth session from one address")
	c1.Close(websocket.StatusNormalClosure, "")
	require.Eventually(t, func() bool {
		c, st := status(tok)
		if c != nil {
			c.Close(websocket.StatusNormalClosure, "")
		}
		return st == http.StatusSwitchingProtocols
	}, 10*time.Second, 10*time.Millisecond, "an ended session gives its place back")
	for _, c := range []*websocket.Conn{c2, c3, c4, c5} {
		c.Close(websocket.StatusNormalClosure, "")
	}
	require.Positive(t, e.stages()[StageLimit])
}

type testDirectory struct{ cluster string }

func (d testDirectory) Repl(ctx context.Context, id string) (lore.Repl, error) {
	if id == "gone" {
		return lore.Repl{}, lore.ErrNotFound
	}
	return lore.Repl{ID: id, Cluster: d.cluster}, nil
}

// TestSessionsRefusesMovedRepl: a token issued before the repl moved still verifies, but the
// repl lives elsewhere now: the proxy says so (421) and attaches nothing.
func TestSessionsRefusesMovedRepl(t *testing.T) {
	e := newTestEnv(t, Splice, func(c *Config) { c.Directory = testDirectory{cluster: "elsewhere"} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, e.url+"?token="+e.token("r1"), nil)
	require.Error(t, err)
	require.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(body), "connect again through lore")
	_, resp, err = websocket.Dial(ctx, e.url+"?token="+e.token("gone"), nil)
	require.Error(t, err)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Zero(t, e.conman.hitCount(), "nothing reached conman")
	require.Equal(t, 2, e.stages()[StageToken])
}

// TestSessionsReplFailureDoesNotMoveTheRepl: when conman says the repl itself failed (its
// shell could not start, say it exhausted its own processes), the proxy does not try the
// repl on another VM: that would run it twice.
func TestSessionsReplFailureDoesNotMoveTheRepl(t *testing.T) {
	e := newTestEnv(t, Splice, nil)
	e.conman.setFail(http.StatusBadGateway)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, e.url+"?token="+e.token("r1"), nil)
	require.Error(t, err)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(body), "the repl's shell could not start")
	e.placer.mu.Lock()
	defer e.placer.mu.Unlock()
	require.Len(t, e.placer.calls, 1, "placed once, never with the VM avoided")
	require.Empty(t, e.placer.calls[0].Avoid)
}

// TestSessionsVMCredential: with VMCredential, each VM's conman gets its own credential.
func TestSessionsVMCredential(t *testing.T) {
	var asked []string
	var mu sync.Mutex
	e := newTestEnv(t, Splice, func(c *Config) {
		c.Credential = "not-this-one"
		c.VMCredential = func(vm string) string {
			mu.Lock()
			asked = append(asked, vm)
			mu.Unlock()
			return testCredential
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.dial(ctx, "r1")
	require.NoError(t, err)
	c.Close(websocket.StatusNormalClosure, "")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"vm-1"}, asked)
}

// TestSessionsFencesTheVMItLeaves: when conman on a VM answers but refuses the attach (it is
// draining), the proxy has it stop the repl before placing the repl anywhere else, so the
// repl never runs on two VMs. A refusal by the repl itself moves nothing and fences nothing.
func TestSessionsFencesTheVMItLeaves(t *testing.T) {
	e := newTestEnv(t, Splice, func(c *Config) { c.RetryBudget = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.conman.setFail(http.StatusServiceUnavailable)
	_, _, err := websocket.Dial(ctx, e.url+"?token="+e.token("r1"), nil)
	require.Error(t, err)
	e.conman.mu.Lock()
	require.Equal(t, []string{"r1"}, e.conman.stopped)
	e.conman.stopped = nil
	e.conman.mu.Unlock()
	e.conman.setFail(http.StatusBadGateway) // repl-failed
	_, _, err = websocket.Dial(ctx, e.url+"?token="+e.token("r2"), nil)
	require.Error(t, err)
	e.conman.mu.Lock()
	defer e.conman.mu.Unlock()
	require.Empty(t, e.conman.stopped)
}
