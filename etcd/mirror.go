package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/switchyard-dev/switchyard/lore"
)

// MirrorConfig configures a Mirror.
type MirrorConfig struct {
	// Store is the etcd directory to mirror. Required.
	Store *LoreStore
	// Probe is how often the mirror checks that etcd answers (a linearizable read bounded by
	// Probe), and how long it waits before re-listing after a failure. Zero means 1 s.
	Probe time.Duration
	// Logger receives re-lists and lost connections. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics (see Mirror). Nil means none.
	Registerer prometheus.Registerer
}

// Mirror is a reader's local copy of the lore directory: an in-process lore.MemStore (repls in
// GC-noscan memory, lookups without allocation) loaded from one consistent etcd snapshot and kept current by an etcd watch of the store's
// event log, so lookups are in-process map reads. It satisfies dnsauth.Directory and
// hosting.Directory.
//
// When the watch cannot continue (etcd compacted the revisions it needed, the watcher fell
// behind, the member lost its leader) the mirror re-lists into a fresh MemStore and swaps it in
// whole; until then, and while etcd is unreachable, it keeps serving its last view.
//
// Metrics: switchyard_etcd_mirror_stale (1 while the mirror cannot confirm it is current),
// switchyard_etcd_mirror_revision (the etcd revision of the view served),
// switchyard_etcd_mirror_relists_total.
type Mirror struct {
	store *LoreStore
	view  atomic.Pointer[lore.MemStore]
	f     follower
}

// NewMirror loads the directory (bounded by ctx) and starts following it; Close stops it.
func NewMirror(ctx context.Context, cfg MirrorConfig) (*Mirror, error) {
	if cfg.Store == nil {
		return nil, errors.New("etcd: MirrorConfig.Store is required")
	}
	m := &Mirror{store: cfg.Store}
	m.f = follower{what: "lore mirror", cli: cfg.Store.cli, probeKey: cfg.Store.eventsKey(), probe: cfg.Probe,
		log: cfg.Logger, load: m.load, watch: m.watch}
	if err := m.f.start(ctx, "mirror", "lore directory", cfg.Registerer); err != nil {
		return nil, err
	}
	return m, nil
}

// Close stops following etcd and waits; the last view stays readable.
func (m *Mirror) Close() error {
	m.f.close()
	return nil
}

// Stale reports whether the mirror currently cannot confirm its view is current.
func (m *Mirror) Stale() bool { return m.f.stale.Load() }

// Revision is the etcd revision of the view served.
func (m *Mirror) Revision() int64 { return m.f.rev.Load() }

// Changed returns a channel closed the next time the view changes (for tests and staleness
// measurements: take the channel, check, then wait).
func (m *Mirror) Changed() <-chan struct{} { return m.f.Changed() }

// load reads the whole directory at one revision into a fresh MemStore and swaps it in.
func (m *Mirror) load(ctx context.Context) (int64, error) {
	s := m.store
	var clusters []lore.Cluster
	var repls []lore.Repl
	var domains []lore.Domain
	rev, err := scan(ctx, s.cli, s.p, func(kv *mvccpb.KeyValue) error {
		k := strings.TrimPrefix(string(kv.Key), s.p)
		switch {
		case strings.HasPrefix(k, "cluster/"):
			c, err := decode[lore.Cluster](kv.Value)
			if err != nil {
				return err
			}
			clusters = append(clusters, c)
		case strings.HasPrefix(k, "repl/"):
			r, err := decode[lore.Repl](kv.Value)
			if err != nil {
				return err
			}
			repls = append(repls, r)
		case strings.HasPrefix(k, "domain/"):
			d, err := decode[lore.Domain](kv.Value)
			if err != nil {
				return err
			}
			domains = append(domains, d)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("etcd: mirror load: %w", err)
	}
	view, err := lore.NewMemStore(lore.MemStoreConfig{})
	if err != nil {
		return 0, err
	}
	bg := context.Background()
	for _, c := range clusters {
		if _, err := view.PutCluster(bg, c); err != nil {
			return 0, fmt.Errorf("etcd: mirror load: %w", err)
		}
	}
	for _, r := range repls {
		if _, err := view.CreateRepl(bg, r); err != nil {
			return 0, fmt.Errorf("etcd: mirror load: %w", err)
		}
	}
	for _, d := range domains {
		if err := putDomain(view, d); err != nil {
			return 0, fmt.Errorf("etcd: mirror load: %w", err)
		}
	}
	if old := m.view.Swap(view); old != nil {
		old.Close()
	}
	return rev, nil
}

func putDomain(view *lore.MemStore, d lore.Domain) error {
	bg := context.Background()
	if _, err := view.Domain(bg, d.Name); err == nil {
		if _, err := view.DeleteDomain(bg, d.Name); err != nil {
			return err
		}
	}
	verified := d.Verified
	d.Verified = false
	if _, err := view.CreateDomain(bg, d); err != nil {
		return err
	}
	if verified {
		if _, err := view.VerifyDomain(bg, d.Name, d.Challenge); err != nil {
			return err
		}
	}
	return nil
}

// apply replays one event on the view. Events arrive in commit order from the revision after
// the view's, so every reference they need is there.
func apply(view *lore.MemStore, ev lore.Event) error {
	bg := context.Background()
	var err error
	switch ev.Kind {
	case lore.ReplCreated:
		_, err = view.CreateRepl(bg, *ev.Repl)
	case lore.ReplMoved:
		_, _, err = view.MoveRepl(bg, ev.Repl.ID, ev.Repl.Cluster)
	case lore.ReplDeleted:
		_, err = view.DeleteRepl(bg, ev.Repl.ID)
	case lore.ClusterChanged:
		_, err = view.PutCluster(bg, *ev.Cluster)
	case lore.DomainChanged:
		err = putDomain(view, *ev.Domain)
	case lore.DomainDeleted:
		if _, err = view.DeleteDomain(bg, ev.Domain.Name); errors.Is(err, lore.ErrNotFound) {
			err = nil
		}
	}
	return err
}

// watch follows the event log from revision from until the watch ends.
func (m *Mirror) watch(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := m.store.watchFrom(wctx, from)
	if err != nil {
		return err
	}
	rev := from - 1
	for ev := range ch {
		if err := apply(m.view.Load(), ev); err != nil {
			m.f.log.Warn("etcd: lore mirror could not apply an event: re-listing", "index", ev.Index, "err", err)
			break
		}
		if int64(ev.Index) > rev {
			rev = int64(ev.Index)
			m.f.advance(rev)
		}
	}
	cancel()
	for range ch { // drain after a break: the cancelled watch closes it
	}
	return nil
}

// Repl implements dnsauth.Directory and hosting.Directory from the local view.
func (m *Mirror) Repl(ctx context.Context, id string) (lore.Repl, error) {
	return m.view.Load().Repl(ctx, id)
}

// ReplByName implements dnsauth.Directory and hosting.Directory from the local view.
func (m *Mirror) ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error) {
	return m.view.Load().ReplByName(ctx, owner, slug)
}

// ReplByDomain implements hosting.Directory from the local view.
func (m *Mirror) ReplByDomain(ctx context.Context, domain string) (lore.Repl, error) {
	return m.view.Load().ReplByDomain(ctx, domain)
}

// Cluster implements dnsauth.Directory from the local view.
func (m *Mirror) Cluster(ctx context.Context, id string) (lore.Cluster, error) {
	return m.view.Load().Cluster(ctx, id)
}

// AppendHosting implements dnsauth.HostingDirectory from the local view: it appends the
// cluster's hosting addresses to v4 and v6 without copying the cluster, so DNS answers from a
// Mirror do not allocate.
func (m *Mirror) AppendHosting(ctx context.Context, cluster string, v4, v6 []netip.Addr) ([]netip.Addr, []netip.Addr, error) {
	return m.view.Load().AppendHosting(ctx, cluster, v4, v6)
}

// Clusters returns every cluster of the local view, ordered by ID.
func (m *Mirror) Clusters(ctx context.Context) ([]lore.Cluster, error) {
	return m.view.Load().Clusters(ctx)
}

// Domain returns a custom domain of the local view.
func (m *Mirror) Domain(ctx context.Context, name string) (lore.Domain, error) {
	return m.view.Load().Domain(ctx, name)
}
