package lore

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// MemStoreConfig configures NewMemStore.
type MemStoreConfig struct {
	// WatchBuffer is how many events each watcher may fall behind before its channel is closed
	// (it must then re-read and watch again). Zero means 4096.
	WatchBuffer int
}

// MemStore is the in-process Store, and the default one.
//
// Writes are serialized by a store-wide write lock: each checks uniqueness and references
// first and changes nothing when a check fails, then updates the indexes under the read lock's
// writer side and publishes its events, before the next write starts. Reads take the read lock
// only.
//
// Repls, the only table that grows large, live in memory the garbage collector does not scan
// (see replTable): packed records in append-only []byte chunks, found through maps from 64-bit
// hashes of the ID and of (owner, slug) to record slots, and listed through sorted blocks of
// slots. A million repls are then a few hundred pointers to the GC instead of several million,
// which matters to every process that embeds the directory and allocates per request: a GC
// cycle marks the live heap, so with a pointerful directory each allocated byte costs about a
// byte of marking. Point lookups (Repl, ReplByName, ReplByDomain) allocate nothing on a hit:
// the strings of the Repl they return point into the arena, whose bytes are never rewritten. A
// deleted or moved repl leaves its old record as garbage until garbage outgrows the live
// records; then the live ones are copied into new chunks (the old chunks stay alive as long as
// a returned string references them). Clusters and custom domains are few and live in plain
// maps. Memory and lookup costs at 1,000,000 repls are recorded in docs/benchmarks/lore.md.
type MemStore struct {
	buffer int

	wmu    sync.Mutex // serializes writes: checks, index update and event publication
	index  uint64
	closed bool
	watch  map[*memWatcher]struct{} // guarded by wmu

	// The indexes below change only with wmu and rmu both held, so writers read them under wmu
	// alone and readers under rmu.RLock.
	rmu         sync.RWMutex
	repls       *replTable
	domains     map[string]*Domain
	replDomains map[string][]string // repl ID → names of its custom domains
	clusters    map[string]*Cluster
	counts      map[string]int

	acme acmeTable // ACME delegations (acme.go)
}

type memWatcher struct {
	ch   chan Event
	stop func() bool
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty in-process store.
func NewMemStore(cfg MemStoreConfig) (*MemStore, error) {
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = 4096
	}
	return &MemStore{
		buffer:      cfg.WatchBuffer,
		watch:       make(map[*memWatcher]struct{}),
		repls:       newReplTable(),
		domains:     make(map[string]*Domain),
		replDomains: make(map[string][]string),
		clusters:    make(map[string]*Cluster),
		counts:      make(map[string]int),
	}, nil
}

// Close closes every watcher's channel and makes later writes and watches fail. Reads keep
// working.
func (s *MemStore) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.closed = true
	for w := range s.watch {
		w.stop()
		close(w.ch)
		delete(s.watch, w)
	}
	return nil
}

var errStoreClosed = fmt.Errorf("%w: store closed", ErrUnavailable)

// Repl implements Store.
func (s *MemStore) Repl(_ context.Context, id string) (Repl, error) {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	if slot, ok := s.repls.lookupID(id); ok {
		return s.repls.repl(slot), nil
	}
	return Repl{}, errNotFound("repl", id)
}

// ReplByName implements Store.
func (s *MemStore) ReplByName(_ context.Context, owner, slug string) (Repl, error) {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	if slot, ok := s.repls.lookupName(owner, slug); ok {
		return s.repls.repl(slot), nil
	}
	return Repl{}, errNameNotFound(owner, slug)
}

// ReplByDomain implements Store.
func (s *MemStore) ReplByDomain(_ context.Context, domain string) (Repl, error) {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	if d := s.domains[domain]; d != nil && d.Verified {
		if slot, ok := s.repls.lookupID(d.Repl); ok {
			return s.repls.repl(slot), nil
		}
	}
	return Repl{}, errNotFound("no verified domain", domain)
}

// Repls implements Store. It holds the read lock while it copies the page out.
func (s *MemStore) Repls(_ context.Context, q ReplQuery) ([]Repl, error) {
	afterOwner, afterSlug, hasAfter := strings.Cut(q.After, "/")
	if q.After != "" && !hasAfter {
		return nil, fmt.Errorf("%w: cursor %q is not <owner>/<slug>", ErrInvalid, q.After)
	}
	startOwner, startSlug := q.Owner, ""
	if hasAfter && (q.Owner == "" || afterOwner >= q.Owner) {
		startOwner, startSlug = afterOwner, afterSlug
	}
	out := []Repl{}
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	t := s.repls
	for b, i := t.seek(startOwner, startSlug); b < len(t.order); b, i = b+1, 0 {
		for _, slot := range t.order[b][i:] {
			r := t.repl(slot)
			if hasAfter && r.Owner == afterOwner && r.Slug == afterSlug {
				continue
			}
			if q.Owner != "" && r.Owner != q.Owner {
				return out, nil
			}
			out = append(out, r)
			if q.Limit > 0 && len(out) == q.Limit {
				return out, nil
			}
		}
	}
	return out, nil
}

// Cluster implements Store.
func (s *MemStore) Cluster(_ context.Context, id string) (Cluster, error) {
	s.rmu.RLock()
	c := s.clusters[id]
	s.rmu.RUnlock()
	if c == nil {
		return Cluster{}, errNotFound("cluster", id)
	}
	return cloneCluster(*c), nil
}

// AppendHosting appends the cluster's Hosting4 addresses to v4 and its Hosting6 addresses to v6
// and returns the extended slices: Cluster without the copy, for Directory.AppendHosting.
func (s *MemStore) AppendHosting(_ context.Context, id string, v4, v6 []netip.Addr) ([]netip.Addr, []netip.Addr, error) {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	c := s.clusters[id]
	if c == nil {
		return v4, v6, errNotFound("cluster", id)
	}
	return append(v4, c.Hosting4...), append(v6, c.Hosting6...), nil
}

// Clusters implements Store.
func (s *MemStore) Clusters(ctx context.Context) ([]Cluster, error) {
	loads, err := s.ClusterLoads(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Cluster, len(loads))
	for i, l := range loads {
		out[i] = l.Cluster
	}
	return out, nil
}

// ClusterLoads implements Store.
func (s *MemStore) ClusterLoads(context.Context) ([]ClusterLoad, error) {
	s.rmu.RLock()
	out := make([]ClusterLoad, 0, len(s.clusters))
	for id, c := range s.clusters {
		out = append(out, ClusterLoad{Cluster: cloneCluster(*c), Repls: s.counts[id]})
	}
	s.rmu.RUnlock()
	slices.SortFunc(out, func(a, b ClusterLoad) int { return compareStrings(a.Cluster.ID, b.Cluster.ID) })
	return out, nil
}

// Domain implements Store.
func (s *MemStore) Domain(_ context.Context, name string) (Domain, error) {
	s.rmu.RLock()
	d := s.domains[name]
	s.rmu.RUnlock()
	if d == nil {
		return Domain{}, errNotFound("domain", name)
	}
	return *d, nil
}

// write runs fn under the write lock. fn checks the change against the indexes (which only
// writers change, so wmu alone guards reading them) and returns a function that applies it and
// returns its events (without Index), or nil when there is nothing to change; then the change
// is applied under rmu, the repl arena is rebuilt if it is mostly garbage, and the events are
// published, in that order, before the next write starts. A failing fn changes nothing.
func (s *MemStore) write(fn func() (func() []Event, error)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return errStoreClosed
	}
	apply, err := fn()
	if err != nil {
		return err
	}
	var events []Event
	if apply != nil {
		s.rmu.Lock()
		events = apply()
		s.rmu.Unlock()
	}
	if s.repls.needsCompact() {
		// Copy the live records without blocking readers (they keep reading the old chunks,
		// which nothing rewrites), then switch to the copy.
		chunks, used, slots := s.repls.compacted()
		s.rmu.Lock()
		s.repls.install(chunks, used, slots)
		s.rmu.Unlock()
	}
	if len(events) > 0 {
		s.index++
		for _, ev := range events {
			ev.Index = s.index
			s.publish(ev)
		}
	}
	return nil
}

// publish hands ev to every watcher without blocking; a watcher whose buffer is full is closed.
// Called with wmu held.
func (s *MemStore) publish(ev Event) {
	for w := range s.watch {
		select {
		case w.ch <- ev:
		default:
			w.stop()
			close(w.ch)
			delete(s.watch, w)
		}
	}
}

// Watch implements Store. Each watcher has a buffer of MemStoreConfig.WatchBuffer events; one
// that falls further behind has its channel closed while its ctx is still live.
func (s *MemStore) Watch(ctx context.Context) (<-chan Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return nil, errStoreClosed
	}
	w := &memWatcher{ch: make(chan Event, s.buffer)}
	w.stop = context.AfterFunc(ctx, func() {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if _, ok := s.watch[w]; ok {
			close(w.ch)
			delete(s.watch, w)
		}
	})
	s.watch[w] = struct{}{}
	return w.ch, nil
}

// CreateRepl implements Store.
func (s *MemStore) CreateRepl(_ context.Context, r Repl) (Repl, error) {
	var out Repl
	err := s.write(func() (func() []Event, error) {
		t := s.repls
		if !fits(r) {
			return nil, fmt.Errorf("%w: repl field longer than %d bytes", ErrInvalid, maxField)
		}
		if _, ok := t.lookupID(r.ID); ok {
			return nil, fmt.Errorf("%w: repl id %q", ErrExists, r.ID)
		}
		if _, ok := t.lookupName(r.Owner, r.Slug); ok {
			return nil, fmt.Errorf("%w: repl %s/%s", ErrExists, r.Owner, r.Slug)
		}
		if s.clusters[r.Cluster] == nil {
			return nil, fmt.Errorf("%w: cluster %q", ErrNotFound, r.Cluster)
		}
		return func() []Event {
			out = t.repl(t.insert(r))
			s.counts[r.Cluster]++ // not out.Cluster: a map key would keep its arena chunk alive
			ev := out
			return []Event{{Kind: ReplCreated, Repl: &ev}}
		}, nil
	})
	if err != nil {
		return Repl{}, err
	}
	return out, nil
}

// MoveRepl implements Store.
func (s *MemStore) MoveRepl(_ context.Context, id, cluster string) (Repl, string, error) {
	var (
		out  Repl
		from string
	)
	err := s.write(func() (func() []Event, error) {
		t := s.repls
		slot, ok := t.lookupID(id)
		if !ok {
			return nil, errNotFound("repl", id)
		}
		old := t.repl(slot)
		out, from = old, old.Cluster
		if old.Cluster == cluster {
			return nil, nil
		}
		if s.clusters[cluster] == nil {
			return nil, fmt.Errorf("%w: cluster %q", ErrNotFound, cluster)
		}
		if len(cluster) > maxField {
			return nil, fmt.Errorf("%w: cluster ID longer than %d bytes", ErrInvalid, maxField)
		}
		moved := old
		moved.Cluster = cluster
		return func() []Event {
			t.replace(slot, moved)
			out = t.repl(slot)
			s.counts[from]--
			s.counts[cluster]++
			ev := out
			return []Event{{Kind: ReplMoved, Repl: &ev, FromCluster: from}}
		}, nil
	})
	if err != nil {
		return Repl{}, "", err
	}
	return out, from, nil
}

// DeleteRepl implements Store.
func (s *MemStore) DeleteRepl(_ context.Context, id string) (Repl, error) {
	var out Repl
	err := s.write(func() (func() []Event, error) {
		t := s.repls
		slot, ok := t.lookupID(id)
		if !ok {
			return nil, errNotFound("repl", id)
		}
		out = t.repl(slot)
		return func() []Event {
			var events []Event
			names := s.replDomains[out.ID]
			slices.Sort(names)
			for _, n := range names {
				ev := *s.domains[n]
				events = append(events, Event{Kind: DomainDeleted, Domain: &ev})
				delete(s.domains, n)
			}
			delete(s.replDomains, out.ID)
			t.remove(slot)
			s.counts[out.Cluster]--
			ev := out
			return append(events, Event{Kind: ReplDeleted, Repl: &ev})
		}, nil
	})
	if err != nil {
		return Repl{}, err
	}
	return out, nil
}

// PutCluster implements Store.
func (s *MemStore) PutCluster(_ context.Context, c Cluster) (Cluster, error) {
	c = cloneCluster(c)
	err := s.write(func() (func() []Event, error) {
		return func() []Event {
			s.clusters[c.ID] = &c
			ev := cloneCluster(c)
			return []Event{{Kind: ClusterChanged, Cluster: &ev}}
		}, nil
	})
	if err != nil {
		return Cluster{}, err
	}
	return cloneCluster(c), nil
}

// CreateDomain implements Store.
func (s *MemStore) CreateDomain(_ context.Context, d Domain) (Domain, error) {
	err := s.write(func() (func() []Event, error) {
		if s.domains[d.Name] != nil {
			return nil, fmt.Errorf("%w: domain %q", ErrExists, d.Name)
		}
		if _, ok := s.repls.lookupID(d.Repl); !ok {
			return nil, fmt.Errorf("%w: repl %q", ErrNotFound, d.Repl)
		}
		return func() []Event {
			p := d
			s.domains[d.Name] = &p
			s.replDomains[d.Repl] = append(s.replDomains[d.Repl], d.Name)
			ev := d
			return []Event{{Kind: DomainChanged, Domain: &ev}}
		}, nil
	})
	if err != nil {
		return Domain{}, err
	}
	return d, nil
}

// VerifyDomain implements Store.
func (s *MemStore) VerifyDomain(_ context.Context, name, challenge string) (Domain, error) {
	var out Domain
	err := s.write(func() (func() []Event, error) {
		old := s.domains[name]
		if old == nil || old.Challenge != challenge {
			return nil, fmt.Errorf("%w: domain %q with that challenge", ErrNotFound, name)
		}
		out = *old
		if old.Verified {
			return nil, nil
		}
		out.Verified = true
		return func() []Event {
			p := out
			s.domains[name] = &p // a new value: readers may hold the old one
			ev := out
			return []Event{{Kind: DomainChanged, Domain: &ev}}
		}, nil
	})
	if err != nil {
		return Domain{}, err
	}
	return out, nil
}

// DeleteDomain implements Store.
func (s *MemStore) DeleteDomain(_ context.Context, name string) (Domain, error) {
	var out Domain
	err := s.write(func() (func() []Event, error) {
		old := s.domains[name]
		if old == nil {
			return nil, errNotFound("domain", name)
		}
		out = *old
		return func() []Event {
			delete(s.domains, name)
			rest := slices.DeleteFunc(s.replDomains[out.Repl], func(n string) bool { return n == name })
			if len(rest) == 0 {
				delete(s.replDomains, out.Repl)
			} else {
				s.replDomains[out.Repl] = rest
			}
			ev := out
			return []Event{{Kind: DomainDeleted, Domain: &ev}}
		}, nil
	})
	if err != nil {
		return Domain{}, err
	}
	return out, nil
}

func cloneCluster(c Cluster) Cluster {
	c.Hosting4 = slices.Clone(c.Hosting4)
	c.Hosting6 = slices.Clone(c.Hosting6)
	return c
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
