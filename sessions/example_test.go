package sessions_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/handover"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/sessions"
)

// staticPlacer places every repl on one VM; a real deployment passes *placement.Controlplane or
// *placement.Client.
type staticPlacer struct{ addr string }

func (p staticPlacer) Place(_ context.Context, r placement.Request) (placement.Assignment, error) {
	return placement.Assignment{Repl: r.Repl, VM: "vm-1", Addr: p.addr}, nil
}

// A complete session through the proxy: lore issues a token, the client opens the Eval URL with
// it, and the proxy attaches it to the repl's conman (here a small echo server standing in for
// conman's attach endpoint).
func ExampleProxy() {
	// conman stand-in: checks the internal credential, then echoes.
	conmanSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(conman.HeaderCredential) != "internal" {
			http.Error(w, `{"error":"bad credential"}`, http.StatusUnauthorized)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		typ, b, err := c.Read(r.Context())
		if err == nil {
			c.Write(r.Context(), typ, append([]byte("repl says: "), b...))
			c.Close(websocket.StatusNormalClosure, "shell exited")
		}
	})}
	conmanLn, _ := net.Listen("tcp", "127.0.0.1:0")
	go conmanSrv.Serve(conmanLn)
	defer conmanSrv.Close()

	// lore's side: a signing key; the proxy gets only the public half.
	_, key, _ := ed25519.GenerateKey(nil)
	issuer, _ := lore.NewIssuer(lore.IssuerConfig{Key: key, TTL: time.Minute})

	proxy, err := sessions.New(sessions.Config{
		Cluster:    "a",
		Tokens:     lore.NewKeySet(issuer.PublicKey()),
		Placer:     staticPlacer{addr: "http://" + conmanLn.Addr().String()},
		Credential: "internal",
		Mode:       sessions.Splice,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/connect", proxy)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)

	ctx := context.Background()
	token, _, _ := issuer.Issue("a", "repl-1")
	c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/v1/connect?token="+token, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	c.Write(ctx, websocket.MessageText, []byte("ls"))
	_, b, _ := c.Read(ctx)
	fmt.Println(string(b))
	_, _, err = c.Read(ctx)
	fmt.Println(websocket.CloseStatus(err))

	// A bad token is refused before any upgrade.
	_, resp, _ := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/v1/connect?token=forged", nil)
	fmt.Println(resp.StatusCode)

	// Stop: the HTTP server stops accepting, then the proxy drains the hijacked connections.
	srv.Shutdown(ctx)
	fmt.Println(proxy.Shutdown(ctx))
	// Output:
	// repl says: ls
	// StatusNormalClosure
	// 401
	// <nil>
}

// The shape of a sessions proxy's main: an SO_REUSEPORT listener so the next release can bind
// the address while this one drains, a handover.Server that answers every connection it
// accepted, and a long grace on SIGTERM (sessions are shells; they may run for hours), after
// which the rest are closed with 1001.
func ExampleProxy_Shutdown() {
	run := func(proxy *sessions.Proxy, addr string, grace time.Duration) error {
		ln, err := handover.ListenReusePort(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
		hs := handover.New(srv, ln)
		errc := make(chan error, 1)
		go func() { errc <- hs.Serve() }()

		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		select {
		case err := <-errc:
			return err
		case <-stop:
		}
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		// Stop accepting; every accepted connection is answered (sessions in setup included).
		err = hs.Shutdown(ctx)
		// Then keep the live sessions until they end or the grace runs out.
		if serr := proxy.Shutdown(ctx); errors.Is(serr, context.DeadlineExceeded) {
			err = errors.Join(err, fmt.Errorf("grace period over, remaining sessions closed with 1001: %w", serr))
		}
		return err
	}
	_ = run // e.g. run(proxy, "127.0.1.1:8443", 30*time.Hour)
}
