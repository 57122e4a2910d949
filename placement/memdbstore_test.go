package placement

import (
	"context"
	"fmt"
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

// memStore is a second in-process Store, on hashicorp/go-memdb, kept for the tests: the
// BatchAssigner the controlplane's batched commits are tested with, without etcd. Every write is
// one memdb write transaction, so checks and changes are atomic; reads see a consistent
// snapshot. It is safe for concurrent use; the zero value is not usable, call newMemStore.
type memStore struct {
	db *memdb.MemDB
}

// lastRecord is a repl's most recently released assignment (for stickiness).
type lastRecord struct {
	Repl     string
	VM       string
	Released time.Time
}

const (
	tableVM         = "vm"
	tableAssignment = "assignment"
	tableLast       = "last"
)

func memSchema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableVM: {Name: tableVM, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		}},
		tableAssignment: {Name: tableAssignment, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Repl"}},
			"vm": {Name: "vm", Indexer: &memdb.StringFieldIndex{Field: "VM"}},
		}},
		tableLast: {Name: tableLast, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Repl"}},
		}},
	}}
}

// newMemStore returns an empty in-process store.
func newMemStore() *memStore {
	db, err := memdb.NewMemDB(memSchema())
	if err != nil {
		// The schema is a constant; an error here is a programming error caught by every test.
		panic("placement: memdb schema: " + err.Error())
	}
	return &memStore{db: db}
}

var _ Store = (*memStore)(nil)
var _ BatchAssigner = (*memStore)(nil)

func (s *memStore) VM(ctx context.Context, id string) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	txn := s.db.Txn(false)
	vm, err := getVM(txn, id)
	if err != nil {
		return VM{}, err
	}
	return *vm, nil
}

func getVM(txn *memdb.Txn, id string) (*VM, error) {
	o, err := txn.First(tableVM, "id", id)
	if err != nil {
		return nil, fmt.Errorf("placement: memdb: %w", err)
	}
	if o == nil {
		return nil, fmt.Errorf("%w: vm %q", ErrNotFound, id)
	}
	return o.(*VM), nil
}

func (s *memStore) VMs(ctx context.Context) ([]VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	txn := s.db.Txn(false)
	it, err := txn.Get(tableVM, "id")
	if err != nil {
		return nil, fmt.Errorf("placement: memdb: %w", err)
	}
	var out []VM
	for o := it.Next(); o != nil; o = it.Next() {
		out = append(out, *o.(*VM))
	}
	return out, nil
}

func (s *memStore) PutVM(ctx context.Context, vm VM) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	o, err := txn.First(tableVM, "id", vm.ID)
	if err != nil {
		return VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	vm.Usage = Resources{}
	if o != nil {
		vm.Usage = o.(*VM).Usage
	}
	if err := txn.Insert(tableVM, &vm); err != nil {
		return VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	txn.Commit()
	return vm, nil
}

func (s *memStore) UpdateVM(ctx context.Context, id string, fn func(*VM) error) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	cur, err := getVM(txn, id)
	if err != nil {
		return VM{}, err
	}
	next := *cur
	if err := fn(&next); err != nil {
		return VM{}, err
	}
	next.ID, next.Usage = cur.ID, cur.Usage
	if err := txn.Insert(tableVM, &next); err != nil {
		return VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	txn.Commit()
	return next, nil
}

func (s *memStore) DeleteVM(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	cur, err := getVM(txn, id)
	if err != nil {
		return err
	}
	o, err := txn.First(tableAssignment, "vm", id)
	if err != nil {
		return fmt.Errorf("placement: memdb: %w", err)
	}
	if o != nil {
		return fmt.Errorf("%w: vm %q still has assignments", ErrConflict, id)
	}
	if err := txn.Delete(tableVM, cur); err != nil {
		return fmt.Errorf("placement: memdb: %w", err)
	}
	txn.Commit()
	return nil
}

func (s *memStore) Assignment(ctx context.Context, repl string) (Assignment, error) {
	if err := ctx.Err(); err != nil {
		return Assignment{}, err
	}
	o, err := s.db.Txn(false).First(tableAssignment, "id", repl)
	if err != nil {
		return Assignment{}, fmt.Errorf("placement: memdb: %w", err)
	}
	if o == nil {
		return Assignment{}, fmt.Errorf("%w: no assignment for repl %q", ErrNotFound, repl)
	}
	return *o.(*Assignment), nil
}

func (s *memStore) Assignments(ctx context.Context, vm string) ([]Assignment, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	txn := s.db.Txn(false)
	var it memdb.ResultIterator
	var err error
	if vm == "" {
		it, err = txn.Get(tableAssignment, "id")
	} else {
		it, err = txn.Get(tableAssignment, "vm", vm)
	}
	if err != nil {
		return nil, fmt.Errorf("placement: memdb: %w", err)
	}
	var out []Assignment
	for o := it.Next(); o != nil; o = it.Next() {
		out = append(out, *o.(*Assignment))
	}
	if vm != "" {
		// The vm index orders by VM then by insertion key; sort by repl for a stable answer.
		sortAssignments(out)
	}
	return out, nil
}

func (s *memStore) Assign(ctx context.Context, a Assignment) (VM, error) {
	if err := ctx.Err(); err != nil {
		return VM{}, err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	vm, err := assignTxn(txn, &a)
	if err != nil {
		return VM{}, err
	}
	txn.Commit()
	return *vm, nil
}

// AssignBatch commits many assignments in one memdb write transaction; see BatchAssigner.
func (s *memStore) AssignBatch(ctx context.Context, as []Assignment) ([]VM, []error) {
	vms := make([]VM, len(as))
	errs := make([]error, len(as))
	if err := ctx.Err(); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return vms, errs
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	for i := range as {
		a := as[i]
		vm, err := assignTxn(txn, &a)
		if err != nil {
			errs[i] = err
			continue
		}
		vms[i] = *vm
	}
	txn.Commit()
	return vms, errs
}

// assignTxn is Assign's check-and-set inside a write transaction. a must not be modified after.
func assignTxn(txn *memdb.Txn, a *Assignment) (*VM, error) {
	cur, err := getVM(txn, a.VM)
	if err != nil {
		return nil, err
	}
	if cur.State != Active {
		return nil, fmt.Errorf("%w: vm %q is %s", ErrNoCapacity, a.VM, cur.State)
	}
	if !fits(cur.Capacity, cur.Usage, a.Resources) {
		return nil, fmt.Errorf("%w: vm %q is full", ErrNoCapacity, a.VM)
	}
	o, err := txn.First(tableAssignment, "id", a.Repl)
	if err != nil {
		return nil, fmt.Errorf("placement: memdb: %w", err)
	}
	if o != nil {
		return nil, fmt.Errorf("%w: repl %q is already assigned to vm %q", ErrConflict, a.Repl, o.(*Assignment).VM)
	}
	next := *cur
	next.Usage = cur.Usage.add(a.Resources)
	if err := txn.Insert(tableVM, &next); err != nil {
		return nil, fmt.Errorf("placement: memdb: %w", err)
	}
	if err := txn.Insert(tableAssignment, a); err != nil {
		return nil, fmt.Errorf("placement: memdb: %w", err)
	}
	return &next, nil
}

func (s *memStore) Release(ctx context.Context, repl, vm string) (Assignment, VM, error) {
	if err := ctx.Err(); err != nil {
		return Assignment{}, VM{}, err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	o, err := txn.First(tableAssignment, "id", repl)
	if err != nil {
		return Assignment{}, VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	if o == nil {
		return Assignment{}, VM{}, fmt.Errorf("%w: no assignment for repl %q", ErrNotFound, repl)
	}
	a := o.(*Assignment)
	if vm != "" && a.VM != vm {
		return Assignment{}, VM{}, fmt.Errorf("%w: repl %q is on vm %q, not %q", ErrConflict, repl, a.VM, vm)
	}
	next, err := releaseTxn(txn, a, time.Now())
	if err != nil {
		return Assignment{}, VM{}, err
	}
	txn.Commit()
	return *a, next, nil
}

// releaseTxn deletes a, returns its resources to its VM and records the VM as the repl's last.
func releaseTxn(txn *memdb.Txn, a *Assignment, now time.Time) (VM, error) {
	if err := txn.Delete(tableAssignment, a); err != nil {
		return VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	if err := txn.Insert(tableLast, &lastRecord{Repl: a.Repl, VM: a.VM, Released: now}); err != nil {
		return VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	cur, err := getVM(txn, a.VM)
	if err != nil {
		// An assignment whose VM row is gone (cannot happen through this API): nothing to credit.
		return VM{}, nil
	}
	next := *cur
	next.Usage = cur.Usage.sub(a.Resources)
	if err := txn.Insert(tableVM, &next); err != nil {
		return VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	return next, nil
}

func (s *memStore) ReleaseVM(ctx context.Context, vm string) ([]Assignment, VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, VM{}, err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	cur, err := getVM(txn, vm)
	if err != nil {
		return nil, VM{}, err
	}
	it, err := txn.Get(tableAssignment, "vm", vm)
	if err != nil {
		return nil, VM{}, fmt.Errorf("placement: memdb: %w", err)
	}
	var as []*Assignment
	for o := it.Next(); o != nil; o = it.Next() {
		as = append(as, o.(*Assignment))
	}
	now := time.Now()
	out := make([]Assignment, 0, len(as))
	next := *cur
	for _, a := range as {
		if next, err = releaseTxn(txn, a, now); err != nil {
			return nil, VM{}, err
		}
		out = append(out, *a)
	}
	txn.Commit()
	sortAssignments(out)
	return out, next, nil
}

func (s *memStore) LastVM(ctx context.Context, repl string) (string, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return "", time.Time{}, err
	}
	o, err := s.db.Txn(false).First(tableLast, "id", repl)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("placement: memdb: %w", err)
	}
	if o == nil {
		return "", time.Time{}, fmt.Errorf("%w: no previous vm for repl %q", ErrNotFound, repl)
	}
	r := o.(*lastRecord)
	return r.VM, r.Released, nil
}
