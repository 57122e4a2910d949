package tombstone

import (
	"context"
	"fmt"
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
type MemStore struct {
	db  *memdb.MemDB
	now func() time.Time
}

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
	return &MemStore{db: db, now: now}, nil
}

// Put creates or replaces the tombstone of t.Repl.
func (s *MemStore) Put(ctx context.Context, t Tombstone) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	if err := txn.Insert(memTable, &t); err != nil {
		return fmt.Errorf("tombstone: put %s: %w", t.Repl, err)
	}
	txn.Commit()
	return nil
}

// Get returns the live tombstone of a repl, or ErrNotFound.
func (s *MemStore) Get(ctx context.Context, repl string) (Tombstone, error) {
	if err := ctx.Err(); err != nil {
		return Tombstone{}, err
	}
	raw, err := s.db.Txn(false).First(memTable, "id", repl)
	if err != nil {
		return Tombstone{}, fmt.Errorf("tombstone: get %s: %w", repl, err)
	}
	if raw == nil {
		return Tombstone{}, ErrNotFound
	}
	t := raw.(*Tombstone)
	if !t.Expires.After(s.now()) {
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
	it, err := s.db.Txn(false).Get(memTable, "name", owner, slug)
	if err != nil {
		return Tombstone{}, fmt.Errorf("tombstone: get %s.%s: %w", slug, owner, err)
	}
	now := s.now()
	var best *Tombstone
	for raw := it.Next(); raw != nil; raw = it.Next() {
		t := raw.(*Tombstone)
		if t.Expires.After(now) && (best == nil || t.Created.After(best.Created)) {
			best = t
		}
	}
	if best == nil {
		return Tombstone{}, ErrNotFound
	}
	return *best, nil
}

// Delete removes the tombstone of a repl; ErrNotFound if there is none.
func (s *MemStore) Delete(ctx context.Context, repl string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	n, err := txn.DeleteAll(memTable, "id", repl)
	if err != nil {
		return fmt.Errorf("tombstone: delete %s: %w", repl, err)
	}
	if n == 0 {
		return ErrNotFound
	}
	txn.Commit()
	return nil
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
	return len(dead), nil
}
