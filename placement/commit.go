package placement

import (
	"context"
	"sync"
)

// committer groups concurrent Place commits into one store write when the store implements
// BatchAssigner (group commit): the first caller to find no commit in progress becomes the
// leader and commits everything queued; callers arriving meanwhile queue and wait. After one
// batch that includes its own commit, a leader hands leadership to the oldest waiter, so no
// caller serves others for long. Each assignment is still checked and committed, or refused, on
// its own inside the store's transaction.
type committer struct {
	cp      *Controlplane
	mu      sync.Mutex
	leading bool
	pending []*commitReq
}

type commitReq struct {
	a    Assignment
	vm   VM
	err  error
	lead bool          // set (before done closes) when this waiter must lead the next batch
	done chan struct{} // closed when vm/err are set or lead is true
}

// maxBatch bounds the assignments committed in one write transaction.
const maxBatch = 128

var commitReqPool = sync.Pool{New: func() any { return &commitReq{done: make(chan struct{}, 1)} }}

func (k *committer) assign(ctx context.Context, a Assignment) (VM, error) {
	if k.cp.batch == nil {
		return k.cp.store.Assign(ctx, a)
	}
	k.mu.Lock()
	if !k.leading && len(k.pending) == 0 {
		// Fast path: nobody is committing; commit alone without queueing.
		k.leading = true
		k.mu.Unlock()
		vm, err := k.cp.store.Assign(ctx, a)
		k.handOff()
		return vm, err
	}
	r := commitReqPool.Get().(*commitReq)
	r.a, r.vm, r.err, r.lead = a, VM{}, nil, false
	k.pending = append(k.pending, r)
	if k.leading {
		k.mu.Unlock()
		<-r.done
		if !r.lead {
			vm, err := r.vm, r.err
			commitReqPool.Put(r)
			return vm, err
		}
		// Promoted: our request is still queued; lead a batch that includes it.
		k.mu.Lock()
	}
	k.leading = true
	batch := k.pending
	if len(batch) > maxBatch {
		batch = batch[:maxBatch]
	}
	k.pending = append([]*commitReq(nil), k.pending[len(batch):]...)
	k.mu.Unlock()

	as := make([]Assignment, len(batch))
	for i, b := range batch {
		as[i] = b.a
	}
	// The batch carries other callers' commits: do not let this caller's cancellation fail them.
	vms, errs := k.cp.batch.AssignBatch(context.WithoutCancel(ctx), as)
	var vm VM
	var err error
	for i, b := range batch {
		if b == r {
			vm, err = vms[i], errs[i]
			continue
		}
		b.vm, b.err = vms[i], errs[i]
		b.done <- struct{}{}
	}
	commitReqPool.Put(r)
	k.handOff()
	return vm, err
}

// handOff ends this caller's leadership, promoting the oldest waiter if any.
func (k *committer) handOff() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.leading = false
	if len(k.pending) > 0 {
		next := k.pending[0]
		next.lead = true
		k.leading = true // reserved for the promoted waiter
		next.done <- struct{}{}
	}
}
