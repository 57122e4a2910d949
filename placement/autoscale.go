package placement

import (
	"context"
	"math"
	"slices"
)

// PoolScale is the autoscaling signal for one pool: how many VMs it has in each state, how many
// containers are assigned, and how many VMs it should have.
type PoolScale struct {
	Pool     string `json:"pool"`
	Active   int    `json:"active"`
	Cordoned int    `json:"cordoned"`
	Draining int    `json:"draining"`
	Dead     int    `json:"dead"`
	// Containers is the number of containers assigned to the pool's VMs (including those on
	// cordoned and draining VMs, which will need a place once those VMs go).
	Containers int `json:"containers"`
	// PerVM is the mean container capacity of the pool's Active VMs (of its non-dead VMs when
	// none is Active); 0 when no VM constrains containers.
	PerVM float64 `json:"per_vm"`
	// Desired is max(MinVMs, ceil(Containers × (1 + Headroom) / PerVM)); when PerVM is 0 it is
	// max(MinVMs, Active).
	Desired int `json:"desired"`
	// Delta is Desired − Active: VMs to add (positive) or that could be removed (negative).
	Delta int `json:"delta"`
}

// Autoscale returns the autoscaling signal of every pool that has VMs or a configured strategy,
// sorted by pool name.
func (c *Controlplane) Autoscale(ctx context.Context) ([]PoolScale, error) {
	vms, err := c.store.VMs(ctx)
	if err != nil {
		return nil, err
	}
	type acc struct {
		PoolScale
		activeCap, activeN, otherCap, otherN int
	}
	pools := map[string]*acc{}
	for _, vm := range vms {
		p := pools[vm.Pool]
		if p == nil {
			p = &acc{PoolScale: PoolScale{Pool: vm.Pool}}
			pools[vm.Pool] = p
		}
		switch vm.State {
		case Active:
			p.Active++
		case Cordoned:
			p.Cordoned++
		case Draining:
			p.Draining++
		case Dead:
			p.Dead++
			continue
		}
		p.Containers += vm.Usage.Containers
		if vm.Capacity.Containers > 0 {
			if vm.State == Active {
				p.activeCap += vm.Capacity.Containers
				p.activeN++
			}
			p.otherCap += vm.Capacity.Containers
			p.otherN++
		}
	}
	// A pool with a configured strategy but no VMs yet still wants MinVMs.
	for name := range c.strategies {
		if pools[name] == nil {
			pools[name] = &acc{PoolScale: PoolScale{Pool: name}}
		}
	}
	out := make([]PoolScale, 0, len(pools))
	for _, p := range pools {
		switch {
		case p.activeN > 0:
			p.PerVM = float64(p.activeCap) / float64(p.activeN)
		case p.otherN > 0:
			p.PerVM = float64(p.otherCap) / float64(p.otherN)
		}
		if p.PerVM > 0 {
			p.Desired = int(math.Ceil(float64(p.Containers) * (1 + c.headroom) / p.PerVM))
		} else {
			p.Desired = p.Active
		}
		p.Desired = max(p.Desired, c.minVMs)
		p.Delta = p.Desired - p.Active
		out = append(out, p.PoolScale)
	}
	slices.SortFunc(out, func(a, b PoolScale) int {
		switch {
		case a.Pool < b.Pool:
			return -1
		case a.Pool > b.Pool:
			return 1
		}
		return 0
	})
	return out, nil
}

func sortAssignments(as []Assignment) {
	slices.SortFunc(as, func(a, b Assignment) int {
		switch {
		case a.Repl < b.Repl:
			return -1
		case a.Repl > b.Repl:
			return 1
		}
		return 0
	})
}
