package hosting

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// maxRoutes bounds the route cache; when it is full it starts over.
const maxRoutes = 1 << 16

// target is a VM's conman for one repl.
type target struct {
	vm      string
	backend *url.URL
	addr    string // host:port, for the fast path
	cred    string
}

// route is the answer for one Host: its repl and the VM placement gave it.
type route struct {
	repl    lore.Repl
	target  target
	version uint64    // the directory's Version when resolved
	expires time.Time // when placement is asked again
}

// routeFailure is why a Host could not be routed: the answer and the metric outcome.
type routeFailure struct {
	repl    lore.Repl
	outcome string
	status  int
	msg     string
	cause   error
}

// versioned is a Directory that counts its writes (lore.Directory).
type versioned interface{ Version() uint64 }

// routeCache holds routes by Host. A route is reused until RouteCacheTTL passes, the directory's
// Version changes, or a request on it fails (forget).
type routeCache struct {
	mu sync.RWMutex
	m  map[string]*route
}

func (c *routeCache) get(host string) *route {
	c.mu.RLock()
	rt := c.m[host]
	c.mu.RUnlock()
	return rt
}

// getBytes is get for a Host still in the request's buffer (no string is made for it).
func (c *routeCache) getBytes(host []byte) *route {
	c.mu.RLock()
	rt := c.m[string(host)]
	c.mu.RUnlock()
	return rt
}

func (c *routeCache) put(host string, rt *route) {
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxRoutes {
		c.m = make(map[string]*route)
	}
	c.m[host] = rt
	c.mu.Unlock()
}

func (c *routeCache) forget(host string) {
	c.mu.Lock()
	delete(c.m, host)
	c.mu.Unlock()
}

// route resolves host to its repl and the repl's VM, from the cache when it is fresh (cached
// reports that).
func (h *Proxy) route(ctx context.Context, host string, now time.Time) (rt *route, cached bool, rf *routeFailure) {
	if rt := h.cachedRoute(host, now); rt != nil {
		return rt, true, nil
	}
	rt, rf = h.resolveRoute(ctx, host, now)
	return rt, false, rf
}

// cachedRoute returns host's route when the cache has it fresh, or nil: it never asks the
// directory or placement (the event loop must not wait for them).
func (h *Proxy) cachedRoute(host string, now time.Time) *route {
	if h.cfg.RouteCacheTTL <= 0 {
		return nil
	}
	return h.fresh(h.routes.get(host), now)
}

// cachedRouteBytes is cachedRoute for a Host still in the request's buffer.
func (h *Proxy) cachedRouteBytes(host []byte, now time.Time) *route {
	if h.cfg.RouteCacheTTL <= 0 {
		return nil
	}
	return h.fresh(h.routes.getBytes(host), now)
}

// fresh returns rt if it may still be used at now, or nil.
func (h *Proxy) fresh(rt *route, now time.Time) *route {
	var version uint64
	if h.dirVersion != nil {
		version = h.dirVersion.Version()
	}
	if rt != nil && rt.version == version && now.Before(rt.expires) {
		return rt
	}
	return nil
}

// resolveRoute asks the directory and placement for host's route, and caches it.
func (h *Proxy) resolveRoute(ctx context.Context, host string, now time.Time) (*route, *routeFailure) {
	var version uint64
	if h.dirVersion != nil {
		version = h.dirVersion.Version()
	}
	rctx, cancel := context.WithTimeout(ctx, h.cfg.ResolveTimeout)
	defer cancel()
	repl, err := h.ResolveRepl(rctx, host)
	switch {
	case errors.Is(err, ErrUnknownHost):
		return nil, &routeFailure{outcome: outcomeUnknownHost, status: http.StatusNotFound, msg: fmt.Sprintf("no repl is served at %s", hostOnly(host)), cause: err}
	case err != nil:
		return nil, &routeFailure{outcome: outcomeDirectory, status: http.StatusServiceUnavailable, msg: "the directory is unavailable; retry shortly", cause: err}
	}
	if h.cfg.Cluster != "" && repl.Cluster != h.cfg.Cluster {
		return nil, &routeFailure{repl: repl, outcome: outcomeUnknownHost, status: http.StatusNotFound,
			msg:   fmt.Sprintf("no repl is served at %s in this cluster", hostOnly(host)),
			cause: fmt.Errorf("%w: repl %s lives in cluster %q", ErrNotHere, repl.ID, repl.Cluster)}
	}
	t, rf := h.place(rctx, repl, nil)
	if rf != nil {
		return nil, rf
	}
	rt := &route{repl: repl, target: t, version: version, expires: now.Add(h.cfg.RouteCacheTTL)}
	if h.cfg.RouteCacheTTL > 0 {
		h.routes.put(host, rt)
	}
	return rt, nil
}

// place asks placement for the repl's VM, avoiding the VMs in avoid.
func (h *Proxy) place(ctx context.Context, repl lore.Repl, avoid []string) (target, *routeFailure) {
	pctx, cancel := context.WithTimeout(ctx, h.cfg.ResolveTimeout)
	defer cancel()
	pool := ""
	if h.cfg.Pool != nil {
		pool = h.cfg.Pool(repl)
	}
	a, err := h.cfg.Placer.Place(pctx, placement.Request{Repl: repl.ID, Pool: pool, Avoid: avoid})
	if err != nil {
		msg := "placement is unavailable; retry shortly"
		if errors.Is(err, placement.ErrNoCapacity) {
			msg = "no VM can run this repl right now; retry shortly"
		}
		return target{}, &routeFailure{repl: repl, outcome: outcomePlacement, status: http.StatusServiceUnavailable, msg: msg,
			cause: fmt.Errorf("place repl %s: %w", repl.ID, err)}
	}
	u, err := url.Parse(a.Addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return target{}, &routeFailure{repl: repl, outcome: outcomeBackend, status: http.StatusBadGateway, msg: "the repl could not be reached",
			cause: fmt.Errorf("vm %s has a bad conman address %q", a.VM, a.Addr)}
	}
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	return target{vm: a.VM, backend: u, addr: addr, cred: h.credential(a.VM)}, nil
}
