package sessions

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// TestSessionsDrainByteExact: Shutdown refuses new sessions at once but every live session keeps
// relaying, byte-exact, until its client ends it; Shutdown then returns nil.
func TestSessionsDrainByteExact(t *testing.T) {
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) {
			e := newTestEnv(t, mode, nil)
			const sessions, rounds = 6, 40
			conns := make([]*websocket.Conn, sessions)
			for i := range conns {
				c, err := e.dial(context.Background(), "r1")
				if err != nil {
					t.Fatal(err)
				}
				testReadBanner(t, c)
				conns[i] = c
			}
			shutdown := make(chan error, 1)
			go func() { shutdown <- e.proxy.Shutdown(context.Background()) }()
			// Wait until Shutdown took effect: a new session is refused with 503.
			for {
				r := testHTTP(t, e.url+"?token="+e.token("r2"), nil)
				if r.status == http.StatusServiceUnavailable && strings.Contains(r.errSubstr, "draining") {
					break
				}
				t.Fatalf("new session during drain: %+v", r)
			}
			var wg sync.WaitGroup
			for i, c := range conns {
				wg.Go(func() {
					rng := mrand.New(mrand.NewPCG(uint64(i), 7))
					for r := range rounds {
						msg := make([]byte, 1+rng.IntN(200<<10))
						rand.Read(msg)
						typ := websocket.MessageBinary
						if r%5 == 0 {
							typ = websocket.MessageText
							msg = bytes.Repeat([]byte("é"), 1+len(msg)/4)
						}
						testEcho(t, c, typ, msg)
					}
				})
			}
			wg.Wait()
			select {
			case err := <-shutdown:
				t.Fatalf("Shutdown returned %v with %d live sessions", err, e.proxy.Active())
			default:
			}
			if e.proxy.Active() != sessions {
				t.Fatalf("Active = %d", e.proxy.Active())
			}
			for _, c := range conns {
				c.Close(websocket.StatusNormalClosure, "done")
			}
			if err := <-shutdown; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if got := e.stages(); got[StageOK] != sessions || got[StageLimit] != 1 || len(got) != 2 {
				t.Errorf("stages = %v", got)
			}
		})
	}
}

// TestSessionsDrainDeadline: when Shutdown's context ends, every remaining session gets a
// well-formed 1001 close frame and Shutdown returns the context's error.
func TestSessionsDrainDeadline(t *testing.T) {
	for _, mode := range testModes {
		t.Run(testModeName(mode), func(t *testing.T) {
			e := newTestEnv(t, mode, nil)
			var conns []*websocket.Conn
			for range 3 {
				c, err := e.dial(context.Background(), "r1")
				if err != nil {
					t.Fatal(err)
				}
				defer c.CloseNow()
				testReadBanner(t, c)
				testEcho(t, c, websocket.MessageBinary, make([]byte, 100<<10))
				conns = append(conns, c)
			}
			// One more session is busy: conman streams to it without pause, so the relay is
			// mostly mid-frame when the grace ends; the 1001 must still land between frames.
			busy, err := e.dial(context.Background(), "r1")
			if err != nil {
				t.Fatal(err)
			}
			defer busy.CloseNow()
			testReadBanner(t, busy)
			busy.Write(context.Background(), websocket.MessageText, []byte("flood"))
			busyDone := make(chan error, 1)
			go func() {
				for {
					_, b, err := busy.Read(context.Background())
					if err != nil {
						busyDone <- err
						return
					}
					if len(b) != 3000 {
						busyDone <- fmt.Errorf("flood message of %d bytes", len(b))
						return
					}
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if err := e.proxy.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
			}
			if err := <-busyDone; websocket.CloseStatus(err) != websocket.StatusGoingAway {
				t.Errorf("busy client saw %v, want 1001", err)
			}
			for _, c := range conns {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _, err := c.Read(rctx)
				rcancel()
				if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
					t.Errorf("client saw %v (%v), want 1001", code, err)
				}
			}
			if e.proxy.Active() != 0 {
				t.Errorf("Active = %d after Shutdown", e.proxy.Active())
			}
			if got := e.stages(); got[StageOK] != 4 || len(got) != 1 {
				t.Errorf("stages = %v", got)
			}
		})
	}
}

// pipeListener is an in-memory listener (net.Pipe) so a whole proxy can run inside a
// synctest bubble, where time is fake and real sockets are not allowed.
type pipeListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

func (l *pipeListener) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.ch <- b:
		return a, nil
	case <-l.done:
		return nil, errors.New("connection refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestSessionsDrainThirtyHours runs the proxy, conman and client over in-memory pipes inside a
// synctest bubble, so the clock is fake: a 30-hour grace keeps a session (pinged every 30 s in
// frame mode) alive and byte-exact for 29 h 59 min, then closes it with 1001 and Shutdown
// returns DeadlineExceeded; and a drain whose last session ends after 10 h returns right then.
//
// The event loop takes only TCP sockets, so it is not in this test: the real-TCP drain tests
// above run it.
func TestSessionsDrainThirtyHours(t *testing.T) {
	for _, mode := range []RelayMode{Splice, Frame} {
		t.Run(testModeName(mode)+"/grace runs out", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testLongDrain(t, mode, false) })
		})
		t.Run(testModeName(mode)+"/last session ends", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testLongDrain(t, mode, true) })
		})
	}
}

func testLongDrain(t *testing.T, mode RelayMode, endEarly bool) {
	iss := newTestIssuer(t, nil)
	conmanLn := newPipeListener()
	conman := &testConman{id: "vm-1"}
	cmux := http.NewServeMux()
	cmux.HandleFunc("GET /v1/repls/{id}/attach", conman.attach)
	conmanSrv := &http.Server{Handler: cmux}
	go conmanSrv.Serve(conmanLn)

	p, err := New(Config{
		Cluster:     testCluster,
		Tokens:      lore.NewKeySet(iss.PublicKey()),
		Credential:  testCredential,
		Mode:        mode,
		Placer:      &testPlacer{vms: []placement.VM{{ID: "vm-1", Addr: "http://vm-1.test:8600"}}},
		DialContext: conmanLn.DialContext,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer:  prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	proxyLn := newPipeListener()
	proxySrv := &http.Server{Handler: p}
	go proxySrv.Serve(proxyLn)
	tr := &http.Transport{DialContext: proxyLn.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()

	tok, _, _ := iss.Issue(testCluster, "r1")
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws://eval.test/v1/connect?token="+tok, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	// A reader that keeps answering the proxy's pings while the test sleeps for hours.
	type msg struct {
		b   []byte
		err error
	}
	in := make(chan msg, 1)
	go func() {
		for {
			_, b, err := c.Read(ctx)
			in <- msg{b, err}
			if err != nil {
				return
			}
		}
	}()
	if m := <-in; m.err != nil || !strings.HasPrefix(string(m.b), "hello") {
		t.Fatalf("banner %q %v", m.b, m.err)
	}
	echo := func(s string) {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageBinary, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if m := <-in; m.err != nil || string(m.b) != s {
			t.Fatalf("echo %q: %q %v", s, m.b, m.err)
		}
	}
	echo("before")

	start := time.Now()
	grace, cancel := context.WithTimeout(ctx, 30*time.Hour)
	defer cancel()
	shutdown := make(chan error, 1)
	var shutdownAt time.Time
	go func() {
		err := p.Shutdown(grace)
		shutdownAt = time.Now()
		shutdown <- err
	}()
	synctest.Wait()

	if endEarly {
		time.Sleep(10 * time.Hour)
		echo("after 10 hours")
		c.Close(websocket.StatusNormalClosure, "")
		if err := <-shutdown; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if d := shutdownAt.Sub(start); d > 10*time.Hour+time.Second {
			t.Errorf("Shutdown returned %v after the start, want within a second of 10 h", d)
		}
	} else {
		time.Sleep(29*time.Hour + 59*time.Minute)
		echo("after 29h59m")
		select {
		case err := <-shutdown:
			t.Fatalf("Shutdown returned %v before the grace ran out", err)
		default:
		}
		time.Sleep(2 * time.Minute)
		m := <-in
		if code := websocket.CloseStatus(m.err); code != websocket.StatusGoingAway {
			t.Errorf("client saw %v (%v), want 1001", code, m.err)
		}
		if err := <-shutdown; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if d := shutdownAt.Sub(start); d < 30*time.Hour || d > 30*time.Hour+2*time.Second {
			t.Errorf("Shutdown returned after %v", d)
		}
	}
	proxySrv.Close()
	proxyLn.Close()
	conmanSrv.Close()
	conmanLn.Close()
	c.CloseNow()
	synctest.Wait()
}
