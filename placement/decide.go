package placement

import (
	"context"
	"errors"
	"slices"
)

// Decision explains one placement decision: which VMs were considered, what each filter said
// and how each feasible VM scored. Explain returns it; operators ask "why did my repl land
// there".
type Decision struct {
	Request  Request `json:"request"`
	Pool     string  `json:"pool"`
	Strategy string  `json:"strategy"`
	// Existing is the repl's live assignment that Place would return as is; when set, no
	// candidates were evaluated.
	Existing *Assignment `json:"existing,omitempty"`
	// Released is set when Place would first release the live assignment (its VM is avoided or
	// dead) and then decide.
	Released *Assignment `json:"released,omitempty"`
	// Previous is the VM of the repl's last released assignment (stickiness).
	Previous string `json:"previous,omitempty"`
	// PoolSize is the number of VMs in the pool; SampleSize the number of feasible candidates
	// the strategy looks for (-1: every VM).
	PoolSize   int `json:"pool_size"`
	SampleSize int `json:"sample_size"`
	// Candidates are the VMs evaluated, in the order they were visited.
	Candidates []Candidate `json:"candidates"`
	// Chosen is the VM with the best score, "" if no candidate was feasible.
	Chosen string `json:"chosen,omitempty"`
}

// Candidate is one VM evaluated by a decision.
type Candidate struct {
	VM       string    `json:"vm"`
	State    State     `json:"state"`
	Usage    Resources `json:"usage"`
	Capacity Resources `json:"capacity"`
	Feasible bool      `json:"feasible"`
	// Filter and Reason name the filter that rejected the VM and why.
	Filter string `json:"filter,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Scores are the score plugins' results for a feasible VM; Total is their weighted sum.
	Scores []PluginScore `json:"scores,omitempty"`
	Total  float64       `json:"total"`
}

// PluginScore is one score plugin's result for a candidate.
type PluginScore struct {
	Plugin string  `json:"plugin"`
	Score  float64 `json:"score"`
	Weight float64 `json:"weight"`
}

// decide runs the strategy over the pool's cached VMs and returns the best feasible one, or nil.
// VMs in skip are not considered (their commit was refused during this Place). When d is not nil
// every evaluated candidate is recorded in it.
func (c *Controlplane) decide(cy *Cycle, s *Strategy, skip []string, d *Decision) *VM {
	pool := cy.Request.Pool
	entries := c.idx.pool(pool)
	n := len(entries)
	want := s.SampleSize
	if want == 0 {
		want = log2Sample(n)
	}
	if d != nil {
		d.PoolSize = n
		d.SampleSize = want
		if want >= n {
			d.SampleSize = -1
		}
	}
	var best *VM
	bestScore := -1.0
	fast := s.fast
	if d != nil {
		fast = nil // Explain reports each plugin
	}
	eval := func(vm *VM) bool {
		var ok bool
		var total float64
		if fast != nil {
			ok, total = fast.eval(cy, vm)
		} else {
			ok, total = evaluate(cy, s, vm, d)
		}
		if ok && total > bestScore {
			best, bestScore = vm, total
		}
		return ok
	}
	// The previous and preferred VMs are always evaluated, whether or not the sample finds them.
	var pinned [2]string
	np := 0
	for _, id := range [2]string{cy.Previous, cy.Request.Prefer} {
		if id == "" || slices.Contains(skip, id) || (np == 1 && pinned[0] == id) {
			continue
		}
		if e := c.idx.entryIn(pool, id); e != nil {
			pinned[np] = id
			np++
			eval(e.vm.Load())
		}
	}
	found := 0
	if want < 0 || want >= n {
		for _, e := range entries {
			vm := e.vm.Load()
			if isPinned(pinned[:np], vm.ID) || slices.Contains(skip, vm.ID) {
				continue
			}
			eval(vm)
		}
		return best
	}
	p := newPermutation(n)
	for i := p.next(); i >= 0 && found < want; i = p.next() {
		vm := entries[i].vm.Load()
		if isPinned(pinned[:np], vm.ID) || slices.Contains(skip, vm.ID) {
			continue
		}
		if eval(vm) {
			found++
		}
	}
	return best
}

func isPinned(p []string, id string) bool {
	for _, x := range p {
		if x == id {
			return true
		}
	}
	return false
}

// evaluate filters and scores one VM, recording the result in d when it is not nil.
func evaluate(cy *Cycle, s *Strategy, vm *VM, d *Decision) (bool, float64) {
	for _, f := range s.Filters {
		if ok, reason := f.Filter(cy, vm); !ok {
			if d != nil {
				d.Candidates = append(d.Candidates, Candidate{
					VM: vm.ID, State: vm.State, Usage: vm.Usage, Capacity: vm.Capacity,
					Filter: f.Name(), Reason: reason,
				})
			}
			return false, 0
		}
	}
	var total float64
	var scores []PluginScore
	for _, w := range s.Scores {
		sc := w.Plugin.Score(cy, vm)
		sc = min(max(sc, 0), 100)
		total += sc * w.Weight
		if d != nil {
			scores = append(scores, PluginScore{Plugin: w.Plugin.Name(), Score: sc, Weight: w.Weight})
		}
	}
	if d != nil {
		d.Candidates = append(d.Candidates, Candidate{
			VM: vm.ID, State: vm.State, Usage: vm.Usage, Capacity: vm.Capacity,
			Feasible: true, Scores: scores, Total: total,
		})
	}
	return true, total
}

// Explain reports the decision Place would make for req now, without committing anything: the
// live assignment Place would return, or every candidate considered with its filter result and
// per-plugin scores. Sampling is random, so two calls may consider different VMs.
func (c *Controlplane) Explain(ctx context.Context, req Request) (Decision, error) {
	req, err := normalize(req)
	if err != nil {
		return Decision{}, err
	}
	s := c.strategy(req.Pool)
	d := Decision{Request: req, Pool: req.Pool, Strategy: s.Name, Candidates: []Candidate{}}
	if d.Strategy == "" {
		d.Strategy = "custom"
	}
	a, err := c.store.Assignment(ctx, req.Repl)
	switch {
	case err == nil:
		vm := c.idx.get(a.VM)
		alive := vm != nil && vm.State != Dead && c.now().Sub(vm.LastHeartbeat) <= c.hbTimeout
		if alive && !slices.Contains(req.Avoid, a.VM) {
			d.Existing = &a
			d.Chosen = a.VM
			return d, nil
		}
		d.Released = &a
	case !errors.Is(err, ErrNotFound):
		return Decision{}, err
	}
	cy := Cycle{Request: req, Now: c.now(), HeartbeatTimeout: c.hbTimeout}
	if d.Released != nil {
		// Place releases first, which makes the released VM the previous one.
		cy.Previous = d.Released.VM
	} else if prev, _, err := c.store.LastVM(ctx, req.Repl); err == nil {
		cy.Previous = prev
	} else if !errors.Is(err, ErrNotFound) {
		return Decision{}, err
	}
	d.Previous = cy.Previous
	if best := c.decide(&cy, s, nil, &d); best != nil {
		d.Chosen = best.ID
	}
	return d, nil
}
