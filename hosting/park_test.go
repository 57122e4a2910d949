package hosting

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/connlimit"
)

const parkGET = "GET /park HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n"

// newParkServer serves a test Proxy with a Server configured by mod, on a listener wrap may wrap.
func newParkServer(t *testing.T, mod func(*ServerConfig), wrap func(net.Listener) net.Listener) (*Server, string) {
	t.Helper()
	lf := newLoopServer(t, echoApp, func(c *ServerConfig) {
		c.ParkIdleAfter, c.EventLoops = 20*time.Millisecond, -1 // loop_attack_test.go tests the loops
		if mod != nil {
			mod(c)
		}
	}, wrap)
	return lf.s, lf.addr
}

// loopFixture is a test Proxy served by a Server.
type loopFixture struct {
	f    *testFixture
	s    *Server
	addr string
}

// newLoopServer serves a test Proxy in front of app with a Server configured by mod, on a
// listener wrap may wrap.
func newLoopServer(t *testing.T, app http.Handler, mod func(*ServerConfig), wrap func(net.Listener) net.Listener) *loopFixture {
	t.Helper()
	f := newTestFixture(t, app, nil)
	cfg := ServerConfig{Proxy: f.h}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewServer(cfg)
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	if wrap != nil {
		l = wrap(l)
	}
	serveFast(t, s, l, nil)
	return &loopFixture{f: f, s: s, addr: addr}
}

// client is a keep-alive connection to a Server.
type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialClient(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// get sends raw and returns the status of the answer (0 when the connection ended).
func (c *client) get(raw string) int {
	c.t.Helper()
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.c, raw); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// closedWithin reports whether the server closes the connection within d.
func (c *client) closedWithin(d time.Duration) bool {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.ReadByte()
	return err == io.EOF
}

func waitParked(t *testing.T, s *Server, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		warm, cold := s.park.Stats()
		if s.cfg.ParkColdAfter > 0 && s.cfg.ParkColdAfter < time.Second {
			return warm == 0 && cold == n // all cold: the test then wakes cold connections
		}
		return warm+cold == n
	}, 10*time.Second, 2*time.Millisecond, "want %d parked connections", n)
}

// parkModes runs f with parked connections that stay warm, and with ones that go cold at once.
func parkModes(t *testing.T, f func(t *testing.T, mod func(*ServerConfig))) {
	t.Run("warm", func(t *testing.T) { f(t, func(c *ServerConfig) { c.ParkColdAfter = -1 }) })
	t.Run("cold", func(t *testing.T) { f(t, func(c *ServerConfig) { c.ParkColdAfter = time.Nanosecond }) })
}

func TestServerParksIdleConnections(t *testing.T) {
	parkModes(t, func(t *testing.T, mode func(*ServerConfig)) {
		s, addr := newParkServer(t, mode, nil)
		const n = 100
		clients := make([]*client, n)
		for i := range clients {
			clients[i] = dialClient(t, addr)
			require.Equal(t, http.StatusOK, clients[i].get(parkGET))
		}
		waitParked(t, s, n)
		warm, cold := s.park.Stats()
		require.Equal(t, map[string]float64{"serving": 0, "loop": 0, "parked_warm": float64(warm), "parked_cold": float64(cold)}, connGauges(t, s))
		// Parked connections hold no goroutine each (a few of the Server's own stay).
		require.Less(t, runtime.NumGoroutine(), n/2, "parked connections keep goroutines")

		// Each is served again, on the same connection, and parks again.
		for _, c := range clients {
			require.Equal(t, http.StatusOK, c.get(parkGET))
			require.Equal(t, http.StatusOK, c.get(parkGET))
		}
		waitParked(t, s, n)
	})
}

func TestParkedConnectionKeepsItsTimeouts(t *testing.T) {
	parkModes(t, func(t *testing.T, mode func(*ServerConfig)) {
		s, addr := newParkServer(t, func(c *ServerConfig) {
			mode(c)
			c.IdleTimeout = 300 * time.Millisecond
			c.ReadHeaderTimeout = 300 * time.Millisecond
		}, nil)

		idle := dialClient(t, addr)
		require.Equal(t, http.StatusOK, idle.get(parkGET))
		silent := dialClient(t, addr) // never sends a request
		waitParked(t, s, 2)
		start := time.Now()
		require.True(t, idle.closedWithin(5*time.Second), "an idle parked connection is closed at IdleTimeout")
		require.True(t, silent.closedWithin(5*time.Second), "a silent parked connection is closed at ReadHeaderTimeout")
		require.Less(t, time.Since(start), 2*time.Second)
		require.Equal(t, 0, s.Parked())
	})
}

// TestParkedSlowloris: a client that trickles a request head one byte at a time, slower than
// ParkIdleAfter, must not keep its connection past the header timeout by waking it again and
// again.
func TestParkedSlowloris(t *testing.T) {
	_, addr := newParkServer(t, func(c *ServerConfig) {
		c.ReadHeaderTimeout = 400 * time.Millisecond
	}, nil)
	c := dialClient(t, addr)
	start := time.Now()
	for i := 0; ; i++ {
		require.Less(t, time.Since(start), 5*time.Second, "the server kept a slowloris connection")
		_ = c.c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.c.Write([]byte{parkGET[i%len(parkGET)]}); err != nil {
			break
		}
		if c.closedWithin(50 * time.Millisecond) {
			break
		}
	}
	require.Less(t, time.Since(start), 3*time.Second)
}

// TestParkPipelinedHalf: bytes of the next request already read are never parked away.
func TestParkPipelinedHalf(t *testing.T) {
	s, addr := newParkServer(t, nil, nil)
	c := dialClient(t, addr)
	half := len(parkGET) / 2
	require.Equal(t, http.StatusOK, c.get(parkGET+parkGET[:half]))
	time.Sleep(100 * time.Millisecond) // well past ParkIdleAfter
	require.Equal(t, 0, s.Parked(), "a connection with part of a request buffered was parked")
	require.Equal(t, http.StatusOK, c.get(parkGET[half:]))
}

func TestShutdownWithParkedConnections(t *testing.T) {
	parkModes(t, func(t *testing.T, mode func(*ServerConfig)) {
		f := newTestFixture(t, echoApp, nil)
		cfg := ServerConfig{Proxy: f.h, ParkIdleAfter: 20 * time.Millisecond, EventLoops: -1} // loop_test.go tests the loops
		mode(&cfg)
		s, err := NewServer(cfg)
		require.NoError(t, err)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- s.Serve(l) }()

		idle := dialClient(t, l.Addr().String())
		require.Equal(t, http.StatusOK, idle.get(parkGET))
		fresh := dialClient(t, l.Addr().String())
		waitParked(t, s, 2)

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- s.Shutdown(ctx)
		}()
		require.True(t, idle.closedWithin(5*time.Second), "Shutdown closes an idle parked connection")
		// A connection that has not sent its first request may still send it, and is answered.
		require.Equal(t, http.StatusOK, fresh.get(parkGET))
		require.NoError(t, <-done)
		require.ErrorIs(t, <-served, http.ErrServerClosed)
		require.Equal(t, 0, s.Parked())
	})
}

func TestCloseWithParkedConnections(t *testing.T) {
	f := newTestFixture(t, echoApp, nil)
	s, err := NewServer(ServerConfig{Proxy: f.h, ParkIdleAfter: 20 * time.Millisecond, EventLoops: -1})
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	c := dialClient(t, l.Addr().String())
	require.Equal(t, http.StatusOK, c.get(parkGET))
	waitParked(t, s, 1)
	require.NoError(t, s.Close())
	require.True(t, c.closedWithin(5*time.Second))
	<-served
}

// TestParkedConnectionsStayCounted: connlimit's per-address limit counts parked connections, so
// a client cannot open more than its share by letting them idle.
func TestParkedConnectionsStayCounted(t *testing.T) {
	parkModes(t, func(t *testing.T, mode func(*ServerConfig)) {
		s, addr := newParkServer(t, mode, func(l net.Listener) net.Listener {
			return connlimit.NewListener(l, connlimit.Config{Name: "park-test", PerIP: 2, Registerer: prometheus.NewRegistry()})
		})
		a, b := dialClient(t, addr), dialClient(t, addr)
		require.Equal(t, http.StatusOK, a.get(parkGET))
		require.Equal(t, http.StatusOK, b.get(parkGET))
		waitParked(t, s, 2)
		third := dialClient(t, addr)
		require.Equal(t, http.StatusServiceUnavailable, third.get(parkGET), "a third connection got past the per-address limit")

		// A parked connection is served through its wrapper, and closing it frees its place.
		require.Equal(t, http.StatusOK, a.get(parkGET))
		require.NoError(t, b.c.Close())
		require.Eventually(t, func() bool {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return false
			}
			defer c.Close()
			cl := &client{t: t, c: c, br: bufio.NewReader(c)}
			return cl.get(parkGET) == http.StatusOK
		}, 10*time.Second, 20*time.Millisecond)
	})
}

func TestParkingOff(t *testing.T) {
	s, addr := newParkServer(t, func(c *ServerConfig) { c.ParkIdleAfter = -1 }, nil)
	c := dialClient(t, addr)
	require.Equal(t, http.StatusOK, c.get(parkGET))
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 0, s.Parked())
	require.Equal(t, http.StatusOK, c.get(parkGET))
}

// connGauges returns switchyard_hosting_client_connections by state.
func connGauges(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newServerCollector(s))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		require.Equal(t, "switchyard_hosting_client_connections", mf.GetName())
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	return out
}
