//go:build linux

package hosting

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/connlimit"
	"github.com/switchyard-dev/switchyard/placement"
)

// Tests of hosting.Server's event loops (loop_linux.go) from the outside: a client on a
// keep-alive connection, after its first request, is served by a loop. Each test first makes
// sure the connection is in a loop (Looped), then attacks it.

// loopApp answers by path: /chunked streams, /early sends 103 first, /big/N answers N bytes,
// /block waits for release, anything else echoes (echoApp).
func loopApp(release <-chan struct{}, blocked chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case strings.HasPrefix(r.URL.Path, "/chunked/"): // one write, no length: chunked, with trailers
			var n int
			_, _ = fmt.Sscanf(r.URL.Path, "/chunked/%d", &n)
			w.Header().Set("Trailer", "X-Sum, Switchyard-Secret")
			_, _ = io.WriteString(w, strings.Repeat("c", n))
			w.Header().Set("X-Sum", fmt.Sprint(n))
			w.Header().Set("Switchyard-Secret", "must not reach the client")
		case r.URL.Path == "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			_, _ = io.WriteString(w, "after early hints")
		case strings.HasPrefix(r.URL.Path, "/big/"):
			var n int
			_, _ = fmt.Sscanf(r.URL.Path, "/big/%d", &n)
			w.Header().Set("Content-Length", fmt.Sprint(n))
			_, _ = io.WriteString(w, strings.Repeat("b", n))
		case r.URL.Path == "/block":
			blocked <- struct{}{}
			<-release
			_, _ = io.WriteString(w, "released")
		default:
			echoApp.ServeHTTP(w, r)
		}
	})
}

// inLoop makes c's connection go to a loop: one request, then it waits until the Server's loops
// hold want connections.
func (lf *loopFixture) inLoop(t *testing.T, c *client, want int) {
	t.Helper()
	require.Equal(t, http.StatusOK, c.get(parkGET))
	require.Eventually(t, func() bool { return lf.s.Looped() == want }, 10*time.Second, time.Millisecond, "want %d connections in the loops", want)
}

// read reads one answer from c (to a request of method) with its whole body, after any 1xx.
func (c *client) read(method string) (*http.Response, string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var (
		resp *http.Response
		err  error
	)
	for resp == nil || resp.StatusCode < 200 {
		if resp, err = http.ReadResponse(c.br, &http.Request{Method: method}); err != nil {
			return nil, "", err
		}
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func echoPath(t *testing.T, body string) string {
	t.Helper()
	var got struct{ Path, Body string }
	require.NoError(t, json.Unmarshal([]byte(body), &got), body)
	return got.Path + "|" + got.Body
}

// TestLoopPipelinedRequests: requests written in one go reach a loop together; every one is
// answered, in order, including one with a body in the middle (handed back to a goroutine) and
// ones the loop hands back for their answers.
func TestLoopPipelinedRequests(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), nil, nil)
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	const host = "Host: blog.alice.repl.test\r\n"
	raw := "GET /1 HTTP/1.1\r\n" + host + "\r\n" +
		"GET /2 HTTP/1.1\r\n" + host + "\r\n" +
		"POST /3 HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello" +
		"GET /chunked HTTP/1.1\r\n" + host + "\r\n" +
		"GET /4 HTTP/1.1\r\n" + host + "\r\n" +
		"HEAD /5 HTTP/1.1\r\n" + host + "\r\n" +
		"GET /6 HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n"
	_, err := io.WriteString(c.c, raw)
	require.NoError(t, err)
	want := []string{"/1|", "/2|", "/3|hello", "chunked", "/4|", "head", "/6|"}
	for i, w := range want {
		method := "GET"
		if w == "head" {
			method = "HEAD"
		}
		resp, body, err := c.read(method)
		require.NoError(t, err, "answer %d", i)
		require.Equal(t, http.StatusOK, resp.StatusCode, "answer %d: %s", i, body)
		switch w {
		case "chunked":
			assert.Equal(t, "part0;part1;part2;", body)
		case "head":
			assert.Empty(t, body)
		default:
			assert.Equal(t, w, echoPath(t, body), "answer %d", i)
		}
	}
	require.True(t, c.closedWithin(10*time.Second), "Connection: close is honoured")
}

// TestLoopHandsBack: after a loop request, requests and answers the loop does not serve itself
// are answered as the goroutine path answers them.
func TestLoopHandsBack(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), nil, nil)
	const host = "Host: blog.alice.repl.test\r\n"
	for _, tc := range []struct {
		name, raw string
		status    int
		check     func(t *testing.T, resp *http.Response, body string)
	}{
		{"small body (the loop's)", "PUT /up HTTP/1.1\r\n" + host + "Content-Length: 3\r\n\r\nabc", 200,
			func(t *testing.T, _ *http.Response, body string) { assert.Equal(t, "/up|abc", echoPath(t, body)) }},
		{"body over 16 KiB", "PUT /up HTTP/1.1\r\n" + host + "Content-Length: 20000\r\n\r\n" + strings.Repeat("u", 20000), 200,
			func(t *testing.T, _ *http.Response, body string) {
				assert.Equal(t, "/up|"+strings.Repeat("u", 20000), echoPath(t, body))
			}},
		{"chunked answer", "GET /chunked HTTP/1.1\r\n" + host + "\r\n", 200,
			func(t *testing.T, _ *http.Response, body string) { assert.Equal(t, "part0;part1;part2;", body) }},
		{"early hints", "GET /early HTTP/1.1\r\n" + host + "\r\n", 200,
			func(t *testing.T, _ *http.Response, body string) { assert.Equal(t, "after early hints", body) }},
		{"answer over 64 KiB", "GET /big/200000 HTTP/1.1\r\n" + host + "\r\n", 200,
			func(t *testing.T, _ *http.Response, body string) { assert.Equal(t, strings.Repeat("b", 200000), body) }},
		{"answer of 64 KiB", "GET /big/65536 HTTP/1.1\r\n" + host + "\r\n", 200,
			func(t *testing.T, _ *http.Response, body string) { assert.Equal(t, strings.Repeat("b", 65536), body) }},
		{"head over the loop's 64 KiB", "GET /large HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", 200,
			func(t *testing.T, _ *http.Response, body string) { assert.Equal(t, "/large|", echoPath(t, body)) }},
		{"unknown host", "GET / HTTP/1.1\r\nHost: nope.nobody.repl.test\r\n\r\n", 404, nil},
		{"not the subset", "GET / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 200, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialClient(t, lf.addr)
			lf.inLoop(t, c, 1)
			_, err := io.WriteString(c.c, tc.raw)
			require.NoError(t, err)
			resp, body, err := c.read("GET")
			require.NoError(t, err)
			require.Equal(t, tc.status, resp.StatusCode, body)
			if tc.check != nil {
				tc.check(t, resp, body)
			}
			if tc.status == 200 {
				// The connection goes on: on its goroutine or back in a loop.
				require.Equal(t, http.StatusOK, c.get(parkGET))
			}
			require.NoError(t, c.c.Close())
			require.Eventually(t, func() bool { return lf.s.Looped() == 0 }, 10*time.Second, time.Millisecond)
		})
	}
}

// TestLoopRetriesOnAnotherVM: conman answering 503 draining to a request the loop sent is
// retried on another VM, as on the goroutine path.
func TestLoopRetriesOnAnotherVM(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), nil, nil)
	var draining atomic.Bool
	var refused atomic.Int32
	drainingVM := scriptedBackend(t, func(req string, w io.Writer) bool {
		if draining.Load() {
			refused.Add(1)
			_, _ = io.WriteString(w, "HTTP/1.1 503 Service Unavailable\r\nSwitchyard-Error: draining\r\nContent-Length: 0\r\n\r\n")
			return false
		}
		_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold")
		return true
	})
	good := lf.f.placer.vms[0]
	lf.f.placer.mu.Lock()
	lf.f.placer.vms = []placement.VM{{ID: "vm-draining", Addr: "http://" + drainingVM}, good}
	lf.f.placer.mu.Unlock()
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1) // the route, cached, names the VM that is about to drain
	draining.Store(true)
	_, err := io.WriteString(c.c, "POST /retried HTTP/1.1\r\nHost: blog.alice.repl.test\r\nContent-Length: 7\r\n\r\npayload")
	require.NoError(t, err)
	resp, body, err := c.read("POST")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "/retried|payload", echoPath(t, body), "served by the other VM, body and all")
	require.Positive(t, refused.Load(), "the loop sent it to the draining VM first")
}

// rawBackend serves a conman stand-in that reads each bodyless request head and answers it
// with handle (false: close the connection after it). It returns its address.
func scriptedBackend(t *testing.T, handle func(req string, w io.Writer) bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
					}
					if !handle(head.String(), c) {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestLoopBackendMisbehaves: a conman connection closed while pooled is replaced; a body cut
// short reaches the client as a connection closed early, never as a complete answer or a
// hang; a malformed head is a 502.
func TestLoopBackendMisbehaves(t *testing.T) {
	backend := scriptedBackend(t, func(req string, w io.Writer) bool {
		path := strings.Fields(req)[1]
		switch path {
		case "/close-after": // answers, then closes its side while the connection is pooled
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return false
		case "/truncated":
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
			return false
		case "/malformed":
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Field\r\n\r\nok")
			return false
		}
		_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfine.")
		return true
	})
	lf := newLoopServer(t, echoApp, nil, nil)
	lf.f.placer.mu.Lock()
	lf.f.placer.vms = []placement.VM{{ID: "raw", Addr: "http://" + backend}}
	lf.f.placer.mu.Unlock()
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	const host = "Host: blog.alice.repl.test\r\n"
	do := func(path string) (*http.Response, string, error) {
		_, err := io.WriteString(c.c, "GET "+path+" HTTP/1.1\r\n"+host+"\r\n")
		require.NoError(t, err)
		return c.read("GET")
	}
	// The pooled connection dies between two requests: the second is sent on a new one.
	for range 3 {
		resp, body, err := do("/close-after")
		require.NoError(t, err)
		require.Equal(t, "ok", body, resp.Status)
		resp, body, err = do("/")
		require.NoError(t, err)
		require.Equal(t, "fine.", body, resp.Status)
	}

	// A truncated body: the client sees the connection end early.
	resp, body, err := do("/truncated")
	if err == nil {
		t.Fatalf("a truncated answer read as complete: %s %q", resp.Status, body)
	}
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)

	// A malformed head: 502 on a new connection.
	c = dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	resp, _, err = do("/malformed")
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
}

// TestLoopSlowReader: a client that does not read its answer fills its socket; the loop waits
// for room (EPOLLOUT) and the client gets every byte when it reads.
func TestLoopSlowReader(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), nil, nil)
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	nc, err := d.Dial("tcp", lf.addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, c: nc, br: bufio.NewReaderSize(nc, 512)}
	lf.inLoop(t, c, 1)
	for range 3 {
		_, err = io.WriteString(c.c, "GET /big/60000 HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
		require.NoError(t, err)
		time.Sleep(50 * time.Millisecond) // the loop fills the socket and waits
		resp, body, err := c.read("GET")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, strings.Repeat("b", 60000), body)
	}
	require.Equal(t, http.StatusOK, c.get(parkGET))
}

// TestLoopTimeouts: an idle connection in a loop is closed at IdleTimeout; a head trickled a
// byte at a time is cut at ReadHeaderTimeout, unanswered.
func TestLoopTimeouts(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), func(c *ServerConfig) {
		c.ParkIdleAfter = -1 // the loop keeps idle connections to IdleTimeout
		c.IdleTimeout = 300 * time.Millisecond
		c.ReadHeaderTimeout = 300 * time.Millisecond
	}, nil)
	idle := dialClient(t, lf.addr)
	slow := dialClient(t, lf.addr)
	start := time.Now() // before the idle connection's last request: its timeout starts after
	lf.inLoop(t, idle, 1)
	lf.inLoop(t, slow, 2)
	stop := make(chan struct{})
	trickled := make(chan error, 1)
	go func() {
		raw := parkGET
		for i := 0; ; i++ {
			select {
			case <-stop:
				trickled <- nil
				return
			case <-time.After(40 * time.Millisecond):
			}
			if _, err := slow.c.Write([]byte{raw[i%(len(raw)-2)]}); err != nil {
				trickled <- err
				return
			}
		}
	}()
	require.True(t, idle.closedWithin(10*time.Second), "idle connection closed")
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	require.True(t, slow.closedWithin(10*time.Second), "slowloris cut")
	close(stop)
	<-trickled
	require.Eventually(t, func() bool { return lf.s.Looped() == 0 }, 10*time.Second, time.Millisecond)
}

// TestLoopClientLeavesMidAnswer: a client that closes while conman is still answering leaves
// nothing behind: the loop lets the connection go, and the Proxy's drain count returns to zero.
func TestLoopClientLeavesMidAnswer(t *testing.T) {
	release, blocked := make(chan struct{}), make(chan struct{}, 1)
	lf := newLoopServer(t, loopApp(release, blocked), nil, nil)
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	_, err := io.WriteString(c.c, "GET /block HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
	require.NoError(t, err)
	<-blocked
	require.NoError(t, c.c.Close())
	close(release)
	require.Eventually(t, func() bool { return lf.s.Looped() == 0 }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, lf.f.h.Shutdown(ctx), "no request is left in flight")
}

// TestLoopShutdown: Shutdown closes idle connections in the loops, lets a request in flight
// finish, and then returns; per-address limits count connections in the loops.
func TestLoopShutdown(t *testing.T) {
	release, blocked := make(chan struct{}), make(chan struct{}, 1)
	lf := newLoopServer(t, loopApp(release, blocked), nil, func(l net.Listener) net.Listener {
		return connlimit.NewListener(l, connlimit.Config{Name: "loop-test", PerIP: 2, Registerer: prometheus.NewRegistry()})
	})
	idle, busy := dialClient(t, lf.addr), dialClient(t, lf.addr)
	lf.inLoop(t, idle, 1)
	lf.inLoop(t, busy, 2)
	third := dialClient(t, lf.addr)
	require.Equal(t, http.StatusServiceUnavailable, third.get(parkGET), "a third connection got past the per-address limit")

	_, err := io.WriteString(busy.c, "GET /block HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
	require.NoError(t, err)
	<-blocked
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- lf.s.Shutdown(ctx)
	}()
	require.True(t, idle.closedWithin(10*time.Second), "the idle connection is closed")
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	resp, body, err := busy.read("GET")
	require.NoError(t, err)
	require.Equal(t, "released", body, resp.Status)
	require.NoError(t, <-shut)
	require.True(t, busy.closedWithin(10*time.Second))
	require.Zero(t, lf.s.Looped())
}

// TestLoopHeadTooLarge: a head over MaxHeaderBytes sent to a connection in a loop gets net/http's
// 431, as on the goroutine path.
func TestLoopHeadTooLarge(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), func(c *ServerConfig) { c.MaxHeaderBytes = 4096 }, nil)
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	_, err := io.WriteString(c.c, "GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\nX-Big: "+strings.Repeat("x", 10<<10)+"\r\n\r\n")
	require.NoError(t, err)
	resp, _, err := c.read("GET")
	require.NoError(t, err)
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
}

// TestLoopHoldsNoGoroutines: connections in the loops hold no goroutine each, are counted as
// state "loop", and are all served again.
func TestLoopHoldsNoGoroutines(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), func(c *ServerConfig) { c.ParkIdleAfter = -1 }, nil) // none leaves for the park set
	const n = 50
	clients := make([]*client, n)
	clients[0] = dialClient(t, lf.addr)
	lf.inLoop(t, clients[0], 1) // the loops are running
	before := runtime.NumGoroutine()
	for i := 1; i < n; i++ {
		clients[i] = dialClient(t, lf.addr)
		lf.inLoop(t, clients[i], i+1)
	}
	assert.Less(t, runtime.NumGoroutine()-before, n/5, "connections in a loop keep goroutines")
	assert.Equal(t, map[string]float64{"serving": 0, "loop": n, "parked_warm": 0, "parked_cold": 0}, connGauges(t, lf.s))
	for i, c := range clients {
		_, err := io.WriteString(c.c, fmt.Sprintf("GET /again/%d HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n", i))
		require.NoError(t, err)
	}
	for i, c := range clients {
		resp, body, err := c.read("GET")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, fmt.Sprintf("/again/%d|", i), echoPath(t, body))
	}
}

// TestLoopBodyArrivesLater: a body that did not come with its head is streamed by a goroutine;
// the answer is the same.
func TestLoopBodyArrivesLater(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), nil, nil)
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	_, err := io.WriteString(c.c, "POST /later HTTP/1.1\r\nHost: blog.alice.repl.test\r\nContent-Length: 10\r\n\r\nfirst")
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond) // the loop has the head and half the body
	_, err = io.WriteString(c.c, "-half")
	require.NoError(t, err)
	resp, body, err := c.read("POST")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "/later|first-half", echoPath(t, body))
	require.Equal(t, http.StatusOK, c.get(parkGET))
}

// TestLoopChunkedAnswers: chunked answers whole within 64 KiB are re-framed by the loop, with the
// trailers the goroutine path passes (Switchyard-* dropped); longer ones are streamed by a
// goroutine; each reads the same to the client. A malformed chunked body ends the connection
// before the answer is complete.
func TestLoopChunkedAnswers(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), nil, nil)
	c := dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	for _, n := range []int{3000, 10000, 60000, 200000, 3000} {
		_, err := io.WriteString(c.c, fmt.Sprintf("GET /chunked/%d HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n", n))
		require.NoError(t, err)
		resp, body, err := c.read("GET")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, []string{"chunked"}, resp.TransferEncoding)
		require.Equal(t, strings.Repeat("c", n), body)
		assert.Equal(t, fmt.Sprint(n), resp.Trailer.Get("X-Sum"), "the app's trailer passes")
		assert.Empty(t, resp.Trailer.Get("Switchyard-Secret"), "a Switchyard-* trailer does not")
	}

	bad := scriptedBackend(t, func(req string, w io.Writer) bool {
		if strings.Contains(req, "/bad") {
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n")
			return false
		}
		_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		return true
	})
	lf.f.placer.mu.Lock()
	lf.f.placer.vms = []placement.VM{{ID: "raw", Addr: "http://" + bad}}
	lf.f.placer.mu.Unlock()
	lf.f.h.routes.forget("blog.alice.repl.test")
	c = dialClient(t, lf.addr)
	lf.inLoop(t, c, 1)
	_, err := io.WriteString(c.c, "GET /good HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
	require.NoError(t, err)
	_, body, err := c.read("GET")
	require.NoError(t, err)
	require.Equal(t, "hello", body)
	_, err = io.WriteString(c.c, "GET /bad HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
	require.NoError(t, err)
	if resp, body, err := c.read("GET"); err == nil {
		t.Fatalf("a malformed chunked answer read as complete: %s %q", resp.Status, body)
	}
}

// TestLoopManyAtOnce: more connections than one epoll batch (128) send at once; every one is
// answered with its own answer, and the loops keep yielding to the rest of the program.
func TestLoopManyAtOnce(t *testing.T) {
	lf := newLoopServer(t, loopApp(nil, nil), func(c *ServerConfig) { c.ParkIdleAfter = -1; c.EventLoops = 1 }, nil)
	const n = 300
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = dialClient(t, lf.addr)
		require.Equal(t, http.StatusOK, clients[i].get(parkGET))
	}
	require.Eventually(t, func() bool { return lf.s.Looped() == n }, 10*time.Second, time.Millisecond)
	for round := range 3 {
		for i, c := range clients {
			_, err := io.WriteString(c.c, fmt.Sprintf("GET /many/%d/%d HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n", round, i))
			require.NoError(t, err)
		}
		for i, c := range clients {
			resp, body, err := c.read("GET")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, fmt.Sprintf("/many/%d/%d|", round, i), echoPath(t, body))
		}
	}
}
