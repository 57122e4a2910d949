package placement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Controlplane. The zero value is usable: a MapStore, bin-packing in every
// pool, a 30 s heartbeat timeout.
type Config struct {
	// Store holds VMs and assignments. nil means a new NewMapStore() (see the package
	// documentation for why not the memdb store).
	Store Store
	// Strategies maps a pool name to its strategy; pools not listed use DefaultStrategy.
	Strategies map[string]Strategy
	// DefaultStrategy is used for pools without an entry in Strategies. A strategy without
	// filters and scores (the zero value) means BinPack().
	DefaultStrategy Strategy
	// HeartbeatTimeout is how long a VM may go without a heartbeat before it is marked Dead and
	// its assignments released. 0 means 30 s.
	HeartbeatTimeout time.Duration
	// StartGrace is how long an assignment may exist without its repl appearing in the VM's
	// heartbeat Running list before reconciliation releases it (the proxy places first and
	// conman starts the container when the proxy dials). 0 means 2 × HeartbeatTimeout.
	StartGrace time.Duration
	// SweepInterval is how often Run looks for expired heartbeats and reloads the VM cache from
	// the store. 0 means HeartbeatTimeout / 3.
	SweepInterval time.Duration
	// Headroom is the fraction of spare container capacity the autoscaling signal asks for on
	// top of what is assigned: 0 means 0.25 (25 %); a negative value means none.
	Headroom float64
	// MinVMs is the smallest desired VM count the autoscaling signal reports for a pool. 0
	// means 1.
	MinVMs int
	// MaxAttempts bounds how many commits one Place tries when concurrent Place calls take the
	// room it chose. 0 means 8.
	MaxAttempts int
	// Now is the clock. nil means time.Now. Tests inject a fake clock to expire heartbeats.
	Now func() time.Time
	// Logger receives state changes (VM dead, reconciliation). nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the Controlplane's metrics (see the package documentation). nil means
	// no metrics.
	Registerer prometheus.Registerer
}

// Controlplane is the in-process control plane: the VM registry, the assignments and the
// placement decisions. It is safe for concurrent use. New starts no goroutines; call Run (in a
// goroutine you own) to expire silent VMs in the background, or Sweep from your own loop.
type Controlplane struct {
	store       Store
	batch       BatchAssigner // nil when the store cannot batch
	commits     committer
	idx         *index
	strategies  map[string]*Strategy
	defStrategy Strategy
	hbTimeout   time.Duration
	startGrace  time.Duration
	sweepEvery  time.Duration
	headroom    float64
	minVMs      int
	maxAttempts int
	now         func() time.Time
	log         *slog.Logger
	m           *metrics
}

// New returns a Controlplane. It loads the store's VMs into its cache; a store error is
// returned.
func New(cfg Config) (*Controlplane, error) {
	c := &Controlplane{
		store:       cfg.Store,
		idx:         newIndex(),
		strategies:  map[string]*Strategy{},
		defStrategy: cfg.DefaultStrategy,
		hbTimeout:   cfg.HeartbeatTimeout,
		startGrace:  cfg.StartGrace,
		sweepEvery:  cfg.SweepInterval,
		headroom:    cfg.Headroom,
		minVMs:      cfg.MinVMs,
		maxAttempts: cfg.MaxAttempts,
		now:         cfg.Now,
		log:         cfg.Logger,
	}
	if c.store == nil {
		c.store = NewMapStore()
	}
	if b, ok := c.store.(BatchAssigner); ok {
		c.batch = b
	}
	c.commits.cp = c
	if c.hbTimeout < 0 {
		return nil, fmt.Errorf("%w: negative HeartbeatTimeout", ErrInvalid)
	}
	if c.hbTimeout == 0 {
		c.hbTimeout = 30 * time.Second
	}
	if c.startGrace <= 0 {
		c.startGrace = 2 * c.hbTimeout
	}
	if c.sweepEvery <= 0 {
		c.sweepEvery = c.hbTimeout / 3
	}
	if c.headroom == 0 {
		c.headroom = 0.25
	} else if c.headroom < 0 {
		c.headroom = 0
	}
	if c.minVMs <= 0 {
		c.minVMs = 1
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = 8
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if len(c.defStrategy.Filters) == 0 && len(c.defStrategy.Scores) == 0 {
		c.defStrategy = BinPack()
	}
	if err := checkStrategy(c.defStrategy); err != nil {
		return nil, fmt.Errorf("%w: default strategy: %v", ErrInvalid, err)
	}
	c.defStrategy.fast = compileFast(&c.defStrategy)
	for pool, s := range cfg.Strategies {
		if len(s.Filters) == 0 && len(s.Scores) == 0 {
			s = BinPack()
		}
		if err := checkStrategy(s); err != nil {
			return nil, fmt.Errorf("%w: strategy for pool %q: %v", ErrInvalid, pool, err)
		}
		s.fast = compileFast(&s)
		c.strategies[pool] = &s
	}
	m, err := newMetrics(cfg.Registerer, c)
	if err != nil {
		return nil, err
	}
	c.m = m
	vms, err := c.store.VMs(context.Background())
	if err != nil {
		return nil, fmt.Errorf("placement: loading vms: %w", err)
	}
	c.idx.reload(vms, 0)
	return c, nil
}

func checkStrategy(s Strategy) error {
	for i, f := range s.Filters {
		if f == nil {
			return fmt.Errorf("filter %d is nil", i)
		}
	}
	for i, w := range s.Scores {
		if w.Plugin == nil {
			return fmt.Errorf("score %d is nil", i)
		}
		if w.Weight < 0 {
			return fmt.Errorf("score %q has a negative weight", w.Plugin.Name())
		}
	}
	return nil
}

func (c *Controlplane) strategy(pool string) *Strategy {
	if s, ok := c.strategies[pool]; ok {
		return s
	}
	return &c.defStrategy
}

// Store returns the Controlplane's store.
func (c *Controlplane) Store() Store { return c.store }

// maxIDLen bounds repl and VM ids.
const maxIDLen = 253

func checkID(kind, id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty %s id", ErrInvalid, kind)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%w: %s id longer than %d bytes", ErrInvalid, kind, maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if b := id[i]; b <= ' ' || b == 0x7f || b == '/' {
			return fmt.Errorf("%w: %s id %q has a space, control character or slash", ErrInvalid, kind, id)
		}
	}
	return nil
}

// Bounds on any Resources value, far above any real VM, so sums of many cannot overflow.
const (
	maxContainers  = 1 << 24
	maxCPUMilli    = 1 << 40
	maxMemoryBytes = 1 << 56
)

func checkResources(what string, r Resources) error {
	if r.Containers < 0 || r.CPUMilli < 0 || r.MemoryBytes < 0 {
		return fmt.Errorf("%w: negative %s", ErrInvalid, what)
	}
	if r.Containers > maxContainers || r.CPUMilli > maxCPUMilli || r.MemoryBytes > maxMemoryBytes {
		return fmt.Errorf("%w: %s out of range (at most %d containers, %d cpu_milli, %d memory_bytes)",
			ErrInvalid, what, maxContainers, maxCPUMilli, maxMemoryBytes)
	}
	return nil
}

func validState(s State) bool {
	switch s {
	case Active, Cordoned, Draining, Dead:
		return true
	}
	return false
}

// normalize validates req and fills defaults; it copies Avoid so the caller's slice is not kept.
func normalize(req Request) (Request, error) {
	if err := checkID("repl", req.Repl); err != nil {
		return req, err
	}
	if err := checkResources("resources", req.Resources); err != nil {
		return req, err
	}
	if req.Resources.Containers == 0 {
		req.Resources.Containers = 1
	}
	if len(req.Avoid) > 64 {
		return req, fmt.Errorf("%w: more than 64 avoided vms", ErrInvalid)
	}
	return req, nil
}

// Place returns the VM that runs the repl, or should: the repl's live assignment if there is one
// (and its VM is neither avoided by the request nor dead), else a new assignment on the VM the
// pool's strategy chooses, committed with a check-and-set on the VM's usage. A live assignment
// on a VM in req.Avoid is released first. Errors: ErrInvalid for a bad request, ErrNoCapacity
// when no VM of the pool is feasible.
func (c *Controlplane) Place(ctx context.Context, req Request) (Assignment, error) {
	start := time.Now()
	a, err := c.place(ctx, req)
	c.m.observePlace(c.poolMetricLabel(req.Pool), start, err)
	return a, err
}

func (c *Controlplane) place(ctx context.Context, req Request) (Assignment, error) {
	req, err := normalize(req)
	if err != nil {
		return Assignment{}, err
	}
	var refused []string // VMs whose commit was refused during this call
	for attempt := 0; attempt < c.maxAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return Assignment{}, err
		}
		a, err := c.store.Assignment(ctx, req.Repl)
		switch {
		case err == nil:
			keep, err := c.keep(ctx, &req, a)
			if err != nil {
				return Assignment{}, err
			}
			if keep {
				return a, nil
			}
			continue // released; place again
		case !errors.Is(err, ErrNotFound):
			return Assignment{}, err
		}
		cy := Cycle{Request: req, Now: c.now(), HeartbeatTimeout: c.hbTimeout}
		if prev, _, err := c.store.LastVM(ctx, req.Repl); err == nil {
			cy.Previous = prev
		} else if !errors.Is(err, ErrNotFound) {
			return Assignment{}, err
		}
		chosen := c.decide(&cy, c.strategy(req.Pool), refused, nil)
		if chosen == nil {
			return Assignment{}, fmt.Errorf("%w: pool %q has no feasible vm for repl %q", ErrNoCapacity, req.Pool, req.Repl)
		}
		a = Assignment{
			Repl:      req.Repl,
			VM:        chosen.ID,
			Addr:      chosen.Addr,
			Resources: req.Resources,
			Created:   cy.Now,
		}
		vm, err := c.commits.assign(ctx, a)
		switch {
		case err == nil:
			c.idx.put(vm)
			return a, nil
		case errors.Is(err, ErrConflict):
			// Another Place assigned the repl first: the next round returns its assignment.
			c.m.conflicts.Inc()
			continue
		case errors.Is(err, ErrNoCapacity), errors.Is(err, ErrNotFound):
			// The cache was stale: refresh the VM and try another candidate.
			c.m.conflicts.Inc()
			refused = append(refused, chosen.ID)
			c.refresh(ctx, chosen.ID)
			continue
		default:
			return Assignment{}, err
		}
	}
	return Assignment{}, fmt.Errorf("%w: repl %q: gave up after %d conflicting commits", ErrNoCapacity, req.Repl, c.maxAttempts)
}

// keep decides whether Place returns the live assignment a: false after releasing it because
// the request avoids its VM or the VM is dead.
func (c *Controlplane) keep(ctx context.Context, req *Request, a Assignment) (bool, error) {
	if dead, err := c.deadVM(ctx, a.VM); err != nil {
		return false, err
	} else if dead {
		return false, c.dropDead(ctx, a)
	}
	if !slices.Contains(req.Avoid, a.VM) {
		return true, nil
	}
	_, vm, err := c.store.Release(ctx, a.Repl, a.VM)
	switch {
	case err == nil:
		c.idx.put(vm)
		c.log.Debug("placement: released assignment on avoided vm", "repl", a.Repl, "vm", a.VM)
		c.m.released.WithLabelValues("avoided").Inc()
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict):
		// Released or moved concurrently: look again.
	default:
		return false, err
	}
	return false, nil
}

// deadVM reports whether the VM is dead, marking it Dead (and releasing its assignments) if its
// heartbeat expired. It reads the cache first so the common case costs no store access.
func (c *Controlplane) deadVM(ctx context.Context, id string) (bool, error) {
	vm := c.idx.get(id)
	if vm != nil && vm.State != Dead && c.now().Sub(vm.LastHeartbeat) <= c.hbTimeout {
		return false, nil
	}
	fresh, err := c.store.VM(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	c.idx.put(fresh)
	if fresh.State == Dead {
		// Dead VMs hold no assignments; release stragglers (e.g. written by a racing commit).
		return true, c.releaseVM(ctx, id, "dead")
	}
	if c.now().Sub(fresh.LastHeartbeat) <= c.hbTimeout {
		return false, nil
	}
	return c.expire(ctx, id)
}

// dropDead releases one assignment found on a dead VM. Normally marking the VM Dead released it
// already; this covers an assignment whose VM row is gone or a commit that raced the release.
func (c *Controlplane) dropDead(ctx context.Context, a Assignment) error {
	_, vm, err := c.store.Release(ctx, a.Repl, a.VM)
	switch {
	case err == nil:
		c.idx.put(vm)
		c.m.released.WithLabelValues("dead").Inc()
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict):
	default:
		return err
	}
	return nil
}

// expire marks the VM Dead if its heartbeat is still expired, and releases its assignments.
func (c *Controlplane) expire(ctx context.Context, id string) (bool, error) {
	errFresh := errors.New("fresh")
	now := c.now()
	vm, err := c.store.UpdateVM(ctx, id, func(vm *VM) error {
		if vm.State == Dead {
			return nil
		}
		if now.Sub(vm.LastHeartbeat) <= c.hbTimeout {
			return errFresh
		}
		vm.State = Dead
		return nil
	})
	if errors.Is(err, errFresh) {
		return false, nil
	}
	if errors.Is(err, ErrNotFound) {
		c.idx.remove(id)
		return true, nil
	}
	if err != nil {
		return false, err
	}
	c.idx.put(vm)
	c.log.Info("placement: vm marked dead: heartbeat expired", "vm", id, "last_heartbeat", vm.LastHeartbeat)
	c.m.expired.Inc()
	return true, c.releaseVM(ctx, id, "dead")
}

func (c *Controlplane) releaseVM(ctx context.Context, id, why string) error {
	as, vm, err := c.store.ReleaseVM(ctx, id)
	if errors.Is(err, ErrNotFound) {
		c.idx.remove(id)
		return nil
	}
	if err != nil {
		return err
	}
	c.idx.put(vm)
	if len(as) > 0 {
		c.log.Info("placement: released assignments of vm", "vm", id, "reason", why, "count", len(as))
		c.m.released.WithLabelValues(why).Add(float64(len(as)))
	}
	return nil
}

// refresh reloads one VM from the store into the cache.
func (c *Controlplane) refresh(ctx context.Context, id string) {
	vm, err := c.store.VM(ctx, id)
	switch {
	case err == nil:
		c.idx.put(vm)
	case errors.Is(err, ErrNotFound):
		c.idx.remove(id)
	}
}

// Lookup returns the repl's live assignment, or an error wrapping ErrNotFound. An assignment on
// a VM whose heartbeat expired is released (the VM marked Dead) and reported as not found.
func (c *Controlplane) Lookup(ctx context.Context, repl string) (Assignment, error) {
	if err := checkID("repl", repl); err != nil {
		return Assignment{}, err
	}
	a, err := c.store.Assignment(ctx, repl)
	if errors.Is(err, ErrNotFound) {
		return Assignment{}, fmt.Errorf("%w: no assignment for repl %q", ErrNotFound, repl)
	}
	if err != nil {
		return Assignment{}, err
	}
	dead, err := c.deadVM(ctx, a.VM)
	if err != nil {
		return Assignment{}, err
	}
	if dead {
		if err := c.dropDead(ctx, a); err != nil {
			return Assignment{}, err
		}
		return Assignment{}, fmt.Errorf("%w: repl %q was on dead vm %q", ErrNotFound, repl, a.VM)
	}
	return a, nil
}

// Release removes the repl's assignment (its container stopped), if it is on vm ("" = any VM).
// A repl on another VM is an error wrapping ErrConflict; no assignment wraps ErrNotFound. The VM
// is remembered as the repl's previous VM, for stickiness.
func (c *Controlplane) Release(ctx context.Context, repl, vm string) error {
	if err := checkID("repl", repl); err != nil {
		return err
	}
	if vm != "" {
		if err := checkID("vm", vm); err != nil {
			return err
		}
	}
	_, v, err := c.store.Release(ctx, repl, vm)
	if err != nil {
		return err
	}
	if v.ID != "" {
		c.idx.put(v)
	}
	c.m.released.WithLabelValues("release").Inc()
	return nil
}

// Register adds a VM, or updates a registered one (address, pool, build, capacity). A new VM
// starts in vm.State if that is Active, Cordoned or Draining (empty means Active); a registered
// VM keeps an operator's Cordoned or Draining state (and moves to Draining if it says it is
// draining), and a Dead VM comes back in vm.State (Active if empty): registering again is the
// only way out of Dead. Register counts as a heartbeat. Usage is never taken from the
// argument: it is what placement has committed.
func (c *Controlplane) Register(ctx context.Context, vm VM) (VM, error) {
	if err := checkID("vm", vm.ID); err != nil {
		return VM{}, err
	}
	if err := checkAddr(vm.Addr); err != nil {
		return VM{}, err
	}
	if err := checkResources("capacity", vm.Capacity); err != nil {
		return VM{}, err
	}
	switch vm.State {
	case "", Active, Cordoned, Draining:
	default:
		return VM{}, fmt.Errorf("%w: a vm registers as active, cordoned or draining, not %q", ErrInvalid, vm.State)
	}
	now := c.now()
	cur, err := c.store.VM(ctx, vm.ID)
	switch {
	case err == nil:
		if (cur.State == Cordoned || cur.State == Draining) && vm.State != Draining {
			vm.State = cur.State
		}
	case errors.Is(err, ErrNotFound):
	default:
		return VM{}, err
	}
	if vm.State == "" {
		vm.State = Active
	}
	vm.LastHeartbeat, vm.Registered = now, now
	vm.Observed = Resources{}
	out, err := c.store.PutVM(ctx, vm)
	if err != nil {
		return VM{}, err
	}
	c.idx.put(out)
	c.log.Debug("placement: vm registered", "vm", out.ID, "pool", out.Pool, "state", out.State)
	return out, nil
}

func checkAddr(addr string) error {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: vm addr %q is not an http(s) base URL", ErrInvalid, addr)
	}
	return nil
}

// Heartbeat records that a VM is alive, its build and observed use. A VM never registered, or
// declared Dead, is an error wrapping ErrNotFound: its registration is void (a Dead VM's
// assignments were released) and the agent must Register again, which brings it back Active.
//
// When hb.Running is not nil the VM's assignments are reconciled with it: an assignment whose
// repl is not running and is older than Config.StartGrace is released (the container stopped
// without a Release); a running repl with no assignment anywhere is adopted (assigned to this
// VM, one container) if the VM is Active and has room; a running repl assigned to another VM is
// left alone and logged (conman should stop it). A nil Running skips reconciliation.
func (c *Controlplane) Heartbeat(ctx context.Context, hb Heartbeat) error {
	if err := checkID("vm", hb.VM); err != nil {
		return err
	}
	if err := checkResources("used", hb.Used); err != nil {
		return err
	}
	now := c.now()
	errDead := errors.New("dead")
	vm, err := c.store.UpdateVM(ctx, hb.VM, func(vm *VM) error {
		if vm.State == Dead {
			return errDead
		}
		vm.LastHeartbeat = now
		if hb.Build != "" {
			vm.Build = hb.Build
		}
		vm.Observed = hb.Used
		return nil
	})
	if errors.Is(err, errDead) {
		return fmt.Errorf("%w: vm %q was declared dead; register it again", ErrNotFound, hb.VM)
	}
	if err != nil {
		return err
	}
	c.idx.put(vm)
	if hb.Running != nil {
		return c.reconcile(ctx, vm, hb.Running, now)
	}
	return nil
}

func (c *Controlplane) reconcile(ctx context.Context, vm VM, running []string, now time.Time) error {
	as, err := c.store.Assignments(ctx, vm.ID)
	if err != nil {
		return err
	}
	run := make(map[string]bool, len(running))
	for _, r := range running {
		run[r] = true
	}
	for _, a := range as {
		if run[a.Repl] {
			delete(run, a.Repl)
			continue
		}
		if now.Sub(a.Created) <= c.startGrace {
			continue
		}
		_, v, err := c.store.Release(ctx, a.Repl, vm.ID)
		if err != nil {
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
				continue
			}
			return err
		}
		c.idx.put(v)
		c.m.released.WithLabelValues("not-running").Inc()
		c.log.Info("placement: released assignment: repl not running on its vm", "repl", a.Repl, "vm", vm.ID)
	}
	for _, repl := range running {
		if !run[repl] || checkID("repl", repl) != nil {
			continue
		}
		delete(run, repl) // duplicates in Running
		a := Assignment{Repl: repl, VM: vm.ID, Addr: vm.Addr, Resources: Resources{Containers: 1}, Created: now}
		v, err := c.store.Assign(ctx, a)
		switch {
		case err == nil:
			c.idx.put(v)
			c.m.adopted.Inc()
			c.log.Info("placement: adopted running repl", "repl", repl, "vm", vm.ID)
		case errors.Is(err, ErrConflict):
			c.log.Warn("placement: repl running on a vm it is not assigned to", "repl", repl, "vm", vm.ID)
		case errors.Is(err, ErrNoCapacity), errors.Is(err, ErrNotFound):
			c.log.Warn("placement: cannot adopt running repl", "repl", repl, "vm", vm.ID, "err", err)
		default:
			return err
		}
	}
	return nil
}

// SetState changes a VM's state: Cordoned or Draining stop new placements (existing assignments
// stay until released), Active resumes them, Dead releases every assignment on the VM at once.
// A Dead VM cannot be set to another state (ErrConflict): it must Register again.
func (c *Controlplane) SetState(ctx context.Context, id string, s State) error {
	if err := checkID("vm", id); err != nil {
		return err
	}
	if !validState(s) {
		return fmt.Errorf("%w: unknown vm state %q", ErrInvalid, s)
	}
	errDead := errors.New("dead")
	vm, err := c.store.UpdateVM(ctx, id, func(vm *VM) error {
		if vm.State == Dead && s != Dead {
			return errDead
		}
		vm.State = s
		return nil
	})
	if errors.Is(err, errDead) {
		return fmt.Errorf("%w: vm %q is dead; register it again", ErrConflict, id)
	}
	if err != nil {
		return err
	}
	c.idx.put(vm)
	c.log.Info("placement: vm state set", "vm", id, "state", s)
	if s == Dead {
		return c.releaseVM(ctx, id, "dead")
	}
	return nil
}

// VM returns a registered VM, or an error wrapping ErrNotFound.
func (c *Controlplane) VM(ctx context.Context, id string) (VM, error) {
	if err := checkID("vm", id); err != nil {
		return VM{}, err
	}
	return c.store.VM(ctx, id)
}

// VMs returns every registered VM, sorted by ID.
func (c *Controlplane) VMs(ctx context.Context) ([]VM, error) {
	return c.store.VMs(ctx)
}

// Assignments returns the live assignments on a VM ("" = all), sorted by repl. An unknown VM is
// an error wrapping ErrNotFound.
func (c *Controlplane) Assignments(ctx context.Context, vm string) ([]Assignment, error) {
	if vm != "" {
		if err := checkID("vm", vm); err != nil {
			return nil, err
		}
		if _, err := c.store.VM(ctx, vm); err != nil {
			return nil, err
		}
	}
	return c.store.Assignments(ctx, vm)
}

// Deregister removes a VM that holds no assignments (ErrConflict otherwise: drain it and release
// its repls, or set it Dead, first).
func (c *Controlplane) Deregister(ctx context.Context, id string) error {
	if err := checkID("vm", id); err != nil {
		return err
	}
	if err := c.store.DeleteVM(ctx, id); err != nil {
		return err
	}
	c.idx.remove(id)
	return nil
}

// Sweep marks Dead every VM whose heartbeat expired, releasing its assignments, and reloads the
// VM cache from the store. It returns the VMs it marked Dead. Run calls it periodically.
func (c *Controlplane) Sweep(ctx context.Context) ([]string, error) {
	gen := c.idx.generation()
	vms, err := c.store.VMs(ctx)
	if err != nil {
		return nil, err
	}
	c.idx.reload(vms, gen)
	now := c.now()
	var dead []string
	var errs []error
	for _, vm := range vms {
		if vm.State == Dead {
			if vm.Usage != (Resources{}) {
				if err := c.releaseVM(ctx, vm.ID, "dead"); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if now.Sub(vm.LastHeartbeat) <= c.hbTimeout {
			continue
		}
		ok, err := c.expire(ctx, vm.ID)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			dead = append(dead, vm.ID)
		}
	}
	return dead, errors.Join(errs...)
}

// Run calls Sweep every Config.SweepInterval until ctx ends, then returns ctx.Err(). Sweep errors
// are logged (Run is the top of its goroutine) and retried at the next tick.
func (c *Controlplane) Run(ctx context.Context) error {
	t := time.NewTicker(c.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if _, err := c.Sweep(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("placement: sweep failed", "err", err)
			}
		}
	}
}

// poolLabel returns the pool name used in metrics ("default" for "").
func poolLabel(pool string) string {
	if pool == "" {
		return "default"
	}
	return pool
}

// poolMetricLabel bounds the label values a request can create: a pool with no VM and no
// configured strategy is "other".
func (c *Controlplane) poolMetricLabel(pool string) string {
	if _, ok := c.strategies[pool]; ok || len(c.idx.pool(pool)) > 0 {
		return poolLabel(pool)
	}
	return "other"
}
