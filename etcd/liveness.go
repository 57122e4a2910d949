package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/placement"
)

// DefaultAlivePrefix is where VM leases live unless a config says otherwise.
const DefaultAlivePrefix = "/switchyard/alive/"

// VMLeaseConfig configures KeepVMAlive.
type VMLeaseConfig struct {
	// Client is the etcd client. Required; the lease does not close it.
	Client *clientv3.Client
	// Prefix is where alive keys live. Empty means DefaultAlivePrefix; it must match the
	// Liveness watching it (one prefix per cluster, e.g. "/switchyard/alive/<cluster>/").
	Prefix string
	// TTL is how long the VM stays alive without keep-alives: its registration vanishes at most
	// TTL (rounded up to whole seconds, etcd's unit) after the agent stops. Zero means 5 s.
	TTL time.Duration
}

// VMLease binds a VM's liveness to an etcd lease its agent (conman) keeps alive: the key
// <Prefix><vm> exists while the agent runs. When the agent stops (process killed, machine
// gone, network cut) the keep-alives stop, etcd expires the lease and deletes the key, and a
// Liveness watching the prefix marks the VM Dead in placement, which releases its repls.
type VMLease struct {
	cli  *clientv3.Client
	id   clientv3.LeaseID
	key  string
	stop context.CancelFunc
	done chan struct{}
	wg   sync.WaitGroup
}

// KeepVMAlive grants a lease, writes the VM's alive key with it and keeps it alive until Close
// or until ctx ends (which, like a crash, lets the lease expire after TTL).
func KeepVMAlive(ctx context.Context, cfg VMLeaseConfig, vm string) (*VMLease, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcd: VMLeaseConfig.Client is required")
	}
	if vm == "" || strings.Contains(vm, "/") {
		return nil, fmt.Errorf("%w: vm id %q", placement.ErrInvalid, vm)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultAlivePrefix
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	ttl := int64((cfg.TTL + time.Second - 1) / time.Second)
	grant, err := cfg.Client.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("etcd: grant vm lease: %w", err)
	}
	key := cfg.Prefix + vm
	if _, err := cfg.Client.Put(ctx, key, time.Now().UTC().Format(time.RFC3339Nano), clientv3.WithLease(grant.ID)); err != nil {
		return nil, fmt.Errorf("etcd: write alive key: %w", err)
	}
	kctx, stop := context.WithCancel(ctx)
	ka, err := cfg.Client.KeepAlive(kctx, grant.ID)
	if err != nil {
		stop()
		return nil, fmt.Errorf("etcd: keep vm lease alive: %w", err)
	}
	l := &VMLease{cli: cfg.Client, id: grant.ID, key: key, stop: stop, done: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(l.done)
		for range ka { // closes when kctx ends or the lease is gone
		}
	}()
	return l, nil
}

// Done is closed when the lease is no longer kept alive: after Close, after the ctx given to
// KeepVMAlive ended, or when etcd says the lease expired (the agent must register again).
func (l *VMLease) Done() <-chan struct{} { return l.done }

// Close stops the keep-alives and revokes the lease, so the VM is dead at once (a graceful
// stop); it waits for the keep-alive goroutine.
func (l *VMLease) Close(ctx context.Context) error {
	l.stop()
	l.wg.Wait()
	if _, err := l.cli.Revoke(ctx, l.id); err != nil {
		return fmt.Errorf("etcd: revoke vm lease: %w", err)
	}
	return nil
}

// StateSetter is what Liveness needs from placement: *placement.Controlplane and
// *placement.Client both have it.
type StateSetter interface {
	SetState(ctx context.Context, vm string, s placement.State) error
}

// LivenessConfig configures WatchLiveness.
type LivenessConfig struct {
	// Client is the etcd client. Required.
	Client *clientv3.Client
	// Prefix is the VMLeaseConfig.Prefix of the agents. Empty means DefaultAlivePrefix.
	Prefix string
	// Placement is told SetState(vm, placement.Dead) when a VM's alive key vanishes, which
	// releases its repls. Required.
	Placement StateSetter
	// Deregister, when true and Placement also has Deregister(ctx, vm) error (as
	// *placement.Controlplane does), removes the dead VM from placement altogether, so it
	// disappears from VMs(); false keeps it listed as Dead until it registers again.
	Deregister bool
	// Retry is how long the watcher waits before re-listing after etcd failed. Zero means 1 s.
	Retry time.Duration
	// Logger receives deaths and failures. Nil means slog.Default().
	Logger *slog.Logger
}

// Liveness watches the alive keys of a cluster's VMs and marks a VM Dead in placement when its
// key vanishes (lease expired or revoked). Several controlplane replicas may each run one:
// marking a dead VM Dead again changes nothing.
type Liveness struct {
	cfg    LivenessConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	alive map[string]bool
	ready chan struct{}
}

// WatchLiveness starts watching; Close stops it.
func WatchLiveness(cfg LivenessConfig) (*Liveness, error) {
	if cfg.Client == nil || cfg.Placement == nil {
		return nil, errors.New("etcd: LivenessConfig.Client and Placement are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultAlivePrefix
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Liveness{cfg: cfg, cancel: cancel, alive: map[string]bool{}, ready: make(chan struct{})}
	l.wg.Add(1)
	go l.run(ctx)
	return l, nil
}

// Ready is closed once the first listing of alive VMs is done.
func (l *Liveness) Ready() <-chan struct{} { return l.ready }

// Alive reports whether the VM's alive key existed at the watcher's last view.
func (l *Liveness) Alive(vm string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.alive[vm]
}

// Close stops the watcher and waits for it.
func (l *Liveness) Close() error {
	l.cancel()
	l.wg.Wait()
	return nil
}

func (l *Liveness) dead(ctx context.Context, vm string) {
	err := l.cfg.Placement.SetState(ctx, vm, placement.Dead)
	switch {
	case err == nil:
		l.cfg.Logger.Info("etcd: vm lease expired: marked dead", "vm", vm)
		if d, ok := l.cfg.Placement.(interface {
			Deregister(ctx context.Context, vm string) error
		}); ok && l.cfg.Deregister {
			if err := d.Deregister(ctx, vm); err != nil && ctx.Err() == nil && !errors.Is(err, placement.ErrNotFound) {
				l.cfg.Logger.Warn("etcd: dead vm not deregistered", "vm", vm, "err", err)
			}
		}
	case errors.Is(err, placement.ErrNotFound), errors.Is(err, placement.ErrConflict):
		// Unknown to placement or already dead.
	case ctx.Err() == nil:
		l.cfg.Logger.Warn("etcd: vm lease expired but marking it dead failed", "vm", vm, "err", err)
	}
}

func (l *Liveness) run(ctx context.Context) {
	defer l.wg.Done()
	readyOnce := sync.OnceFunc(func() { close(l.ready) })
	defer readyOnce()
	for ctx.Err() == nil {
		// List, mark dead what vanished since the previous view, then watch from there.
		resp, err := l.cfg.Client.Get(ctx, l.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			l.wait(ctx)
			continue
		}
		now := map[string]bool{}
		for _, kv := range resp.Kvs {
			now[strings.TrimPrefix(string(kv.Key), l.cfg.Prefix)] = true
		}
		l.mu.Lock()
		var gone []string
		for vm := range l.alive {
			if !now[vm] {
				gone = append(gone, vm)
			}
		}
		l.alive = now
		l.mu.Unlock()
		for _, vm := range gone {
			l.dead(ctx, vm)
		}
		readyOnce()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range l.cfg.Client.Watch(wctx, l.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				vm := strings.TrimPrefix(string(ev.Kv.Key), l.cfg.Prefix)
				l.mu.Lock()
				l.alive[vm] = ev.Type == clientv3.EventTypePut
				if ev.Type != clientv3.EventTypePut {
					delete(l.alive, vm)
				}
				l.mu.Unlock()
				if ev.Type == clientv3.EventTypeDelete {
					l.dead(ctx, vm)
				}
			}
		}
		cancel()
		l.wait(ctx)
	}
}

func (l *Liveness) wait(ctx context.Context) {
	t := time.NewTimer(l.cfg.Retry)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
