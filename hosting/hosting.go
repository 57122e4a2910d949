package hosting

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/drain"
	"github.com/switchyard-dev/switchyard/internal/fence"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"github.com/switchyard-dev/switchyard/lore"
)

// HeaderRequestID is set by Proxy on every answer; the same id is in its logs.
const HeaderRequestID = revproxy.HeaderRequestID

// Errors of the hosting proxy. Match them with errors.Is.
var (
	// ErrUnknownHost: the Host names no repl (not a platform name of an existing repl, not a
	// verified custom domain).
	ErrUnknownHost = errors.New("hosting: unknown host")
	// ErrNotHere: the repl lives in another cluster (and no tombstone forwarded the request).
	ErrNotHere = errors.New("hosting: repl is not hosted in this cluster")
	// ErrClosed: Shutdown has begun; no new requests are accepted.
	ErrClosed = errors.New("hosting: hosting is shutting down")
)

// Config configures a Proxy. Zone, Directory, Placer and Credential (or VMCredential) are required.
type Config struct {
	// Zone is the platform zone ("repl.test"): hosts <slug>.<owner>.<Zone> and <id>.id.<Zone>
	// name repls; any other host is looked up as a verified custom domain.
	Zone string
	// Cluster is this cluster's ID. A repl whose directory entry names another cluster is
	// answered 404 (ErrNotHere) instead of being started here. Empty disables the check (a
	// single-cluster deployment).
	Cluster string
	// Directory resolves names and custom domains (*lore.Directory or *lore.Client).
	Directory Directory
	// Placer finds (or chooses) the VM that runs a repl (*placement.Controlplane or *placement.Client).
	Placer Placer
	// Credential is the internal credential sent to conman in Switchyard-Credential.
	Credential string
	// VMCredential, if set, returns the credential of the conman on one VM (each VM its own,
	// e.g. conman.VMCredential(secret, vm)); Credential is then not used.
	VMCredential func(vm string) string
	// Pool maps a repl to its placement pool. Nil places every repl in the default pool ("").
	Pool func(lore.Repl) string

	// TrustForwarded reports whether the inbound X-Forwarded-For/-Host/-Proto and Forwarded
	// headers of r were written by a trusted proxy, so Proxy appends to them instead of
	// replacing them. Nil trusts exactly the peers in TrustedProxies. Wire
	// tombstone.Internal here (or in an OR with your own policy) so a request forwarded by
	// another cluster keeps the original client address.
	TrustForwarded func(r *http.Request) bool
	// TrustedProxies lists the networks of the load balancers in front of Proxy whose
	// forwarding headers are believed (used when TrustForwarded is nil). Nil trusts nobody:
	// every forwarding header from the client is dropped and the chain starts at the peer.
	TrustedProxies []netip.Prefix

	// ResolveTimeout bounds the directory and placement calls of one request. Zero means 5s.
	ResolveTimeout time.Duration
	// Attempts is how many VMs a request may be tried on when conman cannot be reached or
	// answers 503 (draining) before anything was sent to the client. Zero means 2. A retry
	// replays the request body, so it happens only for bodies of at most MaxReplayBody bytes.
	Attempts int
	// MaxReplayBody is the largest request body (by Content-Length) Proxy buffers so the
	// request can be retried on another VM. Larger and chunked bodies are streamed in one
	// attempt and never refused. Zero means 64 KiB; negative disables buffering.
	MaxReplayBody int64
	// RouteCacheTTL is how long the answer for a Host (its repl and the repl's VM) is reused
	// without asking the directory and placement again. A write through a Directory that has a
	// Version method (lore.Directory) drops every answer at once, and so does a failed request
	// (a VM that cannot be reached or is draining) for its Host; a request that fails on a
	// cached answer in a way another VM would not is tried once more on a fresh one (conman
	// refuses to start a repl placement has moved away). Zero means 1s; negative asks on every
	// request.
	RouteCacheTTL time.Duration
	// Transport carries requests to conman. Nil means a tuned clone of http.DefaultTransport
	// that ignores proxy environment variables.
	Transport http.RoundTripper
	// FlushInterval is httputil.ReverseProxy's: zero flushes streamed responses (unknown
	// length, text/event-stream) at once and buffers the rest; -1 flushes after every write.
	FlushInterval time.Duration

	// Logger receives one line per failed request, with its request id. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives Proxy's metrics. Nil means no metrics.
	Registerer prometheus.Registerer
}

// Proxy is the per-cluster web hosting proxy: an http.Handler that routes a request by its
// Host to the repl it names and reverse-proxies it through the conman of the repl's VM. Create
// it with New; it binds no ports (serve it with an http.Server of yours, usually behind
// tombstone.Forwarder.Wrap).
//
// Routing: <slug>.<owner>.<Zone> and <id>.id.<Zone> (any case, optional :port and trailing
// dot) are looked up in the Directory; any other host must be a verified custom domain
// (Directory.ReplByDomain). A repl of another cluster is not served (404). Placer.Place then
// gives the VM, and the request goes to its conman with Switchyard-Repl: <id> and
// Switchyard-Credential; conman starts the repl if needed and forwards to its web port.
//
// Forwarding: method, path, query, body and Host unchanged; every inbound Switchyard-* header is
// removed (a client cannot pick the repl or present a credential); X-Forwarded-For/-Host/-Proto
// and Forwarded are rewritten by SetForwarded under the trusted-proxy policy of
// Config.TrustForwarded (default: trust nobody, the chain starts at the peer). Bodies
// stream both ways (full duplex); unknown-length and text/event-stream answers are flushed as
// they arrive; trailers pass; WebSocket (and any Upgrade) connections are spliced.
//
// Answers of its own (JSON {"error", "request_id"}, or an HTML page when the client accepts
// text/html; header Switchyard-Request-Id on every answer, the same id in the log line):
//
//	400  no Host
//	404  unknown host, unverified domain, or a repl hosted in another cluster
//	502  the repl could not be started or did not answer (conman's 502 with its
//	     Switchyard-Error reason, a dial failure, a bad VM address); the reason is logged
//	503  directory or placement unavailable, no capacity, or Proxy shutting down
//
// A conman that cannot be dialed or answers 503 (draining) before taking the request is retried
// on another VM (Place with Avoid), up to Attempts, when the body can be replayed
// (MaxReplayBody). The app's own statuses, 502 included, pass through untouched.
//
// Metrics (with a Registerer): switchyard_hosting_requests_total{outcome} and
// switchyard_hosting_request_duration_seconds{outcome} with outcome ok, unknown_host,
// bad_request, directory, placement, backend, draining, client;
// switchyard_hosting_upgraded_connections; switchyard_hosting_retries_total.
//
// Drain: Shutdown (see there) waits for in-flight requests and upgraded connections, which
// http.Server.Shutdown does not track.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	rp      *httputil.ReverseProxy
	metrics *proxyMetrics

	// drain tracks in-flight requests and upgraded (hijacked) client connections.
	drain drain.Tracker

	routes      routeCache
	dirVersion  versioned // the Directory, if it counts its writes
	trustCustom bool      // Config.TrustForwarded was set (not the TrustedProxies default)
}

// New checks cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Zone == "":
		return nil, errors.New("hosting: Config.Zone is required")
	case cfg.Directory == nil:
		return nil, errors.New("hosting: Config.Directory is required")
	case cfg.Placer == nil:
		return nil, errors.New("hosting: Config.Placer is required")
	case cfg.Credential == "" && cfg.VMCredential == nil:
		return nil, errors.New("hosting: Config.Credential or VMCredential is required")
	}
	cfg.Zone = strings.ToLower(strings.TrimSuffix(cfg.Zone, "."))
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = 5 * time.Second
	}
	if cfg.RouteCacheTTL == 0 {
		cfg.RouteCacheTTL = time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 2
	}
	if cfg.MaxReplayBody == 0 {
		cfg.MaxReplayBody = 64 << 10
	}
	if cfg.Transport == nil {
		cfg.Transport = revproxy.NewTransport()
	}
	trustCustom := cfg.TrustForwarded != nil
	if cfg.TrustForwarded == nil {
		prefixes := cfg.TrustedProxies
		cfg.TrustForwarded = func(r *http.Request) bool { return revproxy.PeerIn(r, prefixes) }
	}
	h := &Proxy{
		cfg:         cfg,
		log:         cfg.Logger,
		trustCustom: trustCustom,
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.dirVersion, _ = cfg.Directory.(versioned)
	m, err := newProxyMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	h.metrics = m
	h.drain.OnUpgraded = func(n int) { m.upgrades.Set(float64(n)) }
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      cfg.Transport,
		FlushInterval:  cfg.FlushInterval,
		BufferPool:     revproxy.NewBufferPool(),
		ErrorHandler:   h.proxyError,
		ModifyResponse: h.modifyResponse,
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	}
	return h, nil
}

// routeState is one request's routing, carried in its context from ServeHTTP to the
// ReverseProxy hooks.
type routeState struct {
	id      string
	repl    lore.Repl
	backend *url.URL
	vm      string
	cred    string
	trusted bool
	err     error // set by the ErrorHandler / ModifyResponse instead of writing an answer
	retry   bool  // err happened before conman took the request: another VM may serve it
}

type routeStateKey struct{}

// ResolveRepl returns the repl the host names: <slug>.<owner>.<zone>, <id>.id.<zone>, or a
// verified custom domain. Host may carry a :port and a trailing dot. Unknown names wrap
// ErrUnknownHost; a failing directory returns its error. It does not check the repl's cluster.
func (h *Proxy) ResolveRepl(ctx context.Context, host string) (lore.Repl, error) {
	name, err := lore.ParseHost(host, h.cfg.Zone)
	if err == nil {
		var r lore.Repl
		if name.ID != "" {
			r, err = h.cfg.Directory.Repl(ctx, name.ID)
		} else {
			r, err = h.cfg.Directory.ReplByName(ctx, name.Owner, name.Slug)
		}
		if errors.Is(err, lore.ErrNotFound) {
			return lore.Repl{}, fmt.Errorf("%w: %s", ErrUnknownHost, host)
		}
		return r, err
	}
	hostname := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		hostname = h
	}
	domain, derr := lore.NormalizeDomain(hostname)
	if derr != nil || domain == h.cfg.Zone || strings.HasSuffix(domain, "."+h.cfg.Zone) {
		// Not a domain at all, or a malformed name inside the platform zone.
		return lore.Repl{}, fmt.Errorf("%w: %s: %w", ErrUnknownHost, host, err)
	}
	r, err := h.cfg.Directory.ReplByDomain(ctx, domain)
	if errors.Is(err, lore.ErrNotFound) {
		return lore.Repl{}, fmt.Errorf("%w: %s is not a verified custom domain", ErrUnknownHost, domain)
	}
	return r, err
}

// ServeHTTP routes r by its Host to its repl.
func (h *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &routeState{id: newRequestID()}
	w.Header().Set(HeaderRequestID, st.id)
	if !h.drain.Enter() {
		w.Header().Set("Connection", "close")
		h.fail(w, r, st, start, outcomeDraining, http.StatusServiceUnavailable, "the hosting proxy is shutting down; retry", ErrClosed)
		return
	}
	defer h.drain.Exit()
	if r.Host == "" {
		h.fail(w, r, st, start, outcomeBadRequest, http.StatusBadRequest, "the request has no Host header", nil)
		return
	}
	st.trusted = h.cfg.TrustForwarded(r)
	// Let the app stream its answer while the request body is still arriving (HTTP/1.1 servers
	// otherwise discard the unread body when the response starts).
	_ = http.NewResponseController(w).EnableFullDuplex()

	rt, cached, rf := h.route(r.Context(), r.Host, start)
	if rf != nil {
		if r.Context().Err() != nil {
			h.observe(outcomeClient, start)
			return
		}
		st.repl = rf.repl
		h.fail(w, r, st, start, rf.outcome, rf.status, rf.msg, rf.cause)
		return
	}
	repl := rt.repl
	st.repl = repl

	// A body that may have to be sent twice is read once, up front (bounded by MaxReplayBody).
	var replay []byte
	replayable := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	if !replayable && h.cfg.MaxReplayBody > 0 && r.ContentLength > 0 && r.ContentLength <= h.cfg.MaxReplayBody {
		replay = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, replay); err != nil {
			h.fail(w, r, st, start, outcomeClient, http.StatusBadRequest, "the request body ended early", err)
			return
		}
		replayable = true
	}

	var avoid []string
	for attempt := 1; ; attempt++ {
		target := rt.target
		if attempt > 1 {
			var rf *routeFailure
			target, rf = h.place(r.Context(), repl, avoid)
			if rf != nil {
				if r.Context().Err() != nil {
					h.observe(outcomeClient, start)
					return
				}
				h.fail(w, r, st, start, rf.outcome, rf.status, rf.msg, rf.cause)
				return
			}
		}
		u := target.backend
		st.backend, st.vm, st.cred, st.err, st.retry = u, target.vm, target.cred, nil, false
		if replay != nil {
			r.Body = io.NopCloser(bytes.NewReader(replay))
		}
		tw := h.drain.Writer(w)
		h.rp.ServeHTTP(tw, r.WithContext(context.WithValue(r.Context(), routeStateKey{}, st)))
		if st.err == nil {
			h.observe(outcomeOK, start)
			return
		}
		h.routes.forget(r.Host)
		if tw.Started() || r.Context().Err() != nil {
			// The answer has begun (or the client left): nothing more can be sent.
			h.observe(outcomeClient, start)
			if r.Context().Err() == nil {
				h.log.Warn("hosting: response interrupted", "request_id", st.id, "host", r.Host, "repl", repl.ID, "vm", st.vm, "err", st.err)
			}
			return
		}
		if cached && replayable && !st.retry {
			// The cached route may be stale (placement moved the repl, and conman refuses to
			// start it a second time): ask again, once, before answering.
			cached = false
			if fresh, rf := h.resolveRoute(r.Context(), r.Host, time.Now()); rf == nil && fresh.target.vm != st.vm {
				rt = fresh
				attempt--
				continue
			}
		}
		if st.retry && replayable && attempt < h.cfg.Attempts {
			h.metrics.retries.Inc()
			h.log.Info("hosting: retrying on another VM", "request_id", st.id, "repl", repl.ID, "vm", st.vm, "err", st.err)
			var ce *errConman
			if errors.As(st.err, &ce) {
				// conman answered: the VM is alive. Have it stop the repl before the repl is
				// placed elsewhere, so it never runs on two VMs.
				base := st.backend.Scheme + "://" + st.backend.Host
				if err := fence.Repl(r.Context(), &http.Client{Transport: h.cfg.Transport}, base, repl.ID, h.credential(st.vm)); err != nil {
					h.log.Warn("hosting: could not fence the repl on the VM it leaves", "request_id", st.id, "repl", repl.ID, "vm", st.vm, "err", err)
				}
			}
			avoid = append(avoid, st.vm)
			continue
		}
		if replay == nil && !replayable {
			// The transport may still hold the streamed body: do not read another request
			// from this connection.
			w.Header().Set("Connection", "close")
		}
		h.fail(w, r, st, start, outcomeBackend, http.StatusBadGateway,
			"the repl could not be started or did not answer", fmt.Errorf("repl %s on vm %s: %w", repl.ID, st.vm, st.err))
		return
	}
}

// rewrite builds the request to conman.
func (h *Proxy) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(routeStateKey{}).(*routeState)
	pr.SetURL(st.backend)
	pr.Out.Host = pr.In.Host // the app sees the name it was called by
	revproxy.StripSwitchyardHeaders(pr.Out.Header)
	revproxy.SetForwarded(pr, st.trusted)
	pr.Out.Header.Set(conman.HeaderRepl, st.repl.ID)
	pr.Out.Header.Set(conman.HeaderCredential, st.cred)
}

// credential is what to present to conman on vm.
func (h *Proxy) credential(vm string) string {
	if h.cfg.VMCredential != nil {
		return h.cfg.VMCredential(vm)
	}
	return h.cfg.Credential
}

// errConman is a failure answered by conman itself (its Switchyard-Error reason, or 401).
type errConman struct {
	status int
	reason string
}

func (e *errConman) Error() string {
	return fmt.Sprintf("conman answered %d: %s", e.status, e.reason)
}

// modifyResponse turns conman's own failures (not the app's) into errors.
func (h *Proxy) modifyResponse(resp *http.Response) error {
	st, _ := resp.Request.Context().Value(routeStateKey{}).(*routeState)
	switch {
	case (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusBadGateway) && resp.Header.Get(conman.HeaderError) != "":
		// 401: our credential is wrong (an operator error); 502: the repl cannot start.
		return &errConman{status: resp.StatusCode, reason: resp.Header.Get(conman.HeaderError)}
	case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(conman.HeaderError) != "":
		// Draining: the request never reached the repl, another VM can take it.
		if st != nil {
			st.retry = true
		}
		return &errConman{status: resp.StatusCode, reason: resp.Header.Get(conman.HeaderError)}
	}
	// Conman's Switchyard-* response headers are internal.
	revproxy.StripSwitchyardHeaders(resp.Header)
	return nil
}

// proxyError records the failure; ServeHTTP decides between a retry and an answer.
func (h *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(routeStateKey{}).(*routeState)
	st.err = err
	var ce *errConman
	if !errors.As(err, &ce) {
		// A dial failure never reached conman; anything later may have.
		var op *net.OpError
		st.retry = errors.As(err, &op) && op.Op == "dial"
	}
}

// fail answers r with an error page and records the outcome.
func (h *Proxy) fail(w http.ResponseWriter, r *http.Request, st *routeState, start time.Time, outcome string, status int, msg string, cause error) {
	h.observe(outcome, start)
	if cause != nil {
		level := slog.LevelWarn
		if status < 500 {
			level = slog.LevelInfo
		}
		h.log.Log(r.Context(), level, "hosting: request failed", "request_id", st.id, "status", status,
			"host", r.Host, "repl", st.repl.ID, "vm", st.vm, "outcome", outcome, "err", cause)
	}
	revproxy.WriteError(w, r, status, msg, st.id)
}

func (h *Proxy) observe(outcome string, start time.Time) {
	if o := h.metrics.byOutcome[outcome]; o.requests != nil {
		o.requests.Inc()
		o.duration.Observe(time.Since(start).Seconds())
	}
}

func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
