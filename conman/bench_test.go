package conman_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
)

type latencies []time.Duration

func (l latencies) report(b *testing.B, name string) {
	if len(l) == 0 {
		return
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	p := func(q float64) float64 {
		return float64(l[min(len(l)-1, int(q*float64(len(l))))].Microseconds()) / 1000
	}
	b.ReportMetric(p(0.50), name+"-p50-ms")
	b.ReportMetric(p(0.99), name+"-p99-ms")
}

func benchServer(b *testing.B, spec func(context.Context, string) (conman.Spec, error)) (*conman.Server, *httptest.Server) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	rt, err := process.New(process.Config{StateDir: b.TempDir(), CgroupParent: "switchyard-bench-conman"})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := conman.New(context.Background(), conman.Config{Runtime: rt, Credential: testCredential, Spec: spec, StopGrace: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = srv.Shutdown(ctx)
		ts.Close()
		rt.Close()
	})
	return srv, ts
}

// BenchmarkAttachFirstByte: WebSocket attach to a repl whose container is not running, until
// the first byte of the shell's prompt arrives (cold start + exec + pty + WebSocket).
func BenchmarkAttachFirstByte(b *testing.B) {
	srv, ts := benchServer(b, nil)
	ctx := context.Background()
	u := "ws" + strings.TrimPrefix(ts.URL, "http") + "/v1/repls/%s/attach"
	hdr := http.Header{conman.HeaderCredential: {testCredential}}
	var lat latencies
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("a%d", i)
		t0 := time.Now()
		c, _, err := websocket.Dial(ctx, fmt.Sprintf(u, id), &websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		c.Close(websocket.StatusNormalClosure, "")
		_ = srv.Stop(ctx, id)
		b.StartTimer()
	}
	lat.report(b, "first-byte")
}

// BenchmarkForward: a hosting request through conman to a running repl's web app (warm).
func BenchmarkForward(b *testing.B) {
	_, ts := benchServer(b, webAppSpec)
	req, _ := http.NewRequest("GET", ts.URL+"/bench", nil)
	req.Header.Set(conman.HeaderCredential, testCredential)
	req.Header.Set(conman.HeaderRepl, "fwd1")
	cl := ts.Client()
	do := func() {
		resp, err := cl.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
	do() // start the repl
	var lat latencies
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		do()
		lat = append(lat, time.Since(t0))
	}
	lat.report(b, "req")
}

// BenchmarkUpgradeInPlace: a conman generation hands over to the next (Handoff,
// ReceiveHandoff, a new Runtime and Server adopting everything) under n live attach sessions,
// each of which has just typed a command: handoff-ms is the upgrade itself, pause-ms the
// longest any session waited for its command's output.
func BenchmarkUpgradeInPlace(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	for _, n := range []int{1, 50} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			stateDir := b.TempDir()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			g := startGeneration(b, stateDir, ln, nil)
			ctx := context.Background()
			u := "ws://" + ln.Addr().String() + "/v1/repls/bench1/attach"
			hdr := http.Header{conman.HeaderCredential: {testCredential}}
			terms := make([]*term, n)
			conns := make([]*websocket.Conn, n)
			for i := range n {
				c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: hdr})
				if err != nil {
					b.Fatal(err)
				}
				conns[i], terms[i] = c, readTerm(c)
				waitOutput(b, terms[i], "# ")
			}
			var handoff, pause latencies
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				want := fmt.Sprintf("%dX\r\n", 100000+i)
				t0 := time.Now()
				for _, c := range conns {
					if err := c.Write(ctx, websocket.MessageBinary, []byte(fmt.Sprintf("echo $((100000+%d))X\n", i))); err != nil {
						b.Fatal(err)
					}
				}
				g = g.upgrade(b, stateDir)
				handoff = append(handoff, time.Since(t0))
				for _, tm := range terms {
					waitOutput(b, tm, want)
				}
				pause = append(pause, time.Since(t0))
			}
			b.StopTimer()
			handoff.report(b, "handoff")
			pause.report(b, "pause")
			for _, c := range conns {
				c.Close(websocket.StatusNormalClosure, "")
			}
			g.stop(b)
		})
	}
}

// waitOutput polls tm for want (every 100 µs, for a fine measure).
func waitOutput(b *testing.B, tm *term, want string) {
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(tm.String(), want) {
		if time.Now().After(deadline) {
			b.Fatalf("no %q in %q", want, tm.String())
		}
		time.Sleep(100 * time.Microsecond)
	}
}
