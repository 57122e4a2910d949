package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/switchyard-dev/switchyard/proxy"
)

// server is one HTTP listener of the platform and the goroutine serving it.
type server struct {
	name string
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error // Serve's result, set before done closes
}

// serve listens on addr (with SO_REUSEPORT when reuse is set, so a replacement can bind the same
// address while this one drains) and serves h until Shutdown.
func serve(ctx context.Context, name, addr string, h http.Handler, reuse bool) (*server, error) {
	var (
		ln  net.Listener
		err error
	)
	if reuse {
		ln, err = proxy.ListenReusePort(ctx, "tcp", addr)
	} else {
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s := &server{
		name: name,
		ln:   ln,
		done: make(chan struct{}),
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    64 << 10,
		},
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops accepting, waits for in-flight requests (not hijacked connections: their owners
// drain those) and for the serving goroutine.
func (s *server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	<-s.done
	return errors.Join(err, s.err)
}

// group shuts down a set of components in reverse order of start.
type group struct {
	mu    sync.Mutex
	stops []func(context.Context) error
}

func (g *group) add(stop func(context.Context) error) {
	g.mu.Lock()
	g.stops = append(g.stops, stop)
	g.mu.Unlock()
}

func (g *group) shutdown(ctx context.Context) error {
	g.mu.Lock()
	stops := g.stops
	g.stops = nil
	g.mu.Unlock()
	var errs []error
	for i := len(stops) - 1; i >= 0; i-- {
		errs = append(errs, stops[i](ctx))
	}
	return errors.Join(errs...)
}
