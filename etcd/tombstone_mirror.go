package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/tombstone"
)

// TombstoneMirrorConfig configures a TombstoneMirror.
type TombstoneMirrorConfig struct {
	// Store is the cluster's tombstones in etcd. Required; its clock decides expiry.
	Store *TombstoneStore
	// Probe is how often the mirror checks that etcd answers (a linearizable read bounded by
	// Probe), and how long it waits before re-listing after a failure. Zero means 1 s.
	Probe time.Duration
	// Logger receives re-lists, lost connections and malformed values. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics (see TombstoneMirror). Nil means none.
	Registerer prometheus.Registerer
}

// TombstoneMirror is a hosting proxy's local copy of its cluster's tombstones: a
// tombstone.Store whose reads (Get, GetByName, List) are answered by an in-process
// tombstone.MemStore, loaded from one etcd snapshot and kept current by an etcd watch of the
// store's prefix; its writes go to etcd. Every request a hosting proxy serves asks its
// tombstone Store whether the repl moved, so over a bare TombstoneStore each request waits for
// an etcd round trip; over a mirror it is a map read without allocation, and a Server may ask
// it from its event loops (hosting.ServerConfig.DivertInLoop).
//
// Consistency: a write through the mirror returns once the mirror's view has it (read your
// own writes; a write that commits but is not seen before ctx ends returns an error saying
// so). Writes by others (the Follower of another proxy of the cluster) are seen when the watch
// delivers them, normally within milliseconds. When the watch cannot continue (compaction, a
// member that lost its leader) the mirror re-lists into a fresh MemStore and swaps it in;
// until then, and while etcd is unreachable, it keeps serving its last view, so requests for
// moved repls keep being forwarded (a bare TombstoneStore would fail and serve them locally).
// A value under the prefix that is not a valid tombstone is skipped with a warning.
//
// Metrics: switchyard_etcd_tombstone_mirror_stale, switchyard_etcd_tombstone_mirror_revision,
// switchyard_etcd_tombstone_mirror_relists_total, as for Mirror.
type TombstoneMirror struct {
	store *TombstoneStore
	view  atomic.Pointer[tombstone.MemStore]
	f     follower
}

var _ tombstone.Store = (*TombstoneMirror)(nil)

// NewTombstoneMirror loads the tombstones (bounded by ctx) and starts following them; Close
// stops it.
func NewTombstoneMirror(ctx context.Context, cfg TombstoneMirrorConfig) (*TombstoneMirror, error) {
	if cfg.Store == nil {
		return nil, errors.New("etcd: TombstoneMirrorConfig.Store is required")
	}
	m := &TombstoneMirror{store: cfg.Store}
	m.f = follower{what: "tombstone mirror", cli: cfg.Store.cli, probeKey: cfg.Store.p, probe: cfg.Probe,
		log: cfg.Logger, load: m.load, watch: m.watch}
	if err := m.f.start(ctx, "tombstone_mirror", "tombstones", cfg.Registerer); err != nil {
		return nil, err
	}
	return m, nil
}

// Close stops following etcd and waits; the last view stays readable, writes still go to etcd
// but no longer wait to be seen.
func (m *TombstoneMirror) Close() error {
	m.f.close()
	return nil
}

// Stale reports whether the mirror currently cannot confirm its view is current.
func (m *TombstoneMirror) Stale() bool { return m.f.stale.Load() }

// Revision is the etcd revision of the view served.
func (m *TombstoneMirror) Revision() int64 { return m.f.rev.Load() }

// Changed returns a channel closed the next time the view changes.
func (m *TombstoneMirror) Changed() <-chan struct{} { return m.f.Changed() }

// replOf returns the repl of a tombstone key (prefix + "t/<repl>"), or false for another key.
func (m *TombstoneMirror) replOf(key []byte) (string, bool) {
	k, ok := strings.CutPrefix(string(key), m.store.p+"t/")
	return k, ok && k != ""
}

// load reads every tombstone at one revision into a fresh MemStore and swaps it in.
func (m *TombstoneMirror) load(ctx context.Context) (int64, error) {
	view, err := tombstone.NewMemStore(tombstone.MemStoreConfig{Now: m.store.now})
	if err != nil {
		return 0, err
	}
	bg := context.Background()
	rev, err := scan(ctx, m.store.cli, m.store.p+"t/", func(kv *mvccpb.KeyValue) error {
		m.put(bg, view, kv)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("etcd: tombstone mirror load: %w", err)
	}
	m.view.Store(view)
	return rev, nil
}

// put puts the tombstone kv holds in view, or skips kv with a warning.
func (m *TombstoneMirror) put(ctx context.Context, view *tombstone.MemStore, kv *mvccpb.KeyValue) {
	repl, ok := m.replOf(kv.Key)
	if !ok {
		return
	}
	t, err := decode[tombstone.Tombstone](kv.Value)
	if err == nil && t.Repl != repl {
		err = fmt.Errorf("%w: key %q holds the tombstone of repl %q", tombstone.ErrInvalid, kv.Key, t.Repl)
	}
	if err == nil {
		err = view.Put(ctx, t) // validates
	}
	if err != nil {
		m.f.log.Warn("etcd: tombstone mirror skips a malformed value", "key", string(kv.Key), "revision", kv.ModRevision, "err", err)
		_ = view.Delete(ctx, repl) // whatever the key held before is gone too
	}
}

// watch applies the changes under the prefix from revision from until the watch ends.
func (m *TombstoneMirror) watch(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	bg := context.Background()
	for resp := range m.store.cli.Watch(wctx, m.store.p+"t/", clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if resp.Canceled || resp.Err() != nil {
			if ctx.Err() == nil {
				m.f.log.Info("etcd: tombstone mirror's watch ended", "err", resp.Err())
			}
			return nil
		}
		view := m.view.Load()
		for _, ev := range resp.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				m.put(bg, view, ev.Kv)
			case clientv3.EventTypeDelete:
				if repl, ok := m.replOf(ev.Kv.Key); ok {
					_ = view.Delete(bg, repl) // ErrNotFound: it was malformed, or never seen
				}
			}
		}
		if n := len(resp.Events); n > 0 {
			m.f.advance(resp.Events[n-1].Kv.ModRevision)
		}
	}
	return nil
}

// Put implements tombstone.Store: it writes to etcd and returns once the view has the write.
func (m *TombstoneMirror) Put(ctx context.Context, t tombstone.Tombstone) error {
	rev, err := m.store.put(ctx, t)
	if err != nil {
		return err
	}
	return m.f.waitRev(ctx, rev)
}

// Get implements tombstone.Store from the local view.
func (m *TombstoneMirror) Get(ctx context.Context, repl string) (tombstone.Tombstone, error) {
	return m.view.Load().Get(ctx, repl)
}

// GetByName implements tombstone.Store from the local view.
func (m *TombstoneMirror) GetByName(ctx context.Context, owner, slug string) (tombstone.Tombstone, error) {
	return m.view.Load().GetByName(ctx, owner, slug)
}

// Delete implements tombstone.Store: it deletes in etcd and returns once the view has the
// deletion.
func (m *TombstoneMirror) Delete(ctx context.Context, repl string) error {
	rev, err := m.store.delete(ctx, repl)
	if err != nil {
		return err
	}
	return m.f.waitRev(ctx, rev)
}

// List implements tombstone.Store from the local view.
func (m *TombstoneMirror) List(ctx context.Context) ([]tombstone.Tombstone, error) {
	return m.view.Load().List(ctx)
}

// DeleteExpired implements tombstone.Store: it deletes the expired tombstones in etcd and
// returns once the view has the deletions.
func (m *TombstoneMirror) DeleteExpired(ctx context.Context) (int, error) {
	n, rev, err := m.store.deleteExpired(ctx)
	if err != nil {
		return n, err
	}
	if rev == 0 {
		return n, nil
	}
	return n, m.f.waitRev(ctx, rev)
}
