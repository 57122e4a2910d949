package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/connlimit"
	"github.com/switchyard-dev/switchyard/handover"
	"github.com/switchyard-dev/switchyard/hosting"
)

// server is one HTTP listener of the platform and the goroutine serving it.
type server struct {
	name string
	srv  *http.Server
	ln   net.Listener
	raw  net.Listener // ln before any wrapping: the socket itself
	h    *handover.Server
	fast *hosting.Server // instead of srv and h: hosting's fast path (serveHosting)
	done chan struct{}
	err  error // Serve's result, set before done closes
}

// connBudget is this process's descriptor budget, shared by every listener it serves: past it
// they answer 503 instead of letting accept reach EMFILE.
var connBudget = connlimit.NewBudget(0)

// limitsFor are the per-client limits of each public server: a client IP may hold PerIP
// connections and make requests at the rate. The internal plane (controlplane, conman) is
// reached by the platform's own proxies, which carry many clients' requests: only the budget
// applies there. Eval hijacks its connections into spliced sessions (a wrapped connection
// could not be spliced): its listener gets the header timeout and the budget is not counted.
func limitsFor(name string) (cfg *connlimit.Config, rate *connlimit.Rate) {
	switch {
	case name == "hosting":
		return &connlimit.Config{Name: name, PerIP: 256, Budget: connBudget}, &connlimit.Rate{Name: name, PerSecond: 200, Burst: 400}
	case name == "lore", name == "web":
		return &connlimit.Config{Name: name, PerIP: 64, Budget: connBudget}, &connlimit.Rate{Name: name, PerSecond: 50, Burst: 100}
	case name == "admin":
		return &connlimit.Config{Name: name, PerIP: 16, Budget: connBudget}, &connlimit.Rate{Name: name, PerSecond: 10, Burst: 20}
	case name == "eval":
		return nil, nil
	}
	return &connlimit.Config{Name: name, PerIP: -1, Budget: connBudget}, nil
}

// serve listens on addr (with SO_REUSEPORT when reuse is set, so a replacement can bind the same
// address while this one drains) and serves h until Shutdown, within the limits of its name
// (limitsFor) and with header and idle timeouts.
func serve(ctx context.Context, name, addr string, h http.Handler, reuse bool) (*server, error) {
	return serveTLS(ctx, name, addr, h, reuse, nil)
}

// serveTLS is serve over TLS with tlsCfg (nil: plain HTTP).
func serveTLS(ctx context.Context, name, addr string, h http.Handler, reuse bool, tlsCfg *tls.Config) (*server, error) {
	var (
		ln  net.Listener
		err error
	)
	if reuse {
		ln, err = handover.ListenReusePort(ctx, "tcp", addr)
	} else {
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return serveOn(name, ln, h, tlsCfg), nil
}

// serveOn serves h on ln, a listener bound already (e.g. one inherited from the process this
// one upgrades).
func serveOn(name string, ln net.Listener, h http.Handler, tlsCfg *tls.Config) *server {
	raw := ln
	lcfg, rate := limitsFor(strings.Fields(name)[0])
	if lcfg != nil {
		ln = connlimit.NewListener(ln, *lcfg)
	}
	if rate != nil {
		h = connlimit.RateLimit(h, *rate)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	s := &server{
		name: name,
		ln:   ln,
		raw:  raw,
		done: make(chan struct{}),
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
		},
	}
	// handover.Server, not srv.Serve and srv.Shutdown: http.Server.Shutdown drops, unanswered, a
	// request it reads after it began, even on a connection accepted just before (see
	// handover.Server). That would lose connections in an Eval handover.
	s.h = handover.New(s.srv, ln)
	go func() {
		defer close(s.done)
		if err := s.h.Serve(); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s
}

// serveHosting serves a cluster's hosting proxy on plain HTTP with hosting.Server: its HTTP/1.1
// fast path for the common requests, and net/http serving handler (the tombstone forwarder in
// front of the proxy) for the rest; divert is the forwarder's, so moved repls are forwarded on
// the fast path too. The hosting limits apply to both paths: the connection limits on the
// listener, the request rate through the Limiter — asked by the fast path before divert, and
// wrapped around handler for what net/http serves. (A request the fast path hands over after
// the Limiter let it through, which the forwarder does only for a hop-limit refusal, is
// counted twice.) divert answers from memory (tombstones in a MemStore or an etcd
// TombstoneMirror, clusters from the directory's memory or an etcd Mirror), so the Server's
// event loops may call it. reg receives the Server's connection gauge (nil: none).
func serveHosting(ctx context.Context, addr string, proxy *hosting.Proxy, handler http.Handler,
	divert func(peer netip.Addr, host, method, target string) hosting.Diversion, reg prometheus.Registerer) (*server, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("hosting: %w", err)
	}
	raw := ln
	lcfg, rate := limitsFor("hosting")
	ln = connlimit.NewListener(ln, *lcfg)
	lim := connlimit.NewLimiter(*rate)
	fast, err := hosting.NewServer(hosting.ServerConfig{
		Proxy:   proxy,
		Handler: lim.Wrap(handler),
		Divert: func(peer netip.Addr, host, method, target string) hosting.Diversion {
			if ok, _ := lim.Allow(peer); !ok {
				return hosting.Diversion{Handoff: true} // lim.Wrap answers 429 and counts it
			}
			return divert(peer, host, method, target)
		},
		DivertInLoop:      true,
		Registerer:        reg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	})
	if err != nil {
		raw.Close()
		return nil, err
	}
	s := &server{name: "hosting", ln: ln, raw: raw, fast: fast, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := fast.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	return s, nil
}

// listenerFile duplicates the listening socket's descriptor, for a successor process.
func (s *server) listenerFile() (*os.File, error) {
	fl, ok := s.raw.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("%s: listener %T has no descriptor", s.name, s.raw)
	}
	return fl.File()
}

// Addr is the address the server listens on.
func (s *server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops accepting, answers every connection already accepted, waits for in-flight
// requests (not hijacked connections: their owners drain those) and for the serving goroutine.
func (s *server) Shutdown(ctx context.Context) error {
	var err error
	if s.fast != nil {
		if err = s.fast.Shutdown(ctx); err != nil {
			s.fast.Close()
		}
	} else if err = s.h.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
	return errors.Join(err, s.err)
}

var reusePortWarning sync.Once

// warnReusePort logs, once per process, when a deploy by SO_REUSEPORT cannot hand over
// connections without resetting some: closing the old listener resets what is queued on it
// unless net.ipv4.tcp_migrate_req is 1.
func warnReusePort(log *slog.Logger) {
	reusePortWarning.Do(func() {
		ok, err := handover.ReusePortMigration()
		switch {
		case err != nil:
			log.Warn("cannot tell whether Eval handovers lose connections", "err", err)
		case !ok:
			log.Warn("net.ipv4.tcp_migrate_req is 0: each Eval handover may reset the connections queued on the old listener; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)")
		}
	})
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
