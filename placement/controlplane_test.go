package placement_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/placement"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clock is a fake clock tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newCP(t testing.TB, cfg placement.Config) *placement.Controlplane {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	cp, err := placement.New(cfg)
	require.NoError(t, err)
	return cp
}

func vm(id, pool string, containers int) placement.VM {
	return placement.VM{ID: id, Pool: pool, Addr: "http://127.0.0.1:8600/" + id, Capacity: placement.Resources{Containers: containers}}
}

func register(t testing.TB, p interface {
	Register(context.Context, placement.VM) (placement.VM, error)
}, vms ...placement.VM) {
	t.Helper()
	for _, v := range vms {
		_, err := p.Register(context.Background(), v)
		require.NoError(t, err)
	}
}

func TestPlaceLookupRelease(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	register(t, cp, vm("vm-1", "", 2))

	a, err := cp.Place(ctx, placement.Request{Repl: "r1"})
	require.NoError(t, err)
	assert.Equal(t, "vm-1", a.VM)
	assert.Equal(t, "http://127.0.0.1:8600/vm-1", a.Addr)
	assert.Equal(t, 1, a.Resources.Containers)

	// Placing again returns the same assignment.
	b, err := cp.Place(ctx, placement.Request{Repl: "r1"})
	require.NoError(t, err)
	assert.Equal(t, a, b)

	got, err := cp.Lookup(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, a, got)

	v, err := cp.VM(ctx, "vm-1")
	require.NoError(t, err)
	assert.Equal(t, 1, v.Usage.Containers)

	_, err = cp.Place(ctx, placement.Request{Repl: "r2"})
	require.NoError(t, err)
	_, err = cp.Place(ctx, placement.Request{Repl: "r3"})
	require.ErrorIs(t, err, placement.ErrNoCapacity)

	require.ErrorIs(t, cp.Release(ctx, "r1", "vm-other"), placement.ErrConflict)
	require.NoError(t, cp.Release(ctx, "r1", "vm-1"))
	require.ErrorIs(t, cp.Release(ctx, "r1", ""), placement.ErrNotFound)
	_, err = cp.Lookup(ctx, "r1")
	require.ErrorIs(t, err, placement.ErrNotFound)

	_, err = cp.Place(ctx, placement.Request{Repl: "r3"})
	require.NoError(t, err)
	v, err = cp.VM(ctx, "vm-1")
	require.NoError(t, err)
	assert.Equal(t, 2, v.Usage.Containers)
}

func TestInvalid(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"empty repl", func() error { _, err := cp.Place(ctx, placement.Request{}); return err }},
		{"slash repl", func() error { _, err := cp.Place(ctx, placement.Request{Repl: "a/b"}); return err }},
		{"negative resources", func() error {
			_, err := cp.Place(ctx, placement.Request{Repl: "a", Resources: placement.Resources{CPUMilli: -1}})
			return err
		}},
		{"empty vm id", func() error { _, err := cp.Register(ctx, placement.VM{Addr: "http://x"}); return err }},
		{"bad addr", func() error { _, err := cp.Register(ctx, placement.VM{ID: "v", Addr: "x:1"}); return err }},
		{"register dead", func() error {
			_, err := cp.Register(ctx, placement.VM{ID: "v", Addr: "http://x", State: placement.Dead})
			return err
		}},
		{"bad state", func() error { return cp.SetState(ctx, "v", "sleepy") }},
		{"lookup empty", func() error { _, err := cp.Lookup(ctx, ""); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, tc.call(), placement.ErrInvalid)
		})
	}
	require.ErrorIs(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "nope"}), placement.ErrNotFound)
	require.ErrorIs(t, cp.SetState(ctx, "nope", placement.Draining), placement.ErrNotFound)
}

func TestStatesGetNoNewRepls(t *testing.T) {
	ctx := context.Background()
	for _, s := range []placement.State{placement.Cordoned, placement.Draining, placement.Dead} {
		t.Run(string(s), func(t *testing.T) {
			cp := newCP(t, placement.Config{})
			register(t, cp, vm("a", "", 10), vm("b", "", 30))
			a, err := cp.Place(ctx, placement.Request{Repl: "old", Prefer: "a"})
			require.NoError(t, err)
			require.Equal(t, "a", a.VM)
			require.NoError(t, cp.SetState(ctx, "a", s))
			for i := range 20 {
				a, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i), Prefer: "a"})
				require.NoError(t, err)
				require.Equal(t, "b", a.VM)
			}
			got, err := cp.Lookup(ctx, "old")
			if s == placement.Dead {
				require.ErrorIs(t, err, placement.ErrNotFound, "a dead vm's assignments are released")
				again, err := cp.Place(ctx, placement.Request{Repl: "old"})
				require.NoError(t, err)
				require.Equal(t, "b", again.VM)
			} else {
				require.NoError(t, err, "a %s vm keeps its assignments", s)
				require.Equal(t, "a", got.VM)
			}
			require.NoError(t, cp.SetState(ctx, "b", s))
			_, err = cp.Place(ctx, placement.Request{Repl: "new"})
			require.ErrorIs(t, err, placement.ErrNoCapacity)
		})
	}
}

func TestAvoidReleasesAndReplaces(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	register(t, cp, vm("a", "", 10), vm("b", "", 10))
	a, err := cp.Place(ctx, placement.Request{Repl: "r", Prefer: "a"})
	require.NoError(t, err)
	require.Equal(t, "a", a.VM)
	// The proxy's dial to a failed: it passes a as avoided.
	b, err := cp.Place(ctx, placement.Request{Repl: "r", Avoid: []string{"a"}})
	require.NoError(t, err)
	require.Equal(t, "b", b.VM)
	va, err := cp.VM(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, 0, va.Usage.Containers)
	// Avoiding a VM the repl is not on changes nothing.
	c, err := cp.Place(ctx, placement.Request{Repl: "r", Avoid: []string{"a"}})
	require.NoError(t, err)
	require.Equal(t, b, c)
	_, err = cp.Place(ctx, placement.Request{Repl: "r", Avoid: []string{"a", "b"}})
	require.ErrorIs(t, err, placement.ErrNoCapacity)
}

func TestStickiness(t *testing.T) {
	ctx := context.Background()
	for _, strat := range []placement.Strategy{placement.BinPack(), placement.Spread()} {
		for store, mk := range stores {
			t.Run(strat.Name+"/"+store, func(t *testing.T) {
				cp := newCP(t, placement.Config{DefaultStrategy: strat, Store: mk()})
				for i := range 50 {
					register(t, cp, vm(fmt.Sprintf("vm-%02d", i), "", 4))
				}
				homes := map[string]string{}
				for i := range 60 {
					r := fmt.Sprint("r", i)
					a, err := cp.Place(ctx, placement.Request{Repl: r})
					require.NoError(t, err)
					homes[r] = a.VM
				}
				// Restart every repl: release, then place again; each lands on its old VM.
				for r, home := range homes {
					require.NoError(t, cp.Release(ctx, r, home))
					a, err := cp.Place(ctx, placement.Request{Repl: r})
					require.NoError(t, err)
					require.Equal(t, home, a.VM, "repl %s", r)
				}
				// While the old VM is not feasible, the repl goes elsewhere.
				r, home := "r0", homes["r0"]
				require.NoError(t, cp.Release(ctx, r, home))
				require.NoError(t, cp.SetState(ctx, home, placement.Cordoned))
				a, err := cp.Place(ctx, placement.Request{Repl: r})
				require.NoError(t, err)
				require.NotEqual(t, home, a.VM)
			})
		}
	}
}

func TestBinPackAndSpread(t *testing.T) {
	ctx := context.Background()
	full := placement.BinPack()
	full.SampleSize = -1
	cp := newCP(t, placement.Config{DefaultStrategy: full})
	register(t, cp, vm("a", "", 10), vm("b", "", 10), vm("c", "", 10))
	for i := range 10 {
		a, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i)})
		require.NoError(t, err)
		if i > 0 {
			first, _ := cp.Lookup(ctx, "r0")
			require.Equal(t, first.VM, a.VM, "bin-packing fills one VM first")
		}
	}
	spread := placement.Spread()
	spread.SampleSize = -1
	cp = newCP(t, placement.Config{Strategies: map[string]placement.Strategy{"pro": spread}})
	register(t, cp, vm("a", "pro", 10), vm("b", "pro", 10), vm("c", "pro", 10), vm("d", "", 10))
	for i := range 9 {
		_, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i), Pool: "pro"})
		require.NoError(t, err)
	}
	vms, err := cp.VMs(ctx)
	require.NoError(t, err)
	for _, v := range vms {
		if v.Pool == "pro" {
			assert.Equal(t, 3, v.Usage.Containers, "spread evens out %s", v.ID)
		} else {
			assert.Equal(t, 0, v.Usage.Containers, "pools are separate")
		}
	}
	_, err = cp.Place(ctx, placement.Request{Repl: "x", Pool: "nope"})
	require.ErrorIs(t, err, placement.ErrNoCapacity)
}

func TestMultiResourceFit(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	big := placement.VM{ID: "big", Addr: "http://127.0.0.1:1", Capacity: placement.Resources{Containers: 100, CPUMilli: 4000, MemoryBytes: 8 << 30}}
	register(t, cp, big)
	req := placement.Resources{CPUMilli: 1500, MemoryBytes: 1 << 30}
	for i := range 2 {
		_, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i), Resources: req})
		require.NoError(t, err)
	}
	_, err := cp.Place(ctx, placement.Request{Repl: "r3", Resources: req})
	require.ErrorIs(t, err, placement.ErrNoCapacity, "a third 1.5 CPU repl exceeds 4 CPUs")
	d, err := cp.Explain(ctx, placement.Request{Repl: "r3", Resources: req})
	require.NoError(t, err)
	require.Len(t, d.Candidates, 1)
	assert.Equal(t, "fits", d.Candidates[0].Filter)
	assert.Equal(t, "no room: cpu", d.Candidates[0].Reason)
}

func TestHeartbeatExpiry(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	cp := newCP(t, placement.Config{Now: clk.Now, HeartbeatTimeout: 10 * time.Second})
	register(t, cp, vm("a", "", 10), vm("b", "", 10))
	a, err := cp.Place(ctx, placement.Request{Repl: "r", Prefer: "a"})
	require.NoError(t, err)
	require.Equal(t, "a", a.VM)

	clk.Advance(8 * time.Second)
	require.NoError(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "b"}))
	dead, err := cp.Sweep(ctx)
	require.NoError(t, err)
	require.Empty(t, dead, "8 s is within the timeout")

	clk.Advance(5 * time.Second) // a: 13 s silent; b: 5 s
	dead, err = cp.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, dead)
	va, err := cp.VM(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, placement.Dead, va.State)
	require.Equal(t, 0, va.Usage.Containers)
	_, err = cp.Lookup(ctx, "r")
	require.ErrorIs(t, err, placement.ErrNotFound)
	again, err := cp.Place(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	require.Equal(t, "b", again.VM)

	// A dead VM's heartbeat is refused until it registers again.
	require.ErrorIs(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "a"}), placement.ErrNotFound)
	require.ErrorIs(t, cp.SetState(ctx, "a", placement.Active), placement.ErrConflict)
	register(t, cp, vm("a", "", 10))
	va, err = cp.VM(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, placement.Active, va.State)
	require.NoError(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "a"}))
}

func TestLazyExpiryWithoutSweep(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	cp := newCP(t, placement.Config{Now: clk.Now, HeartbeatTimeout: 10 * time.Second})
	register(t, cp, vm("a", "", 10))
	_, err := cp.Place(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	clk.Advance(11 * time.Second)
	register(t, cp, vm("b", "", 10))
	// No Sweep ran: Place notices a's heartbeat expired, marks it dead and places on b.
	a, err := cp.Place(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	require.Equal(t, "b", a.VM)
	va, err := cp.VM(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, placement.Dead, va.State)
}

func TestHeartbeatReconcile(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	cp := newCP(t, placement.Config{Now: clk.Now, HeartbeatTimeout: 10 * time.Second, StartGrace: 15 * time.Second})
	register(t, cp, vm("a", "", 10), vm("b", "", 10))
	for _, r := range []string{"running", "starting", "gone"} {
		_, err := cp.Place(ctx, placement.Request{Repl: r, Prefer: "a"})
		require.NoError(t, err)
	}
	_, err := cp.Place(ctx, placement.Request{Repl: "elsewhere", Prefer: "b"})
	require.NoError(t, err)
	clk.Advance(9 * time.Second)
	// Within the start grace nothing is released.
	require.NoError(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "a", Running: []string{"running"}}))
	as, err := cp.Assignments(ctx, "a")
	require.NoError(t, err)
	require.Len(t, as, 3)
	clk.Advance(9 * time.Second)
	_, err = cp.Place(ctx, placement.Request{Repl: "starting2", Prefer: "a"})
	require.NoError(t, err)
	require.NoError(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "b"}))
	require.NoError(t, cp.Heartbeat(ctx, placement.Heartbeat{VM: "a",
		Running: []string{"running", "orphan", "orphan", "elsewhere"}, Used: placement.Resources{Containers: 3}}))
	as, err = cp.Assignments(ctx, "a")
	require.NoError(t, err)
	var repls []string
	for _, a := range as {
		repls = append(repls, a.Repl)
	}
	// "starting" and "gone" were not running past the grace; "starting2" is young; "orphan" is
	// adopted; "elsewhere" stays on b.
	assert.Equal(t, []string{"orphan", "running", "starting2"}, repls)
	e, err := cp.Lookup(ctx, "elsewhere")
	require.NoError(t, err)
	assert.Equal(t, "b", e.VM)
	va, err := cp.VM(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, 3, va.Usage.Containers)
	assert.Equal(t, 3, va.Observed.Containers)
}

func TestRegisterKeepsOperatorState(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	register(t, cp, vm("a", "", 10))
	_, err := cp.Place(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	require.NoError(t, cp.SetState(ctx, "a", placement.Draining))
	v := vm("a", "", 20)
	v.Build = "v2"
	got, err := cp.Register(ctx, v)
	require.NoError(t, err)
	assert.Equal(t, placement.Draining, got.State)
	assert.Equal(t, 1, got.Usage.Containers, "usage survives re-registration")
	assert.Equal(t, 20, got.Capacity.Containers)
	require.ErrorIs(t, cp.Deregister(ctx, "a"), placement.ErrConflict)
	require.NoError(t, cp.Release(ctx, "r", ""))
	require.NoError(t, cp.Deregister(ctx, "a"))
	_, err = cp.VM(ctx, "a")
	require.ErrorIs(t, err, placement.ErrNotFound)
}

func TestAutoscale(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{Headroom: 0.5})
	register(t, cp, vm("a", "", 10), vm("b", "", 10), vm("c", "", 10), vm("p", "pro", 4))
	require.NoError(t, cp.SetState(ctx, "c", placement.Draining))
	for i := range 12 {
		_, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i)})
		require.NoError(t, err)
	}
	s, err := cp.Autoscale(ctx)
	require.NoError(t, err)
	require.Len(t, s, 2)
	assert.Equal(t, placement.PoolScale{Pool: "", Active: 2, Draining: 1, Containers: 12, PerVM: 10, Desired: 2, Delta: 0}, s[0])
	assert.Equal(t, placement.PoolScale{Pool: "pro", Active: 1, Containers: 0, PerVM: 4, Desired: 1, Delta: 0}, s[1])
	for i := range 4 {
		_, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("x", i)})
		require.NoError(t, err)
	}
	s, err = cp.Autoscale(ctx)
	require.NoError(t, err)
	assert.Equal(t, 16, s[0].Containers)
	assert.Equal(t, 3, s[0].Desired, "ceil(16 × 1.5 / 10)")
	assert.Equal(t, 1, s[0].Delta)

	// A configured pool without VMs asks for MinVMs.
	cp = newCP(t, placement.Config{MinVMs: 2, Strategies: map[string]placement.Strategy{"gpu": placement.Spread()}})
	s, err = cp.Autoscale(ctx)
	require.NoError(t, err)
	assert.Equal(t, []placement.PoolScale{{Pool: "gpu", Desired: 2, Delta: 2}}, s)
}

func TestExplain(t *testing.T) {
	ctx := context.Background()
	full := placement.BinPack()
	full.SampleSize = -1
	cp := newCP(t, placement.Config{DefaultStrategy: full})
	register(t, cp, vm("a", "", 4), vm("b", "", 4), vm("c", "", 4))
	require.NoError(t, cp.SetState(ctx, "c", placement.Cordoned))
	_, err := cp.Place(ctx, placement.Request{Repl: "other", Prefer: "b"})
	require.NoError(t, err)

	d, err := cp.Explain(ctx, placement.Request{Repl: "r", Avoid: []string{"a"}})
	require.NoError(t, err)
	assert.Equal(t, "binpack", d.Strategy)
	assert.Equal(t, "b", d.Chosen)
	assert.Equal(t, 3, d.PoolSize)
	byVM := map[string]placement.Candidate{}
	for _, c := range d.Candidates {
		byVM[c.VM] = c
	}
	require.Len(t, byVM, 3)
	assert.Equal(t, "not-avoided", byVM["a"].Filter)
	assert.Equal(t, "schedulable", byVM["c"].Filter)
	assert.Equal(t, "vm is cordoned", byVM["c"].Reason)
	require.True(t, byVM["b"].Feasible)
	require.Len(t, byVM["b"].Scores, 3)
	assert.Equal(t, "most-allocated", byVM["b"].Scores[0].Plugin)
	assert.InDelta(t, 50, byVM["b"].Scores[0].Score, 0.001, "2 of 4 after placing")
	assert.InDelta(t, 50, byVM["b"].Total, 0.001)

	// Explain commits nothing.
	_, err = cp.Lookup(ctx, "r")
	require.ErrorIs(t, err, placement.ErrNotFound)
	d, err = cp.Explain(ctx, placement.Request{Repl: "other"})
	require.NoError(t, err)
	require.NotNil(t, d.Existing)
	assert.Equal(t, "b", d.Chosen)
}

func TestSamplingConsidersFewCandidates(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	for i := range 1024 {
		register(t, cp, vm(fmt.Sprintf("vm-%04d", i), "", 10))
	}
	d, err := cp.Explain(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	assert.Equal(t, 10, d.SampleSize, "log2(1024)")
	assert.Len(t, d.Candidates, 10)
	a, err := cp.Place(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	require.NoError(t, cp.Release(ctx, "r", ""))
	// The previous VM is considered even when the sample misses it.
	d, err = cp.Explain(ctx, placement.Request{Repl: "r"})
	require.NoError(t, err)
	assert.Equal(t, a.VM, d.Chosen)
	assert.Equal(t, a.VM, d.Previous)
	assert.Len(t, d.Candidates, 11)
}

// TestConcurrentPlaceRelease places and releases from many goroutines on a small, changing
// cluster and checks after every step that no VM exceeds its capacity and no repl lands on a VM
// that was not Active.
func TestConcurrentPlaceRelease(t *testing.T) {
	for name, mk := range stores {
		t.Run(name, func(t *testing.T) { concurrentPlaceRelease(t, mk()) })
	}
}

var stores = map[string]func() placement.Store{
	"memdb": func() placement.Store { return placement.NewMemStore() },
	"map":   func() placement.Store { return placement.NewMapStore() },
}

func concurrentPlaceRelease(t *testing.T, store placement.Store) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{MaxAttempts: 64, Store: store})
	const nVM, workers, ops = 12, 16, 400
	caps := map[string]int{}
	for i := range nVM {
		id := fmt.Sprintf("vm-%d", i)
		caps[id] = 1 + i%4
		register(t, cp, vm(id, "", caps[id]))
	}
	// Two VMs are unschedulable from the start; they must never receive a repl.
	require.NoError(t, cp.SetState(ctx, "vm-0", placement.Draining))
	require.NoError(t, cp.SetState(ctx, "vm-1", placement.Cordoned))

	var placed, full atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			mine := map[string]string{}
			for i := range ops {
				repl := fmt.Sprintf("w%d-r%d", w, rng.IntN(20))
				if home, ok := mine[repl]; ok && rng.IntN(2) == 0 {
					if err := cp.Release(ctx, repl, home); err != nil {
						errs <- fmt.Errorf("release %s: %w", repl, err)
						return
					}
					delete(mine, repl)
					continue
				}
				req := placement.Request{Repl: repl, Pool: ""}
				if rng.IntN(5) == 0 {
					req.Prefer = fmt.Sprintf("vm-%d", rng.IntN(nVM))
				}
				a, err := cp.Place(ctx, req)
				if errors.Is(err, placement.ErrNoCapacity) {
					full.Add(1)
					continue
				}
				if err != nil {
					errs <- fmt.Errorf("place %s (op %d): %w", repl, i, err)
					return
				}
				if a.VM == "vm-0" || a.VM == "vm-1" {
					errs <- fmt.Errorf("repl %s placed on unschedulable %s", repl, a.VM)
					return
				}
				if home, ok := mine[repl]; ok && home != a.VM {
					errs <- fmt.Errorf("repl %s moved from %s to %s without a release", repl, home, a.VM)
					return
				}
				mine[repl] = a.VM
				placed.Add(1)
			}
		}()
	}
	// A checker reads usage while the workers run.
	stop := make(chan struct{})
	checked := make(chan error, 1)
	go func() {
		defer close(checked)
		for {
			select {
			case <-stop:
				return
			default:
			}
			vms, err := cp.VMs(ctx)
			if err != nil {
				checked <- err
				return
			}
			for _, v := range vms {
				if v.Usage.Containers > caps[v.ID] || v.Usage.Containers < 0 {
					checked <- fmt.Errorf("vm %s holds %d > capacity %d", v.ID, v.Usage.Containers, caps[v.ID])
					return
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.NoError(t, <-checked)
	require.Positive(t, placed.Load())
	require.Positive(t, full.Load(), "the cluster is small enough to fill up")

	// Usage equals the assignments' sum on every VM.
	for id, c := range caps {
		as, err := cp.Assignments(ctx, id)
		require.NoError(t, err)
		v, err := cp.VM(ctx, id)
		require.NoError(t, err)
		require.Equal(t, len(as), v.Usage.Containers, "vm %s", id)
		require.LessOrEqual(t, len(as), c)
		if id == "vm-0" || id == "vm-1" {
			require.Empty(t, as)
		}
	}
}

func TestResourceOverflow(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	v := vm("a", "", 10)
	v.Capacity.MemoryBytes = 1 << 30
	register(t, cp, v)
	_, err := cp.Place(ctx, placement.Request{Repl: "r", Resources: placement.Resources{MemoryBytes: 1<<63 - 1}})
	require.ErrorIs(t, err, placement.ErrInvalid)
	_, err = cp.Place(ctx, placement.Request{Repl: "r", Resources: placement.Resources{MemoryBytes: 1 << 30}})
	require.NoError(t, err)
	// Near the bound, a request that would wrap a naive sum is refused as too big.
	_, err = cp.Place(ctx, placement.Request{Repl: "s", Resources: placement.Resources{MemoryBytes: 1 << 56}})
	require.ErrorIs(t, err, placement.ErrNoCapacity)
	v.Capacity.Containers = -1
	_, err = cp.Register(ctx, v)
	require.ErrorIs(t, err, placement.ErrInvalid)
}

// TestSweepKeepsVMsRegisteredMeanwhile: a VM registered while Sweep reloads the cache must stay
// placeable (the reload's snapshot may predate it).
func TestSweepKeepsNewVMs(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 200 {
			if _, err := cp.Sweep(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 200 {
		id := fmt.Sprint("vm-", i)
		register(t, cp, vm(id, "", 1))
		// Placing with only this VM feasible proves the cache holds it.
		a, err := cp.Place(ctx, placement.Request{Repl: fmt.Sprint("r", i), Prefer: id})
		require.NoError(t, err)
		require.Equal(t, id, a.VM)
	}
	wg.Wait()
}

func TestRegisterDraining(t *testing.T) {
	ctx := context.Background()
	cp := newCP(t, placement.Config{})
	v := vm("a", "", 10)
	v.State = placement.Draining
	got, err := cp.Register(ctx, v)
	require.NoError(t, err)
	assert.Equal(t, placement.Draining, got.State, "a new vm may say it is draining")
	register(t, cp, vm("b", "", 10))
	v = vm("b", "", 10)
	v.State = placement.Draining
	got, err = cp.Register(ctx, v)
	require.NoError(t, err)
	assert.Equal(t, placement.Draining, got.State, "an active vm re-registering as draining drains")
	_, err = cp.Place(ctx, placement.Request{Repl: "r"})
	require.ErrorIs(t, err, placement.ErrNoCapacity)
}
