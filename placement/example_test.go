package placement_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/switchyard-dev/switchyard/placement"
)

// A control plane with two VMs: Place chooses one (bin-packing), returns the same answer while
// the assignment lives, and a released repl comes back to its previous VM.
func Example() {
	ctx := context.Background()
	cp, err := placement.New(placement.Config{Logger: quiet})
	if err != nil {
		panic(err)
	}
	for _, id := range []string{"vm-1", "vm-2"} {
		if _, err := cp.Register(ctx, placement.VM{
			ID: id, Addr: "http://127.0.1.11:8600", Capacity: placement.Resources{Containers: 50},
		}); err != nil {
			panic(err)
		}
	}
	a, _ := cp.Place(ctx, placement.Request{Repl: "repl-1", Prefer: "vm-2"})
	fmt.Println("placed on", a.VM)
	again, _ := cp.Place(ctx, placement.Request{Repl: "repl-1"})
	fmt.Println("still on", again.VM)

	_ = cp.Release(ctx, "repl-1", a.VM) // the container stopped
	back, _ := cp.Place(ctx, placement.Request{Repl: "repl-1"})
	fmt.Println("restarted on", back.VM)
	// Output:
	// placed on vm-2
	// still on vm-2
	// restarted on vm-2
}

// The proxy's retry: the dial to the assigned VM failed, so it places again avoiding that VM.
func ExampleControlplane_Place_avoid() {
	ctx := context.Background()
	cp, _ := placement.New(placement.Config{Logger: quiet})
	_, _ = cp.Register(ctx, placement.VM{ID: "vm-1", Addr: "http://127.0.1.11:8600"})
	_, _ = cp.Register(ctx, placement.VM{ID: "vm-2", Addr: "http://127.0.1.12:8600"})

	a, _ := cp.Place(ctx, placement.Request{Repl: "r", Prefer: "vm-1"})
	b, _ := cp.Place(ctx, placement.Request{Repl: "r", Avoid: []string{a.VM}})
	fmt.Println(a.VM, "->", b.VM)
	_, err := cp.Place(ctx, placement.Request{Repl: "r", Avoid: []string{"vm-1", "vm-2"}})
	fmt.Println(errors.Is(err, placement.ErrNoCapacity))
	// Output:
	// vm-1 -> vm-2
	// true
}

// Per-pool strategies: the "pro" pool spreads repls over its bigger VMs, the default pool packs.
func ExampleConfig_strategies() {
	ctx := context.Background()
	cp, _ := placement.New(placement.Config{
		Logger:     quiet,
		Strategies: map[string]placement.Strategy{"pro": placement.Spread()},
	})
	for _, id := range []string{"pro-1", "pro-2"} {
		_, _ = cp.Register(ctx, placement.VM{ID: id, Pool: "pro", Addr: "http://127.0.1.21:8600",
			Capacity: placement.Resources{Containers: 10}})
	}
	for i := range 4 {
		_, _ = cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i), Pool: "pro"})
	}
	vms, _ := cp.VMs(ctx)
	for _, vm := range vms {
		fmt.Println(vm.ID, vm.Usage.Containers)
	}
	// Output:
	// pro-1 2
	// pro-2 2
}

// Explain shows every candidate's filter result and scores.
func ExampleControlplane_Explain() {
	ctx := context.Background()
	cp, _ := placement.New(placement.Config{Logger: quiet})
	_, _ = cp.Register(ctx, placement.VM{ID: "a", Addr: "http://127.0.1.11:8600", Capacity: placement.Resources{Containers: 4}})
	_, _ = cp.Register(ctx, placement.VM{ID: "b", Addr: "http://127.0.1.12:8600", Capacity: placement.Resources{Containers: 4}})
	_ = cp.SetState(ctx, "b", placement.Draining)

	d, _ := cp.Explain(ctx, placement.Request{Repl: "r"})
	fmt.Println("strategy", d.Strategy, "chose", d.Chosen)
	for _, c := range d.Candidates {
		if !c.Feasible {
			fmt.Printf("%s: rejected by %s: %s\n", c.VM, c.Filter, c.Reason)
			continue
		}
		fmt.Printf("%s: total %.0f", c.VM, c.Total)
		for _, s := range c.Scores {
			fmt.Printf(" %s=%.0f×%.0f", s.Plugin, s.Score, s.Weight)
		}
		fmt.Println()
	}
	// Unordered output:
	// strategy binpack chose a
	// a: total 25 most-allocated=25×1 sticky=0×10 preferred=0×5
	// b: rejected by schedulable: vm is draining
}

// Heartbeats stop: after the timeout the VM is dead and its repls placeable elsewhere. The clock
// is injected so this runs instantly.
func ExampleControlplane_Sweep() {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cp, _ := placement.New(placement.Config{
		Logger: quiet, HeartbeatTimeout: 10 * time.Second, Now: func() time.Time { return now },
	})
	_, _ = cp.Register(ctx, placement.VM{ID: "a", Addr: "http://127.0.1.11:8600"})
	_, _ = cp.Place(ctx, placement.Request{Repl: "r"})

	now = now.Add(11 * time.Second)
	dead, _ := cp.Sweep(ctx)
	fmt.Println("dead:", dead)
	_, err := cp.Lookup(ctx, "r")
	fmt.Println(errors.Is(err, placement.ErrNotFound))
	fmt.Println(errors.Is(cp.Heartbeat(ctx, placement.Heartbeat{VM: "a"}), placement.ErrNotFound))
	// Output:
	// dead: [a]
	// true
	// true
}

// The HTTP API and its client: the client has the same methods as the Controlplane.
func ExampleNewClient() {
	ctx := context.Background()
	cp, _ := placement.New(placement.Config{Logger: quiet})
	srv := httptest.NewServer(placement.NewHandler(placement.HandlerConfig{Controlplane: cp, Credential: "secret"}))
	defer srv.Close()

	var p placement.API = placement.NewClient(srv.URL, "secret", srv.Client())
	_, _ = p.Register(ctx, placement.VM{ID: "vm-1", Addr: "http://127.0.1.11:8600"})
	a, err := p.Place(ctx, placement.Request{Repl: "r"})
	fmt.Println(a.VM, a.Addr, err)

	_, err = placement.NewClient(srv.URL, "wrong", srv.Client()).VMs(ctx)
	fmt.Println(placement.IsUnauthorized(err))
	// Output:
	// vm-1 http://127.0.1.11:8600 <nil>
	// true
}

// The autoscaling signal for a pool with 12 containers on VMs of 10 and 25 % headroom.
func ExampleControlplane_Autoscale() {
	ctx := context.Background()
	cp, _ := placement.New(placement.Config{Logger: quiet})
	for _, id := range []string{"a", "b"} {
		_, _ = cp.Register(ctx, placement.VM{ID: id, Addr: "http://127.0.1.11:8600", Capacity: placement.Resources{Containers: 10}})
	}
	for i := range 12 {
		_, _ = cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i)})
	}
	s, _ := cp.Autoscale(ctx)
	fmt.Printf("active %d containers %d desired %d delta %+d\n", s[0].Active, s[0].Containers, s[0].Desired, s[0].Delta)
	// Output:
	// active 2 containers 12 desired 2 delta +0
}
