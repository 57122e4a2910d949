package drain

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server serves an http.Server on a listener and stops it without dropping a connection it
// has accepted.
//
// http.Server.Shutdown closes the listeners and then, on every connection, returns without an
// answer from a request it reads after Shutdown began (net/http's conn.serve checks
// shuttingDown right after readRequest), even the first request of a connection it accepted a
// moment before the listener closed. The client sees EOF. During a SO_REUSEPORT handover that
// connection was the old process's to serve: the kernel had already handed it over, so the new
// process never sees it. Server.Shutdown instead closes the listener itself, turns keep-alives
// off (every connection closes after the request it is reading or handling), waits until every
// accepted connection has been answered, hijacked or closed, and only then calls
// http.Server.Shutdown, which then has nothing left to drop.
type Server struct {
	srv *http.Server
	ln  *listener

	mu        sync.Mutex
	closing   bool
	accepting int                   // Accept calls in progress
	pending   map[net.Conn]struct{} // accepted, with a request not yet answered
}

// NewServer prepares srv to serve on ln (give it the listener Serve would get, TLS included).
// It installs a ConnState hook on srv (calling any hook already set), so call it before
// serving and do not replace srv.ConnState afterwards.
func NewServer(srv *http.Server, ln net.Listener) *Server {
	s := &Server{srv: srv, pending: make(map[net.Conn]struct{})}
	s.ln = &listener{Listener: ln, s: s}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		s.mu.Lock()
		switch st {
		case http.StateNew, http.StateActive:
			s.pending[c] = struct{}{}
		default: // StateIdle: its last request is answered; hijacked and closed are not ours
			delete(s.pending, c)
		}
		s.mu.Unlock()
		if prev != nil {
			prev(c, st)
		}
	}
	return s
}

// Serve serves the server on the listener. After Shutdown it returns http.ErrServerClosed.
func (s *Server) Serve() error { return s.srv.Serve(s.ln) }

// Pending returns the number of accepted connections with a request not yet answered (reading,
// or in the handler before it answered or hijacked).
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// ShutdownPoll bounds the interval at which Shutdown re-checks the connections.
const ShutdownPoll = 200 * time.Millisecond

// Shutdown stops accepting (closing the listener: with SO_REUSEPORT and
// net.ipv4.tcp_migrate_req = 1 the kernel moves connections still queued on it to another
// listener of the group), disables keep-alives, waits until every connection already accepted
// has had its request answered or hijacked, then calls http.Server.Shutdown. A connection that
// sends nothing is closed after five seconds, as http.Server.Shutdown would. Hijacked
// connections are the handler's (Sessions.Shutdown drains them). When ctx ends first it returns
// ctx.Err() with the listener closed and the remaining connections still being served: call
// Shutdown again to keep waiting, or http.Server.Close to cut them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	// Close idle connections, and tell the ones being handled to close after their answer —
	// before the listener closes, so that no answer written after it closed keeps its
	// connection alive.
	s.srv.SetKeepAlivesEnabled(false)
	lnErr := s.ln.Listener.Close()
	if errors.Is(lnErr, net.ErrClosed) {
		lnErr = nil
	}

	wait := time.Millisecond
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for !s.drained() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		// Closes connections that went idle meanwhile and ones silent for five seconds.
		s.srv.SetKeepAlivesEnabled(false)
		wait = min(2*wait, ShutdownPoll)
		timer.Reset(wait)
	}
	if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return lnErr
}

// drained reports whether no Accept is under way and no accepted connection awaits an answer.
func (s *Server) drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepting == 0 && len(s.pending) == 0
}

// listener registers each connection as it is accepted, before http.Server learns of it, so
// Shutdown never misses one, and answers http.ErrServerClosed once Shutdown closed it.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	l.s.mu.Lock()
	if l.s.closing {
		l.s.mu.Unlock()
		return nil, http.ErrServerClosed
	}
	l.s.accepting++
	l.s.mu.Unlock()
	c, err := l.Listener.Accept()
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	l.s.accepting--
	if err != nil {
		if l.s.closing {
			return nil, http.ErrServerClosed
		}
		return nil, err
	}
	// Accepted before (or while) the listener closed: it is served like any other.
	l.s.pending[c] = struct{}{}
	return c, nil
}

// Close is called by http.Server.Shutdown; Server.Shutdown has closed the listener already.
func (l *listener) Close() error {
	err := l.Listener.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
