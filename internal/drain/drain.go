// Package drain tracks the in-flight requests of an HTTP handler and the connections they
// hijack (WebSocket upgrades), so the handler can drain: http.Server.Shutdown waits for requests
// but not for hijacked connections, which a proxy must track itself.
package drain

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// CloseWait bounds how long Shutdown waits for handlers after it closed their hijacked
// connections at the deadline.
const CloseWait = 5 * time.Second

// Tracker counts in-flight requests and tracks hijacked connections. The zero value is ready.
type Tracker struct {
	// OnUpgraded, if set before use, is called with the number of tracked connections after
	// each change (for a gauge).
	OnUpgraded func(n int)

	mu       sync.Mutex
	closing  bool
	inflight int
	idle     chan struct{} // made by Shutdown; closed when closing and nothing is in flight
	conns    map[*conn]struct{}
}

// Enter admits a request. It returns false once Shutdown has begun: answer 503 then. Every true
// must be paired with an Exit when the request's handler returns.
func (t *Tracker) Enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return false
	}
	t.inflight++
	return true
}

// Exit ends a request admitted by Enter.
func (t *Tracker) Exit() {
	t.mu.Lock()
	t.inflight--
	if t.inflight == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
	t.mu.Unlock()
}

// Closing reports whether Shutdown has begun.
func (t *Tracker) Closing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closing
}

// Upgraded returns the number of hijacked connections being carried.
func (t *Tracker) Upgraded() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// Shutdown stops admitting requests and waits until every admitted request has returned (a
// request that hijacked its connection returns when it is done with it). When ctx ends first,
// it closes the tracked hijacked connections, waits at most CloseWait for their handlers, and
// returns ctx.Err(). Calling it again waits again.
func (t *Tracker) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	t.closing = true
	if t.inflight == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	idle := t.idle
	t.mu.Unlock()

	select {
	case <-idle:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	conns := make([]*conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	timer := time.NewTimer(CloseWait)
	defer timer.Stop()
	select {
	case <-idle:
	case <-timer.C:
	}
	return ctx.Err()
}

func (t *Tracker) track(c *conn, add bool) {
	t.mu.Lock()
	if add {
		if t.conns == nil {
			t.conns = make(map[*conn]struct{})
		}
		t.conns[c] = struct{}{}
	} else {
		delete(t.conns, c)
	}
	n := len(t.conns)
	t.mu.Unlock()
	if t.OnUpgraded != nil {
		t.OnUpgraded(n)
	}
}

// Writer wraps a request's ResponseWriter: it notes whether the answer has begun and tracks the
// connection when the handler (e.g. httputil.ReverseProxy on an upgrade) hijacks it.
type Writer struct {
	http.ResponseWriter
	t        *Tracker
	wrote    bool
	hijacked bool
}

// Writer wraps w for a request admitted by Enter.
func (t *Tracker) Writer(w http.ResponseWriter) *Writer {
	return &Writer{ResponseWriter: w, t: t}
}

// Started reports whether anything reached the client: a status, body bytes, or a hijack.
// After that a failure can no longer be answered with an error page.
func (w *Writer) Started() bool { return w.wrote || w.hijacked }

// Hijacked reports whether the connection was hijacked.
func (w *Writer) Hijacked() bool { return w.hijacked }

func (w *Writer) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *Writer) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// Flush flushes the underlying writer, if it can.
func (w *Writer) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hijacks the connection and tracks it until it is closed.
func (w *Writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.hijacked = true
	tc := &conn{Conn: c, t: w.t}
	w.t.track(tc, true)
	return tc, brw, nil
}

// conn is a hijacked connection; closing it forgets it.
type conn struct {
	net.Conn
	t    *Tracker
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() { c.t.track(c, false) })
	return c.Conn.Close()
}

// CloseWrite half-closes the connection, so a proxy can pass a backend's EOF on.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
