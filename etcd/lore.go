package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/lore"
)

// LoreStoreConfig configures a LoreStore.
type LoreStoreConfig struct {
	// Client is the etcd client. Required; the store does not close it.
	Client *clientv3.Client
	// Prefix is prepended to every key. Empty means "/switchyard/lore/". Stores sharing a
	// prefix share a directory (several lore replicas); distinct prefixes are independent.
	Prefix string
	// WatchBuffer is how many events a watcher may fall behind before its channel is closed.
	// Zero means 4096.
	WatchBuffer int
}

// LoreStore is a lore.Store in etcd. Every write is one etcd transaction that compares the
// revisions of what it read (the repl, its name, the cluster, the domains) and also writes the
// write's events to one log key; Watch is an etcd watch of that key, so watchers receive the
// events of every commit in commit order, Index being the etcd revision of the commit.
//
// Keys under Prefix: repl/<id> and name/<owner>\x00<slug> (the repl, JSON, twice: by ID and in
// listing order), cluster/<id>, domain/<name>, repldomains/<id> (the names of a repl's
// domains), bycluster/<cluster>/<id> (for ClusterLoads) and events (the log).
type LoreStore struct {
	cli    *clientv3.Client
	p      string
	buffer int

	mu      sync.Mutex
	closed  bool
	cancels map[*int]context.CancelFunc
	wg      sync.WaitGroup
}

var _ lore.Store = (*LoreStore)(nil)

// NewLoreStore returns a store over cfg.Client.
func NewLoreStore(cfg LoreStoreConfig) (*LoreStore, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcd: LoreStoreConfig.Client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/switchyard/lore/"
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = 4096
	}
	return &LoreStore{cli: cfg.Client, p: cfg.Prefix, buffer: cfg.WatchBuffer, cancels: map[*int]context.CancelFunc{}}, nil
}

// Close closes every watcher's channel (ctx of each still live: they must re-read) and waits
// for their goroutines. Reads and writes keep working; later Watch calls fail.
func (s *LoreStore) Close() error {
	s.mu.Lock()
	s.closed = true
	for k, c := range s.cancels {
		c()
		delete(s.cancels, k)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *LoreStore) replKey(id string) string          { return s.p + "repl/" + id }
func (s *LoreStore) nameKey(owner, slug string) string { return s.p + "name/" + owner + "\x00" + slug }
func (s *LoreStore) clusterKey(id string) string       { return s.p + "cluster/" + id }
func (s *LoreStore) domainKey(n string) string         { return s.p + "domain/" + n }
func (s *LoreStore) replDomainsKey(id string) string   { return s.p + "repldomains/" + id }
func (s *LoreStore) byClusterKey(c, id string) string  { return s.p + "bycluster/" + c + "/" + id }
func (s *LoreStore) eventsKey() string                 { return s.p + "events" }

func decode[T any](b []byte) (T, error) {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("etcd: decode %T: %w", v, err)
	}
	return v, nil
}

// decodeFound decodes b, the value of a key that must exist: a missing one (nil) is
// lore.ErrNotFound, described by format and args.
func decodeFound[T any](b []byte, format string, args ...any) (T, error) {
	if b == nil {
		var zero T
		return zero, fmt.Errorf("%w: "+format, append([]any{lore.ErrNotFound}, args...)...)
	}
	return decode[T](b)
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain structs of strings, times and addresses
	}
	return b
}

func (s *LoreStore) getOne(ctx context.Context, key string) ([]byte, error) {
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("etcd: get: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// Repl implements lore.Store.
func (s *LoreStore) Repl(ctx context.Context, id string) (lore.Repl, error) {
	b, err := s.getOne(ctx, s.replKey(id))
	if err != nil {
		return lore.Repl{}, err
	}
	if b == nil {
		return lore.Repl{}, fmt.Errorf("%w: repl %q", lore.ErrNotFound, id)
	}
	return decode[lore.Repl](b)
}

// ReplByName implements lore.Store.
func (s *LoreStore) ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error) {
	b, err := s.getOne(ctx, s.nameKey(owner, slug))
	if err != nil {
		return lore.Repl{}, err
	}
	if b == nil {
		return lore.Repl{}, fmt.Errorf("%w: repl %s/%s", lore.ErrNotFound, owner, slug)
	}
	return decode[lore.Repl](b)
}

// Repls implements lore.Store.
func (s *LoreStore) Repls(ctx context.Context, q lore.ReplQuery) ([]lore.Repl, error) {
	afterOwner, afterSlug, hasAfter := strings.Cut(q.After, "/")
	if q.After != "" && !hasAfter {
		return nil, fmt.Errorf("%w: cursor %q is not <owner>/<slug>", lore.ErrInvalid, q.After)
	}
	start := s.p + "name/"
	end := clientv3.GetPrefixRangeEnd(start)
	if q.Owner != "" {
		start = s.p + "name/" + q.Owner + "\x00"
		end = clientv3.GetPrefixRangeEnd(start)
	}
	if hasAfter {
		// Just past the cursor's key.
		if k := s.nameKey(afterOwner, afterSlug) + "\x00"; k > start {
			start = k
		}
	}
	out := []lore.Repl{}
	if start >= end {
		return out, nil
	}
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end)}
		page := int64(1000)
		if q.Limit > 0 && int64(q.Limit-len(out)) < page {
			page = int64(q.Limit - len(out))
		}
		opts = append(opts, clientv3.WithLimit(page))
		resp, err := s.cli.Get(ctx, start, opts...)
		if err != nil {
			return nil, fmt.Errorf("etcd: list repls: %w", err)
		}
		for _, kv := range resp.Kvs {
			r, err := decode[lore.Repl](kv.Value)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		if !resp.More || len(resp.Kvs) == 0 || (q.Limit > 0 && len(out) >= q.Limit) {
			return out, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Cluster implements lore.Store.
func (s *LoreStore) Cluster(ctx context.Context, id string) (lore.Cluster, error) {
	b, err := s.getOne(ctx, s.clusterKey(id))
	if err != nil {
		return lore.Cluster{}, err
	}
	if b == nil {
		return lore.Cluster{}, fmt.Errorf("%w: cluster %q", lore.ErrNotFound, id)
	}
	return decode[lore.Cluster](b)
}

// Clusters implements lore.Store.
func (s *LoreStore) Clusters(ctx context.Context) ([]lore.Cluster, error) {
	cs, _, err := s.clusters(ctx)
	return cs, err
}

func (s *LoreStore) clusters(ctx context.Context) ([]lore.Cluster, int64, error) {
	resp, err := s.cli.Get(ctx, s.p+"cluster/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd: list clusters: %w", err)
	}
	out := []lore.Cluster{}
	for _, kv := range resp.Kvs {
		c, err := decode[lore.Cluster](kv.Value)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, c)
	}
	return out, resp.Header.Revision, nil
}

// ClusterLoads implements lore.Store: the counts are read at the revision of the cluster list,
// one consistent snapshot.
func (s *LoreStore) ClusterLoads(ctx context.Context) ([]lore.ClusterLoad, error) {
	cs, rev, err := s.clusters(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]lore.ClusterLoad, 0, len(cs))
	for _, c := range cs {
		resp, err := s.cli.Get(ctx, s.p+"bycluster/"+c.ID+"/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(rev))
		if err != nil {
			return nil, fmt.Errorf("etcd: count repls: %w", err)
		}
		out = append(out, lore.ClusterLoad{Cluster: c, Repls: int(resp.Count)})
	}
	return out, nil
}

// Domain implements lore.Store.
func (s *LoreStore) Domain(ctx context.Context, name string) (lore.Domain, error) {
	b, err := s.getOne(ctx, s.domainKey(name))
	if err != nil {
		return lore.Domain{}, err
	}
	if b == nil {
		return lore.Domain{}, fmt.Errorf("%w: domain %q", lore.ErrNotFound, name)
	}
	return decode[lore.Domain](b)
}

// ReplByDomain implements lore.Store.
func (s *LoreStore) ReplByDomain(ctx context.Context, domain string) (lore.Repl, error) {
	d, err := s.Domain(ctx, domain)
	if err != nil {
		return lore.Repl{}, err
	}
	if !d.Verified {
		return lore.Repl{}, fmt.Errorf("%w: domain %q is not verified", lore.ErrNotFound, domain)
	}
	return s.Repl(ctx, d.Repl)
}

func (s *LoreStore) putEvents(t *tx, evs ...lore.Event) { t.put(s.eventsKey(), encode(evs)) }

func (s *LoreStore) putRepl(t *tx, r lore.Repl) {
	b := encode(r)
	t.put(s.replKey(r.ID), b)
	t.put(s.nameKey(r.Owner, r.Slug), b)
}

// CreateRepl implements lore.Store in one round trip: a transaction that writes only if the ID
// and the name are free and the cluster exists, and otherwise reads them to say why not.
func (s *LoreStore) CreateRepl(ctx context.Context, r lore.Repl) (lore.Repl, error) {
	b := encode(r)
	ev := r
	idK, nameK, clK := s.replKey(r.ID), s.nameKey(r.Owner, r.Slug), s.clusterKey(r.Cluster)
	resp, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(idK), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(nameK), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(clK), ">", 0),
	).Then(
		clientv3.OpPut(idK, string(b)),
		clientv3.OpPut(nameK, string(b)),
		clientv3.OpPut(s.byClusterKey(r.Cluster, r.ID), ""),
		clientv3.OpPut(s.eventsKey(), string(encode([]lore.Event{{Kind: lore.ReplCreated, Repl: &ev}}))),
	).Else(
		clientv3.OpGet(idK, clientv3.WithCountOnly()),
		clientv3.OpGet(nameK, clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return lore.Repl{}, fmt.Errorf("etcd: create repl: %w", err)
	}
	if !resp.Succeeded {
		switch {
		case resp.Responses[0].GetResponseRange().Count > 0:
			return lore.Repl{}, fmt.Errorf("%w: repl id %q", lore.ErrExists, r.ID)
		case resp.Responses[1].GetResponseRange().Count > 0:
			return lore.Repl{}, fmt.Errorf("%w: repl %s/%s", lore.ErrExists, r.Owner, r.Slug)
		}
		return lore.Repl{}, fmt.Errorf("%w: cluster %q", lore.ErrNotFound, r.Cluster)
	}
	return r, nil
}

// MoveRepl implements lore.Store.
func (s *LoreStore) MoveRepl(ctx context.Context, id, cluster string) (lore.Repl, string, error) {
	var out lore.Repl
	var from string
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.replKey(id), s.clusterKey(cluster))
		if err != nil {
			return err
		}
		old, err := decodeFound[lore.Repl](v[0], "repl %q", id)
		if err != nil {
			return err
		}
		out, from = old, old.Cluster
		if old.Cluster == cluster {
			return nil
		}
		if v[1] == nil {
			return fmt.Errorf("%w: cluster %q", lore.ErrNotFound, cluster)
		}
		out.Cluster = cluster
		s.putRepl(t, out)
		t.del(s.byClusterKey(from, id))
		t.put(s.byClusterKey(cluster, id), nil)
		ev := out
		s.putEvents(t, lore.Event{Kind: lore.ReplMoved, Repl: &ev, FromCluster: from})
		return nil
	})
	if err != nil {
		return lore.Repl{}, "", err
	}
	return out, from, nil
}

// DeleteRepl implements lore.Store.
func (s *LoreStore) DeleteRepl(ctx context.Context, id string) (lore.Repl, error) {
	var out lore.Repl
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.replKey(id), s.replDomainsKey(id))
		if err != nil {
			return err
		}
		if out, err = decodeFound[lore.Repl](v[0], "repl %q", id); err != nil {
			return err
		}
		var names []string
		if v[1] != nil {
			if names, err = decode[[]string](v[1]); err != nil {
				return err
			}
		}
		var events []lore.Event
		for _, n := range names {
			dv, err := t.get(s.domainKey(n))
			if err != nil {
				return err
			}
			if dv[0] == nil {
				continue
			}
			d, err := decode[lore.Domain](dv[0])
			if err != nil {
				return err
			}
			if d.Repl != id {
				continue
			}
			t.del(s.domainKey(n))
			events = append(events, lore.Event{Kind: lore.DomainDeleted, Domain: &d})
		}
		t.del(s.replKey(id))
		t.del(s.nameKey(out.Owner, out.Slug))
		t.del(s.replDomainsKey(id))
		t.del(s.byClusterKey(out.Cluster, id))
		ev := out
		events = append(events, lore.Event{Kind: lore.ReplDeleted, Repl: &ev})
		s.putEvents(t, events...)
		return nil
	})
	if err != nil {
		return lore.Repl{}, err
	}
	return out, nil
}

// PutCluster implements lore.Store.
func (s *LoreStore) PutCluster(ctx context.Context, c lore.Cluster) (lore.Cluster, error) {
	c.Hosting4, c.Hosting6 = slices.Clone(c.Hosting4), slices.Clone(c.Hosting6)
	_, err := run(ctx, s.cli, func(t *tx) error {
		t.put(s.clusterKey(c.ID), encode(c))
		ev := c
		ev.Hosting4, ev.Hosting6 = slices.Clone(c.Hosting4), slices.Clone(c.Hosting6)
		s.putEvents(t, lore.Event{Kind: lore.ClusterChanged, Cluster: &ev})
		return nil
	})
	if err != nil {
		return lore.Cluster{}, err
	}
	c.Hosting4, c.Hosting6 = slices.Clone(c.Hosting4), slices.Clone(c.Hosting6)
	return c, nil
}

// CreateDomain implements lore.Store.
func (s *LoreStore) CreateDomain(ctx context.Context, d lore.Domain) (lore.Domain, error) {
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.domainKey(d.Name), s.replKey(d.Repl), s.replDomainsKey(d.Repl))
		if err != nil {
			return err
		}
		if v[0] != nil {
			return fmt.Errorf("%w: domain %q", lore.ErrExists, d.Name)
		}
		if v[1] == nil {
			return fmt.Errorf("%w: repl %q", lore.ErrNotFound, d.Repl)
		}
		var names []string
		if v[2] != nil {
			if names, err = decode[[]string](v[2]); err != nil {
				return err
			}
		}
		if !slices.Contains(names, d.Name) {
			names = append(names, d.Name)
		}
		t.put(s.replDomainsKey(d.Repl), encode(names))
		t.put(s.domainKey(d.Name), encode(d))
		ev := d
		s.putEvents(t, lore.Event{Kind: lore.DomainChanged, Domain: &ev})
		return nil
	})
	if err != nil {
		return lore.Domain{}, err
	}
	return d, nil
}

// VerifyDomain implements lore.Store.
func (s *LoreStore) VerifyDomain(ctx context.Context, name, challenge string) (lore.Domain, error) {
	var out lore.Domain
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.domainKey(name))
		if err != nil {
			return err
		}
		if out, err = decodeFound[lore.Domain](v[0], "domain %q with that challenge", name); err != nil {
			return err
		}
		if out.Challenge != challenge {
			return fmt.Errorf("%w: domain %q with that challenge", lore.ErrNotFound, name)
		}
		if out.Verified {
			return nil
		}
		out.Verified = true
		t.put(s.domainKey(name), encode(out))
		ev := out
		s.putEvents(t, lore.Event{Kind: lore.DomainChanged, Domain: &ev})
		return nil
	})
	if err != nil {
		return lore.Domain{}, err
	}
	return out, nil
}

// DeleteDomain implements lore.Store.
func (s *LoreStore) DeleteDomain(ctx context.Context, name string) (lore.Domain, error) {
	var out lore.Domain
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.domainKey(name))
		if err != nil {
			return err
		}
		if out, err = decodeFound[lore.Domain](v[0], "domain %q", name); err != nil {
			return err
		}
		dv, err := t.get(s.replDomainsKey(out.Repl))
		if err != nil {
			return err
		}
		if dv[0] != nil {
			names, err := decode[[]string](dv[0])
			if err != nil {
				return err
			}
			names = slices.DeleteFunc(names, func(n string) bool { return n == name })
			t.put(s.replDomainsKey(out.Repl), encode(names))
		}
		t.del(s.domainKey(name))
		ev := out
		s.putEvents(t, lore.Event{Kind: lore.DomainDeleted, Domain: &ev})
		return nil
	})
	if err != nil {
		return lore.Domain{}, err
	}
	return out, nil
}

// Watch implements lore.Store over an etcd watch of the event log from the revision current
// at the call. The channel is also closed (ctx still live) when etcd compacted the revisions
// the watcher still needed or the watch was cancelled by etcd (lost leader): the watcher then
// re-reads and watches again, as after an overflow.
func (s *LoreStore) Watch(ctx context.Context) (<-chan lore.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	resp, err := s.cli.Get(ctx, s.eventsKey(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("etcd: watch: %w", err)
	}
	return s.watchFrom(ctx, resp.Header.Revision+1)
}

func (s *LoreStore) watchFrom(ctx context.Context, rev int64) (<-chan lore.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("etcd: lore store closed")
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	key := new(int)
	s.cancels[key] = cancel
	wch := s.cli.Watch(wctx, s.eventsKey(), clientv3.WithRev(rev))
	out := make(chan lore.Event, s.buffer)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer func() {
			cancel()
			s.mu.Lock()
			delete(s.cancels, key)
			s.mu.Unlock()
		}()
		for resp := range wch {
			if resp.Canceled || resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				evs, err := decode[[]lore.Event](ev.Kv.Value)
				if err != nil {
					return // a foreign value in our log: the watcher must re-read
				}
				for _, e := range evs {
					e.Index = uint64(ev.Kv.ModRevision)
					select {
					case out <- e:
					default:
						return // too far behind
					}
				}
			}
		}
	}()
	return out, nil
}
