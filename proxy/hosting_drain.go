package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// hostingWriter wraps the client's ResponseWriter: it notes whether an answer has begun and
// tracks the connection when ReverseProxy hijacks it for an upgrade (WebSocket), so Shutdown
// can wait for it and, at the deadline, close it.
type hostingWriter struct {
	http.ResponseWriter
	h        *Hosting
	wrote    bool
	hijacked bool
}

func (w *hostingWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *hostingWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

func (w *hostingWriter) Flush() {
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *hostingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *hostingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.hijacked = true
	hc := &hostingConn{Conn: c, h: w.h}
	w.h.mu.Lock()
	w.h.conns[hc] = struct{}{}
	n := len(w.h.conns)
	w.h.mu.Unlock()
	w.h.metrics.upgrades.Set(float64(n))
	return hc, brw, nil
}

// hostingConn is a hijacked client connection; closing it forgets it.
type hostingConn struct {
	net.Conn
	h    *Hosting
	once sync.Once
}

func (c *hostingConn) Close() error {
	c.once.Do(func() {
		c.h.mu.Lock()
		delete(c.h.conns, c)
		n := len(c.h.conns)
		c.h.mu.Unlock()
		c.h.metrics.upgrades.Set(float64(n))
	})
	return c.Conn.Close()
}

// CloseWrite half-closes the connection, so ReverseProxy can propagate a backend's EOF.
func (c *hostingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Upgraded returns the number of upgraded (WebSocket) connections Hosting is carrying.
func (h *Hosting) Upgraded() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// Shutdown drains Hosting: new requests are answered 503 (with Connection: close), and it waits
// until every in-flight request and every upgraded connection has finished. http.Server.Shutdown
// does not wait for upgraded connections; call both (the server's first, so no request arrives
// unseen, or concurrently). When ctx ends first, Shutdown closes the remaining upgraded
// connections, waits (at most 5 s) for their handlers to return, and returns ctx.Err(); plain
// requests still running end with their server's Shutdown or Close. Calling Shutdown again
// waits again.
func (h *Hosting) Shutdown(ctx context.Context) error {
	h.closing.Store(true)
	done := make(chan struct{})
	go func() {
		h.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	h.mu.Lock()
	conns := make([]*hostingConn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	// The upgraded connections are closed, so their handlers return promptly; a plain request
	// still running ends with its server's Shutdown or Close. Bound the wait so Shutdown returns.
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	return ctx.Err()
}
