package hosting

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// pair is one Proxy served twice: by a plain http.Server (the reference) and by a Server.
type pair struct {
	h          *Proxy
	slow, fast string // addresses
	server     *Server
}

func newPair(t *testing.T, app http.Handler, mod func(*Config)) *pair {
	t.Helper()
	f := newTestFixture(t, app, mod) // serves h with http.Server
	fs, err := NewServer(ServerConfig{Proxy: f.h})
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serveFast(t, fs, l, nil)
	return &pair{h: f.h, slow: f.srv.Listener.Addr().String(), fast: l.Addr().String(), server: fs}
}

// serveFast serves fs on l until the test ends, then shuts it down (and whatever shutdown
// shuts down after it) and checks that Serve returned.
func serveFast(t *testing.T, fs *Server, l net.Listener, shutdown func(context.Context) error) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- fs.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, fs.Shutdown(ctx))
		assert.ErrorIs(t, <-served, http.ErrServerClosed)
		if shutdown != nil {
			assert.NoError(t, shutdown(ctx))
		}
	})
}

// exchange writes raw to addr and reads every answer until the connection ends or goes quiet:
// each as "<status> <app's view of the request>".
func exchange(t *testing.T, addr, raw string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte(raw))
	require.NoError(t, err)
	// No half-close: net/http cancels a request whose client sent EOF, the fast path does not.
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReader(c)
	var out []string
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return out
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return append(out, fmt.Sprintf("%d broken body", resp.StatusCode))
		}
		view := ""
		var got struct {
			Method, Path, Body string
			Header             http.Header
		}
		if json.Unmarshal(body, &got) == nil && got.Method != "" {
			view = fmt.Sprintf("%s %s body=%q cred=%q repl=%q", got.Method, got.Path, got.Body,
				got.Header.Get("Switchyard-Credential"), got.Header.Get("X-Test-Repl"))
		}
		out = append(out, fmt.Sprintf("%d %s", resp.StatusCode, view))
		if resp.Close {
			return out
		}
		_ = c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	}
}

// TestFastPathAttacks sends hostile requests to both servers: the fast path must answer each
// exactly as net/http does (it takes a strict subset and hands the rest over).
func TestFastPathAttacks(t *testing.T) {
	p := newPair(t, echoApp, nil)
	const host = "Host: blog.alice.repl.test\r\n"
	tests := []struct{ name, raw string }{
		{"plain", "GET /a?b=1 HTTP/1.1\r\n" + host + "\r\n"},
		{"pipelined", "GET /1 HTTP/1.1\r\n" + host + "\r\nPOST /2 HTTP/1.1\r\n" + host + "Content-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\n" + host + "\r\n"},
		{"CL.TE smuggling", "POST / HTTP/1.1\r\n" + host + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\n" + host + "\r\n"},
		{"TE.CL smuggling", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"},
		{"TE obfuscated", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc"},
		{"two lengths", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\n" + host + "\r\n"},
		{"length list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3, 3\r\n\r\nabc"},
		{"signed length", "POST / HTTP/1.1\r\n" + host + "Content-Length: +3\r\n\r\nabc"},
		{"space before colon", "POST / HTTP/1.1\r\n" + host + "Content-Length : 3\r\n\r\nabc"},
		{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X-A: 1\r\n Content-Length: 3\r\n\r\n"},
		{"NUL in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x00b\r\n\r\n"},
		{"bare CR", "GET / HTTP/1.1\r\n" + host + "X-A: a\rb\r\n\r\n"},
		{"bare LF", "GET / HTTP/1.1\n" + host + "\n"},
		{"bad name", "GET / HTTP/1.1\r\n" + host + "X A: b\r\n\r\n"},
		{"two hosts", "GET / HTTP/1.1\r\n" + host + "Host: shop.bob.repl.test\r\n\r\n"},
		{"no host", "GET / HTTP/1.1\r\n\r\n"},
		{"forged credential", "GET / HTTP/1.1\r\n" + host + "Switchyard-Credential: forged\r\nSwitchyard-Repl: r2\r\n\r\n"},
		{"forged credential, odd case", "GET / HTTP/1.1\r\n" + host + "sWITCHYARD-rEPL: r2\r\n\r\n"},
		{"hop-by-hop named", "GET / HTTP/1.1\r\n" + host + "Connection: X-Secret\r\nX-Secret: 1\r\n\r\n"},
		{"absolute form", "GET http://blog.alice.repl.test/x HTTP/1.1\r\n" + host + "\r\n"},
		{"HTTP/1.0", "GET / HTTP/1.0\r\n" + host + "\r\n"},
		{"HTTP/0.9", "GET /\r\n\r\n"},
		{"short body then EOF", "POST / HTTP/1.1\r\n" + host + "Content-Length: 10\r\n\r\nabc"},
		{"chunked upload", "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"expect continue", "POST / HTTP/1.1\r\n" + host + "Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := exchange(t, p.slow, tt.raw)
			got := exchange(t, p.fast, tt.raw)
			assert.Equal(t, want, got)
			for _, g := range got {
				assert.NotContains(t, g, "smuggled")
				assert.NotContains(t, g, `cred="forged"`)
				assert.NotContains(t, g, `repl="r2"`)
			}
		})
	}
	t.Run("oversized head", func(t *testing.T) {
		raw := "GET / HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("a", 1<<20+8192) + "\r\n\r\n"
		assert.Equal(t, []string{"431 "}, exchange(t, p.fast, raw))
	})
	t.Run("a head bigger than the fast path's buffer", func(t *testing.T) {
		raw := "GET /big HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"
		assert.Equal(t, exchange(t, p.slow, raw), exchange(t, p.fast, raw))
	})
}

func TestFastPathForwardsHeaders(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		t.Run(fmt.Sprint("trusted=", trusted), func(t *testing.T) {
			p := newPair(t, echoApp, func(c *Config) {
				if trusted {
					c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
				}
			})
			raw := "POST /x HTTP/1.1\r\nHost: blog.alice.repl.test\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.1\r\n" +
				"X-Forwarded-Host: orig.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=203.0.113.7;proto=https\r\n" +
				"Authorization: Bearer app\r\nKeep-Alive: 5\r\nProxy-Authorization: secret\r\nContent-Length: 5\r\n\r\nhello"
			view := func(addr string) map[string]any {
				c, err := net.Dial("tcp", addr)
				require.NoError(t, err)
				defer c.Close()
				_, _ = c.Write([]byte(raw))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				require.NoError(t, err)
				defer resp.Body.Close()
				var got struct {
					Header http.Header
					Body   string
				}
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
				out := map[string]any{"body": got.Body}
				for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "Authorization",
					"Keep-Alive", "Proxy-Authorization", "X-Test-Repl", "Content-Length"} {
					out[k] = got.Header.Values(k)
				}
				return out
			}
			assert.Equal(t, view(p.slow), view(p.fast))
		})
	}
}

// rawBackend is a conman that answers every request with canned bytes.
func rawBackend(t *testing.T, answer string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = c.Write([]byte(answer))
				_ = c.(*net.TCPConn).CloseWrite()
				_, _ = io.Copy(io.Discard, br)
			}()
		}
	}()
	return "http://" + l.Addr().String()
}

// TestFastPathHostileBackend: an app's answer cannot split the response, leak internal fields
// or desynchronise the client's connection.
func TestFastPathHostileBackend(t *testing.T) {
	tests := []struct {
		name, answer string
		status       int
		body         string
		trailer      string
		broken       bool
	}{
		{"splitting", "HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n", 502, "", "", false},
		{"NUL field", "HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 0\r\n\r\n", 502, "", "", false},
		{"unsolicited 101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", 502, "", "", false},
		{"not HTTP", "SSH-2.0-x\r\n\r\n", 502, "", "", false},
		{"internal fields stripped", "HTTP/1.1 200 OK\r\nSwitchyard-Secret: s\r\nContent-Length: 2\r\n\r\nok", 200, "ok", "", false},
		{"read to close", "HTTP/1.1 200 OK\r\n\r\nuntil the end", 200, "until the end", "", false},
		{"chunked with trailers", "HTTP/1.1 200 OK\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nok\r\n0\r\nX-T: 1\r\nSwitchyard-Secret: s\r\n\r\n", 200, "ok", "1", false},
		{"chunked beats length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, "ok", "", false},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", 200, "", "", true},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 200, "", "", true},
		{"head of 1xx then answer", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backend := rawBackend(t, tt.answer)
			p := newPair(t, echoApp, nil)
			p.h.cfg.Placer.(*testPlacer).vms = []placement.VM{{ID: "vm1", Addr: backend}}
			req, _ := http.NewRequest("GET", "http://"+p.fast+"/", nil)
			req.Host = "blog.alice.repl.test"
			resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
			if tt.broken && err != nil {
				return // the connection ended before a complete head: broken, as it should be
			}
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.Empty(t, resp.Header.Get("Set-Cookie"))
			assert.Empty(t, resp.Header.Get("Switchyard-Secret"))
			assert.NotEmpty(t, resp.Header.Get(HeaderRequestID))
			body, err := io.ReadAll(resp.Body)
			if tt.broken {
				assert.Error(t, err, "the client must see a broken body, not a complete one")
				return
			}
			require.NoError(t, err)
			if tt.status == 200 {
				assert.Equal(t, tt.body, string(body))
			}
			assert.Equal(t, tt.trailer, resp.Trailer.Get("X-T"))
			assert.Empty(t, resp.Trailer.Get("Switchyard-Secret"))
		})
	}
}

// TestFastPathLargeBodies moves 1 MiB (spliced) and 100 KiB (streamed, not replayable) both
// ways, and checks they arrive whole.
func TestFastPathLargeBodies(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	sum := sha256.Sum256(big)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			_, _ = w.Write(big)
			return
		}
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	p := newPair(t, app, nil)
	client := &http.Client{Transport: &http.Transport{}}
	for i := 0; i < 3; i++ { // keep-alive: the same connections carry every round
		req, _ := http.NewRequest("GET", "http://"+p.fast+"/", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := client.Do(req)
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, sum, sha256.Sum256(got))

		for _, n := range []int{100 << 10, len(big)} {
			req, _ = http.NewRequest("POST", "http://"+p.fast+"/", bytes.NewReader(big[:n]))
			req.Host = "blog.alice.repl.test"
			resp, err = client.Do(req)
			require.NoError(t, err)
			echo, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			s := sha256.Sum256(big[:n])
			assert.Equal(t, fmt.Sprintf("%d %s", n, hex.EncodeToString(s[:])), string(echo))
		}
	}
}

// TestFastPathRouteCache: a directory write is seen at once, whatever the TTL.
func TestFastPathRouteCache(t *testing.T) {
	ctx := context.Background()
	dir, err := lore.New(lore.Config{Zone: "repl.test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { dir.Close() })
	for _, id := range []string{"a", "b"} {
		_, err := dir.PutCluster(ctx, lore.Cluster{ID: id, EvalURL: "ws://127.0.0.1:1/v1/connect", Healthy: true})
		require.NoError(t, err)
	}
	_, err = dir.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "alice", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	conman := conmanStub(t, echoApp)
	placer := &testPlacer{vms: []placement.VM{{ID: "vm1", Addr: conman.URL}}}
	h, err := New(Config{Zone: "repl.test", Cluster: "a", Directory: dir, Placer: placer, Credential: testCredential,
		RouteCacheTTL: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	get := func() int {
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, 200, get())
	require.Equal(t, 200, get())
	placer.mu.Lock()
	assert.Len(t, placer.calls, 1, "the second request used the cached route")
	placer.mu.Unlock()
	_, err = dir.MoveRepl(ctx, "r1", "b")
	require.NoError(t, err)
	assert.Equal(t, 404, get(), "the move is seen at once")
}

// TestFastPathIsUsed: the common request does not go through net/http.
func TestFastPathIsUsed(t *testing.T) {
	p := newPair(t, echoApp, nil)
	got := exchange(t, p.fast, "GET /1 HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: blog.alice.repl.test\r\nConnection: close\r\n\r\n")
	require.Len(t, got, 2)
	assert.Zero(t, p.server.handoffs.Load())
	exchange(t, p.fast, "GET /1 HTTP/1.1\r\nHost: blog.alice.repl.test\r\nUpgrade: h2c\r\nConnection: close\r\n\r\n")
	assert.Equal(t, int64(1), p.server.handoffs.Load())
}

// TestStaleCachedRoute: when placement moved a repl while its route was cached, the old VM's
// conman refuses to start it again (502 with its reason); the proxy asks placement again and
// serves the request on the new VM instead of answering 502.
func TestStaleCachedRoute(t *testing.T) {
	var refuse atomic.Bool
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			w.Header().Set(conman.HeaderError, "start")
			revproxy.WriteError(w, r, http.StatusBadGateway, "repl cannot start: the repl is assigned to another VM", "")
			return
		}
		_, _ = io.WriteString(w, "old")
	}))
	t.Cleanup(old.Close)
	f := newTestFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "new") }),
		func(c *Config) { c.RouteCacheTTL = time.Hour })
	newVM := f.placer.vms[0]
	f.placer.mu.Lock()
	f.placer.vms = []placement.VM{{ID: "old", Addr: old.URL}}
	f.placer.mu.Unlock()
	resp, body := f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "old", string(body))

	// Placement moves the repl; the cached route still names the old VM.
	f.placer.mu.Lock()
	f.placer.vms = []placement.VM{newVM}
	f.placer.mu.Unlock()
	refuse.Store(true)
	resp, body = f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
	assert.Equal(t, 200, resp.StatusCode, string(body))
	assert.Equal(t, "new", string(body))
	resp, body = f.do(t, "GET", "blog.alice.repl.test", "/", nil, nil)
	assert.Equal(t, 200, resp.StatusCode, string(body))
	assert.Equal(t, "new", string(body), "the fresh route is cached")
	f.placer.mu.Lock()
	assert.Len(t, f.placer.calls, 2)
	f.placer.mu.Unlock()
}
