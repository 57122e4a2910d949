package handover

import (
	"context"
	"net"
	"net/http"

	"github.com/switchyard-dev/switchyard/internal/drain"
)

// Server serves an http.Server on a listener — normally one from ListenReusePort — and stops
// it for a deploy without dropping a connection it accepted. Use it instead of calling
// srv.Serve and srv.Shutdown yourself:
//
//	ln, err := handover.ListenReusePort(ctx, "tcp", ":8443")
//	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
//	hs := handover.New(srv, ln)
//	go hs.Serve()
//	// … the new process is listening on the same address (it says so: a readiness signal) …
//	err = hs.Shutdown(ctx)                           // stop accepting; answer every accepted connection
//	err = errors.Join(err, proxy.Shutdown(graceCtx)) // then drain the live sessions
//
// Shutdown closes the listener itself, turns keep-alives off, waits until every accepted
// connection has had its request answered or hijacked (sessions in setup included), and only
// then calls http.Server.Shutdown. Drain hijacked connections (sessions.Proxy.Shutdown,
// hosting.Proxy.Shutdown) after it, never before: a draining proxy answers 503 to requests
// still arriving on accepted connections.
type Server struct {
	d *drain.Server
}

// New prepares srv to serve on ln (give it the listener Serve would get; wrap it with
// tls.NewListener first for TLS). It installs a srv.ConnState hook, which calls any hook already
// set: call it before serving and do not change srv.ConnState afterwards.
func New(srv *http.Server, ln net.Listener) *Server {
	return &Server{d: drain.NewServer(srv, ln)}
}

// Serve serves until Shutdown, then returns http.ErrServerClosed.
func (s *Server) Serve() error { return s.d.Serve() }

// Shutdown stops accepting and returns once every connection accepted before has been answered,
// hijacked (a WebSocket session, which sessions.Proxy.Shutdown then drains) or closed, and
// http.Server.Shutdown has finished. A connection that sends nothing for five seconds is closed,
// as http.Server.Shutdown does. When ctx ends first, it returns ctx.Err() with the listener
// closed and the remaining connections still being served: call Shutdown again to keep
// waiting, or http.Server.Close to cut them.
func (s *Server) Shutdown(ctx context.Context) error { return s.d.Shutdown(ctx) }
