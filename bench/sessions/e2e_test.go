package main

// The end-to-end test of sessions.Proxy lives here, beside the load program, rather than in
// package sessions: it needs real conman Servers (and so conman/process), and keeping them out of
// the proxy package's test binary keeps its unit tests independent of conman.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/sessions"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	process.Init() // the test binary is the containers' init
	goleak.VerifyTestMain(m)
}

const (
	sessTestCluster    = "a"
	sessTestCredential = "internal-secret"
)

// sessTestModes: Splice on goroutines, Splice on an event loop (EventLoops 1), Frame.
var sessTestModes = []struct {
	name  string
	mode  sessions.RelayMode
	loops int
}{{"splice", sessions.Splice, 0}, {"splice-loop", sessions.Splice, 1}, {"frame", sessions.Frame, 0}}

func newSessTestIssuer(t *testing.T) *lore.Issuer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := lore.NewIssuer(lore.IssuerConfig{Key: priv, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// sessTestStages reads switchyard_proxy_sessions_total by stage from a registry.
func sessTestStages(t *testing.T, reg *prometheus.Registry) (map[string]int, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	var retries float64
	for _, mf := range mfs {
		switch mf.GetName() {
		case "switchyard_proxy_sessions_total":
			for _, m := range mf.GetMetric() {
				if v := int(m.GetCounter().GetValue()); v > 0 {
					out[m.GetLabel()[0].GetValue()] = v
				}
			}
		case "switchyard_proxy_session_retries_total":
			retries = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return out, retries
}

// TestSessionsEndToEnd runs the whole session path with the real pieces: tokens from lore's
// Issuer verified by its KeySet, the real placement.Controlplane, and two real conman Servers
// (process runtime, shells on ptys) registered by their agents, plus a registered VM whose
// address refuses connections. Every session reaches a shell, whichever VM placement picks
// first; a conman drain (1012) reaches the client as 1012 and counts as a backend failure.
func TestSessionsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containers")
	}
	for _, m := range sessTestModes {
		t.Run(m.name, func(t *testing.T) { sessTestEndToEnd(t, m.mode, m.loops) })
	}
}

func sessTestEndToEnd(t *testing.T, mode sessions.RelayMode, loops int) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cp, err := placement.New(placement.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}

	var servers []*conman.Server
	for i := range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rt, err := process.New(process.Config{StateDir: t.TempDir(), Isolation: process.None})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rt.Close() })
		srv, err := conman.New(ctx, conman.Config{
			Runtime:    rt,
			Credential: sessTestCredential,
			Placement:  cp,
			VM:         placement.VM{ID: fmt.Sprintf("vm-%d", i), Addr: "http://" + ln.Addr().String()},
			Logger:     quiet,
		})
		if err != nil {
			t.Fatal(err)
		}
		hs := &httptest.Server{Listener: ln, Config: &http.Server{Handler: srv}}
		hs.Start()
		t.Cleanup(func() {
			hs.Close()
			sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			srv.Shutdown(sctx)
		})
		servers = append(servers, srv)
	}
	// A VM placement believes in but whose conman is gone.
	gone, _ := net.Listen("tcp", "127.0.0.1:0")
	gone.Close()
	if _, err := cp.Register(ctx, placement.VM{ID: "vm-gone", Addr: "http://" + gone.Addr().String(), State: placement.Active}); err != nil {
		t.Fatal(err)
	}

	iss := newSessTestIssuer(t)
	reg := prometheus.NewRegistry()
	p, err := sessions.New(sessions.Config{
		Cluster:      sessTestCluster,
		Tokens:       lore.NewKeySet(iss.PublicKey()),
		Placer:       cp,
		Credential:   sessTestCredential,
		Mode:         mode,
		EventLoops:   loops,
		RetryBackoff: time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(sessTestTLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:   reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	url := "ws" + strings.TrimPrefix(front.URL, "http") + "/v1/connect?cols=100&rows=30&token="

	const repls = 6
	for i := range repls {
		tok, _, _ := iss.Issue(sessTestCluster, fmt.Sprintf("repl-%d", i))
		c, _, err := websocket.Dial(ctx, url+tok, nil)
		if err != nil {
			t.Fatalf("repl-%d: %v", i, err)
		}
		c.Write(ctx, websocket.MessageBinary, []byte("stty size; echo answer=$((6*7)); exit\n"))
		var out strings.Builder
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				if code := websocket.CloseStatus(err); code != websocket.StatusNormalClosure {
					t.Errorf("repl-%d: closed with %v (%v)", i, code, err)
				}
				break
			}
			out.Write(b)
		}
		if !strings.Contains(out.String(), "answer=42") || !strings.Contains(out.String(), "30 100") {
			t.Errorf("repl-%d: shell output %q", i, out.String())
		}
	}

	// A live session on a VM that drains: the client sees conman's 1012.
	tok, _, _ := iss.Issue(sessTestCluster, "repl-drain")
	c, _, err := websocket.Dial(ctx, url+tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageBinary, []byte("echo ready\n"))
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "ready\r\n") || strings.Contains(string(b), "ready\n") {
			break
		}
	}
	asg, err := cp.Lookup(ctx, "repl-drain")
	if err != nil {
		t.Fatal(err)
	}
	var draining *conman.Server
	for i, s := range servers {
		if asg.VM == fmt.Sprintf("vm-%d", i) {
			draining = s
		}
	}
	if draining == nil {
		t.Fatalf("repl-drain placed on %q", asg.VM)
	}
	go func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		draining.Shutdown(sctx)
	}()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != conman.CloseDraining {
				t.Errorf("after conman drain: %v (%v), want 1012", code, err)
			}
			break
		}
	}

	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := p.Shutdown(sctx); err != nil && !errors.Is(err, sessions.ErrClosed) {
		t.Fatal(err)
	}
	stages, retries := sessTestStages(t, reg)
	if stages[sessions.StageOK] != repls || stages[sessions.StageBackend] != 1 || len(stages) != 2 {
		t.Errorf("stages = %v, want ok:%d backend:1", stages, repls)
	}
	t.Logf("retries across %d sessions: %v", repls+1, retries)
	// On an event loop every session was taken in and handed back exactly once (at its close,
	// conman's 1012, or drain); without loops none was.
	if got := sessTestHandbacks(t, reg); (loops > 0 && (got["total"] != repls+1 || got["refused"] != 0)) || (loops == 0 && got["total"] != 0) {
		t.Errorf("event loop hand-backs = %v with EventLoops %d, want %d, none refused", got, loops, repls+1)
	}
}

// sessTestHandbacks reads switchyard_proxy_session_loop_handbacks_total by reason, and their
// sum as "total".
func sessTestHandbacks(t *testing.T, reg *prometheus.Registry) map[string]int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, mf := range mfs {
		if mf.GetName() == "switchyard_proxy_session_loop_handbacks_total" {
			for _, m := range mf.GetMetric() {
				if v := int(m.GetCounter().GetValue()); v > 0 {
					out[m.GetLabel()[0].GetValue()] = v
					out["total"] += v
				}
			}
		}
	}
	return out
}

type sessTestTLog struct{ t *testing.T }

func (w sessTestTLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
