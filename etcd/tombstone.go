package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/tombstone"
)

// TombstoneStoreConfig configures a TombstoneStore.
type TombstoneStoreConfig struct {
	// Client is the etcd client. Required; the store does not close it.
	Client *clientv3.Client
	// Prefix is prepended to every key. Empty means "/switchyard/tombstone/". Each cluster
	// keeps its tombstones under its own prefix (e.g. "/switchyard/tombstone/<cluster>/").
	Prefix string
	// Now is the store's clock, which decides expiry. Nil means time.Now.
	Now func() time.Time
}

// TombstoneStore is a tombstone.Store in etcd, shared by every hosting proxy of a cluster.
// Keys under Prefix: t/<repl> (the tombstone, JSON) and n/<owner>\x00<slug>/<repl> (the name
// index). Expired tombstones stay until DeleteExpired, invisible to reads; the store's clock
// decides, not etcd's leases, so every replica agrees with its own Now.
type TombstoneStore struct {
	cli *clientv3.Client
	p   string
	now func() time.Time
}

var _ tombstone.Store = (*TombstoneStore)(nil)

// NewTombstoneStore returns a store over cfg.Client.
func NewTombstoneStore(cfg TombstoneStoreConfig) (*TombstoneStore, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcd: TombstoneStoreConfig.Client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/switchyard/tombstone/"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &TombstoneStore{cli: cfg.Client, p: cfg.Prefix, now: cfg.Now}, nil
}

func (s *TombstoneStore) key(repl string) string { return s.p + "t/" + repl }
func (s *TombstoneStore) namePrefix(owner, slug string) string {
	return s.p + "n/" + owner + "\x00" + slug + "/"
}

// Put implements tombstone.Store.
func (s *TombstoneStore) Put(ctx context.Context, t tombstone.Tombstone) error {
	_, err := s.put(ctx, t)
	return err
}

// put is Put, returning the revision of the write.
func (s *TombstoneStore) put(ctx context.Context, t tombstone.Tombstone) (int64, error) {
	if err := t.Validate(); err != nil {
		return 0, err
	}
	resp, err := run(ctx, s.cli, func(x *tx) error {
		v, err := x.get(s.key(t.Repl))
		if err != nil {
			return err
		}
		if v[0] != nil {
			old, err := decode[tombstone.Tombstone](v[0])
			if err != nil {
				return err
			}
			if old.Owner != "" {
				x.del(s.namePrefix(old.Owner, old.Slug) + old.Repl)
			}
		}
		x.put(s.key(t.Repl), encode(t))
		if t.Owner != "" {
			x.put(s.namePrefix(t.Owner, t.Slug)+t.Repl, nil)
		}
		return nil
	})
	return revision(resp), err
}

// revision is the revision of a committed write (0 for none).
func revision(resp *clientv3.TxnResponse) int64 {
	if resp == nil || resp.Header == nil {
		return 0
	}
	return resp.Header.Revision
}

// Get implements tombstone.Store.
func (s *TombstoneStore) Get(ctx context.Context, repl string) (tombstone.Tombstone, error) {
	resp, err := s.cli.Get(ctx, s.key(repl))
	if err != nil {
		return tombstone.Tombstone{}, fmt.Errorf("etcd: get tombstone: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return tombstone.Tombstone{}, tombstone.ErrNotFound
	}
	t, err := decode[tombstone.Tombstone](resp.Kvs[0].Value)
	if err != nil {
		return tombstone.Tombstone{}, err
	}
	if !t.Expires.After(s.now()) {
		return tombstone.Tombstone{}, tombstone.ErrNotFound
	}
	return t, nil
}

// GetByName implements tombstone.Store.
func (s *TombstoneStore) GetByName(ctx context.Context, owner, slug string) (tombstone.Tombstone, error) {
	resp, err := s.cli.Get(ctx, s.namePrefix(owner, slug), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return tombstone.Tombstone{}, fmt.Errorf("etcd: get tombstone: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return tombstone.Tombstone{}, tombstone.ErrNotFound
	}
	ops := make([]clientv3.Op, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		ops[i] = clientv3.OpGet(s.key(string(kv.Key[len(s.namePrefix(owner, slug)):])), clientv3.WithRev(resp.Header.Revision))
	}
	tr, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return tombstone.Tombstone{}, fmt.Errorf("etcd: get tombstone: %w", err)
	}
	now := s.now()
	var best *tombstone.Tombstone
	for _, r := range tr.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			t, err := decode[tombstone.Tombstone](kv.Value)
			if err != nil {
				return tombstone.Tombstone{}, err
			}
			if t.Expires.After(now) && (best == nil || t.Created.After(best.Created)) {
				best = &t
			}
		}
	}
	if best == nil {
		return tombstone.Tombstone{}, tombstone.ErrNotFound
	}
	return *best, nil
}

// Delete implements tombstone.Store.
func (s *TombstoneStore) Delete(ctx context.Context, repl string) error {
	_, err := s.delete(ctx, repl)
	return err
}

// delete is Delete, returning the revision of the write.
func (s *TombstoneStore) delete(ctx context.Context, repl string) (int64, error) {
	resp, err := run(ctx, s.cli, func(x *tx) error {
		v, err := x.get(s.key(repl))
		if err != nil {
			return err
		}
		if v[0] == nil {
			return tombstone.ErrNotFound
		}
		old, err := decode[tombstone.Tombstone](v[0])
		if err != nil {
			return err
		}
		x.del(s.key(repl))
		if old.Owner != "" {
			x.del(s.namePrefix(old.Owner, old.Slug) + repl)
		}
		return nil
	})
	return revision(resp), err
}

func (s *TombstoneStore) all(ctx context.Context) ([]tombstone.Tombstone, error) {
	resp, err := s.cli.Get(ctx, s.p+"t/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: list tombstones: %w", err)
	}
	out := make([]tombstone.Tombstone, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		t, err := decode[tombstone.Tombstone](kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// List implements tombstone.Store.
func (s *TombstoneStore) List(ctx context.Context) ([]tombstone.Tombstone, error) {
	all, err := s.all(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := []tombstone.Tombstone{}
	for _, t := range all {
		if t.Expires.After(now) {
			out = append(out, t)
		}
	}
	return out, nil
}

// DeleteExpired implements tombstone.Store. Each expired tombstone is deleted only if it is
// unchanged since it was read (a Put that revived it meanwhile wins).
func (s *TombstoneStore) DeleteExpired(ctx context.Context) (int, error) {
	n, _, err := s.deleteExpired(ctx)
	return n, err
}

// deleteExpired is DeleteExpired, also returning the revision of the last write (0 for none).
func (s *TombstoneStore) deleteExpired(ctx context.Context) (int, int64, error) {
	resp, err := s.cli.Get(ctx, s.p+"t/", clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("etcd: list tombstones: %w", err)
	}
	var last int64
	now := s.now()
	n := 0
	for _, kv := range resp.Kvs {
		t, err := decode[tombstone.Tombstone](kv.Value)
		if err != nil {
			return n, last, err
		}
		if t.Expires.After(now) {
			continue
		}
		ops := []clientv3.Op{clientv3.OpDelete(string(kv.Key))}
		if t.Owner != "" {
			ops = append(ops, clientv3.OpDelete(s.namePrefix(t.Owner, t.Slug)+t.Repl))
		}
		r, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).Then(ops...).Commit()
		if err != nil {
			return n, last, fmt.Errorf("etcd: delete expired tombstones: %w", err)
		}
		if r.Succeeded {
			n++
			last = r.Header.Revision
		}
	}
	return n, last, nil
}
