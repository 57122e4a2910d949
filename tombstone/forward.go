package tombstone

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/internal/drain"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"github.com/switchyard-dev/switchyard/lore"
)

// Clusters is the part of lore's cluster registry the forwarder needs. *lore.Directory and
// *lore.Client satisfy it.
type Clusters interface {
	Cluster(ctx context.Context, id string) (lore.Cluster, error)
}

// Resolver maps a Host that is not a platform name (a custom domain) to its repl.
// *hosting.Proxy satisfies it.
type Resolver interface {
	ResolveRepl(ctx context.Context, host string) (lore.Repl, error)
}

// Config configures a Forwarder. Cluster, Zone, Store, Clusters and Secret are required.
type Config struct {
	// Cluster is this cluster's ID.
	Cluster string
	// Zone is the platform zone; hosts <slug>.<owner>.<Zone> and <id>.id.<Zone> are looked up
	// in the store directly.
	Zone string
	// Store holds this cluster's tombstones.
	Store Store
	// Clusters gives the HostingURL of the cluster a repl moved to. The address always comes
	// from here, never from the request.
	Clusters Clusters
	// Resolver maps other hosts (custom domains) to repls. Nil means requests for custom
	// domains are never forwarded. It is called only for hosts outside the zone.
	Resolver Resolver
	// Secret is the platform-wide key (at least 32 bytes) that signs and verifies HopHeader.
	// Every cluster shares it; whoever holds it can claim to be a cluster.
	Secret []byte
	// PreviousSecrets are also accepted when verifying, for key rotation: add the new key as
	// Secret everywhere with the old one here, then remove the old one.
	PreviousSecrets [][]byte
	// MaxHops is the most clusters a request may pass. Zero means 4.
	MaxHops int
	// MaxHopAge is how far a hop header's signing time may be from now (clock skew plus
	// transit). Zero means one minute.
	MaxHopAge time.Duration
	// TrustForwarded reports whether an external request's forwarding headers come from a
	// trusted load balancer (see hosting.Config.TrustForwarded); a verified hop is always
	// trusted. Nil trusts none.
	TrustForwarded func(r *http.Request) bool
	// ClusterCacheTTL is how long a cluster's HostingURL is cached. Zero means 10 s.
	ClusterCacheTTL time.Duration
	// Transport carries forwarded requests. Nil means revproxy.NewTransport().
	Transport http.RoundTripper
	// Now is the clock for hop headers. Nil means time.Now.
	Now func() time.Time
	// Logger receives one line per failed forward. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the forwarder's metrics. Nil means no metrics.
	Registerer prometheus.Registerer
}

// Forwarder is the tombstone middleware: Wrap puts it in front of the cluster's hosting proxy.
type Forwarder struct {
	cfg     Config
	secrets [][]byte
	signer  *hopSigner
	log     *slog.Logger
	rp      *httputil.ReverseProxy
	metrics *forwardMetrics

	cacheMu sync.Mutex
	cache   map[string]cachedCluster

	cdnLoop string // this cluster's CDN-Loop element

	// drain tracks in-flight forwards and forwarded upgraded connections.
	drain drain.Tracker
}

type cachedCluster struct {
	url     *url.URL
	fetched time.Time
}

// New checks cfg and returns a Forwarder.
func New(cfg Config) (*Forwarder, error) {
	switch {
	case cfg.Cluster == "":
		return nil, fmt.Errorf("%w: Config.Cluster is required", ErrInvalid)
	case cfg.Zone == "":
		return nil, fmt.Errorf("%w: Config.Zone is required", ErrInvalid)
	case cfg.Store == nil:
		return nil, fmt.Errorf("%w: Config.Store is required", ErrInvalid)
	case cfg.Clusters == nil:
		return nil, fmt.Errorf("%w: Config.Clusters is required", ErrInvalid)
	case len(cfg.Secret) < 32:
		return nil, fmt.Errorf("%w: Config.Secret must be at least 32 bytes", ErrInvalid)
	}
	if cfg.MaxHops <= 0 {
		cfg.MaxHops = 4
	}
	if cfg.MaxHopAge <= 0 {
		cfg.MaxHopAge = time.Minute
	}
	if cfg.ClusterCacheTTL <= 0 {
		cfg.ClusterCacheTTL = 10 * time.Second
	}
	if cfg.Transport == nil {
		cfg.Transport = revproxy.NewTransport()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TrustForwarded == nil {
		cfg.TrustForwarded = func(*http.Request) bool { return false }
	}
	f := &Forwarder{
		cfg:     cfg,
		secrets: append([][]byte{cfg.Secret}, cfg.PreviousSecrets...),
		signer:  newHopSigner(cfg.Secret),
		log:     cfg.Logger,
		cache:   make(map[string]cachedCluster),
		cdnLoop: "switchyard; cluster=" + cfg.Cluster,
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	m, err := newForwardMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	f.metrics = m
	f.drain.OnUpgraded = func(n int) { m.upgrades.Set(float64(n)) }
	f.rp = &httputil.ReverseProxy{
		Rewrite:      f.rewrite,
		Transport:    cfg.Transport,
		ErrorHandler: f.proxyError,
		BufferPool:   revproxy.NewBufferPool(),
		ErrorLog:     slog.NewLogLogger(f.log.Handler(), slog.LevelWarn),
	}
	return f, nil
}

type internalKey struct{}

// Internal reports whether r arrived from another cluster of the platform with a verified
// HopHeader (it is false outside a Forwarder's Wrap). Use it as hosting.Config.TrustForwarded
// so the hosting proxy keeps the original client's address.
func Internal(r *http.Request) bool {
	v, _ := r.Context().Value(internalKey{}).(bool)
	return v
}

// forwardState is one forwarded request's routing, carried in its context.
type forwardState struct {
	target  *url.URL
	stone   Tombstone
	via     []string
	trusted bool
	err     error
}

type forwardKey struct{}

// Wrap returns next behind the forwarder: a request for a repl with a live tombstone here is
// forwarded to the repl's new cluster; every other request goes to next. A request carrying a
// HopHeader that does not verify, that has already passed this cluster, or that has passed
// MaxHops clusters is answered 508 Loop Detected.
func (f *Forwarder) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.serve(w, r, next)
	})
}

func (f *Forwarder) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	var via []string
	internal := false
	if vals := r.Header.Values(HopHeader); len(vals) > 0 {
		if len(vals) > 1 {
			f.refuse(w, r, outcomeForged, "the request carries more than one "+HopHeader+" header", nil)
			return
		}
		h, err := parseHop(vals[0], f.secrets, f.cfg.Now(), f.cfg.MaxHopAge, r.Host, r.Method, r.RequestURI)
		if err != nil {
			// Only a cluster of the platform may send this header. Refusing (rather than
			// stripping) keeps a misconfigured cluster (a wrong secret) from forwarding in
			// circles unseen.
			f.refuse(w, r, outcomeForged, "the request's "+HopHeader+" header does not verify", err)
			return
		}
		if slices.Contains(h.via, f.cfg.Cluster) {
			f.refuse(w, r, outcomeLoop, fmt.Sprintf("the request has already passed cluster %s (via %s)", f.cfg.Cluster, strings.Join(h.via, ",")), nil)
			return
		}
		if len(h.via) > f.cfg.MaxHops {
			f.refuse(w, r, outcomeLoop, fmt.Sprintf("the request has passed %d clusters, the limit is %d", len(h.via), f.cfg.MaxHops), nil)
			return
		}
		via, internal = h.via, true
		r.Header.Del(HopHeader)
	}

	stone, ok := f.lookup(r.Context(), r.Host)
	if !ok || stone.Cluster == f.cfg.Cluster {
		f.metrics.passed.Inc()
		if internal {
			r = r.WithContext(context.WithValue(r.Context(), internalKey{}, true))
		}
		next.ServeHTTP(w, r)
		return
	}
	f.forward(w, r, stone, via, internal)
}

// Divert is hosting.ServerConfig.Divert for a Server whose Handler is Wrap: the hosting fast
// path serves what Wrap would pass to next (counted as passed), forwards what Wrap would
// forward to the repl's new cluster itself (signed hop header, CDN-Loop, the same metrics and
// failure answers), and hands everything else (the forwarder shutting down, a cluster URL that
// cannot be had or is not plain HTTP) to Wrap. A request carrying a HopHeader never reaches
// it: the fast path hands every Switchyard-* field to net/http, where Wrap sees it.
//
// Divert asks the Store (and, for a custom domain, the Resolver; for a cluster not cached, the
// Clusters directory): set hosting.ServerConfig.DivertInLoop only when they answer from memory
// (a MemStore or the etcd module's TombstoneMirror; an in-process directory or etcd Mirror), so
// the Server's event loops may call it. Over a bare etcd TombstoneStore every request would
// wait for an etcd round trip (about 110 µs on loopback, six times the proxy's own cost).
func (f *Forwarder) Divert(_ netip.Addr, host, method, target string) hosting.Diversion {
	ctx := context.Background()
	stone, ok := f.lookup(ctx, host)
	if !ok || stone.Cluster == f.cfg.Cluster {
		f.metrics.passed.Inc()
		return hosting.Diversion{}
	}
	via := []string{f.cfg.Cluster}
	if len(via) > f.cfg.MaxHops {
		return hosting.Diversion{Handoff: true} // Wrap answers 508
	}
	u, err := f.clusterURL(ctx, stone.Cluster)
	if err != nil || u.Scheme != "http" {
		return hosting.Diversion{Handoff: true} // Wrap answers 502, or speaks HTTPS
	}
	if !f.drain.Enter() {
		return hosting.Diversion{Handoff: true} // Wrap answers 503
	}
	return hosting.Diversion{
		URL: u,
		Fields: []string{
			HopHeader, f.signer.sign(via, f.cfg.Now(), host, method, target),
			CDNLoopHeader, f.cdnLoop,
		},
		Done: func(err error, started bool) (int, string) {
			defer f.drain.Exit()
			switch {
			case err == nil:
				f.metrics.forwarded.Inc()
			case errors.Is(err, hosting.ErrHandedOff):
			case started:
				f.metrics.requests.WithLabelValues(outcomeClient).Inc()
			default:
				f.invalidate(stone.Cluster)
				f.metrics.requests.WithLabelValues(outcomeError).Inc()
				msg := "the repl has moved to another cluster, which did not answer"
				f.log.Warn("tombstone: request refused", "status", http.StatusBadGateway, "host", host, "outcome", outcomeError,
					"reason", msg, "err", fmt.Errorf("forward repl %s to cluster %s at %s: %w", stone.Repl, stone.Cluster, u, err))
				return http.StatusBadGateway, msg
			}
			return 0, ""
		},
	}
}

// lookup finds the live tombstone for host, if any.
func (f *Forwarder) lookup(ctx context.Context, host string) (Tombstone, bool) {
	var (
		t   Tombstone
		err error
	)
	name, perr := lore.ParseHost(host, f.cfg.Zone)
	switch {
	case perr == nil && name.ID != "":
		t, err = f.cfg.Store.Get(ctx, name.ID)
	case perr == nil:
		t, err = f.cfg.Store.GetByName(ctx, name.Owner, name.Slug)
	case f.cfg.Resolver != nil:
		repl, rerr := f.cfg.Resolver.ResolveRepl(ctx, host)
		if rerr != nil {
			return Tombstone{}, false // unknown domain, or the directory failed: next answers
		}
		t, err = f.cfg.Store.Get(ctx, repl.ID)
	default:
		return Tombstone{}, false
	}
	if err != nil {
		if !errors.Is(err, ErrNotFound) && ctx.Err() == nil {
			f.log.Warn("tombstone: store lookup failed; serving locally", "host", host, "err", err)
		}
		return Tombstone{}, false
	}
	return t, true
}

// forward sends r to the hosting proxy of stone.Cluster.
func (f *Forwarder) forward(w http.ResponseWriter, r *http.Request, stone Tombstone, via []string, internal bool) {
	if !f.drain.Enter() {
		w.Header().Set("Connection", "close")
		f.fail(w, r, newID(), outcomeDraining, http.StatusServiceUnavailable, "the hosting proxy is shutting down; retry", nil)
		return
	}
	defer f.drain.Exit()
	ctx := r.Context()

	newVia := append(slices.Clip(via), f.cfg.Cluster)
	if slices.Contains(via, stone.Cluster) {
		f.fail(w, r, newID(), outcomeLoop, http.StatusLoopDetected,
			fmt.Sprintf("repl %s moved to cluster %s, which this request has already passed", stone.Repl, stone.Cluster), nil)
		return
	}
	if len(newVia) > f.cfg.MaxHops {
		f.fail(w, r, newID(), outcomeLoop, http.StatusLoopDetected,
			fmt.Sprintf("forwarding would pass more than %d clusters", f.cfg.MaxHops), nil)
		return
	}
	target, err := f.clusterURL(ctx, stone.Cluster)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		f.fail(w, r, newID(), outcomeError, http.StatusBadGateway,
			"the repl has moved to another cluster, which cannot be reached right now", fmt.Errorf("cluster %s: %w", stone.Cluster, err))
		return
	}
	st := &forwardState{target: target, stone: stone, via: newVia, trusted: internal || f.cfg.TrustForwarded(r)}
	_ = http.NewResponseController(w).EnableFullDuplex()
	tw := f.drain.Writer(w)
	f.rp.ServeHTTP(tw, r.WithContext(context.WithValue(ctx, forwardKey{}, st)))
	if st.err == nil {
		f.metrics.forwarded.Inc()
		return
	}
	if tw.Started() || ctx.Err() != nil {
		f.metrics.requests.WithLabelValues(outcomeClient).Inc()
		return
	}
	f.invalidate(stone.Cluster)
	w.Header().Set("Connection", "close") // the transport may still hold the body
	f.fail(w, r, newID(), outcomeError, http.StatusBadGateway, "the repl has moved to another cluster, which did not answer",
		fmt.Errorf("forward repl %s to cluster %s at %s: %w", stone.Repl, stone.Cluster, target, st.err))
}

func (f *Forwarder) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(forwardKey{}).(*forwardState)
	pr.SetURL(st.target)
	pr.Out.Host = pr.In.Host // the next cluster routes by the name the client used
	revproxy.StripSwitchyardHeaders(pr.Out.Header)
	revproxy.SetForwarded(pr, st.trusted)
	pr.Out.Header.Set(HopHeader, f.signer.sign(st.via, f.cfg.Now(), pr.In.Host, pr.In.Method, pr.In.RequestURI))
	pr.Out.Header.Add(CDNLoopHeader, f.cdnLoop)
}

func (f *Forwarder) proxyError(_ http.ResponseWriter, r *http.Request, err error) {
	r.Context().Value(forwardKey{}).(*forwardState).err = err
}

// clusterURL returns the validated HostingURL of a cluster, from the cache or lore.
func (f *Forwarder) clusterURL(ctx context.Context, id string) (*url.URL, error) {
	now := time.Now()
	f.cacheMu.Lock()
	c, ok := f.cache[id]
	f.cacheMu.Unlock()
	if ok && now.Sub(c.fetched) < f.cfg.ClusterCacheTTL {
		return c.url, nil
	}
	cl, err := f.cfg.Clusters.Cluster(ctx, id)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(cl.HostingURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("%w: cluster %s has no usable hosting URL (%q)", ErrInvalid, id, cl.HostingURL)
	}
	f.cacheMu.Lock()
	f.cache[id] = cachedCluster{url: u, fetched: now}
	f.cacheMu.Unlock()
	return u, nil
}

func (f *Forwarder) invalidate(id string) {
	f.cacheMu.Lock()
	delete(f.cache, id)
	f.cacheMu.Unlock()
}

func (f *Forwarder) refuse(w http.ResponseWriter, r *http.Request, outcome, msg string, cause error) {
	f.fail(w, r, newID(), outcome, http.StatusLoopDetected, msg, cause)
}

func (f *Forwarder) fail(w http.ResponseWriter, r *http.Request, id, outcome string, status int, msg string, cause error) {
	f.metrics.requests.WithLabelValues(outcome).Inc()
	level := slog.LevelInfo
	if status >= 500 && status != http.StatusLoopDetected {
		level = slog.LevelWarn
	}
	attrs := []any{"request_id", id, "status", status, "host", r.Host, "outcome", outcome, "reason", msg}
	if cause != nil {
		attrs = append(attrs, "err", cause)
	}
	f.log.Log(r.Context(), level, "tombstone: request refused", attrs...)
	revproxy.WriteError(w, r, status, msg, id)
}

// Upgraded returns the number of upgraded (WebSocket) connections being forwarded.
func (f *Forwarder) Upgraded() int { return f.drain.Upgraded() }

// Shutdown drains the forwarder like hosting.Proxy.Shutdown: new forwards are answered 503, and
// it waits for in-flight forwards and forwarded upgraded connections. When ctx ends first it
// closes the upgraded connections, waits (at most 5 s) for their handlers and returns
// ctx.Err(); plain requests still running end with their server's Shutdown or Close.
func (f *Forwarder) Shutdown(ctx context.Context) error { return f.drain.Shutdown(ctx) }

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Outcomes, the "outcome" label of switchyard_tombstone_requests_total.
const (
	outcomeForwarded = "forwarded" // sent to the new cluster, which answered
	outcomeLoop      = "loop"      // 508: already passed this cluster, or too many hops
	outcomeForged    = "forged"    // 508: a hop header that does not verify
	outcomeError     = "error"     // 502: the new cluster is unknown or did not answer
	outcomeDraining  = "draining"  // 503: shutting down
	outcomeClient    = "client"    // the client left, or the answer broke off mid-way
)

type forwardMetrics struct {
	requests  *prometheus.CounterVec
	forwarded prometheus.Counter // requests{outcome="forwarded"}, resolved once
	passed    prometheus.Counter
	upgrades  prometheus.Gauge
}

func newForwardMetrics(reg prometheus.Registerer) (*forwardMetrics, error) {
	m := &forwardMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "tombstone", Name: "requests_total",
			Help: "Requests the tombstone middleware handled itself, by outcome: forwarded, loop, forged, error, draining, client.",
		}, []string{"outcome"}),
		passed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "tombstone", Name: "passed_total",
			Help: "Requests without a tombstone, handed to the hosting proxy.",
		}),
		upgrades: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "switchyard", Subsystem: "tombstone", Name: "upgraded_connections",
			Help: "Forwarded upgraded (WebSocket) connections.",
		}),
	}
	for _, o := range []string{outcomeForwarded, outcomeLoop, outcomeForged, outcomeError, outcomeDraining, outcomeClient} {
		m.requests.WithLabelValues(o)
	}
	m.forwarded = m.requests.WithLabelValues(outcomeForwarded)
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.passed, m.upgrades} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("tombstone: register metrics"), err)
		}
	}
	return m, nil
}
