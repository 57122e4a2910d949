package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// follower is what Mirror and TombstoneMirror share: an in-process view loaded from one etcd
// snapshot and kept current by a watch; re-listed whole when the watch cannot continue
// (compaction, a watcher fallen behind, a member that lost its leader); marked stale while etcd
// does not answer a probe, still serving its last view.
type follower struct {
	what     string // "lore mirror", for logs
	cli      *clientv3.Client
	probeKey string
	probe    time.Duration
	log      *slog.Logger

	// load reads a snapshot, swaps it in and returns its revision.
	load func(ctx context.Context) (int64, error)
	// watch applies the changes from revision from on, calling advance after each, and
	// returns when the watch ends (nil) or cannot start (an error).
	watch func(ctx context.Context, from int64) error

	rev     atomic.Int64
	stale   atomic.Bool
	closed  atomic.Bool
	mu      sync.Mutex
	changed chan struct{}

	staleG  prometheus.Gauge
	revG    prometheus.Gauge
	relists prometheus.Counter

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// start names the follower's metrics switchyard_etcd_<name>_{stale,revision,relists_total}
// (registered with reg, if any), loads the first view (bounded by ctx) and starts following.
// A zero probe means 1 s, a nil log slog.Default().
func (f *follower) start(ctx context.Context, name, view string, reg prometheus.Registerer) error {
	if f.probe <= 0 {
		f.probe = time.Second
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	if err := f.initMetrics(name, view, reg); err != nil {
		return err
	}
	rev, err := f.load(ctx)
	if err != nil {
		return err
	}
	f.advance(rev)
	rctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(2)
	go f.follow(rctx, rev)
	go f.probeLoop(rctx)
	return nil
}

func (f *follower) initMetrics(name, view string, reg prometheus.Registerer) error {
	f.changed = make(chan struct{})
	f.staleG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_etcd_" + name + "_stale",
		Help: "1 while the " + view + " mirror serves a view it cannot confirm is current (etcd lost or re-listing)."})
	f.revG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_etcd_" + name + "_revision",
		Help: "The etcd revision of the " + view + " view the mirror serves."})
	f.relists = prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_etcd_" + name + "_relists_total",
		Help: "Full re-reads of the " + view + " after a watch could not continue."})
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{f.staleG, f.revG, f.relists} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("etcd: register %s metrics: %w", f.what, err)
		}
	}
	return nil
}

func (f *follower) close() {
	f.cancel()
	f.wg.Wait()
	f.closed.Store(true)
	f.mu.Lock()
	close(f.changed) // wake writers waiting in waitRev
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// Changed returns a channel closed the next time the view changes.
func (f *follower) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// advance records that the view is at rev.
func (f *follower) advance(rev int64) {
	f.rev.Store(rev)
	f.revG.Set(float64(rev))
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// waitRev waits until the view is at rev or later, or ctx ends, or the follower is closed.
func (f *follower) waitRev(ctx context.Context, rev int64) error {
	for {
		ch := f.Changed()
		if f.rev.Load() >= rev || f.closed.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("etcd: written at revision %d, which the %s has not seen yet (at %d): %w",
				rev, f.what, f.rev.Load(), ctx.Err())
		}
	}
}

func (f *follower) setStale(v bool) {
	if f.stale.Swap(v) != v {
		if v {
			f.log.Warn("etcd: "+f.what+" lost etcd: serving its last view", "revision", f.rev.Load())
			f.staleG.Set(1)
		} else {
			f.log.Info("etcd: "+f.what+" current again", "revision", f.rev.Load())
			f.staleG.Set(0)
		}
	}
}

func (f *follower) follow(ctx context.Context, rev int64) {
	defer f.wg.Done()
	for ctx.Err() == nil {
		if err := f.watch(ctx, rev+1); err != nil {
			f.wait(ctx) // the store is closed: re-listing cannot help soon
		}
		if ctx.Err() != nil {
			return
		}
		// The watch ended while we still want it: compaction, overflow or a lost leader.
		for ctx.Err() == nil {
			f.relists.Inc()
			r, err := f.load(ctx)
			if err == nil {
				f.log.Info("etcd: "+f.what+" re-listed", "revision", r)
				f.advance(r)
				rev = r
				break
			}
			f.setStale(true)
			f.wait(ctx)
		}
	}
}

func (f *follower) probeLoop(ctx context.Context) {
	defer f.wg.Done()
	t := time.NewTicker(f.probe)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, f.probe)
		_, err := f.cli.Get(pctx, f.probeKey, clientv3.WithKeysOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		f.setStale(err != nil)
	}
}

func (f *follower) wait(ctx context.Context) {
	t := time.NewTimer(f.probe)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// scan reads every key under prefix at one revision, in pages, calling fn for each, and
// returns the revision.
func scan(ctx context.Context, cli *clientv3.Client, prefix string, fn func(kv *mvccpb.KeyValue) error) (int64, error) {
	var rev int64
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(5000)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return 0, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
