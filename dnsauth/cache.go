package dnsauth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/lore"
)

// CacheConfig configures a Cache.
type CacheConfig struct {
	// Directory is the backend, typically a *lore.Client. Required.
	Directory Directory
	// Stale is how long after its last successful lookup an entry may still be served while the
	// backend fails. Zero: 1 hour. Past it the failure reaches the handler (SERVFAIL).
	Stale time.Duration
	// RetryAfter is how long after a backend failure the cache answers from its entries without
	// asking the backend, so an outage costs one timeout per RetryAfter instead of one per query.
	// Zero: 1 s.
	RetryAfter time.Duration
	// MaxEntries bounds the entries (repls by ID, repls by name, clusters); when full, an
	// arbitrary entry is evicted. Zero: 1,000,000.
	MaxEntries int
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
	// Registerer receives switchyard_dnsauth_cache_stale_answers_total and switchyard_dnsauth_cache_backend_errors_total.
	// Nil: no metrics.
	Registerer prometheus.Registerer
}

// Cache is a Directory in front of another that keeps answering through a backend outage: every
// lookup goes to the backend while it works (so a change is visible at once, and a repl the
// backend no longer has is forgotten), and when the backend fails with anything but
// lore.ErrNotFound, the last good answer is served for up to Stale. Names the cache never saw
// still fail. It is safe for concurrent use.
type Cache struct {
	dir        Directory
	stale      time.Duration
	retryAfter time.Duration
	max        int
	now        func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
	downAt  time.Time // last backend failure; zero when the last call worked
	downErr error

	staleAnswers prometheus.Counter
	backendErrs  prometheus.Counter
}

type cacheKey struct {
	kind byte // 'r' repl by ID, 'n' repl by name, 'c' cluster
	a, b string
}

type cacheEntry struct {
	repl    lore.Repl
	cluster lore.Cluster
	at      time.Time
}

// NewCache returns a Cache for cfg.
func NewCache(cfg CacheConfig) (*Cache, error) {
	if cfg.Directory == nil {
		return nil, fmt.Errorf("%w: CacheConfig.Directory is required", ErrConfig)
	}
	c := &Cache{dir: cfg.Directory, stale: cfg.Stale, retryAfter: cfg.RetryAfter, max: cfg.MaxEntries, now: cfg.Now,
		entries: map[cacheKey]cacheEntry{}}
	if c.stale <= 0 {
		c.stale = time.Hour
	}
	if c.retryAfter <= 0 {
		c.retryAfter = time.Second
	}
	if c.max <= 0 {
		c.max = 1_000_000
	}
	if c.now == nil {
		c.now = time.Now
	}
	if cfg.Registerer != nil {
		c.staleAnswers = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_dnsauth_cache_stale_answers_total",
			Help: "Lookups answered from the cache because the directory backend failed.",
		})
		c.backendErrs = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_dnsauth_cache_backend_errors_total",
			Help: "Directory backend lookups that failed (not counting not-found).",
		})
		for _, m := range []prometheus.Collector{c.staleAnswers, c.backendErrs} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// Repl implements Directory.
func (c *Cache) Repl(ctx context.Context, id string) (lore.Repl, error) {
	e, err := c.lookup(ctx, cacheKey{'r', id, ""}, func() (cacheEntry, error) {
		r, err := c.dir.Repl(ctx, id)
		return cacheEntry{repl: r}, err
	})
	return e.repl, err
}

// ReplByName implements Directory.
func (c *Cache) ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error) {
	e, err := c.lookup(ctx, cacheKey{'n', owner, slug}, func() (cacheEntry, error) {
		r, err := c.dir.ReplByName(ctx, owner, slug)
		return cacheEntry{repl: r}, err
	})
	return e.repl, err
}

// Cluster implements Directory. The returned Cluster shares its address slices with the cache:
// treat them as read-only.
func (c *Cache) Cluster(ctx context.Context, id string) (lore.Cluster, error) {
	e, err := c.lookup(ctx, cacheKey{'c', id, ""}, func() (cacheEntry, error) {
		cl, err := c.dir.Cluster(ctx, id)
		return cacheEntry{cluster: cl}, err
	})
	return e.cluster, err
}

func (c *Cache) lookup(ctx context.Context, k cacheKey, fetch func() (cacheEntry, error)) (cacheEntry, error) {
	now := c.now()
	c.mu.Lock()
	if !c.downAt.IsZero() && now.Sub(c.downAt) < c.retryAfter {
		e, ok := c.entries[k]
		err := c.downErr
		c.mu.Unlock()
		return c.fallback(now, e, ok, err)
	}
	c.mu.Unlock()

	e, err := fetch()
	c.mu.Lock()
	switch {
	case err == nil:
		c.downAt, c.downErr = time.Time{}, nil
		e.at = now
		if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
			for victim := range c.entries {
				delete(c.entries, victim)
				break
			}
		}
		c.entries[k] = e
		c.mu.Unlock()
		return e, nil
	case errors.Is(err, lore.ErrNotFound):
		c.downAt, c.downErr = time.Time{}, nil
		delete(c.entries, k)
		c.mu.Unlock()
		return cacheEntry{}, err
	default:
		if c.backendErrs != nil {
			c.backendErrs.Inc()
		}
		c.downAt, c.downErr = now, err
		old, ok := c.entries[k]
		c.mu.Unlock()
		return c.fallback(now, old, ok, err)
	}
}

func (c *Cache) fallback(now time.Time, e cacheEntry, ok bool, err error) (cacheEntry, error) {
	if !ok || now.Sub(e.at) > c.stale {
		return cacheEntry{}, fmt.Errorf("dnsauth: directory unavailable and no fresh cached answer: %w", err)
	}
	if c.staleAnswers != nil {
		c.staleAnswers.Inc()
	}
	return e, nil
}

var _ Directory = (*Cache)(nil)
