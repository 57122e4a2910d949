package lore

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	memdb "github.com/hashicorp/go-memdb"
)

// MemStoreConfig configures NewMemStore.
type MemStoreConfig struct {
	// WatchBuffer is how many events each watcher may fall behind before its channel is closed
	// (it must then re-read and watch again). Zero means 4096.
	WatchBuffer int
}

// MemStore is the in-process Store on hashicorp/go-memdb.
//
// go-memdb holds the records: every write is one memdb write transaction, under a store-wide
// write lock, that checks uniqueness and references and aborts on any error. A lookup in
// memdb's radix trees costs several microseconds and allocations (a read transaction, index
// keys, an iterator), too much for the DNS and hosting hot path, so MemStore also keeps read
// indexes — plain maps from ID, from (owner, slug) and from domain name to the same immutable
// *Repl and *Domain values memdb holds — updated under the write lock right after each memdb
// commit. Point lookups (Repl, ReplByName, ReplByDomain, Cluster) read only those maps under a
// read lock and do not allocate; listings walk memdb's ordered index.
//
// Memory: each memdb index costs about 350 bytes per row (radix nodes, leaves and their watch
// channels), so repls have one memdb index, keyed by (owner, slug), which also orders listings;
// the uniqueness of IDs is checked against the ID map under the write lock. At 1,000,000 repls
// the store's live heap is recorded in docs/benchmarks/lore.md.
type MemStore struct {
	db     *memdb.MemDB
	buffer int

	wmu    sync.Mutex // serializes writes: memdb commit, index update and event publication
	index  uint64
	closed bool
	watch  map[*memWatcher]struct{} // guarded by wmu

	rmu      sync.RWMutex // guards the read indexes below
	byID     map[string]*Repl
	byName   map[nameKey]*Repl
	domains  map[string]*Domain
	clusters map[string]*Cluster
	counts   map[string]int
}

type nameKey struct{ owner, slug string }

type memWatcher struct {
	ch   chan Event
	stop func() bool
}

var _ Store = (*MemStore)(nil)

const (
	tableRepls    = "repls"
	tableClusters = "clusters"
	tableDomains  = "domains"
)

var memSchema = &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
	tableRepls: {Name: tableRepls, Indexes: map[string]*memdb.IndexSchema{
		// The primary key of a repl in memdb is its name (owner, slug): one radix tree per repl
		// instead of two (see MemStore); IDs are indexed by the byID map.
		"id": {Name: "id", Unique: true, Indexer: &memdb.CompoundIndex{Indexes: []memdb.Indexer{
			&memdb.StringFieldIndex{Field: "Owner"}, &memdb.StringFieldIndex{Field: "Slug"},
		}}},
	}},
	tableClusters: {Name: tableClusters, Indexes: map[string]*memdb.IndexSchema{
		"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
	}},
	tableDomains: {Name: tableDomains, Indexes: map[string]*memdb.IndexSchema{
		"id":   {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Name"}},
		"repl": {Name: "repl", Indexer: &memdb.StringFieldIndex{Field: "Repl"}},
	}},
}}

// NewMemStore returns an empty in-process store.
func NewMemStore(cfg MemStoreConfig) (*MemStore, error) {
	db, err := memdb.NewMemDB(memSchema)
	if err != nil {
		return nil, fmt.Errorf("lore: memdb schema: %w", err)
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = 4096
	}
	return &MemStore{
		db: db, buffer: cfg.WatchBuffer,
		watch:    make(map[*memWatcher]struct{}),
		byID:     make(map[string]*Repl),
		byName:   make(map[nameKey]*Repl),
		domains:  make(map[string]*Domain),
		clusters: make(map[string]*Cluster),
		counts:   make(map[string]int),
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
	r := s.byID[id]
	s.rmu.RUnlock()
	if r == nil {
		return Repl{}, errNotFound("repl", id)
	}
	return *r, nil
}

// ReplByName implements Store.
func (s *MemStore) ReplByName(_ context.Context, owner, slug string) (Repl, error) {
	s.rmu.RLock()
	r := s.byName[nameKey{owner, slug}]
	s.rmu.RUnlock()
	if r == nil {
		return Repl{}, errNameNotFound(owner, slug)
	}
	return *r, nil
}

// ReplByDomain implements Store.
func (s *MemStore) ReplByDomain(_ context.Context, domain string) (Repl, error) {
	s.rmu.RLock()
	var r *Repl
	if d := s.domains[domain]; d != nil && d.Verified {
		r = s.byID[d.Repl]
	}
	s.rmu.RUnlock()
	if r == nil {
		return Repl{}, errNotFound("no verified domain", domain)
	}
	return *r, nil
}

// Repls implements Store.
func (s *MemStore) Repls(_ context.Context, q ReplQuery) ([]Repl, error) {
	txn := s.db.Txn(false)
	afterOwner, afterSlug, hasAfter := strings.Cut(q.After, "/")
	if q.After != "" && !hasAfter {
		return nil, fmt.Errorf("%w: cursor %q is not <owner>/<slug>", ErrInvalid, q.After)
	}
	startOwner, startSlug := q.Owner, ""
	if hasAfter && (q.Owner == "" || afterOwner >= q.Owner) {
		startOwner, startSlug = afterOwner, afterSlug
	}
	it, err := txn.LowerBound(tableRepls, "id", startOwner, startSlug)
	if err != nil {
		return nil, memErr(err)
	}
	out := []Repl{}
	for o := it.Next(); o != nil; o = it.Next() {
		r := o.(*Repl)
		if hasAfter && r.Owner == afterOwner && r.Slug == afterSlug {
			continue
		}
		if q.Owner != "" && r.Owner != q.Owner {
			break
		}
		out = append(out, *r)
		if q.Limit > 0 && len(out) == q.Limit {
			break
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

// write runs fn in a memdb write transaction under the write lock. fn returns the events of the
// change (without Index) and a function that applies it to the read indexes; on success the
// transaction commits, the read indexes are updated and the events are published, in that
// order, before the next write starts.
func (s *MemStore) write(fn func(txn *memdb.Txn) ([]Event, func(), error)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return errStoreClosed
	}
	txn := s.db.Txn(true)
	events, apply, err := fn(txn)
	if err != nil {
		txn.Abort()
		return err
	}
	txn.Commit()
	if apply != nil {
		s.rmu.Lock()
		apply()
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

func memErr(err error) error { return fmt.Errorf("lore: memdb: %w", err) }

// packRepl returns a copy of r whose strings share one allocation, in the order owner, slug,
// ID, cluster, plan: fewer, smaller heap objects, and a name lookup that compares owner and
// slug touches one cache line instead of two.
func packRepl(r Repl) *Repl {
	buf := r.Owner + r.Slug + r.ID + r.Cluster + r.Plan
	p := &Repl{Created: r.Created}
	i := 0
	for _, f := range []struct {
		dst *string
		n   int
	}{{&p.Owner, len(r.Owner)}, {&p.Slug, len(r.Slug)}, {&p.ID, len(r.ID)}, {&p.Cluster, len(r.Cluster)}, {&p.Plan, len(r.Plan)}} {
		*f.dst = buf[i : i+f.n]
		i += f.n
	}
	return p
}

// CreateRepl implements Store.
func (s *MemStore) CreateRepl(_ context.Context, r Repl) (Repl, error) {
	p := packRepl(r)
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		if s.byID[r.ID] != nil { // read under wmu: only writers change it
			return nil, nil, fmt.Errorf("%w: repl id %q", ErrExists, r.ID)
		}
		if o, err := txn.First(tableRepls, "id", r.Owner, r.Slug); err != nil {
			return nil, nil, memErr(err)
		} else if o != nil {
			return nil, nil, fmt.Errorf("%w: repl %s/%s", ErrExists, r.Owner, r.Slug)
		}
		if o, err := txn.First(tableClusters, "id", r.Cluster); err != nil {
			return nil, nil, memErr(err)
		} else if o == nil {
			return nil, nil, fmt.Errorf("%w: cluster %q", ErrNotFound, r.Cluster)
		}
		if err := txn.Insert(tableRepls, p); err != nil {
			return nil, nil, memErr(err)
		}
		ev := *p
		return []Event{{Kind: ReplCreated, Repl: &ev}}, func() {
			s.byID[p.ID] = p
			s.byName[nameKey{p.Owner, p.Slug}] = p
			s.counts[p.Cluster]++
		}, nil
	})
	if err != nil {
		return Repl{}, err
	}
	return *p, nil
}

// MoveRepl implements Store.
func (s *MemStore) MoveRepl(_ context.Context, id, cluster string) (Repl, string, error) {
	var (
		out  Repl
		from string
	)
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		old := s.byID[id]
		if old == nil {
			return nil, nil, fmt.Errorf("%w: repl %q", ErrNotFound, id)
		}
		out, from = *old, old.Cluster
		if old.Cluster == cluster {
			return nil, nil, nil
		}
		if c, err := txn.First(tableClusters, "id", cluster); err != nil {
			return nil, nil, memErr(err)
		} else if c == nil {
			return nil, nil, fmt.Errorf("%w: cluster %q", ErrNotFound, cluster)
		}
		moved := *old
		moved.Cluster = cluster
		p := packRepl(moved)
		if err := txn.Insert(tableRepls, p); err != nil {
			return nil, nil, memErr(err)
		}
		out = *p
		ev := *p
		return []Event{{Kind: ReplMoved, Repl: &ev, FromCluster: from}}, func() {
			s.byID[p.ID] = p
			s.byName[nameKey{p.Owner, p.Slug}] = p
			s.counts[from]--
			s.counts[cluster]++
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
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		old := s.byID[id]
		if old == nil {
			return nil, nil, fmt.Errorf("%w: repl %q", ErrNotFound, id)
		}
		out = *old
		var events []Event
		var gone []string
		it, err := txn.Get(tableDomains, "repl", id)
		if err != nil {
			return nil, nil, memErr(err)
		}
		var doms []*Domain
		for d := it.Next(); d != nil; d = it.Next() {
			doms = append(doms, d.(*Domain))
		}
		for _, d := range doms {
			if err := txn.Delete(tableDomains, d); err != nil {
				return nil, nil, memErr(err)
			}
			ev := *d
			events = append(events, Event{Kind: DomainDeleted, Domain: &ev})
			gone = append(gone, d.Name)
		}
		if err := txn.Delete(tableRepls, old); err != nil {
			return nil, nil, memErr(err)
		}
		ev := *old
		events = append(events, Event{Kind: ReplDeleted, Repl: &ev})
		return events, func() {
			delete(s.byID, old.ID)
			delete(s.byName, nameKey{old.Owner, old.Slug})
			s.counts[old.Cluster]--
			for _, n := range gone {
				delete(s.domains, n)
			}
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
	p := &c
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		if err := txn.Insert(tableClusters, p); err != nil {
			return nil, nil, memErr(err)
		}
		ev := cloneCluster(c)
		return []Event{{Kind: ClusterChanged, Cluster: &ev}}, func() { s.clusters[p.ID] = p }, nil
	})
	if err != nil {
		return Cluster{}, err
	}
	return cloneCluster(c), nil
}

// CreateDomain implements Store.
func (s *MemStore) CreateDomain(_ context.Context, d Domain) (Domain, error) {
	p := &d
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		if o, err := txn.First(tableDomains, "id", d.Name); err != nil {
			return nil, nil, memErr(err)
		} else if o != nil {
			return nil, nil, fmt.Errorf("%w: domain %q", ErrExists, d.Name)
		}
		if s.byID[d.Repl] == nil {
			return nil, nil, fmt.Errorf("%w: repl %q", ErrNotFound, d.Repl)
		}
		if err := txn.Insert(tableDomains, p); err != nil {
			return nil, nil, memErr(err)
		}
		ev := d
		return []Event{{Kind: DomainChanged, Domain: &ev}}, func() { s.domains[p.Name] = p }, nil
	})
	if err != nil {
		return Domain{}, err
	}
	return d, nil
}

// VerifyDomain implements Store.
func (s *MemStore) VerifyDomain(_ context.Context, name, challenge string) (Domain, error) {
	var out Domain
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		o, err := txn.First(tableDomains, "id", name)
		if err != nil {
			return nil, nil, memErr(err)
		}
		if o == nil || o.(*Domain).Challenge != challenge {
			return nil, nil, fmt.Errorf("%w: domain %q with that challenge", ErrNotFound, name)
		}
		old := o.(*Domain)
		out = *old
		if old.Verified {
			return nil, nil, nil
		}
		p := new(Domain)
		*p = *old
		p.Verified = true
		if err := txn.Insert(tableDomains, p); err != nil {
			return nil, nil, memErr(err)
		}
		out = *p
		ev := *p
		return []Event{{Kind: DomainChanged, Domain: &ev}}, func() { s.domains[p.Name] = p }, nil
	})
	if err != nil {
		return Domain{}, err
	}
	return out, nil
}

// DeleteDomain implements Store.
func (s *MemStore) DeleteDomain(_ context.Context, name string) (Domain, error) {
	var out Domain
	err := s.write(func(txn *memdb.Txn) ([]Event, func(), error) {
		o, err := txn.First(tableDomains, "id", name)
		if err != nil {
			return nil, nil, memErr(err)
		}
		if o == nil {
			return nil, nil, fmt.Errorf("%w: domain %q", ErrNotFound, name)
		}
		out = *o.(*Domain)
		if err := txn.Delete(tableDomains, o); err != nil {
			return nil, nil, memErr(err)
		}
		ev := out
		return []Event{{Kind: DomainDeleted, Domain: &ev}}, func() { delete(s.domains, name) }, nil
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
