package placement

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"
)

// MapStore is an in-process Store built for large clusters: assignments live in sharded Go maps
// and every VM has its own lock, so Assign's check-and-set locks one VM and one shard instead of
// taking memdb's single writer lock and copying radix-tree paths. At 1,000,000 assignments it
// allocates a few hundred bytes per placement where memdb allocates ~20 KB, which is what keeps
// Place at tens of thousands of decisions per second on one core (docs/benchmarks/placement.md).
// It passes the same conformance suite as MemStore; unlike MemStore, a read spanning many VMs
// (VMs, Assignments("")) is not one snapshot (each VM and each shard is read consistently).
// Use NewMapStore; the zero value is not usable.
type MapStore struct {
	vmsMu  sync.RWMutex
	vms    map[string]*mapVM
	seed   maphash.Seed
	shards [mapShards]mapShard
}

const mapShards = 256

type mapVM struct {
	mu      sync.Mutex
	vm      VM // vm.ID is immutable; guarded by mu
	deleted bool
	repls   map[string]struct{} // repls with a live assignment here; guarded by mu
}

type mapShard struct {
	mu    sync.Mutex
	repls map[string]mapRepl
}

// mapRepl is a repl's live assignment (vm != nil) and its last released VM.
type mapRepl struct {
	vm        *mapVM
	vmID      string
	addr      string
	container string
	res       Resources
	created   time.Time
	last      string
	released  time.Time
}

// NewMapStore returns an empty MapStore.
func NewMapStore() *MapStore {
	s := &MapStore{vms: map[string]*mapVM{}, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].repls = map[string]mapRepl{}
	}
	return s
}

var _ Store = (*MapStore)(nil)

// Errors without per-call formatting, for the misses of the hot path.
var (
	errMapNoAssignment = fmt.Errorf("%w: no assignment for the repl", ErrNotFound)
	errMapNoLast       = fmt.Errorf("%w: the repl has no previous vm", ErrNotFound)
)

func (s *MapStore) shard(repl string) *mapShard {
	return &s.shards[maphash.String(s.seed, repl)%mapShards]
}

func (s *MapStore) row(id string) (*mapVM, error) {
	s.vmsMu.RLock()
	r := s.vms[id]
	s.vmsMu.RUnlock()
	if r == nil {
		return nil, fmt.Errorf("%w: vm %q", ErrNotFound, id)
	}
	return r, nil
}

func (s *MapStore) VM(ctx context.Context, id string) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	r, err := s.row(id)
	if err != nil {
		return VM{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deleted {
		return VM{}, fmt.Errorf("%w: vm %q", ErrNotFound, id)
	}
	return r.vm, nil
}

func (s *MapStore) VMs(ctx context.Context) ([]VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.vmsMu.RLock()
	rows := make([]*mapVM, 0, len(s.vms))
	for _, r := range s.vms {
		rows = append(rows, r)
	}
	s.vmsMu.RUnlock()
	out := make([]VM, 0, len(rows))
	for _, r := range rows {
		r.mu.Lock()
		if !r.deleted {
			out = append(out, r.vm)
		}
		r.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b VM) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (s *MapStore) PutVM(ctx context.Context, vm VM) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	for {
		s.vmsMu.Lock()
		r := s.vms[vm.ID]
		if r == nil {
			vm.Usage = Resources{}
			s.vms[vm.ID] = &mapVM{vm: vm, repls: map[string]struct{}{}}
			s.vmsMu.Unlock()
			return vm, nil
		}
		s.vmsMu.Unlock()
		r.mu.Lock()
		if r.deleted {
			r.mu.Unlock()
			continue // deleted meanwhile: create it anew
		}
		vm.Usage = r.vm.Usage
		r.vm = vm
		r.mu.Unlock()
		return vm, nil
	}
}

func (s *MapStore) UpdateVM(ctx context.Context, id string, fn func(*VM) error) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	r, err := s.row(id)
	if err != nil {
		return VM{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deleted {
		return VM{}, fmt.Errorf("%w: vm %q", ErrNotFound, id)
	}
	next := r.vm
	if err := fn(&next); err != nil {
		return VM{}, err
	}
	next.ID, next.Usage = r.vm.ID, r.vm.Usage
	r.vm = next
	return next, nil
}

func (s *MapStore) DeleteVM(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.vmsMu.Lock()
	defer s.vmsMu.Unlock()
	r := s.vms[id]
	if r == nil {
		return fmt.Errorf("%w: vm %q", ErrNotFound, id)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.repls) > 0 {
		return fmt.Errorf("%w: vm %q still has assignments", ErrConflict, id)
	}
	r.deleted = true
	delete(s.vms, id)
	return nil
}

func (m *mapRepl) assignment(repl string) Assignment {
	return Assignment{Repl: repl, VM: m.vmID, Addr: m.addr, Container: m.container, Resources: m.res, Created: m.created}
}

func (s *MapStore) Assignment(ctx context.Context, repl string) (Assignment, error) {
	if err := ctx.Err(); err != nil {
		return Assignment{}, err
	}
	sh := s.shard(repl)
	sh.mu.Lock()
	m, ok := sh.repls[repl]
	sh.mu.Unlock()
	if !ok || m.vm == nil {
		return Assignment{}, errMapNoAssignment
	}
	return m.assignment(repl), nil
}

func (s *MapStore) Assignments(ctx context.Context, vm string) ([]Assignment, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []Assignment
	if vm == "" {
		for i := range s.shards {
			sh := &s.shards[i]
			sh.mu.Lock()
			for repl, m := range sh.repls {
				if m.vm != nil {
					out = append(out, m.assignment(repl))
				}
			}
			sh.mu.Unlock()
		}
		sortAssignments(out)
		return out, nil
	}
	s.vmsMu.RLock()
	r := s.vms[vm]
	s.vmsMu.RUnlock()
	if r == nil {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for repl := range r.repls {
		sh := s.shard(repl)
		sh.mu.Lock()
		m := sh.repls[repl]
		sh.mu.Unlock()
		out = append(out, m.assignment(repl))
	}
	sortAssignments(out)
	return out, nil
}

func (s *MapStore) Assign(ctx context.Context, a Assignment) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	r, err := s.row(a.VM)
	if err != nil {
		return VM{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.deleted:
		return VM{}, fmt.Errorf("%w: vm %q", ErrNotFound, a.VM)
	case r.vm.State != Active:
		return VM{}, fmt.Errorf("%w: vm %q is %s", ErrNoCapacity, a.VM, r.vm.State)
	case !fits(r.vm.Capacity, r.vm.Usage, a.Resources):
		return VM{}, fmt.Errorf("%w: vm %q is full", ErrNoCapacity, a.VM)
	}
	sh := s.shard(a.Repl)
	sh.mu.Lock()
	m := sh.repls[a.Repl]
	if m.vm != nil {
		on := m.vmID
		sh.mu.Unlock()
		return VM{}, fmt.Errorf("%w: repl %q is already assigned to vm %q", ErrConflict, a.Repl, on)
	}
	m.vm, m.vmID, m.addr, m.container, m.res, m.created = r, r.vm.ID, a.Addr, a.Container, a.Resources, a.Created
	sh.repls[a.Repl] = m
	sh.mu.Unlock()
	r.vm.Usage = r.vm.Usage.add(a.Resources)
	r.repls[a.Repl] = struct{}{}
	return r.vm, nil
}

func (s *MapStore) Release(ctx context.Context, repl, vm string) (Assignment, VM, error) {
	if err := ctx.Err(); err != nil {
		return Assignment{}, VM{}, err
	}
	sh := s.shard(repl)
	for {
		sh.mu.Lock()
		m := sh.repls[repl]
		sh.mu.Unlock()
		if m.vm == nil {
			return Assignment{}, VM{}, fmt.Errorf("%w: no assignment for repl %q", ErrNotFound, repl)
		}
		if vm != "" && m.vmID != vm {
			return Assignment{}, VM{}, fmt.Errorf("%w: repl %q is on vm %q, not %q", ErrConflict, repl, m.vmID, vm)
		}
		// Lock order is VM, then shard: take the VM's lock and check the assignment is unchanged.
		r := m.vm
		r.mu.Lock()
		sh.mu.Lock()
		cur := sh.repls[repl]
		if cur.vm != r {
			sh.mu.Unlock()
			r.mu.Unlock()
			continue
		}
		a := cur.assignment(repl)
		s.releaseLocked(sh, r, repl, cur, time.Now())
		sh.mu.Unlock()
		out := r.vm
		r.mu.Unlock()
		return a, out, nil
	}
}

// releaseLocked removes the live assignment m of repl from VM r; r.mu and sh.mu are held.
func (s *MapStore) releaseLocked(sh *mapShard, r *mapVM, repl string, m mapRepl, now time.Time) {
	r.vm.Usage = r.vm.Usage.sub(m.res)
	delete(r.repls, repl)
	sh.repls[repl] = mapRepl{last: m.vmID, released: now}
}

func (s *MapStore) ReleaseVM(ctx context.Context, vm string) ([]Assignment, VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, VM{}, err
	}
	r, err := s.row(vm)
	if err != nil {
		return nil, VM{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deleted {
		return nil, VM{}, fmt.Errorf("%w: vm %q", ErrNotFound, vm)
	}
	now := time.Now()
	out := make([]Assignment, 0, len(r.repls))
	for repl := range r.repls {
		sh := s.shard(repl)
		sh.mu.Lock()
		m := sh.repls[repl]
		out = append(out, m.assignment(repl))
		s.releaseLocked(sh, r, repl, m, now)
		sh.mu.Unlock()
	}
	sortAssignments(out)
	return out, r.vm, nil
}

func (s *MapStore) LastVM(ctx context.Context, repl string) (string, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return "", time.Time{}, err
	}
	sh := s.shard(repl)
	sh.mu.Lock()
	m, ok := sh.repls[repl]
	sh.mu.Unlock()
	if !ok || m.last == "" {
		return "", time.Time{}, errMapNoLast
	}
	return m.last, m.released, nil
}
