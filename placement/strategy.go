package placement

import (
	"time"
)

// Cycle is what filter and score plugins see of one placement decision. Plugins must not modify
// it.
type Cycle struct {
	// Request is the validated request; Request.Resources.Containers is at least 1.
	Request Request
	// Previous is the VM the repl's last released assignment was on ("" if none): the
	// stickiness plugin favours it so the repl's files stay warm.
	Previous string
	// Now is the Controlplane's clock at the start of the decision.
	Now time.Time
	// HeartbeatTimeout is the Controlplane's: a VM whose last heartbeat is older is dead.
	HeartbeatTimeout time.Duration
}

// avoids reports whether the request avoids the VM.
func (c *Cycle) avoids(vm string) bool {
	for _, a := range c.Request.Avoid {
		if a == vm {
			return true
		}
	}
	return false
}

// FilterPlugin removes VMs that cannot take the repl. Filter returns ok, or false and a short
// human reason (shown by Explain). It runs on every candidate of every decision, concurrently, so
// it must be fast, safe for concurrent use and should not allocate.
type FilterPlugin interface {
	Name() string
	Filter(c *Cycle, vm *VM) (ok bool, reason string)
}

// ScorePlugin ranks feasible VMs: Score returns a value in [0, 100], higher is better. The
// strategy multiplies it by the plugin's weight and the VM with the highest sum wins (ties go to
// the candidate seen first, which is random when sampling).
type ScorePlugin interface {
	Name() string
	Score(c *Cycle, vm *VM) float64
}

// WeightedScore is a score plugin and its weight in a strategy.
type WeightedScore struct {
	Plugin ScorePlugin
	Weight float64
}

// Strategy is how a pool chooses VMs: filters, then weighted scores over a sample of candidates.
type Strategy struct {
	// Name is shown by Explain and in metrics labels; empty means "custom".
	Name    string
	Filters []FilterPlugin
	Scores  []WeightedScore
	// SampleSize is how many feasible candidates a decision scores. 0 means about log2(n) for a
	// pool of n VMs (at least 2), as Nomad does: the candidates are visited in a random order
	// until that many feasible ones are found. A negative value means scan every VM of the pool.
	// The repl's previous VM and the request's preferred VM are always considered in addition.
	SampleSize int

	// fast is set by New when every plugin is a built-in one: the same decision without
	// interface calls (Explain still runs the plugins, to report them).
	fast *fastEval
}

// fastEval evaluates a strategy made only of built-in plugins inline. It must decide exactly
// as evaluate does with the plugins (TestFastEvalMatchesPlugins checks).
type fastEval struct {
	sched, avoid, fit             bool
	wMost, wLeast, wSticky, wPref float64
}

func compileFast(s *Strategy) *fastEval {
	f := &fastEval{}
	for _, p := range s.Filters {
		switch p.(type) {
		case Schedulable:
			f.sched = true
		case NotAvoided:
			f.avoid = true
		case Fits:
			f.fit = true
		default:
			return nil
		}
	}
	for _, w := range s.Scores {
		switch w.Plugin.(type) {
		case MostAllocated:
			f.wMost += w.Weight
		case LeastAllocated:
			f.wLeast += w.Weight
		case Sticky:
			f.wSticky += w.Weight
		case Preferred:
			f.wPref += w.Weight
		default:
			return nil
		}
	}
	return f
}

func (f *fastEval) eval(c *Cycle, vm *VM) (bool, float64) {
	if f.sched {
		if vm.State != Active || (c.HeartbeatTimeout > 0 && c.Now.Sub(vm.LastHeartbeat) > c.HeartbeatTimeout) {
			return false, 0
		}
	}
	if f.avoid && len(c.Request.Avoid) > 0 && c.avoids(vm.ID) {
		return false, 0
	}
	if f.fit && !fits(vm.Capacity, vm.Usage, c.Request.Resources) {
		return false, 0
	}
	var total float64
	if f.wMost != 0 || f.wLeast != 0 {
		u := utilisation(vm.Capacity, vm.Usage, c.Request.Resources)
		total += 100*u*f.wMost + 100*(1-u)*f.wLeast
	}
	if f.wSticky != 0 && c.Previous != "" && vm.ID == c.Previous {
		total += 100 * f.wSticky
	}
	if f.wPref != 0 && c.Request.Prefer != "" && vm.ID == c.Request.Prefer {
		total += 100 * f.wPref
	}
	return true, total
}

// DefaultFilters are the filters every built-in strategy uses: the VM is Active with a fresh
// heartbeat, not avoided by the request, and has room for the request's resources.
func DefaultFilters() []FilterPlugin {
	return []FilterPlugin{Schedulable{}, NotAvoided{}, Fits{}}
}

// BinPack fills the most utilised feasible VM first, so lightly used VMs empty out and the
// autoscaler can remove them. The repl's previous VM gets a strong bonus (weight 10) while it is
// feasible, a preferred VM a smaller one (weight 5).
func BinPack() Strategy {
	return Strategy{
		Name:    "binpack",
		Filters: DefaultFilters(),
		Scores: []WeightedScore{
			{Plugin: MostAllocated{}, Weight: 1},
			{Plugin: Sticky{}, Weight: 10},
			{Plugin: Preferred{}, Weight: 5},
		},
	}
}

// Spread places on the least utilised feasible VM (least-loaded), spreading repls across the
// pool. Stickiness and preference bonuses as in BinPack.
func Spread() Strategy {
	return Strategy{
		Name:    "spread",
		Filters: DefaultFilters(),
		Scores: []WeightedScore{
			{Plugin: LeastAllocated{}, Weight: 1},
			{Plugin: Sticky{}, Weight: 10},
			{Plugin: Preferred{}, Weight: 5},
		},
	}
}

// Schedulable keeps Active VMs whose last heartbeat is within the heartbeat timeout.
type Schedulable struct{}

func (Schedulable) Name() string { return "schedulable" }

func (Schedulable) Filter(c *Cycle, vm *VM) (bool, string) {
	if vm.State != Active {
		switch vm.State {
		case Cordoned:
			return false, "vm is cordoned"
		case Draining:
			return false, "vm is draining"
		case Dead:
			return false, "vm is dead"
		}
		return false, "vm is not active"
	}
	if c.HeartbeatTimeout > 0 && c.Now.Sub(vm.LastHeartbeat) > c.HeartbeatTimeout {
		return false, "heartbeat expired"
	}
	return true, ""
}

// NotAvoided drops the VMs the request lists in Avoid.
type NotAvoided struct{}

func (NotAvoided) Name() string { return "not-avoided" }

func (NotAvoided) Filter(c *Cycle, vm *VM) (bool, string) {
	if c.avoids(vm.ID) {
		return false, "avoided by request"
	}
	return true, ""
}

// Fits keeps VMs with room for the request's resources on every dimension their capacity
// constrains.
type Fits struct{}

func (Fits) Name() string { return "fits" }

func (Fits) Filter(c *Cycle, vm *VM) (bool, string) {
	req, capa, used := c.Request.Resources, vm.Capacity, vm.Usage
	if capa.Containers > 0 && req.Containers > capa.Containers-used.Containers {
		return false, "no room: containers"
	}
	if capa.CPUMilli > 0 && req.CPUMilli > capa.CPUMilli-used.CPUMilli {
		return false, "no room: cpu"
	}
	if capa.MemoryBytes > 0 && req.MemoryBytes > capa.MemoryBytes-used.MemoryBytes {
		return false, "no room: memory"
	}
	return true, ""
}

// utilisation is the mean, over the dimensions the VM's capacity constrains, of the fraction
// that would be used after adding req; 0 when nothing is constrained.
func utilisation(capa, used, req Resources) float64 {
	var sum float64
	var n int
	if capa.Containers > 0 {
		sum += float64(used.Containers+req.Containers) / float64(capa.Containers)
		n++
	}
	if capa.CPUMilli > 0 {
		sum += float64(used.CPUMilli+req.CPUMilli) / float64(capa.CPUMilli)
		n++
	}
	if capa.MemoryBytes > 0 {
		sum += float64(used.MemoryBytes+req.MemoryBytes) / float64(capa.MemoryBytes)
		n++
	}
	if n == 0 {
		return 0
	}
	return min(sum/float64(n), 1)
}

// MostAllocated scores 100 × the VM's utilisation after placing the repl (bin-packing).
type MostAllocated struct{}

func (MostAllocated) Name() string { return "most-allocated" }

func (MostAllocated) Score(c *Cycle, vm *VM) float64 {
	return 100 * utilisation(vm.Capacity, vm.Usage, c.Request.Resources)
}

// LeastAllocated scores 100 × (1 − utilisation after placing the repl) (spread, least-loaded).
type LeastAllocated struct{}

func (LeastAllocated) Name() string { return "least-allocated" }

func (LeastAllocated) Score(c *Cycle, vm *VM) float64 {
	return 100 * (1 - utilisation(vm.Capacity, vm.Usage, c.Request.Resources))
}

// Sticky scores 100 for the repl's previous VM, 0 for every other.
type Sticky struct{}

func (Sticky) Name() string { return "sticky" }

func (Sticky) Score(c *Cycle, vm *VM) float64 {
	if c.Previous != "" && vm.ID == c.Previous {
		return 100
	}
	return 0
}

// Preferred scores 100 for the request's Prefer VM, 0 for every other.
type Preferred struct{}

func (Preferred) Name() string { return "preferred" }

func (Preferred) Score(c *Cycle, vm *VM) float64 {
	if c.Request.Prefer != "" && vm.ID == c.Request.Prefer {
		return 100
	}
	return 0
}
