package tombstone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// Watcher is the part of lore the Follower needs. *lore.Directory and *lore.Client satisfy it.
type Watcher interface {
	// Watch returns every change after the call, in commit order; the channel closes when ctx
	// ends (or the watch breaks).
	Watch(ctx context.Context) (<-chan lore.Event, error)
}

// Placement is the part of placement the Follower needs to free a moved repl's VM.
// *placement.Controlplane and *placement.Client satisfy it.
type Placement interface {
	Lookup(ctx context.Context, repl string) (placement.Assignment, error)
	Release(ctx context.Context, repl, vm string) error
}

// FollowerConfig configures a Follower. Cluster, Store and Watcher are required.
type FollowerConfig struct {
	// Cluster is this cluster's ID: moves away from it write tombstones here.
	Cluster string
	// Store receives the tombstones.
	Store Store
	// Watcher delivers lore's events.
	Watcher Watcher
	// Placement frees the VM of a repl that moved away: its assignment is looked up, Stop is
	// called with it, then it is released. Nil means nothing is released.
	Placement Placement
	// Stop stops the repl's container on the VM of assignment a (in-process:
	// (*conman.Server).Stop of that VM). Nil means the container is left to the VM (conman
	// stops a released repl's container when its own policy says so); a Stop error is logged
	// and the assignment released anyway, so the repl can never run in two clusters' books.
	Stop func(ctx context.Context, a placement.Assignment) error
	// TTL is how long a tombstone forwards. Zero means DefaultTTL (24 h).
	TTL time.Duration
	// RetryInterval is the wait before re-opening a broken watch. Zero means one second.
	RetryInterval time.Duration
	// GCInterval is how often expired tombstones are deleted. Zero means one minute.
	GCInterval time.Duration
	// Now is the clock that stamps tombstones. Nil means time.Now.
	Now func() time.Time
	// Logger receives what the Follower did and what failed. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the Follower's metrics. Nil means no metrics.
	Registerer prometheus.Registerer
}

// Follower gives lore's moves their effect on this cluster: it watches lore and, when a repl
// moves away from this cluster, writes its tombstone and releases its VM; when a repl this
// cluster has a tombstone for moves on (a→b→c), it points the tombstone at the newest cluster
// (collapsing the chain); when a repl moves back here or is deleted, it removes the tombstone.
// The new cluster needs no action: its hosting proxy starts the repl on first use.
type Follower struct {
	cfg     FollowerConfig
	log     *slog.Logger
	applied *prometheus.CounterVec

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// NewFollower checks cfg and returns a Follower; Start runs it.
func NewFollower(cfg FollowerConfig) (*Follower, error) {
	switch {
	case cfg.Cluster == "":
		return nil, fmt.Errorf("%w: FollowerConfig.Cluster is required", ErrInvalid)
	case cfg.Store == nil:
		return nil, fmt.Errorf("%w: FollowerConfig.Store is required", ErrInvalid)
	case cfg.Watcher == nil:
		return nil, fmt.Errorf("%w: FollowerConfig.Watcher is required", ErrInvalid)
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Follower{cfg: cfg, log: cfg.Logger}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.applied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "switchyard", Subsystem: "tombstone", Name: "follower_actions_total",
		Help: "What the follower did: written, collapsed, removed, released, failed.",
	}, []string{"action"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(f.applied); err != nil {
			return nil, errors.Join(errors.New("tombstone: register follower metrics"), err)
		}
	}
	return f, nil
}

// Start opens the watch (so every move committed after Start returns is seen) and runs the
// Follower's goroutine until Close. It returns the first Watch error, if any.
func (f *Follower) Start() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return errors.New("tombstone: follower already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	events, err := f.cfg.Watcher.Watch(ctx)
	if err != nil {
		cancel()
		return fmt.Errorf("tombstone: watch lore: %w", err)
	}
	f.started, f.cancel, f.done = true, cancel, make(chan struct{})
	go f.run(ctx, events)
	return nil
}

// Close stops the Follower and waits for its goroutine.
func (f *Follower) Close() error {
	f.mu.Lock()
	cancel, done := f.cancel, f.done
	f.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	return nil
}

func (f *Follower) run(ctx context.Context, events <-chan lore.Event) {
	defer close(f.done)
	gc := time.NewTicker(f.cfg.GCInterval)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-gc.C:
			if n, err := f.cfg.Store.DeleteExpired(ctx); err != nil && ctx.Err() == nil {
				f.log.Warn("tombstone: deleting expired tombstones failed", "err", err)
			} else if n > 0 {
				f.log.Info("tombstone: expired tombstones deleted", "count", n)
			}
		case ev, ok := <-events:
			if ok {
				if err := f.Apply(ctx, ev); err != nil && ctx.Err() == nil {
					f.applied.WithLabelValues("failed").Inc()
					f.log.Error("tombstone: applying a lore event failed", "kind", ev.Kind, "index", ev.Index, "err", err)
				}
				continue
			}
			// The watch broke: re-open it. Events committed meanwhile are not replayed (lore's
			// Watch has no resume index); the log says so.
			f.log.Warn("tombstone: lore watch closed; re-opening (moves committed meanwhile are missed)")
			for events == nil || !ok {
				t := time.NewTimer(f.cfg.RetryInterval)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				var err error
				if events, err = f.cfg.Watcher.Watch(ctx); err != nil {
					events = nil
					if ctx.Err() == nil {
						f.log.Warn("tombstone: re-opening the lore watch failed", "err", err)
					}
					continue
				}
				ok = true
			}
		}
	}
}

// Apply gives one lore event its effect on this cluster's tombstones and VMs. Start calls it for
// every event; it is exported for callers that deliver events themselves.
func (f *Follower) Apply(ctx context.Context, ev lore.Event) error {
	if ev.Repl == nil {
		return nil
	}
	r := *ev.Repl
	switch ev.Kind {
	case lore.ReplMoved:
		switch {
		case r.Cluster == f.cfg.Cluster:
			// Moved (back) here: serve it ourselves.
			return f.remove(ctx, r.ID)
		case ev.FromCluster == f.cfg.Cluster:
			now := f.cfg.Now()
			t := Tombstone{Repl: r.ID, Owner: r.Owner, Slug: r.Slug, Cluster: r.Cluster, Created: now, Expires: now.Add(f.cfg.TTL)}
			if err := f.cfg.Store.Put(ctx, t); err != nil {
				return fmt.Errorf("write tombstone of repl %s: %w", r.ID, err)
			}
			f.applied.WithLabelValues("written").Inc()
			f.log.Info("tombstone: repl moved away", "repl", r.ID, "to", r.Cluster, "expires", t.Expires)
			return f.release(ctx, r.ID)
		default:
			// A repl that left us earlier moves on: point our tombstone at its new home, keeping
			// the expiry (resolvers learnt of the first move then).
			t, err := f.cfg.Store.Get(ctx, r.ID)
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read tombstone of repl %s: %w", r.ID, err)
			}
			t.Cluster = r.Cluster
			if err := f.cfg.Store.Put(ctx, t); err != nil {
				return fmt.Errorf("update tombstone of repl %s: %w", r.ID, err)
			}
			f.applied.WithLabelValues("collapsed").Inc()
			f.log.Info("tombstone: chain collapsed", "repl", r.ID, "to", r.Cluster)
		}
	case lore.ReplDeleted:
		return f.remove(ctx, r.ID)
	}
	return nil
}

func (f *Follower) remove(ctx context.Context, repl string) error {
	err := f.cfg.Store.Delete(ctx, repl)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove tombstone of repl %s: %w", repl, err)
	}
	f.applied.WithLabelValues("removed").Inc()
	return nil
}

// release stops the repl's container here and frees its VM, retrying briefly; no assignment is
// fine (the repl was not running).
func (f *Follower) release(ctx context.Context, repl string) error {
	if f.cfg.Placement == nil {
		return nil
	}
	a, err := f.cfg.Placement.Lookup(ctx, repl)
	if errors.Is(err, placement.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up repl %s in placement: %w", repl, err)
	}
	if f.cfg.Stop != nil {
		if err := f.cfg.Stop(ctx, a); err != nil && ctx.Err() == nil {
			f.log.Warn("tombstone: stopping a moved repl failed; releasing it anyway", "repl", repl, "vm", a.VM, "err", err)
		}
	}
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * 200 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		err = f.cfg.Placement.Release(ctx, repl, a.VM)
		if err == nil || errors.Is(err, placement.ErrNotFound) || errors.Is(err, placement.ErrConflict) {
			// ErrConflict: the repl is no longer on that VM, someone else released it.
			f.applied.WithLabelValues("released").Inc()
			f.log.Info("tombstone: moved repl released", "repl", repl, "vm", a.VM)
			return nil
		}
	}
	return fmt.Errorf("release repl %s from vm %s: %w", repl, a.VM, err)
}
