package placement

import (
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// index is the Controlplane's cache of the VMs, grouped by pool, that decisions read without
// touching the store. It may lag the store: the store's check-and-set in Assign is what keeps
// capacity exact, and a refused commit refreshes the VM it named. Every write the Controlplane
// makes through the store updates the index with the VM the store returned, and Sweep reloads it
// whole (which is how changes made by another Controlplane sharing the store arrive).
type index struct {
	mu    sync.RWMutex
	gen   uint64 // counts entries created; guarded by mu
	byID  map[string]*vmEntry
	pools map[string][]*vmEntry // immutable slices, replaced on membership change
}

type vmEntry struct {
	pool string
	gen  uint64             // index.gen when the entry was created
	vm   atomic.Pointer[VM] // immutable snapshot
}

func newIndex() *index {
	return &index{byID: map[string]*vmEntry{}, pools: map[string][]*vmEntry{}}
}

// get returns the cached VM, or nil.
func (x *index) get(id string) *VM {
	x.mu.RLock()
	e := x.byID[id]
	x.mu.RUnlock()
	if e == nil {
		return nil
	}
	return e.vm.Load()
}

// entry returns the cache entry of a VM in the pool, or nil.
func (x *index) entryIn(pool, id string) *vmEntry {
	x.mu.RLock()
	e := x.byID[id]
	x.mu.RUnlock()
	if e == nil || e.pool != pool {
		return nil
	}
	return e
}

// pool returns the pool's entries; the slice must not be modified.
func (x *index) pool(name string) []*vmEntry {
	x.mu.RLock()
	p := x.pools[name]
	x.mu.RUnlock()
	return p
}

// put caches vm, moving it between pools if its pool changed.
func (x *index) put(vm VM) {
	if vm.ID == "" {
		return
	}
	v := &vm
	x.mu.RLock()
	e := x.byID[vm.ID]
	x.mu.RUnlock()
	if e != nil && e.pool == vm.Pool {
		e.vm.Store(v)
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if e = x.byID[vm.ID]; e != nil && e.pool == vm.Pool {
		e.vm.Store(v)
		return
	}
	if e != nil {
		x.removeLocked(e, vm.ID)
	}
	x.gen++
	e = &vmEntry{pool: vm.Pool, gen: x.gen}
	e.vm.Store(v)
	x.byID[vm.ID] = e
	p := x.pools[vm.Pool]
	np := make([]*vmEntry, len(p), len(p)+1)
	copy(np, p)
	x.pools[vm.Pool] = append(np, e)
}

func (x *index) remove(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e := x.byID[id]; e != nil {
		x.removeLocked(e, id)
	}
}

func (x *index) removeLocked(e *vmEntry, id string) {
	delete(x.byID, id)
	p := x.pools[e.pool]
	np := make([]*vmEntry, 0, len(p))
	for _, o := range p {
		if o != e {
			np = append(np, o)
		}
	}
	if len(np) == 0 {
		delete(x.pools, e.pool)
	} else {
		x.pools[e.pool] = np
	}
}

// generation returns a mark to pass to reload: entries created after it survive a reload even if
// the store snapshot (read after the mark) did not contain them yet.
func (x *index) generation() uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.gen
}

// reload refreshes the cache from vms, a store snapshot read after generation() returned gen:
// it puts every VM and drops the cached VMs missing from the snapshot that existed at gen.
func (x *index) reload(vms []VM, gen uint64) {
	seen := make(map[string]bool, len(vms))
	for _, vm := range vms {
		seen[vm.ID] = true
		x.put(vm)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for id, e := range x.byID {
		if !seen[id] && e.gen <= gen {
			x.removeLocked(e, id)
		}
	}
}

// permutation visits 0..n-1 in a pseudo-random order without allocating: start + i·stride mod n
// with stride coprime to n.
type permutation struct {
	n, start, stride, i int
}

func newPermutation(n int) permutation {
	if n <= 1 {
		return permutation{n: n, stride: 1}
	}
	p := permutation{n: n, start: rand.IntN(n), stride: 1}
	for range 8 {
		s := 1 + rand.IntN(n-1)
		if gcd(s, n) == 1 {
			p.stride = s
			break
		}
	}
	return p
}

// next returns the next index, or -1 once every index was visited.
func (p *permutation) next() int {
	if p.i >= p.n {
		return -1
	}
	v := (p.start + p.i*p.stride) % p.n
	p.i++
	return v
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// log2Sample is the default sample size for a pool of n VMs: ceil(log2 n), at least 2.
func log2Sample(n int) int {
	if n <= 2 {
		return 2
	}
	return max(bits.Len(uint(n-1)), 2)
}
