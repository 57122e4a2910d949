package tombstone

import (
	"context"
	"fmt"
	"sync"
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

// MemStoreConfig configures a MemStore.
type MemStoreConfig struct {
	// Now is the store's clock, deciding what has expired. Nil means time.Now.
	Now func() time.Time
}

// MemStore is the in-process Store, on hashicorp/go-memdb. The zero value is not usable; call
// NewMemStore.
//
// Reads are the hot path (every hosting request asks Get or GetByName), writes are rare (one per
// move), so besides the memdb tables MemStore keeps a read index of plain maps, updated key by
// key after each commit under a read-write lock: a lookup is a map read without allocations.
type MemStore struct {
	db  *memdb.MemDB
	now func() time.Time
	wmu sync.Mutex // serializes writers, so each publishes the index of its own commit
	rmu sync.RWMutex
	idx memIndex // guarded by rmu
}

// memIndex is the read index: the committed table by id and by name.
type memIndex struct {
	byID   map[string]*Tombstone
	byName map[memName]*Tombstone // the newest tombstone of each name (live or not)
	names  map[memName][]*Tombstone
}

type memName struct{ owner, slug string }

var _ Store = (*MemStore)(nil)

const memTable = "tombstones"

var memSchema = &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
	memTable: {
		Name: memTable,
		Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Repl"}},
			"name": {Name: "name", AllowMissing: true, Indexer: &memdb.CompoundIndex{Indexes: []memdb.Indexer{
				&memdb.StringFieldIndex{Field: "Owner"}, &memdb.StringFieldIndex{Field: "Slug"},
			}}},
		},
	},
}}

// NewMemStore returns an empty MemStore.
func NewMemStore(cfg MemStoreConfig) (*MemStore, error) {
	db, err := memdb.NewMemDB(memSchema)
	if err != nil {
		return nil, fmt.Errorf("tombstone: memdb schema: %w", err)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	s := &MemStore{db: db, now: now}
	s.idx = memIndex{byID: map[string]*Tombstone{}, byName: map[memName]*Tombstone{}, names: map[memName][]*Tombstone{}}
	return s, nil
}

// publish updates the read index after a commit changed the given repls and names: the
// touched keys are recomputed from the committed table. Callers hold wmu.
func (s *MemStore) publish(repls []string, names []memName) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	next := &s.idx
	txn := s.db.Txn(false)
	for _, id := range repls {
		raw, err := txn.First(memTable, "id", id)
		if err != nil {
			return err
		}
		if raw == nil {
			delete(next.byID, id)
		} else {
			next.byID[id] = raw.(*Tombstone)
		}
	}
	for _, n := range names {
		if n.owner == "" {
			continue
		}
		it, err := txn.Get(memTable, "name", n.owner, n.slug)
		if err != nil {
			return err
		}
		var all []*Tombstone
		for raw := it.Next(); raw != nil; raw = it.Next() {
			all = append(all, raw.(*Tombstone))
		}
		if len(all) == 0 {
			delete(next.names, n)
			delete(next.byName, n)
			continue
		}
		next.names[n] = all
		next.byName[n] = newestLive(all, time.Time{})
	}
	return nil
}

// newestLive returns the newest tombstone of all that is live at now (any, when now is zero).
func newestLive(all []*Tombstone, now time.Time) *Tombstone {
	var best *Tombstone
	for _, t := range all {
		if (now.IsZero() || t.Expires.After(now)) && (best == nil || t.Created.After(best.Created)) {
			best = t
		}
	}
	return best
}

// Put creates or replaces the tombstone of t.Repl.
func (s *MemStore) Put(ctx context.Context, t Tombstone) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	txn := s.db.Txn(true)
	defer txn.Abort()
	names := []memName{{t.Owner, t.Slug}}
	if raw, err := txn.First(memTable, "id", t.Repl); err == nil && raw != nil {
		old := raw.(*Tombstone)
		names = append(names, memName{old.Owner, old.Slug})
	}
	if err := txn.Insert(memTable, &t); err != nil {
		return fmt.Errorf("tombstone: put %s: %w", t.Repl, err)
	}
	txn.Commit()
	return s.publish([]string{t.Repl}, names)
}

// Get returns the live tombstone of a repl, or ErrNotFound.
func (s *MemStore) Get(ctx context.Context, repl string) (Tombstone, error) {
	if err := ctx.Err(); err != nil {
		return Tombstone{}, err
	}
	s.rmu.RLock()
	t := s.idx.byID[repl]
	s.rmu.RUnlock()
	if t == nil || !t.Expires.After(s.now()) {
		return Tombstone{}, ErrNotFound
	}
	return *t, nil
}

// GetByName returns the newest live tombstone of <slug>.<owner>, or ErrNotFound.
func (s *MemStore) GetByName(ctx context.Context, owner, slug string) (Tombstone, error) {
	if err := ctx.Err(); err != nil {
		return Tombstone{}, err
	}
	if owner == "" || slug == "" {
		return Tombstone{}, ErrNotFound
	}
	n := memName{owner, slug}
	s.rmu.RLock()
	t, all := s.idx.byName[n], s.idx.names[n]
	s.rmu.RUnlock()
	if t == nil {
		return Tombstone{}, ErrNotFound
	}
	now := s.now()
	if !t.Expires.After(now) {
		// The newest has expired; an older one of the same name may still live.
		if t = newestLive(all, now); t == nil {
			return Tombstone{}, ErrNotFound
		}
	}
	return *t, nil
}

// Delete removes the tombstone of a repl; ErrNotFound if there is none.
func (s *MemStore) Delete(ctx context.Context, repl string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	txn := s.db.Txn(true)
	defer txn.Abort()
	raw, err := txn.First(memTable, "id", repl)
	if err != nil {
		return fmt.Errorf("tombstone: delete %s: %w", repl, err)
	}
	if raw == nil {
		return ErrNotFound
	}
	old := raw.(*Tombstone)
	if err := txn.Delete(memTable, old); err != nil {
		return fmt.Errorf("tombstone: delete %s: %w", repl, err)
	}
	txn.Commit()
	return s.publish([]string{repl}, []memName{{old.Owner, old.Slug}})
}

// List returns every live tombstone, ordered by repl ID.
func (s *MemStore) List(ctx context.Context) ([]Tombstone, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	it, err := s.db.Txn(false).Get(memTable, "id")
	if err != nil {
		return nil, fmt.Errorf("tombstone: list: %w", err)
	}
	now := s.now()
	out := []Tombstone{}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if t := raw.(*Tombstone); t.Expires.After(now) {
			out = append(out, *t)
		}
	}
	return out, nil
}

// DeleteExpired removes the expired tombstones and returns how many it removed.
func (s *MemStore) DeleteExpired(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	txn := s.db.Txn(true)
	defer txn.Abort()
	it, err := txn.Get(memTable, "id")
	if err != nil {
		return 0, fmt.Errorf("tombstone: delete expired: %w", err)
	}
	now := s.now()
	var dead []*Tombstone
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if t := raw.(*Tombstone); !t.Expires.After(now) {
			dead = append(dead, t)
		}
	}
	for _, t := range dead {
		if err := txn.Delete(memTable, t); err != nil {
			return 0, fmt.Errorf("tombstone: delete expired %s: %w", t.Repl, err)
		}
	}
	txn.Commit()
	if len(dead) == 0 {
		return 0, nil
	}
	repls := make([]string, 0, len(dead))
	names := make([]memName, 0, len(dead))
	for _, t := range dead {
		repls = append(repls, t.Repl)
		names = append(names, memName{t.Owner, t.Slug})
	}
	return len(dead), s.publish(repls, names)
}
