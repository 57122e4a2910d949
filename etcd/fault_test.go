package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/placement"
)

// Four controlplanes, each on its own etcd client, place repls onto VMs with room for 100 of
// the 140 requested while the etcd leader is killed mid-way: no VM is ever over-committed, every
// placement that was acknowledged is still there afterwards, and exactly the capacity is used.
func TestPlacementSurvivesLeaderKill(t *testing.T) {
	c := etcdtest.New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := prefix("placement")
	const (
		vms, perVM = 4, 25
		placers    = 4
		repls      = 140
	)
	var cps []*placement.Controlplane
	for i := 0; i < placers; i++ {
		s, err := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: c.Client(t), Prefix: p})
		if err != nil {
			t.Fatal(err)
		}
		cps = append(cps, newControlplane(t, s))
	}
	for v := 0; v < vms; v++ {
		if _, err := cps[0].Register(ctx, placement.VM{ID: fmt.Sprintf("vm%d", v), Addr: "http://127.0.0.1:1",
			Capacity: placement.Resources{Containers: perVM}, State: placement.Active}); err != nil {
			t.Fatal(err)
		}
	}
	// Every controlplane loads the VMs registered through another (what Run's sweep does).
	for _, cp := range cps {
		if _, err := cp.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}

	var (
		next    atomic.Int64
		placed  atomic.Int64
		mu      sync.Mutex
		acked   = map[string]string{} // repl -> vm, every successful Place
		full    int
		retries atomic.Int64
		killed  = make(chan struct{})
		once    sync.Once
		wg      sync.WaitGroup
	)
	for i := 0; i < placers; i++ {
		wg.Add(1)
		go func(cp *placement.Controlplane) {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > repls {
					return
				}
				repl := fmt.Sprintf("r%03d", n)
				for attempt := 0; ; attempt++ {
					a, err := cp.Place(ctx, placement.Request{Repl: repl})
					if err == nil {
						mu.Lock()
						acked[repl] = a.VM
						mu.Unlock()
						if placed.Add(1) == 30 {
							once.Do(func() { close(killed) })
						}
						break
					}
					if errors.Is(err, placement.ErrNoCapacity) {
						mu.Lock()
						full++
						mu.Unlock()
						break
					}
					// etcd unavailable while it elects a new leader: try again, bounded.
					retries.Add(1)
					if attempt > 200 || ctx.Err() != nil {
						t.Errorf("place %s: %v", repl, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}(cps[i])
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-killed:
	case <-done:
		t.Fatalf("placers finished before 30 placements: %d placed, %d refused", len(acked), full)
	}
	leader := -1
	for i := 0; i < 3; i++ {
		if e := c.Server(i); e != nil && e.Server.Leader() == e.Server.MemberID() {
			leader = i
		}
	}
	if leader < 0 {
		leader = 0
	}
	c.Stop(leader)
	wg.Wait()
	t.Logf("killed member %d (the leader) after 30 placements; %d retried calls", leader, retries.Load())

	if len(acked) != vms*perVM || full != repls-vms*perVM {
		t.Fatalf("%d placed and %d refused for capacity %d of %d requests", len(acked), full, vms*perVM, repls)
	}
	// Read back through a client of the surviving members.
	check, err := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: c.Client(t), Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	perVMCount := map[string]int{}
	for repl, vm := range acked {
		a, err := check.Assignment(ctx, repl)
		if err != nil || a.VM != vm {
			t.Fatalf("acknowledged placement %s on %s lost: %+v %v", repl, vm, a, err)
		}
		perVMCount[vm]++
	}
	for v := 0; v < vms; v++ {
		id := fmt.Sprintf("vm%d", v)
		vm, err := check.VM(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		as, err := check.Assignments(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) > perVM || vm.Usage.Containers != len(as) || perVMCount[id] != len(as) {
			t.Fatalf("%s: %d assignments, usage %d, %d acknowledged, capacity %d", id, len(as), vm.Usage.Containers, perVMCount[id], perVM)
		}
	}
}
