package connlimit_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/connlimit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs an HTTP server answering "ok" on a limited listener.
func serve(t *testing.T, cfg connlimit.Config, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(connlimit.NewListener(ln, cfg))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// dialFrom connects to addr from the loopback address from.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// get sends one request on c and returns the status line.
func get(t *testing.T, c net.Conn) string {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if err != nil {
		return "write: " + err.Error()
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read: " + err.Error()
	}
	return strings.TrimSpace(line)
}

func TestPerIP(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	addr := serve(t, connlimit.Config{Name: "t", PerIP: 3, Registerer: reg}, nil)
	var held []net.Conn
	for range 3 {
		c := dialFrom(t, "127.0.0.2", addr)
		require.Equal(t, "HTTP/1.1 200 OK", get(t, c))
		held = append(held, c)
	}
	// The fourth from the same address is told why and closed.
	require.Equal(t, "HTTP/1.1 503 Service Unavailable", get(t, dialFrom(t, "127.0.0.2", addr)))
	// Another client is not affected.
	require.Equal(t, "HTTP/1.1 200 OK", get(t, dialFrom(t, "127.0.0.3", addr)))
	// A closed connection gives its slot back.
	held[0].Close()
	require.Eventually(t, func() bool {
		c := dialFrom(t, "127.0.0.2", addr)
		ok := get(t, c) == "HTTP/1.1 200 OK"
		c.Close()
		return ok
	}, 5*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, sum(t, reg, "switchyard_connlimit_refused_total"), 1.0)
}

// sum adds up every series of the counter name in reg.
func sum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

func TestBudgetIsShared(t *testing.T) {
	b := connlimit.NewBudget(3)
	a1 := serve(t, connlimit.Config{Name: "one", PerIP: -1, Budget: b}, nil)
	a2 := serve(t, connlimit.Config{Name: "two", PerIP: -1, Budget: b}, nil)
	c1, c2, c3 := dialFrom(t, "127.0.0.4", a1), dialFrom(t, "127.0.0.5", a1), dialFrom(t, "127.0.0.6", a2)
	for _, c := range []net.Conn{c1, c2, c3} {
		require.Equal(t, "HTTP/1.1 200 OK", get(t, c))
	}
	require.EqualValues(t, 3, b.Used())
	// Over the budget every listener answers 503, whoever asks.
	require.Equal(t, "HTTP/1.1 503 Service Unavailable", get(t, dialFrom(t, "127.0.0.7", a2)))
	c1.Close()
	require.Eventually(t, func() bool { return b.Used() == 2 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, "HTTP/1.1 200 OK", get(t, dialFrom(t, "127.0.0.7", a2)))
}

func TestExempt(t *testing.T) {
	proxyAddr := netip.MustParseAddr("127.0.0.8")
	addr := serve(t, connlimit.Config{Name: "t", PerIP: 1, Exempt: func(a netip.Addr) bool { return a == proxyAddr }}, nil)
	for range 3 {
		require.Equal(t, "HTTP/1.1 200 OK", get(t, dialFrom(t, "127.0.0.8", addr)))
	}
}

func TestRateLimit(t *testing.T) {
	addr := serve(t, connlimit.Config{Name: "t", PerIP: -1},
		connlimit.RateLimit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
			connlimit.Rate{PerSecond: 0.5, Burst: 2}))
	client := func(from string) *http.Client {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		tr := &http.Transport{DialContext: d.DialContext}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}
	c := client("127.0.0.9")
	status := func(c *http.Client) (int, string) {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+addr+"/", nil)
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	for range 2 {
		code, _ := status(c)
		require.Equal(t, 200, code)
	}
	code, retry := status(c)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.NotEmpty(t, retry)
	code, _ = status(client("127.0.0.10"))
	require.Equal(t, 200, code, "another client has its own bucket")
}

// A Limiter's Allow, as hosting.Server's fast path asks it: a refusal takes nothing, so the
// handler it hands the request to refuses it too (and counts it once); IPv6 clients share
// their /64; exempt addresses always pass.
func TestLimiterAllow(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := connlimit.NewLimiter(connlimit.Rate{PerSecond: 0.001, Burst: 2, Registerer: reg,
		Exempt: func(a netip.Addr) bool { return a == netip.MustParseAddr("10.0.0.9") }})
	a := netip.MustParseAddr("192.0.2.1")
	for i := range 2 {
		if ok, _ := l.Allow(a); !ok {
			t.Fatalf("request %d refused within the burst", i)
		}
	}
	ok, wait := l.Allow(a)
	if ok || wait <= 0 {
		t.Fatalf("third request: ok=%v wait=%v, want refused with a wait", ok, wait)
	}
	// The handler behind Wrap sees the same empty bucket: 429, counted once.
	h := l.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.RemoteAddr = "192.0.2.1:1234"
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("Wrap answered %d, want 429 with Retry-After", rec.Code)
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	require.Equal(t, 1.0, mfs[0].GetMetric()[0].GetCounter().GetValue(), "Allow counts nothing; Wrap counts its 429")
	// Two addresses of one IPv6 /64 share a bucket; another /64 has its own.
	v1, v2, v3 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8:0:1::1")
	l.Allow(v1)
	l.Allow(v2)
	if ok, _ := l.Allow(v1); ok {
		t.Fatal("a /64 got more than its burst")
	}
	if ok, _ := l.Allow(v3); !ok {
		t.Fatal("another /64 was refused")
	}
	for range 5 {
		if ok, _ := l.Allow(netip.MustParseAddr("10.0.0.9")); !ok {
			t.Fatal("an exempt address was refused")
		}
	}
}
