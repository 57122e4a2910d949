package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/sessions"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// The proxies both modes run — in process (cluster.go) and one component per process
// (processes.go) — are built by one constructor each, so the two modes cannot drift apart.
// The callers differ only in where the dependencies come from: in process, the platform's own
// directory and a cluster's controlplane client; per process, an etcd mirror and flags.

// evalConfig is what an Eval (session proxy) needs.
type evalConfig struct {
	cluster    string
	loreURL    string // lore's base URL, for its published keys
	placer     sessions.Placer
	conmanCred func(vm string) string
	// directory tells where a repl lives now: a token for a repl that moved away is refused.
	directory interface {
		Repl(ctx context.Context, id string) (lore.Repl, error)
	}
	loopBudget *sessions.LoopBudget // shared by the Evals of one process; nil: its own
	registerer prometheus.Registerer
	log        *slog.Logger
}

// newEval returns a session proxy and the handler to serve it with: /v1/connect and /healthz.
func newEval(cfg evalConfig) (*sessions.Proxy, http.Handler, error) {
	eval, err := sessions.New(sessions.Config{
		Cluster:      cfg.cluster,
		Tokens:       lore.NewRemoteKeySet(lore.RemoteKeySetConfig{URL: cfg.loreURL + "/v1/keys"}),
		Placer:       cfg.placer,
		VMCredential: cfg.conmanCred,
		Directory:    cfg.directory,
		Mode:         sessions.Splice,
		EventLoops:   1, // used while GOMAXPROCS leaves a P besides it (sessions.Config)
		LoopBudget:   cfg.loopBudget,
		Registerer:   cfg.registerer,
		Logger:       cfg.log,
	})
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/connect", eval)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	return eval, mux, nil
}

// hostingConfig is what a cluster's hosting needs: the hosting proxy, the tombstone forwarder in
// front of it, and the follower that writes tombstones when repls move away.
type hostingConfig struct {
	zone, cluster string
	directory     hosting.Directory
	clusters      tombstone.Clusters
	watcher       tombstone.Watcher
	placer        *placement.Client
	conmanCred    func(vm string) string
	store         tombstone.Store
	secret        []byte // the hop secret every cluster shares
	// stopRepl stops a moved repl's container on the VM that runs it.
	stopRepl func(ctx context.Context, a placement.Assignment) error
	// onStop registers what the caller's shutdown must stop (the follower, the forwarder).
	onStop     func(func(context.Context) error)
	registerer prometheus.Registerer // the proxy's, the forwarder's and the follower's metrics; nil: none
	log        *slog.Logger
}

// newHosting returns the hosting proxy (the caller shuts it down), the handler to serve (the
// proxy wrapped by the tombstone forwarder) and the forwarder, whose Divert hosting.Server's
// fast path asks (serveHosting). The follower is running when it returns.
func newHosting(cfg hostingConfig) (*hosting.Proxy, http.Handler, *tombstone.Forwarder, error) {
	h, err := hosting.New(hosting.Config{
		Zone:         cfg.zone,
		Cluster:      cfg.cluster,
		Directory:    cfg.directory,
		Placer:       cfg.placer,
		VMCredential: cfg.conmanCred,
		// A request another cluster forwarded (verified hop header) keeps its client address.
		TrustForwarded: tombstone.Internal,
		Registerer:     cfg.registerer,
		Logger:         cfg.log.With("component", "hosting"),
	})
	if err != nil {
		return nil, nil, nil, err
	}
	tlog := cfg.log.With("component", "tombstone")
	follower, err := tombstone.NewFollower(tombstone.FollowerConfig{
		Cluster:    cfg.cluster,
		Store:      cfg.store,
		Watcher:    cfg.watcher,
		Placement:  cfg.placer,
		Stop:       cfg.stopRepl,
		Registerer: cfg.registerer,
		Logger:     tlog,
	})
	if err != nil {
		return h, nil, nil, err
	}
	if err := follower.Start(); err != nil {
		return h, nil, nil, err
	}
	cfg.onStop(func(context.Context) error { return follower.Close() })
	fwd, err := tombstone.New(tombstone.Config{
		Cluster:    cfg.cluster,
		Zone:       cfg.zone,
		Store:      cfg.store,
		Clusters:   cfg.clusters,
		Resolver:   h,
		Secret:     cfg.secret,
		Registerer: cfg.registerer,
		Logger:     tlog,
	})
	if err != nil {
		return h, nil, nil, err
	}
	cfg.onStop(fwd.Shutdown)
	return h, fwd.Wrap(h), fwd, nil
}

// controlplaneConfig is what a cluster's controlplane needs.
type controlplaneConfig struct {
	// etcd, when set, holds the placement store and the VMs' liveness leases under
	// /switchyard/placement/<cluster>/ and /switchyard/alive/<cluster>/; nil keeps placement in
	// memory and liveness to heartbeats.
	etcd       *clientv3.Client
	cluster    string
	credential string // the proxies' and the platform's placement credential
	vmSecret   string // each VM agent's credential derives from it
	onStop     func(func(context.Context) error)
	registerer prometheus.Registerer // the Controlplane's metrics; nil: none
	log        *slog.Logger
}

// newControlplane starts a controlplane (its expiry loop and, with etcd, the liveness watch,
// ready when it returns) and returns it with its HTTP API.
func newControlplane(ctx context.Context, cfg controlplaneConfig) (*placement.Controlplane, http.Handler, error) {
	pcfg := placement.Config{
		DefaultStrategy:  placement.Spread(),
		HeartbeatTimeout: 3 * time.Second,
		Registerer:       cfg.registerer,
		Logger:           cfg.log,
	}
	if cfg.etcd != nil {
		store, err := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: cfg.etcd, Prefix: "/switchyard/placement/" + cfg.cluster + "/"})
		if err != nil {
			return nil, nil, err
		}
		pcfg.Store = store
		pcfg.HeartbeatTimeout = 30 * time.Second // leases decide liveness within AliveTTL; heartbeats back them up
	}
	cp, err := placement.New(pcfg)
	if err != nil {
		return nil, nil, err
	}
	runCtx, stopRun := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(runCtx) }()
	cfg.onStop(func(context.Context) error { stopRun(); <-done; return nil })
	if cfg.etcd != nil {
		// A VM whose lease ends (its agent stopped or crashed) is marked Dead, which releases its
		// repls, and removed from placement.
		live, err := etcd.WatchLiveness(etcd.LivenessConfig{
			Client:     cfg.etcd,
			Prefix:     "/switchyard/alive/" + cfg.cluster + "/",
			Placement:  cp,
			Deregister: true,
			Logger:     cfg.log.With("component", "liveness"),
		})
		if err != nil {
			return cp, nil, err
		}
		cfg.onStop(func(context.Context) error { return live.Close() })
		select {
		case <-live.Ready():
		case <-ctx.Done():
			return cp, nil, ctx.Err()
		}
	}
	api := placement.NewHandler(placement.HandlerConfig{
		Controlplane: cp, Credential: cfg.credential, VMSecret: cfg.vmSecret, Logger: cfg.log,
	})
	return cp, api, nil
}

// loreConfig is what lore needs.
type loreConfig struct {
	zone       string
	store      lore.Store       // nil: lore's own in-memory store
	resolver   lore.TXTResolver // custom-domain verification; nil: the system's
	adminKey   string
	onStop     func(func(context.Context) error)
	registerer prometheus.Registerer // the directory's metrics; nil: none
	log        *slog.Logger
}

// newLore returns the directory, with a fresh token-signing key, and its HTTP API.
func newLore(cfg loreConfig) (*lore.Directory, http.Handler, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	issuer, err := lore.NewIssuer(lore.IssuerConfig{Key: key})
	if err != nil {
		return nil, nil, err
	}
	dir, err := lore.New(lore.Config{Zone: cfg.zone, Store: cfg.store, Issuer: issuer, Resolver: cfg.resolver,
		Registerer: cfg.registerer, Logger: cfg.log})
	if err != nil {
		return nil, nil, err
	}
	cfg.onStop(func(context.Context) error { return dir.Close() })
	return dir, lore.NewHandler(lore.HandlerConfig{Directory: dir, AdminKey: cfg.adminKey, Logger: cfg.log}), nil
}
