package placement

import (
	"context"
	"time"
)

// Store is where the Controlplane keeps VMs, assignments and each repl's last VM. The default is
// NewMemStore (hashicorp/go-memdb); a distributed backend (etcd) implements the same interface and
// must pass the conformance suite in package placementtest.
//
// A Store is the single source of truth for capacity: Assign re-checks the VM's state and usage
// inside one atomic write (a check-and-set), so no interleaving of Assign calls, from any number
// of Controlplanes sharing the store, can push a VM past its capacity. Stores copy values in and
// out; callers may keep and modify what they pass and receive.
type Store interface {
	// VM returns the VM with the id, or an error wrapping ErrNotFound.
	VM(ctx context.Context, id string) (VM, error)
	// VMs returns every VM, sorted by ID.
	VMs(ctx context.Context) ([]VM, error)
	// PutVM creates the VM or replaces its fields, except Usage, which only Assign and Release
	// change: the stored Usage is kept (zero for a new VM) and returned.
	PutVM(ctx context.Context, vm VM) (VM, error)
	// UpdateVM applies fn to the stored VM atomically and stores the result (Usage and ID
	// changes made by fn are ignored). An error from fn aborts the update and is returned as is.
	// A missing VM is an error wrapping ErrNotFound.
	UpdateVM(ctx context.Context, id string, fn func(*VM) error) (VM, error)
	// DeleteVM removes a VM that has no assignments; with assignments it returns an error
	// wrapping ErrConflict; a missing VM wraps ErrNotFound.
	DeleteVM(ctx context.Context, id string) error

	// Assignment returns the repl's live assignment, or an error wrapping ErrNotFound.
	Assignment(ctx context.Context, repl string) (Assignment, error)
	// Assignments returns the live assignments on a VM, sorted by repl ("" = every assignment).
	Assignments(ctx context.Context, vm string) ([]Assignment, error)
	// Assign commits a new assignment and adds its resources to the VM's usage, atomically, only
	// if the repl has no live assignment (else an error wrapping ErrConflict), the VM exists
	// (else ErrNotFound), is Active and still has room for a.Resources on every constrained
	// dimension (else ErrNoCapacity). It returns the VM with its new usage.
	Assign(ctx context.Context, a Assignment) (VM, error)
	// Release removes the repl's live assignment, if it is on vm ("" = any VM; a different VM is
	// an error wrapping ErrConflict), subtracts its resources from the VM's usage and records the
	// VM as the repl's last VM, atomically. It returns the removed assignment and the VM after
	// the change. No assignment is an error wrapping ErrNotFound.
	Release(ctx context.Context, repl, vm string) (Assignment, VM, error)
	// ReleaseVM removes every assignment on the VM as Release does, in one atomic write, and
	// returns them and the VM after the change (its usage then zero).
	ReleaseVM(ctx context.Context, vm string) ([]Assignment, VM, error)
	// LastVM returns the VM the repl's most recently released assignment was on, and when it was
	// released, or an error wrapping ErrNotFound if the repl was never released.
	LastVM(ctx context.Context, repl string) (vm string, released time.Time, err error)
}

// BatchAssigner is implemented by stores that can commit many assignments in one atomic write
// (memdb does, amortising the cost of a write transaction). Each assignment is checked and
// committed, or refused, as if by its own Assign call, in order; errs[i] and vms[i] are Assign's
// results for as[i]. The Controlplane uses it to group concurrent Place commits.
type BatchAssigner interface {
	AssignBatch(ctx context.Context, as []Assignment) (vms []VM, errs []error)
}

// fits reports whether adding req to used stays within capacity, on every dimension the capacity
// constrains (a zero capacity field is unconstrained). It compares against the remaining room so
// huge requests cannot overflow into a pass.
func fits(capacity, used, req Resources) bool {
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

func (r Resources) add(o Resources) Resources {
	return Resources{r.Containers + o.Containers, r.CPUMilli + o.CPUMilli, r.MemoryBytes + o.MemoryBytes}
}

func (r Resources) sub(o Resources) Resources {
	s := Resources{r.Containers - o.Containers, r.CPUMilli - o.CPUMilli, r.MemoryBytes - o.MemoryBytes}
	// Usage never goes negative, even if a caller's bookkeeping is off.
	s.Containers = max(s.Containers, 0)
	s.CPUMilli = max(s.CPUMilli, 0)
	s.MemoryBytes = max(s.MemoryBytes, 0)
	return s
}
