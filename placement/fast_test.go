package placement

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"
)

// TestFastEvalMatchesPlugins: the inlined evaluation of built-in strategies chooses exactly what
// running the plugins chooses, on random clusters and requests, in full-scan mode (so both visit
// the same VMs in the same order).
func TestFastEvalMatchesPlugins(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	states := []State{Active, Active, Active, Cordoned, Draining, Dead}
	for _, base := range []Strategy{BinPack(), Spread(), {
		Name: "mixed", Filters: []FilterPlugin{Fits{}, Schedulable{}},
		Scores: []WeightedScore{{LeastAllocated{}, 2}, {MostAllocated{}, 1}, {Sticky{}, 3}, {Sticky{}, 1}},
	}} {
		s := base
		s.SampleSize = -1
		c, err := New(Config{DefaultStrategy: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		if c.defStrategy.fast == nil {
			t.Fatalf("%s: built-in strategy not compiled", s.Name)
		}
		for i := range 60 {
			vm := VM{
				ID: fmt.Sprint("vm-", i), Addr: "http://127.0.0.1:1", State: states[rng.IntN(len(states))],
				Capacity:      Resources{Containers: rng.IntN(10), CPUMilli: int64(rng.IntN(4000)), MemoryBytes: int64(rng.IntN(3)) << 30},
				LastHeartbeat: now.Add(-time.Duration(rng.IntN(40)) * time.Second),
			}
			vm.Usage = Resources{Containers: rng.IntN(vm.Capacity.Containers + 1), CPUMilli: vm.Capacity.CPUMilli / 2}
			c.idx.put(vm)
		}
		for range 500 {
			cy := Cycle{
				Request: Request{Repl: "r", Resources: Resources{Containers: 1 + rng.IntN(2), CPUMilli: int64(rng.IntN(1500)), MemoryBytes: int64(rng.IntN(2)) << 29}},
				Now:     now, HeartbeatTimeout: 30 * time.Second,
			}
			if rng.IntN(2) == 0 {
				cy.Previous = fmt.Sprint("vm-", rng.IntN(70))
			}
			if rng.IntN(3) == 0 {
				cy.Request.Prefer = fmt.Sprint("vm-", rng.IntN(70))
			}
			for range rng.IntN(4) {
				cy.Request.Avoid = append(cy.Request.Avoid, fmt.Sprint("vm-", rng.IntN(60)))
			}
			fast := c.decide(&cy, &c.defStrategy, nil, nil)
			var d Decision
			slow := c.decide(&cy, &c.defStrategy, nil, &d)
			if (fast == nil) != (slow == nil) || (fast != nil && fast.ID != slow.ID) {
				t.Fatalf("%s: fast chose %v, plugins chose %v for %+v", s.Name, fast, slow, cy)
			}
		}
	}
}
