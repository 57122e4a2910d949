package proxy

import (
	"context"
	"net"
	"net/http"

	"github.com/switchyard-dev/switchyard/internal/drain"
)

// Handover serves an http.Server on a listener — normally one from ListenReusePort — and stops
// it for a deploy without dropping a connection it accepted. Use it instead of calling
// srv.Serve and srv.Shutdown yourself:
//
//	ln, err := proxy.ListenReusePort(ctx, "tcp", ":8443")
//	srv := &http.Server{Handler: sessions, ReadHeaderTimeout: 10 * time.Second}
//	h := proxy.NewHandover(srv, ln)
//	go h.Serve()
//	// … the new process is listening on the same address (it says so: a readiness signal) …
//	err = h.Shutdown(ctx)                    // stop accepting; answer every accepted connection
//	err = errors.Join(err, sessions.Shutdown(graceCtx)) // then drain the live sessions
//
// Why not http.Server.Shutdown: it answers nothing to a request it reads after Shutdown began,
// even the first request of a connection the kernel handed to this process just before its
// listener closed (net/http checks shuttingDown right after reading a request and closes the
// connection; the client sees EOF). The new process never sees that connection, so a deploy
// would drop it. Under CPU load the window between accept and reading the request is wide
// enough to lose a connection in about one handover in ten.
//
// Handover.Shutdown closes the listener itself (with net.ipv4.tcp_migrate_req = 1 the kernel
// moves connections still queued on it to the new process's listener), turns keep-alives off,
// waits until every accepted connection has had its request answered or hijacked (sessions in
// setup included), and only then calls http.Server.Shutdown. Call Sessions.Shutdown after it,
// never before: a draining Sessions answers 503 to requests still arriving on accepted
// connections.
type Handover struct {
	d *drain.Server
}

// NewHandover prepares srv to serve on ln (give it the listener Serve would get; wrap it with
// tls.NewListener first for TLS). It installs a srv.ConnState hook, which calls any hook already
// set: call it before serving and do not change srv.ConnState afterwards.
func NewHandover(srv *http.Server, ln net.Listener) *Handover {
	return &Handover{d: drain.NewServer(srv, ln)}
}

// Serve serves until Shutdown, then returns http.ErrServerClosed.
func (h *Handover) Serve() error { return h.d.Serve() }

// Shutdown stops accepting and returns once every connection accepted before has been answered,
// hijacked (a WebSocket session, which Sessions.Shutdown then drains) or closed, and
// http.Server.Shutdown has finished. A connection that sends nothing for five seconds is closed,
// as http.Server.Shutdown does. When ctx ends first, it returns ctx.Err() with the listener
// closed and the remaining connections still being served: call Shutdown again to keep
// waiting, or http.Server.Close to cut them.
func (h *Handover) Shutdown(ctx context.Context) error { return h.d.Shutdown(ctx) }
