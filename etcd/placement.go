package etcd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/placement"
)

// PlacementStoreConfig configures a PlacementStore.
type PlacementStoreConfig struct {
	// Client is the etcd client. Required; the store does not close it.
	Client *clientv3.Client
	// Prefix is prepended to every key. Empty means "/switchyard/placement/". Controlplanes
	// of one cluster share a prefix; each cluster has its own.
	Prefix string
	// MaxTxnOps is the etcd server's --max-txn-ops. Zero means 128, etcd's default. AssignBatch
	// splits larger batches into several transactions and ReleaseVM of a VM with more
	// assignments than fit in one transaction releases them in several (each atomic).
	MaxTxnOps int
	// Now is the clock of release times. Nil means time.Now.
	Now func() time.Time
}

// PlacementStore is a placement.Store (and placement.BatchAssigner) in etcd. Every change to a
// VM's assignments rewrites the VM's key (its usage and assignment count), and every commit is
// an etcd transaction that compares the mod revision of the VM keys and assignment keys it
// read: two Controlplanes on separate clients that race for the last slot of a VM cannot both
// commit, the loser re-reads and gets ErrNoCapacity.
//
// Keys under Prefix: vm/<id> (the VM and its assignment count), asg/<repl> (the live
// assignment), vmasg/<vm>/<repl> (the same, listed by VM) and last/<repl> (the last VM).
type PlacementStore struct {
	cli    *clientv3.Client
	p      string
	maxOps int
	now    func() time.Time
}

var (
	_ placement.Store         = (*PlacementStore)(nil)
	_ placement.BatchAssigner = (*PlacementStore)(nil)
)

// vmRecord is what vm/<id> holds.
type vmRecord struct {
	VM       placement.VM `json:"vm"`
	Assigned int          `json:"assigned"`
}

type lastRecord struct {
	VM       string    `json:"vm"`
	Released time.Time `json:"released"`
}

// NewPlacementStore returns a store over cfg.Client.
func NewPlacementStore(cfg PlacementStoreConfig) (*PlacementStore, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcd: PlacementStoreConfig.Client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/switchyard/placement/"
	}
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = 128
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &PlacementStore{cli: cfg.Client, p: cfg.Prefix, maxOps: cfg.MaxTxnOps, now: cfg.Now}, nil
}

func (s *PlacementStore) vmKey(id string) string          { return s.p + "vm/" + id }
func (s *PlacementStore) asgKey(repl string) string       { return s.p + "asg/" + repl }
func (s *PlacementStore) vmAsgKey(vm, repl string) string { return s.p + "vmasg/" + vm + "/" + repl }
func (s *PlacementStore) lastKey(repl string) string      { return s.p + "last/" + repl }

func cloneVM(v placement.VM) placement.VM { return v } // VM holds no reference types

func (s *PlacementStore) readVM(t *tx, id string) (*vmRecord, error) {
	v, err := t.get(s.vmKey(id))
	if err != nil {
		return nil, err
	}
	if v[0] == nil {
		return nil, fmt.Errorf("%w: vm %q", placement.ErrNotFound, id)
	}
	r, err := decode[vmRecord](v[0])
	return &r, err
}

// VM implements placement.Store.
func (s *PlacementStore) VM(ctx context.Context, id string) (placement.VM, error) {
	resp, err := s.cli.Get(ctx, s.vmKey(id))
	if err != nil {
		return placement.VM{}, fmt.Errorf("etcd: get vm: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return placement.VM{}, fmt.Errorf("%w: vm %q", placement.ErrNotFound, id)
	}
	r, err := decode[vmRecord](resp.Kvs[0].Value)
	return r.VM, err
}

// VMs implements placement.Store.
func (s *PlacementStore) VMs(ctx context.Context) ([]placement.VM, error) {
	resp, err := s.cli.Get(ctx, s.p+"vm/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: list vms: %w", err)
	}
	out := make([]placement.VM, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r, err := decode[vmRecord](kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, r.VM)
	}
	return out, nil
}

// PutVM implements placement.Store.
func (s *PlacementStore) PutVM(ctx context.Context, vm placement.VM) (placement.VM, error) {
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.vmKey(vm.ID))
		if err != nil {
			return err
		}
		rec := vmRecord{}
		if v[0] != nil {
			if rec, err = decode[vmRecord](v[0]); err != nil {
				return err
			}
		}
		vm.Usage = rec.VM.Usage
		rec.VM = vm
		t.put(s.vmKey(vm.ID), encode(rec))
		return nil
	})
	if err != nil {
		return placement.VM{}, err
	}
	return vm, nil
}

// UpdateVM implements placement.Store. fn may run more than once if another writer changes
// the VM meanwhile; only its last run is stored.
func (s *PlacementStore) UpdateVM(ctx context.Context, id string, fn func(*placement.VM) error) (placement.VM, error) {
	var out placement.VM
	_, err := run(ctx, s.cli, func(t *tx) error {
		rec, err := s.readVM(t, id)
		if err != nil {
			return err
		}
		next := cloneVM(rec.VM)
		if err := fn(&next); err != nil {
			return err
		}
		next.ID, next.Usage = rec.VM.ID, rec.VM.Usage
		rec.VM = next
		t.put(s.vmKey(id), encode(rec))
		out = next
		return nil
	})
	if err != nil {
		return placement.VM{}, err
	}
	return out, nil
}

// DeleteVM implements placement.Store.
func (s *PlacementStore) DeleteVM(ctx context.Context, id string) error {
	_, err := run(ctx, s.cli, func(t *tx) error {
		rec, err := s.readVM(t, id)
		if err != nil {
			return err
		}
		if rec.Assigned > 0 {
			return fmt.Errorf("%w: vm %q still has assignments", placement.ErrConflict, id)
		}
		t.del(s.vmKey(id))
		return nil
	})
	return err
}

// Assignment implements placement.Store.
func (s *PlacementStore) Assignment(ctx context.Context, repl string) (placement.Assignment, error) {
	resp, err := s.cli.Get(ctx, s.asgKey(repl))
	if err != nil {
		return placement.Assignment{}, fmt.Errorf("etcd: get assignment: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return placement.Assignment{}, fmt.Errorf("%w: no assignment for repl %q", placement.ErrNotFound, repl)
	}
	return decode[placement.Assignment](resp.Kvs[0].Value)
}

// Assignments implements placement.Store.
func (s *PlacementStore) Assignments(ctx context.Context, vm string) ([]placement.Assignment, error) {
	prefix := s.p + "asg/"
	if vm != "" {
		prefix = s.p + "vmasg/" + vm + "/"
	}
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: list assignments: %w", err)
	}
	var out []placement.Assignment
	for _, kv := range resp.Kvs {
		a, err := decode[placement.Assignment](kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// Assign implements placement.Store: one read of the VM and the repl's assignment, then one
// transaction that commits only if neither changed (else it reads again).
func (s *PlacementStore) Assign(ctx context.Context, a placement.Assignment) (placement.VM, error) {
	vms, errs := s.assignBatch(ctx, []placement.Assignment{a})
	return vms[0], errs[0]
}

// AssignBatch implements placement.BatchAssigner: one read of every VM and repl involved and
// one transaction for the lot (per MaxTxnOps), retried as a whole if another writer changed
// any of them in between.
func (s *PlacementStore) AssignBatch(ctx context.Context, as []placement.Assignment) ([]placement.VM, []error) {
	vms := make([]placement.VM, len(as))
	errs := make([]error, len(as))
	// Each assignment writes 2 keys, plus one VM key per VM; chunk so a transaction stays
	// within MaxTxnOps even when every assignment is on a different VM.
	chunk := max(1, s.maxOps/3)
	for lo := 0; lo < len(as); lo += chunk {
		hi := min(len(as), lo+chunk)
		v, e := s.assignBatch(ctx, as[lo:hi])
		copy(vms[lo:], v)
		copy(errs[lo:], e)
	}
	return vms, errs
}

func (s *PlacementStore) assignBatch(ctx context.Context, as []placement.Assignment) ([]placement.VM, []error) {
	vms := make([]placement.VM, len(as))
	errs := make([]error, len(as))
	_, err := run(ctx, s.cli, func(t *tx) error {
		clear(vms)
		clear(errs)
		// One round trip for every key the batch depends on.
		var keys []string
		seen := map[string]bool{}
		for _, a := range as {
			for _, k := range []string{s.vmKey(a.VM), s.asgKey(a.Repl)} {
				if !seen[k] {
					seen[k] = true
					keys = append(keys, k)
				}
			}
		}
		vals, err := t.get(keys...)
		if err != nil {
			return err
		}
		val := map[string][]byte{}
		for i, k := range keys {
			val[k] = vals[i]
		}
		recs := map[string]*vmRecord{}
		taken := map[string]string{} // repl -> vm
		for i, a := range as {
			rec, ok := recs[a.VM]
			if !ok {
				if b := val[s.vmKey(a.VM)]; b != nil {
					r, err := decode[vmRecord](b)
					if err != nil {
						return err
					}
					rec = &r
				}
				recs[a.VM] = rec
			}
			if rec == nil {
				errs[i] = fmt.Errorf("%w: vm %q", placement.ErrNotFound, a.VM)
				continue
			}
			if rec.VM.State != placement.Active {
				errs[i] = fmt.Errorf("%w: vm %q is %s", placement.ErrNoCapacity, a.VM, rec.VM.State)
				continue
			}
			if !fits(rec.VM.Capacity, rec.VM.Usage, a.Resources) {
				errs[i] = fmt.Errorf("%w: vm %q is full", placement.ErrNoCapacity, a.VM)
				continue
			}
			if on, ok := taken[a.Repl]; ok {
				errs[i] = fmt.Errorf("%w: repl %q is already assigned to vm %q", placement.ErrConflict, a.Repl, on)
				continue
			}
			if b := val[s.asgKey(a.Repl)]; b != nil {
				old, err := decode[placement.Assignment](b)
				if err != nil {
					return err
				}
				errs[i] = fmt.Errorf("%w: repl %q is already assigned to vm %q", placement.ErrConflict, a.Repl, old.VM)
				continue
			}
			taken[a.Repl] = a.VM
			rec.VM.Usage = add(rec.VM.Usage, a.Resources)
			rec.Assigned++
			vms[i] = rec.VM
			b := encode(a)
			t.put(s.asgKey(a.Repl), b)
			t.put(s.vmAsgKey(a.VM, a.Repl), b)
			t.put(s.vmKey(a.VM), encode(rec))
		}
		return nil
	})
	if err != nil {
		for i := range errs {
			errs[i] = err
			vms[i] = placement.VM{}
		}
	}
	return vms, errs
}

// Release implements placement.Store.
func (s *PlacementStore) Release(ctx context.Context, repl, vm string) (placement.Assignment, placement.VM, error) {
	var (
		out  placement.Assignment
		next placement.VM
	)
	_, err := run(ctx, s.cli, func(t *tx) error {
		v, err := t.get(s.asgKey(repl))
		if err != nil {
			return err
		}
		if v[0] == nil {
			return fmt.Errorf("%w: no assignment for repl %q", placement.ErrNotFound, repl)
		}
		if out, err = decode[placement.Assignment](v[0]); err != nil {
			return err
		}
		if vm != "" && out.VM != vm {
			return fmt.Errorf("%w: repl %q is on vm %q, not %q", placement.ErrConflict, repl, out.VM, vm)
		}
		next = placement.VM{}
		rec, err := s.readVM(t, out.VM)
		if err != nil && !errors.Is(err, placement.ErrNotFound) {
			return err
		}
		s.releaseOps(t, out, s.now())
		if rec != nil {
			rec.VM.Usage = sub(rec.VM.Usage, out.Resources)
			rec.Assigned--
			t.put(s.vmKey(out.VM), encode(rec))
			next = rec.VM
		}
		return nil
	})
	if err != nil {
		return placement.Assignment{}, placement.VM{}, err
	}
	return out, next, nil
}

func (s *PlacementStore) releaseOps(t *tx, a placement.Assignment, now time.Time) {
	t.del(s.asgKey(a.Repl))
	t.del(s.vmAsgKey(a.VM, a.Repl))
	t.put(s.lastKey(a.Repl), encode(lastRecord{VM: a.VM, Released: now}))
}

// ReleaseVM implements placement.Store. The VM key changes with every assignment made or
// released on the VM, so comparing its revision covers the whole list. A VM with more
// assignments than fit in one transaction (MaxTxnOps) is released in several, each atomic.
func (s *PlacementStore) ReleaseVM(ctx context.Context, vm string) ([]placement.Assignment, placement.VM, error) {
	var (
		all  []placement.Assignment
		next placement.VM
	)
	per := max(1, (s.maxOps-1)/3)
	for {
		var done bool
		var batch []placement.Assignment
		_, err := run(ctx, s.cli, func(t *tx) error {
			batch = batch[:0]
			rec, err := s.readVM(t, vm)
			if err != nil {
				return err
			}
			resp, err := s.cli.Get(ctx, s.p+"vmasg/"+vm+"/", clientv3.WithPrefix(), clientv3.WithLimit(int64(per)))
			if err != nil {
				return fmt.Errorf("etcd: list assignments: %w", err)
			}
			now := s.now()
			for _, kv := range resp.Kvs {
				a, err := decode[placement.Assignment](kv.Value)
				if err != nil {
					return err
				}
				batch = append(batch, a)
				s.releaseOps(t, a, now)
				rec.VM.Usage = sub(rec.VM.Usage, a.Resources)
				rec.Assigned--
			}
			if !resp.More {
				done = true
				rec.VM.Usage, rec.Assigned = placement.Resources{}, 0
			}
			t.put(s.vmKey(vm), encode(rec))
			next = rec.VM
			return nil
		})
		if err != nil {
			return nil, placement.VM{}, err
		}
		all = append(all, batch...)
		if done {
			break
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Repl < all[j].Repl })
	return all, next, nil
}

// LastVM implements placement.Store.
func (s *PlacementStore) LastVM(ctx context.Context, repl string) (string, time.Time, error) {
	resp, err := s.cli.Get(ctx, s.lastKey(repl))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("etcd: get last vm: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", time.Time{}, fmt.Errorf("%w: no previous vm for repl %q", placement.ErrNotFound, repl)
	}
	r, err := decode[lastRecord](resp.Kvs[0].Value)
	return r.VM, r.Released, err
}

// fits is placement's capacity rule: every constrained dimension (non-zero capacity) keeps
// room for req, compared against the remaining room so huge requests cannot overflow.
func fits(capacity, used, req placement.Resources) bool {
	if capacity.Containers > 0 && req.Containers > capacity.Containers-used.Containers {
		return false
	}
	if capacity.CPUMilli > 0 && req.CPUMilli > capacity.CPUMilli-used.CPUMilli {
		return false
	}
	if capacity.MemoryBytes > 0 && req.MemoryBytes > capacity.MemoryBytes-used.MemoryBytes {
		return false
	}
	return true
}

func add(a, b placement.Resources) placement.Resources {
	return placement.Resources{Containers: a.Containers + b.Containers, CPUMilli: a.CPUMilli + b.CPUMilli, MemoryBytes: a.MemoryBytes + b.MemoryBytes}
}

func sub(a, b placement.Resources) placement.Resources {
	return placement.Resources{Containers: a.Containers - b.Containers, CPUMilli: a.CPUMilli - b.CPUMilli, MemoryBytes: a.MemoryBytes - b.MemoryBytes}
}
