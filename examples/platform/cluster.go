package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/autotls"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/sessions"
	"github.com/switchyard-dev/switchyard/tombstone"
)

var errNoSuchVM = errors.New("no such active VM")

// cluster is one regional cluster: a controlplane, an Eval, a hosting proxy and its conman VMs,
// on the cluster's own /24.
type cluster struct {
	p   *Platform
	id  string
	n   int // cluster number, from 1: its addresses are in the Nth /24
	log *slog.Logger

	credential string // the cluster's placement credential (the controlplane and the proxies)
	vmSecret   string // each VM agent's placement credential derives from it
	conmanKey  string // each VM's conman credential derives from it (conman.VMCredential)

	cp       *placement.Controlplane
	cpClient *placement.Client
	cpSrv    *server

	hostingProxy *hosting.Proxy
	hostingFwd   *tombstone.Forwarder // its Divert serves moved repls on hosting.Server's fast path
	hosting      *server
	https        *server      // hosting over HTTPS (acme.go); nil with ACME.Disable
	certs        *autotls.TLS // its certificates

	// bgCtx bounds the background drains of replaced Eval generations; shutdown cancels it
	// when its own context ends, and waits for them on bg.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	mu     sync.Mutex
	eval   *evalInstance
	old    []*evalInstance // replaced Eval generations, draining in the background
	gens   int             // Eval generations started
	vms    []*vm
	nextVM int // host number of the next VM address
	stops  group
}

// evalInstance is one generation of the cluster's Eval: a sessions proxy and its listener.
type evalInstance struct {
	gen      int // 1 for the first, then one more per restart
	sessions *sessions.Proxy
	srv      *server
	once     sync.Once
	drained  chan struct{} // closed when drain has finished
	err      error         // drain's result, set before drained closes
}

// drain stops the generation: no new sessions, live ones kept until they end or ctx does (then
// closed with 1001). Concurrent calls share the first call's drain and its context.
func (e *evalInstance) drain(ctx context.Context) error {
	e.once.Do(func() {
		e.err = errors.Join(e.srv.Shutdown(ctx), e.sessions.Shutdown(ctx))
		close(e.drained)
	})
	<-e.drained
	return e.err
}

func startCluster(ctx context.Context, p *Platform, id string, n int) (c *cluster, err error) {
	c = &cluster{p: p, id: id, n: n, log: p.log.With("cluster", id), credential: randomKey(), vmSecret: randomKey(), conmanKey: randomKey(), nextVM: 11}
	c.bgCtx, c.bgCancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			c.shutdown(context.Background())
		}
	}()
	cfg := &p.cfg

	// The controlplane, served over HTTP; every other component of the cluster uses its client,
	// as separate machines would.
	var etcdCli *clientv3.Client
	if cfg.Store == StoreEtcd {
		etcdCli = p.etcdCli
	}
	cp, cpAPI, err := newControlplane(ctx, controlplaneConfig{
		etcd: etcdCli, cluster: id, credential: c.credential, vmSecret: c.vmSecret,
		onStop: c.stops.add, registerer: c.registerer(), log: c.log.With("component", "controlplane"),
	})
	c.cp = cp
	if err != nil {
		return c, err
	}
	c.cpSrv, err = serve(ctx, "controlplane", c.hostPort(1, cfg.ControlplanePort), cpAPI, false)
	if err != nil {
		return c, err
	}
	c.stops.add(c.cpSrv.Shutdown)
	c.cpClient = placement.NewClient(c.controlplaneURL(), c.credential, nil)

	// Conman VMs: first those an earlier run left with containers (same ids, so their
	// containers are adopted), then new ones up to cfg.VMs.
	left, err := c.leftVMs()
	if err != nil {
		return c, err
	}
	for _, host := range left {
		if _, err := c.addVMAt(ctx, host); err != nil {
			return c, err
		}
	}
	for i := len(left); i < cfg.VMs; i++ {
		if _, err := c.addVM(ctx); err != nil {
			return c, err
		}
	}
	if len(left) > 0 {
		c.log.Info("adopted the VMs an earlier run left", "vms", len(left))
	}

	// Eval: the sessions proxy, on an SO_REUSEPORT listener so a new generation can take over.
	if err := c.startEval(ctx); err != nil {
		return c, err
	}

	// Hosting, behind the tombstone forwarder.
	handler, err := c.startHosting(ctx)
	if err != nil {
		return c, err
	}
	if !cfg.ACME.Disable {
		if err := c.startHTTPS(ctx, handler); err != nil {
			return c, err
		}
	}
	if !cfg.ACME.Disable && cfg.ACME.Redirect {
		// Every plain-HTTP request is a redirect: net/http serves them.
		c.hosting, err = serve(ctx, "hosting", c.hostPort(1, cfg.HostingPort), redirectHTTPS(handler, cfg.ACME.HTTPSPort), false)
	} else {
		c.hosting, err = serveHosting(ctx, c.hostPort(1, cfg.HostingPort), c.hostingProxy, handler, c.hostingFwd.Divert, c.registerer())
	}
	if err != nil {
		return c, err
	}

	// Publish the cluster in lore last, when it can serve.
	hostAddr := cfg.clusterAddr(n, 1)
	_, err = p.dir.PutCluster(ctx, lore.Cluster{
		ID:         id,
		Region:     "loopback-" + id,
		EvalURL:    c.evalURL(),
		HostingURL: "http://" + c.hosting.Addr(),
		Hosting4:   []netip.Addr{hostAddr},
		Healthy:    true,
	})
	return c, err
}

func (c *cluster) hostPort(host, port int) string {
	return net.JoinHostPort(c.p.cfg.clusterAddr(c.n, host).String(), itoa(port))
}

// alivePrefix is where the cluster's VM leases live in etcd.
func (c *cluster) alivePrefix() string { return "/switchyard/alive/" + c.id + "/" }

func (c *cluster) cfgHostingHost() string { return c.p.cfg.clusterAddr(c.n, 1).String() }

func (c *cluster) controlplaneURL() string { return "http://" + c.cpSrv.Addr() }

func (c *cluster) evalURL() string {
	return "ws://" + c.hostPort(1, c.p.cfg.EvalPort) + "/v1/connect"
}

func (c *cluster) startEval(ctx context.Context) error {
	cfg := &c.p.cfg
	c.mu.Lock()
	c.gens++
	gen := c.gens
	c.mu.Unlock()
	eval, mux, err := newEval(evalConfig{
		cluster:    c.id,
		loreURL:    c.p.LoreURL(),
		placer:     c.cpClient,
		conmanCred: c.conmanCredential,
		directory:  c.p.reader,
		loopBudget: &c.p.loopBudget,
		registerer: c.p.evalRegisterer(c.id, gen),
		log:        c.log.With("component", "eval"),
	})
	if err != nil {
		return err
	}
	warnReusePort(c.log)
	srv, err := serve(ctx, "eval", c.hostPort(1, cfg.EvalPort), mux, true)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.eval = &evalInstance{gen: gen, sessions: eval, srv: srv, drained: make(chan struct{})}
	c.mu.Unlock()
	return nil
}

// restartEval starts a new Eval generation on the same address, then drains the old one in the
// background for the configured grace: live sessions stay on the old process until they end, new
// ones reach the new one, and no connection is refused. It returns the sessions left draining.
func (c *cluster) restartEval(ctx context.Context) (int, error) {
	c.mu.Lock()
	old := c.eval
	c.mu.Unlock()
	if err := c.startEval(ctx); err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.old = append(c.old, old)
	c.mu.Unlock()
	n := old.sessions.Active()
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		dctx, cancel := context.WithTimeout(c.bgCtx, c.p.cfg.EvalGrace)
		defer cancel()
		if err := old.drain(dctx); err != nil {
			c.log.Warn("old Eval generation drained with sessions cut", "err", err)
		}
	}()
	return n, nil
}

func (c *cluster) activeSessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.eval.sessions.Active()
	for _, e := range c.old {
		n += e.sessions.Active()
	}
	return n
}

// shutdown stops the cluster in the order that loses nothing: the doors close first (Eval
// generations drain, bounded by the grace period; hosting finishes its requests and upgraded
// connections), then the VMs stop their containers, then the tombstone machinery and the
// controlplane stop.
func (c *cluster) shutdown(ctx context.Context) error {
	c.mu.Lock()
	cur := c.eval
	vms := append([]*vm{}, c.vms...)
	c.mu.Unlock()

	gctx, cancel := context.WithTimeout(ctx, c.p.cfg.EvalGrace)
	defer cancel()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	collect := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	if cur != nil {
		wg.Add(1)
		go func() { defer wg.Done(); collect(cur.drain(gctx)) }()
	}
	if c.hosting != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			collect(errors.Join(c.hosting.Shutdown(ctx), c.hostingProxy.Shutdown(ctx)))
		}()
	}
	// Generations replaced earlier drain in the background; cut them short when ctx ends.
	oldDone := make(chan struct{})
	go func() { c.bg.Wait(); close(oldDone) }()
	select {
	case <-oldDone:
	case <-gctx.Done():
		c.bgCancel()
		<-oldDone
	}
	c.bgCancel()
	wg.Wait()

	for _, v := range vms {
		wg.Add(1)
		go func() { defer wg.Done(); collect(v.stop(ctx)) }()
	}
	wg.Wait()
	return errors.Join(append(errs, c.stops.shutdown(ctx))...)
}

func (c *cluster) liveVMs() []*vm {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*vm
	for _, v := range c.vms {
		if !v.stopped() {
			out = append(out, v)
		}
	}
	return out
}

// rollVM drains a VM (the named one, or the oldest live one) and starts its replacement on the
// next address, as a rollout does.
func (c *cluster) rollVM(ctx context.Context, id string) (old, replacement string, err error) {
	var target *vm
	for _, v := range c.liveVMs() {
		if id == "" || v.id == id {
			target = v
			break
		}
	}
	if target == nil {
		return "", "", fmt.Errorf("%w %q in cluster %s", errNoSuchVM, id, c.id)
	}
	nv, err := c.addVM(ctx)
	if err != nil {
		return "", "", err
	}
	if err := target.stop(ctx); err != nil {
		return target.id, nv.id, err
	}
	return target.id, nv.id, nil
}

// conmanCredential is what conman on vm checks: its own, derived from the cluster's key.
func (c *cluster) conmanCredential(vm string) string { return conman.VMCredential(c.conmanKey, vm) }
