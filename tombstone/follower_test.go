package tombstone_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/tombstone"
)

type followerFixture struct {
	dir     *lore.Directory
	cp      *placement.Controlplane
	store   *tombstone.MemStore
	f       *tombstone.Follower
	mu      sync.Mutex
	stopped []placement.Assignment
}

func newFollowerFixture(t *testing.T, watcher func(*lore.Directory) tombstone.Watcher) *followerFixture {
	t.Helper()
	ctx := context.Background()
	x := &followerFixture{}
	var err error
	x.dir, err = lore.New(lore.Config{Zone: "repl.test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	for _, id := range []string{"a", "b", "c"} {
		_, err := x.dir.PutCluster(ctx, lore.Cluster{ID: id, EvalURL: "ws://127.0.0.1:1/v1/connect", HostingURL: "http://127.0.0.1:1", Healthy: true})
		require.NoError(t, err)
	}
	x.cp, err = placement.New(placement.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	_, err = x.cp.Register(ctx, placement.VM{ID: "vm1", Cluster: "a", Addr: "http://127.0.1.11:8600", Capacity: placement.Resources{Containers: 10}})
	require.NoError(t, err)
	x.store, err = tombstone.NewMemStore(tombstone.MemStoreConfig{})
	require.NoError(t, err)
	var w tombstone.Watcher = x.dir
	if watcher != nil {
		w = watcher(x.dir)
	}
	x.f, err = tombstone.NewFollower(tombstone.FollowerConfig{
		Cluster: "a", Store: x.store, Watcher: w, Placement: x.cp, TTL: time.Hour,
		RetryInterval: 5 * time.Millisecond,
		Stop: func(_ context.Context, a placement.Assignment) error {
			x.mu.Lock()
			defer x.mu.Unlock()
			x.stopped = append(x.stopped, a)
			return nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	require.NoError(t, x.f.Start())
	t.Cleanup(func() { assert.NoError(t, x.f.Close()) })
	return x
}

func (x *followerFixture) stone(repl string) (tombstone.Tombstone, error) {
	return x.store.Get(context.Background(), repl)
}

func TestFollower(t *testing.T) {
	ctx := context.Background()
	x := newFollowerFixture(t, nil)
	r, err := x.dir.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	_, err = x.cp.Place(ctx, placement.Request{Repl: r.ID})
	require.NoError(t, err)

	// a → b: tombstone written, VM stopped and released.
	_, err = x.dir.MoveRepl(ctx, r.ID, "b")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := x.stone(r.ID); return err == nil }, 5*time.Second, time.Millisecond)
	ts, _ := x.stone(r.ID)
	assert.Equal(t, "b", ts.Cluster)
	assert.Equal(t, "alice", ts.Owner)
	assert.Equal(t, "blog", ts.Slug)
	assert.WithinDuration(t, time.Now().Add(time.Hour), ts.Expires, time.Minute)
	require.Eventually(t, func() bool {
		_, err := x.cp.Lookup(ctx, r.ID)
		return errors.Is(err, placement.ErrNotFound)
	}, 5*time.Second, time.Millisecond, "the repl's VM is released")
	x.mu.Lock()
	require.Len(t, x.stopped, 1)
	assert.Equal(t, "vm1", x.stopped[0].VM)
	x.mu.Unlock()

	// b → c: a's tombstone now points at c directly, same expiry.
	_, err = x.dir.MoveRepl(ctx, r.ID, "c")
	require.NoError(t, err)
	require.Eventually(t, func() bool { t2, _ := x.stone(r.ID); return t2.Cluster == "c" }, 5*time.Second, time.Millisecond)
	t2, _ := x.stone(r.ID)
	assert.Equal(t, ts.Expires, t2.Expires)

	// c → a: back home, no tombstone.
	_, err = x.dir.MoveRepl(ctx, r.ID, "a")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := x.stone(r.ID)
		return errors.Is(err, tombstone.ErrNotFound)
	}, 5*time.Second, time.Millisecond)

	// A repl that was never here moving between others leaves no trace here.
	other, err := x.dir.CreateRepl(ctx, lore.Repl{Owner: "bob", Slug: "shop", Cluster: "b"})
	require.NoError(t, err)
	_, err = x.dir.MoveRepl(ctx, other.ID, "c")
	require.NoError(t, err)

	// a → b, then deleted: tombstone removed.
	_, err = x.dir.MoveRepl(ctx, r.ID, "b")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := x.stone(r.ID); return err == nil }, 5*time.Second, time.Millisecond)
	require.NoError(t, x.dir.DeleteRepl(ctx, r.ID))
	require.Eventually(t, func() bool {
		_, err := x.stone(r.ID)
		return errors.Is(err, tombstone.ErrNotFound)
	}, 5*time.Second, time.Millisecond)
	l, err := x.store.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, l, "bob's repl left no tombstone in a")
}

// breakingWatcher closes its first watch at once, as a lost connection to lore would.
type breakingWatcher struct {
	inner tombstone.Watcher
	mu    sync.Mutex
	calls int
}

func (w *breakingWatcher) Watch(ctx context.Context) (<-chan lore.Event, error) {
	w.mu.Lock()
	w.calls++
	n := w.calls
	w.mu.Unlock()
	if n == 1 {
		ch := make(chan lore.Event)
		close(ch)
		return ch, nil
	}
	if n == 2 {
		return nil, errors.New("lore unreachable")
	}
	return w.inner.Watch(ctx)
}

func (w *breakingWatcher) Calls() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls
}

func TestFollowerReopensWatch(t *testing.T) {
	ctx := context.Background()
	var bw *breakingWatcher
	x := newFollowerFixture(t, func(d *lore.Directory) tombstone.Watcher {
		bw = &breakingWatcher{inner: d}
		return bw
	})
	require.Eventually(t, func() bool { return bw.Calls() >= 3 }, 5*time.Second, time.Millisecond)
	r, err := x.dir.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	_, err = x.dir.MoveRepl(ctx, r.ID, "b")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := x.stone(r.ID); return err == nil }, 5*time.Second, time.Millisecond)
	x.mu.Lock()
	assert.Empty(t, x.stopped, "a repl with no VM needs no stop")
	x.mu.Unlock()
}

func TestFollowerConfig(t *testing.T) {
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	dir, err := lore.New(lore.Config{Zone: "repl.test"})
	require.NoError(t, err)
	for _, cfg := range []tombstone.FollowerConfig{
		{Store: store, Watcher: dir},
		{Cluster: "a", Watcher: dir},
		{Cluster: "a", Store: store},
	} {
		_, err := tombstone.NewFollower(cfg)
		assert.ErrorIs(t, err, tombstone.ErrInvalid)
	}
	f, err := tombstone.NewFollower(tombstone.FollowerConfig{Cluster: "a", Store: store, Watcher: dir})
	require.NoError(t, err)
	require.NoError(t, f.Close(), "Close before Start is fine")
	require.NoError(t, f.Start())
	assert.Error(t, f.Start())
	require.NoError(t, f.Close())
}
