// Package placementtest is the conformance suite for placement.Store implementations. A backend
// (memdb here, etcd in its own module) passes it from its tests:
//
//	func TestConformance(t *testing.T) {
//		placementtest.TestStore(t, func(t *testing.T) placement.Store { return newEmptyStore(t) })
//	}
//
// Each subtest gets a fresh, empty store from the factory.
package placementtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/placement"
)

// TestStore runs the conformance suite against stores made by newStore.
func TestStore(t *testing.T, newStore func(t *testing.T) placement.Store) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, s placement.Store)
	}{
		{"VMs", testVMs},
		{"UpdateVM", testUpdateVM},
		{"DeleteVM", testDeleteVM},
		{"Assign", testAssign},
		{"Release", testRelease},
		{"ReleaseVM", testReleaseVM},
		{"Copies", testCopies},
		{"ConcurrentAssign", testConcurrentAssign},
		{"ConcurrentAssignRelease", testConcurrentAssignRelease},
		{"Batch", testBatch},
		{"Canceled", testCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newStore(t)) })
	}
}

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func mkVM(id string, containers int) placement.VM {
	return placement.VM{
		ID: id, Cluster: "a", Addr: "http://127.0.0.1:8600", Pool: "pool", Build: "b1",
		Capacity: placement.Resources{Containers: containers, CPUMilli: 4000, MemoryBytes: 8 << 30},
		State:    placement.Active, LastHeartbeat: t0, Registered: t0,
	}
}

func mkAssignment(repl, vm string) placement.Assignment {
	return placement.Assignment{
		Repl: repl, VM: vm, Addr: "http://127.0.0.1:8600", Container: "c-" + repl,
		Resources: placement.Resources{Containers: 1, CPUMilli: 500, MemoryBytes: 1 << 30}, Created: t0,
	}
}

func fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf(format, args...)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func mustIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one wrapping %v", err, target)
	}
}

func put(t *testing.T, s placement.Store, vm placement.VM) placement.VM {
	t.Helper()
	out, err := s.PutVM(context.Background(), vm)
	must(t, err)
	return out
}

func getVM(t *testing.T, s placement.Store, id string) placement.VM {
	t.Helper()
	vm, err := s.VM(context.Background(), id)
	must(t, err)
	return vm
}

func equalVM(a, b placement.VM) bool {
	return a.ID == b.ID && a.Cluster == b.Cluster && a.Addr == b.Addr && a.Pool == b.Pool &&
		a.Build == b.Build && a.Capacity == b.Capacity && a.Usage == b.Usage && a.State == b.State &&
		a.LastHeartbeat.Equal(b.LastHeartbeat) && a.Observed == b.Observed && a.Registered.Equal(b.Registered)
}

func equalAssignment(a, b placement.Assignment) bool {
	return a.Repl == b.Repl && a.VM == b.VM && a.Addr == b.Addr && a.Container == b.Container &&
		a.Resources == b.Resources && a.Created.Equal(b.Created)
}

func testVMs(t *testing.T, s placement.Store) {
	ctx := context.Background()
	_, err := s.VM(ctx, "nope")
	mustIs(t, err, placement.ErrNotFound)
	vms, err := s.VMs(ctx)
	must(t, err)
	if len(vms) != 0 {
		fatalf(t, "empty store lists %d vms", len(vms))
	}
	for _, id := range []string{"vm-c", "vm-a", "vm-b"} {
		in := mkVM(id, 10)
		in.Usage = placement.Resources{Containers: 7} // ignored
		out := put(t, s, in)
		if out.Usage != (placement.Resources{}) {
			fatalf(t, "PutVM of a new vm took usage %+v from the argument", out.Usage)
		}
		in.Usage = placement.Resources{}
		if got := getVM(t, s, id); !equalVM(got, in) {
			fatalf(t, "VM(%s) = %+v, want %+v", id, got, in)
		}
	}
	vms, err = s.VMs(ctx)
	must(t, err)
	var ids []string
	for _, v := range vms {
		ids = append(ids, v.ID)
	}
	if !slices.Equal(ids, []string{"vm-a", "vm-b", "vm-c"}) {
		fatalf(t, "VMs() ids = %v, want sorted", ids)
	}
	// Replacing keeps the usage committed by Assign.
	_, err = s.Assign(ctx, mkAssignment("r1", "vm-a"))
	must(t, err)
	upd := mkVM("vm-a", 20)
	upd.Build = "b2"
	out := put(t, s, upd)
	if out.Usage.Containers != 1 || out.Build != "b2" || out.Capacity.Containers != 20 {
		fatalf(t, "PutVM over an existing vm = %+v, want usage kept and fields replaced", out)
	}
	if got := getVM(t, s, "vm-a"); !equalVM(got, out) {
		fatalf(t, "VM after PutVM = %+v, want %+v", got, out)
	}
}

func testUpdateVM(t *testing.T, s placement.Store) {
	ctx := context.Background()
	_, err := s.UpdateVM(ctx, "nope", func(*placement.VM) error { return nil })
	mustIs(t, err, placement.ErrNotFound)
	put(t, s, mkVM("vm", 10))
	_, err = s.Assign(ctx, mkAssignment("r", "vm"))
	must(t, err)
	out, err := s.UpdateVM(ctx, "vm", func(v *placement.VM) error {
		v.State = placement.Draining
		v.ID = "renamed"                              // ignored
		v.Usage = placement.Resources{Containers: 99} // ignored
		v.LastHeartbeat = t0.Add(time.Minute)
		return nil
	})
	must(t, err)
	if out.ID != "vm" || out.Usage.Containers != 1 || out.State != placement.Draining || !out.LastHeartbeat.Equal(t0.Add(time.Minute)) {
		fatalf(t, "UpdateVM = %+v", out)
	}
	if got := getVM(t, s, "vm"); !equalVM(got, out) {
		fatalf(t, "VM after UpdateVM = %+v, want %+v", got, out)
	}
	boom := errors.New("boom")
	_, err = s.UpdateVM(ctx, "vm", func(v *placement.VM) error {
		v.State = placement.Dead
		return boom
	})
	if !errors.Is(err, boom) {
		fatalf(t, "UpdateVM returned %v, want fn's error", err)
	}
	if got := getVM(t, s, "vm"); got.State != placement.Draining {
		fatalf(t, "an aborted UpdateVM changed the state to %s", got.State)
	}
}

func testDeleteVM(t *testing.T, s placement.Store) {
	ctx := context.Background()
	mustIs(t, s.DeleteVM(ctx, "nope"), placement.ErrNotFound)
	put(t, s, mkVM("vm", 10))
	_, err := s.Assign(ctx, mkAssignment("r", "vm"))
	must(t, err)
	mustIs(t, s.DeleteVM(ctx, "vm"), placement.ErrConflict)
	_, _, err = s.Release(ctx, "r", "vm")
	must(t, err)
	must(t, s.DeleteVM(ctx, "vm"))
	_, err = s.VM(ctx, "vm")
	mustIs(t, err, placement.ErrNotFound)
}

func testAssign(t *testing.T, s placement.Store) {
	ctx := context.Background()
	_, err := s.Assign(ctx, mkAssignment("r0", "ghost"))
	mustIs(t, err, placement.ErrNotFound)
	put(t, s, mkVM("vm", 2))
	a := mkAssignment("r1", "vm")
	vm, err := s.Assign(ctx, a)
	must(t, err)
	if vm.Usage != a.Resources {
		fatalf(t, "usage after one Assign = %+v, want %+v", vm.Usage, a.Resources)
	}
	got, err := s.Assignment(ctx, "r1")
	must(t, err)
	if !equalAssignment(got, a) {
		fatalf(t, "Assignment = %+v, want %+v", got, a)
	}
	_, err = s.Assign(ctx, mkAssignment("r1", "vm"))
	mustIs(t, err, placement.ErrConflict)
	_, err = s.Assign(ctx, mkAssignment("r2", "vm"))
	must(t, err)
	_, err = s.Assign(ctx, mkAssignment("r3", "vm"))
	mustIs(t, err, placement.ErrNoCapacity)
	if got := getVM(t, s, "vm"); got.Usage.Containers != 2 {
		fatalf(t, "usage = %d containers, want 2", got.Usage.Containers)
	}

	// Every constrained dimension is checked; zero capacity is unconstrained.
	cpu := mkVM("cpu", 0)
	cpu.Capacity = placement.Resources{CPUMilli: 1000}
	put(t, s, cpu)
	big := mkAssignment("r4", "cpu")
	big.Resources = placement.Resources{Containers: 1, CPUMilli: 600, MemoryBytes: 1 << 40}
	_, err = s.Assign(ctx, big)
	must(t, err)
	big.Repl = "r5"
	_, err = s.Assign(ctx, big)
	mustIs(t, err, placement.ErrNoCapacity)

	// Only Active VMs take assignments.
	for _, st := range []placement.State{placement.Cordoned, placement.Draining, placement.Dead} {
		v := mkVM("vm-"+string(st), 10)
		v.State = st
		put(t, s, v)
		_, err := s.Assign(ctx, mkAssignment("r-"+string(st), v.ID))
		mustIs(t, err, placement.ErrNoCapacity)
	}
	_, err = s.Assignment(ctx, "r-draining")
	mustIs(t, err, placement.ErrNotFound)

	as, err := s.Assignments(ctx, "vm")
	must(t, err)
	if len(as) != 2 || as[0].Repl != "r1" || as[1].Repl != "r2" {
		fatalf(t, "Assignments(vm) = %+v, want r1, r2", as)
	}
	all, err := s.Assignments(ctx, "")
	must(t, err)
	if len(all) != 3 {
		fatalf(t, "Assignments(\"\") has %d, want 3", len(all))
	}
	none, err := s.Assignments(ctx, "vm-draining")
	must(t, err)
	if len(none) != 0 {
		fatalf(t, "Assignments of an empty vm = %+v", none)
	}
}

func testRelease(t *testing.T, s placement.Store) {
	ctx := context.Background()
	put(t, s, mkVM("vm", 2))
	put(t, s, mkVM("other", 2))
	_, _, err := s.Release(ctx, "r", "")
	mustIs(t, err, placement.ErrNotFound)
	_, _, err = s.LastVM(ctx, "r")
	mustIs(t, err, placement.ErrNotFound)
	a := mkAssignment("r", "vm")
	_, err = s.Assign(ctx, a)
	must(t, err)
	_, _, err = s.Release(ctx, "r", "other")
	mustIs(t, err, placement.ErrConflict)
	got, vm, err := s.Release(ctx, "r", "vm")
	must(t, err)
	if !equalAssignment(got, a) {
		fatalf(t, "Release returned %+v, want %+v", got, a)
	}
	if vm.ID != "vm" || vm.Usage != (placement.Resources{}) {
		fatalf(t, "VM after Release = %+v, want zero usage", vm)
	}
	_, err = s.Assignment(ctx, "r")
	mustIs(t, err, placement.ErrNotFound)
	last, when, err := s.LastVM(ctx, "r")
	must(t, err)
	if last != "vm" || when.IsZero() {
		fatalf(t, "LastVM = %q at %v, want vm", last, when)
	}
	// Placed elsewhere and released again: the last VM follows.
	_, err = s.Assign(ctx, mkAssignment("r", "other"))
	must(t, err)
	if last, _, _ := s.LastVM(ctx, "r"); last != "vm" {
		fatalf(t, "LastVM changed on Assign to %q; it records releases", last)
	}
	_, _, err = s.Release(ctx, "r", "")
	must(t, err)
	if last, _, _ := s.LastVM(ctx, "r"); last != "other" {
		fatalf(t, "LastVM = %q, want other", last)
	}
}

func testReleaseVM(t *testing.T, s placement.Store) {
	ctx := context.Background()
	_, _, err := s.ReleaseVM(ctx, "ghost")
	mustIs(t, err, placement.ErrNotFound)
	put(t, s, mkVM("vm", 10))
	put(t, s, mkVM("keep", 10))
	for _, r := range []string{"c", "a", "b"} {
		_, err := s.Assign(ctx, mkAssignment(r, "vm"))
		must(t, err)
	}
	_, err = s.Assign(ctx, mkAssignment("k", "keep"))
	must(t, err)
	as, vm, err := s.ReleaseVM(ctx, "vm")
	must(t, err)
	if len(as) != 3 || as[0].Repl != "a" || as[2].Repl != "c" {
		fatalf(t, "ReleaseVM = %+v, want a, b, c", as)
	}
	if vm.Usage != (placement.Resources{}) {
		fatalf(t, "usage after ReleaseVM = %+v", vm.Usage)
	}
	for _, r := range []string{"a", "b", "c"} {
		_, err := s.Assignment(ctx, r)
		mustIs(t, err, placement.ErrNotFound)
		if last, _, err := s.LastVM(ctx, r); err != nil || last != "vm" {
			fatalf(t, "LastVM(%s) = %q, %v", r, last, err)
		}
	}
	if _, err := s.Assignment(ctx, "k"); err != nil {
		fatalf(t, "ReleaseVM touched another vm's assignment: %v", err)
	}
	as, _, err = s.ReleaseVM(ctx, "vm")
	must(t, err)
	if len(as) != 0 {
		fatalf(t, "second ReleaseVM released %d", len(as))
	}
}

func testCopies(t *testing.T, s placement.Store) {
	ctx := context.Background()
	in := mkVM("vm", 10)
	out := put(t, s, in)
	in.Addr, out.Addr = "changed", "changed"
	got := getVM(t, s, "vm")
	if got.Addr != "http://127.0.0.1:8600" {
		fatalf(t, "the store kept a reference to a caller's VM")
	}
	got.Pool = "changed"
	vms, err := s.VMs(ctx)
	must(t, err)
	vms[0].Pool = "changed"
	if again := getVM(t, s, "vm"); again.Pool != "pool" {
		fatalf(t, "modifying a returned VM changed the store")
	}
	a := mkAssignment("r", "vm")
	_, err = s.Assign(ctx, a)
	must(t, err)
	a.Container = "changed"
	b, err := s.Assignment(ctx, "r")
	must(t, err)
	b.Container = "changed too"
	if c, _ := s.Assignment(ctx, "r"); c.Container != "c-r" {
		fatalf(t, "assignment aliased: %+v", c)
	}
}

// testConcurrentAssign races many Assigns for few slots: exactly the capacity succeeds.
func testConcurrentAssign(t *testing.T, s placement.Store) {
	ctx := context.Background()
	const capacity, tries = 5, 64
	put(t, s, mkVM("vm", capacity))
	var ok, full atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, tries)
	for i := range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Assign(ctx, mkAssignment(fmt.Sprint("r", i), "vm"))
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, placement.ErrNoCapacity):
				full.Add(1)
			default:
				errs <- err
			}
		}()
	}
	// The same repl raced onto the VM: at most one wins.
	var dup atomic.Int64
	put(t, s, mkVM("wide", 100))
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Assign(ctx, mkAssignment("same", "wide")); err == nil {
				dup.Add(1)
			} else if !errors.Is(err, placement.ErrConflict) {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ok.Load() != capacity || full.Load() != tries-capacity {
		fatalf(t, "%d assigns succeeded and %d were full, want %d and %d", ok.Load(), full.Load(), capacity, tries-capacity)
	}
	if dup.Load() != 1 {
		fatalf(t, "the same repl was assigned %d times", dup.Load())
	}
	if got := getVM(t, s, "vm"); got.Usage.Containers != capacity {
		fatalf(t, "usage = %d, want %d", got.Usage.Containers, capacity)
	}
}

// testConcurrentAssignRelease churns assignments and checks usage equals the assignments.
func testConcurrentAssignRelease(t *testing.T, s placement.Store) {
	ctx := context.Background()
	put(t, s, mkVM("vm", 8))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				r := fmt.Sprintf("w%d-%d", w, i%4)
				if _, err := s.Assign(ctx, mkAssignment(r, "vm")); err == nil {
					if _, _, err := s.Release(ctx, r, "vm"); err != nil {
						errs <- err
						return
					}
				} else if !errors.Is(err, placement.ErrNoCapacity) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	as, err := s.Assignments(ctx, "vm")
	must(t, err)
	if got := getVM(t, s, "vm"); got.Usage.Containers != len(as) || len(as) != 0 {
		fatalf(t, "usage %d with %d assignments after churn", got.Usage.Containers, len(as))
	}
}

func testBatch(t *testing.T, s placement.Store) {
	b, ok := s.(placement.BatchAssigner)
	if !ok {
		t.Skip("store does not implement placement.BatchAssigner")
	}
	ctx := context.Background()
	put(t, s, mkVM("vm", 2))
	as := []placement.Assignment{
		mkAssignment("r1", "vm"),
		mkAssignment("r1", "vm"), // same repl again: conflict
		mkAssignment("r2", "vm"),
		mkAssignment("r3", "vm"), // full
		mkAssignment("r4", "ghost"),
	}
	vms, errs := b.AssignBatch(ctx, as)
	if len(vms) != len(as) || len(errs) != len(as) {
		fatalf(t, "AssignBatch returned %d vms and %d errors for %d", len(vms), len(errs), len(as))
	}
	must(t, errs[0])
	mustIs(t, errs[1], placement.ErrConflict)
	must(t, errs[2])
	mustIs(t, errs[3], placement.ErrNoCapacity)
	mustIs(t, errs[4], placement.ErrNotFound)
	if vms[0].Usage.Containers != 1 || vms[2].Usage.Containers != 2 {
		fatalf(t, "usages in batch = %d, %d; want 1, 2", vms[0].Usage.Containers, vms[2].Usage.Containers)
	}
	if got := getVM(t, s, "vm"); got.Usage.Containers != 2 {
		fatalf(t, "usage after batch = %d", got.Usage.Containers)
	}
}

func testCanceled(t *testing.T, s placement.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.PutVM(ctx, mkVM("vm", 1)); !errors.Is(err, context.Canceled) {
		fatalf(t, "PutVM with a canceled context: %v", err)
	}
	if _, err := s.VM(context.Background(), "vm"); !errors.Is(err, placement.ErrNotFound) {
		fatalf(t, "a canceled PutVM stored the vm (%v)", err)
	}
	if _, err := s.Assign(ctx, mkAssignment("r", "vm")); !errors.Is(err, context.Canceled) {
		fatalf(t, "Assign with a canceled context: %v", err)
	}
}
