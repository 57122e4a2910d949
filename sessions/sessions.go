package sessions

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/eventloop"
	"github.com/switchyard-dev/switchyard/internal/fence"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

// RelayMode selects how an established session's bytes are relayed: see Proxy's "Splice or
// frame"; docs/benchmarks/sessions.md has the numbers.
type RelayMode int

const (
	// Splice relays raw bytes between the client's and conman's TCP connections after both
	// WebSocket handshakes, so Linux moves the payloads with splice(2) without copying them
	// through user space. The proxy reads only the 2–14 byte header of each frame conman sends,
	// so it always knows where a frame ends and can put a well-formed close frame on the wire
	// at drain. Frame limits and keepalive are the end points' business in this mode.
	Splice RelayMode = iota
	// Frame terminates WebSocket on both legs (github.com/coder/websocket) and relays whole
	// messages: a per-message size limit (close 1009), independent ping/pong keepalive on each
	// leg to find dead peers, an idle timeout, and clean close codes on both legs.
	Frame
)

// String returns "splice" or "frame".
func (m RelayMode) String() string {
	switch m {
	case Splice:
		return "splice"
	case Frame:
		return "frame"
	}
	return "RelayMode(" + strconv.Itoa(int(m)) + ")"
}

// Session outcome stages: every session attempt ends in exactly one of them, counted in
// switchyard_proxy_sessions_total{stage}.
const (
	StageOK        = "ok"        // the session was established and ended normally
	StageToken     = "token"     // missing, bad, expired or wrong-cluster token (401)
	StagePlacement = "placement" // placement could not name a VM (404/503/504)
	StageDial      = "dial"      // every conman attach within the retry budget failed (502/504)
	StageBackend   = "backend"   // conman ended an established session abnormally
	StageClient    = "client"    // the client went away during setup or sent a non-WebSocket request
	StageLimit     = "limit"     // refused: too many sessions, draining, or oversized headers
)

// TokenSubprotocolPrefix is the Sec-WebSocket-Protocol prefix that carries a connect token for
// clients that cannot set headers (browsers): a client offers
//
//	Sec-WebSocket-Protocol: switchyard.v1, switchyard.token.<jwt>
//
// and the proxy answers with Subprotocol ("switchyard.v1") — never the token. A JWT is made of
// base64url characters and dots, all legal in a subprotocol token.
const TokenSubprotocolPrefix = "switchyard.token."

// Subprotocol is the subprotocol the proxy selects when the client offers it. Browsers fail a
// connection whose server selects nothing while the client offered protocols, so a browser that
// passes its token in Sec-WebSocket-Protocol must offer this one too.
const Subprotocol = "switchyard.v1"

// SubprotocolV2 is the resilient session protocol. A client that offers it (before or beside
// Subprotocol; the proxy selects v2 when both are offered) keeps its WebSocket when conman's
// side ends under it: at a VM roll (1012), when conman dies or restarts, or when the connection
// to it breaks. The proxy then re-attaches — first resuming the same shell where conman still
// holds it (output the client missed is replayed), else placing the repl again, on another VM if
// need be, and attaching a new shell — within Config.ReattachTimeout, and tells the client in
// band with a Notice (a text message). Everything else is as in v1: binary messages are the
// terminal's bytes, text messages from the client are conman's control messages (resize).
//
// The proxy ends a v2 session itself only when the shell exited (1000, from conman), the client
// closed, the proxy drains (1001), the repl moved to another cluster (CloseReplMoved), or no VM
// could take the repl in time (CloseTryAgainLater). v2 sessions are relayed frame by frame on
// both legs whatever Config.Mode says: the proxy must own the client's WebSocket to hold it.
const SubprotocolV2 = "switchyard.v2"

// Close codes the proxy sends on SubprotocolV2 sessions.
const (
	// CloseReplMoved: the repl moved to another cluster while the session was re-attaching;
	// connect again through lore (which names the new cluster's Eval).
	CloseReplMoved = 4421
	// CloseReplNotFound: the repl was deleted while the session was re-attaching.
	CloseReplNotFound = 4404
	// CloseTryAgainLater (RFC 6455's registry: 1013): no VM could take the repl within
	// Config.ReattachTimeout.
	CloseTryAgainLater = 1013
)

// ErrClosed is returned by Shutdown when it is called a second time after it finished.
var ErrClosed = errors.New("sessions: sessions proxy closed")

// Config configures a Proxy. Cluster, Tokens and Placer are required.
type Config struct {
	// Cluster is this cluster's ID: the audience connect tokens must carry.
	Cluster string
	// Tokens verifies connect tokens (*lore.KeySet, *lore.RemoteKeySet).
	Tokens TokenVerifier
	// Placer names the VM that runs a repl (*placement.Controlplane, *placement.Client).
	Placer Placer
	// Credential is sent to conman in the Switchyard-Credential header. Empty sends none
	// (conman will answer 401).
	Credential string
	// VMCredential, if set, returns the credential of the conman on one VM (each VM its own,
	// e.g. conman.VMCredential(secret, vm)), and Credential is not used.
	VMCredential func(vm string) string
	// Directory, if set, is asked where the token's repl lives now before every attach: a
	// token for a repl that moved to another cluster is refused (421, stage token) with a
	// message telling the client to connect through lore again. Nil trusts the token's
	// audience alone.
	Directory interface {
		Repl(ctx context.Context, id string) (lore.Repl, error)
	}
	// Mode selects the relay; the zero value is Splice.
	Mode RelayMode

	// RetryBudget bounds the time during which a failed place-and-attach attempt may be followed
	// by another (on another VM); the whole setup stays within HandshakeTimeout. Zero means 3 s;
	// negative means one attempt only.
	RetryBudget time.Duration
	// RetryBackoff is the pause before the first retry; it doubles (with ±25% jitter) up to
	// MaxRetryBackoff. Zero means 20 ms.
	RetryBackoff time.Duration
	// MaxRetryBackoff caps the pause between retries. Zero means 500 ms.
	MaxRetryBackoff time.Duration
	// DialTimeout bounds connecting to conman (TCP, and TLS for https). Zero means 1 s.
	DialTimeout time.Duration
	// AttachTimeout bounds one attach attempt until conman's 101, which comes only once the
	// repl's container runs, so it must cover a cold start. Zero means 15 s (conman's own
	// start timeout).
	AttachTimeout time.Duration
	// HandshakeTimeout bounds the whole setup: token, placement, every attach attempt and the
	// client's upgrade. Zero means 30 s.
	HandshakeTimeout time.Duration

	// MaxSessions caps concurrent sessions, counting those still in setup; past it the proxy
	// answers 503. Zero means no limit.
	MaxSessions int
	// MaxSessionsPerRepl, MaxSessionsPerToken and MaxSessionsPerIP cap the concurrent sessions
	// of one repl, one connect token (its jti) and one client IP (IPv6: /64); past one, the
	// proxy answers 429 (stage limit). Zero means 64, 8 and 256; negative means no cap.
	MaxSessionsPerRepl, MaxSessionsPerToken, MaxSessionsPerIP int
	// MaxHeaderBytes caps the size of the client's request line and headers; larger requests
	// are answered 431. Zero means 8 KiB. (The http.Server's own MaxHeaderBytes applies first.)
	MaxHeaderBytes int
	// MaxMessageBytes caps one WebSocket message in Frame mode; a larger one closes that leg
	// with 1009 (message too big) and the other with 1009 too. Zero means 4 MiB. Ignored in
	// Splice mode.
	MaxMessageBytes int64
	// PingInterval is how often Frame mode pings each leg; a leg that does not answer within
	// PingTimeout is dead and the session ends. Zero means 30 s; negative disables pings.
	PingInterval time.Duration
	// PingTimeout: zero means 15 s.
	PingTimeout time.Duration
	// IdleTimeout ends a Frame-mode session after this long without a message in either
	// direction (close 1001). Zero means no idle timeout: shells are often idle for hours.
	IdleTimeout time.Duration
	// EventLoops, in Splice mode on Linux, relays established sessions on this many event-loop
	// threads of the proxy's own while their traffic is small messages: each loop waits on an
	// epoll set of its own with raw system calls, so a message costs one read and one write and
	// wakes nothing in the Go runtime (docs/benchmarks/sessions.md). A session goes back to its
	// goroutines, for good, at the first thing the loop does not do: bulk data (spliced), a
	// close frame or a frame over 64 KiB from conman, EOF or an error, a write that would
	// block, drain. A loop runs only while it has sessions, and then holds one of GOMAXPROCS's
	// Ps even while it waits (at most 20 ms at a time), so the loops drawing on one LoopBudget
	// always leave one P to the rest of the program: a session that finds no loop it may start
	// stays on goroutines, and a loop gives its sessions back when GOMAXPROCS is lowered that
	// far. Zero means none: a goroutine pair per session.
	EventLoops int
	// LoopBudget counts the Ps held by event loops. Give every Proxy of a process that has
	// EventLoops the same one, so that their loops together leave a P to the rest of the
	// program. Nil means a budget of this Proxy's own.
	LoopBudget *LoopBudget
	// ReattachTimeout bounds how long a SubprotocolV2 session waits for its repl after conman's
	// leg ended abnormally: resuming its shell, placing the repl again and attaching, all
	// together. Past it the client is closed with CloseTryAgainLater. Zero means 60 s; negative
	// turns re-attaching off (conman's close reaches the client as in v1).
	ReattachTimeout time.Duration
	// LingerTimeout bounds how long a session stays half-closed after one side finished (sent
	// its FIN, or its close frame in Frame mode) before the other side is cut. Zero means 10 s.
	LingerTimeout time.Duration

	// BackendTLS configures TLS to conman addresses with an https:// or wss:// scheme. Nil
	// means the system roots. TLS to conman disables splice(2): bytes are copied instead.
	BackendTLS *tls.Config
	// DialContext dials conman. Nil means a net.Dialer. Tests use it to inject faults.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// Logger receives one line per session end and per setup failure. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the proxy's metrics. Nil means no metrics.
	Registerer prometheus.Registerer
}

// A LoopBudget counts the Ps (the Go scheduler's processors) held by the event loops of the
// proxies that share it (Config.LoopBudget), and lets a loop start only while at least one P is
// left to the rest of the program. The zero value is ready to use.
type LoopBudget struct {
	b eventloop.Budget
}

// Proxy is the WebSocket session proxy (Eval): an http.Handler that verifies a connect token,
// asks placement which VM runs the repl, dials that VM's conman attach endpoint (retrying on
// another VM before the client has seen anything) and relays the session both ways until
// either side closes. It never binds ports: mount it on an http.Server, at "GET /v1/connect" by
// convention, and call Shutdown when the server shuts down — http.Server.Shutdown does not wait
// for hijacked connections, Proxy.Shutdown does.
//
// # The connection flow
//
// The token comes from the query (?token=), an "Authorization: Bearer" header, or a
// Sec-WebSocket-Protocol entry with TokenSubprotocolPrefix (browsers cannot set headers; they
// offer Subprotocol too and get it back). A missing, forged, expired or other-cluster token is
// answered 401 before any upgrade; a request without a WebSocket upgrade 426; oversized headers
// 431; a full or draining proxy 503 (Retry-After: 1). Every refusal has a JSON body
// {"error": "..."}. The proxy then calls Placer.Place and attaches to conman at
// {Addr}/v1/repls/{id}/attach (cols and rows are passed on) with the conman.HeaderCredential
// header. A refused or timed-out connection, or any status but 101 (conman answers 503 when it
// drains or cannot start the repl), is retried after a backoff with Place asked again and
// Request.Avoid naming every VM that failed, for up to RetryBudget; only then is the client
// upgraded, so it never sees a failed attempt. Nothing is retried once bytes have flowed.
//
// # Splice or frame
//
// Splice leaves bulk payloads in the kernel (splice(2) through a pipe) and reads only frame
// headers from conman's side: the least CPU and memory per session, and with EventLoops the
// lowest added latency for terminal traffic (docs/benchmarks/sessions.md). It cannot limit
// message sizes or ping peers, and a session can hold six descriptors (New warns when
// RLIMIT_NOFILE cannot hold 6 × MaxSessions). Frame terminates WebSocket on both legs: more CPU
// per message and about 16 KiB more per session, and in exchange it enforces MaxMessageBytes
// (close 1009), pings each leg to find dead peers, supports an idle timeout, and sends clean
// close codes of its own. Both relay close codes unchanged and never send 1005, 1006 or 1015;
// when conman's connection breaks without a close frame the client gets 1014 (bad gateway).
// Sessions that speak SubprotocolV2 are relayed as in Frame mode whatever Mode says, since the
// proxy must own the client's WebSocket to keep it while conman's leg is replaced.
//
// # Drain
//
// Shutdown refuses new sessions (503) and waits for the live ones; when its context ends it
// closes the rest with 1001 (going away) and returns ctx.Err(). In splice mode the relay writes
// the close frame itself at the next frame boundary of conman's stream, which it always knows
// (an idle session within a second); a frame that does not complete within a second, or a client
// that stopped reading, is cut instead. For a deploy, serve the proxy with a handover.Server and
// call Shutdown after the handover.Server's Shutdown (package handover has the sequence).
//
// # Metrics and the SLO
//
// With a Registerer, Proxy exports:
//
//	switchyard_proxy_sessions_total{stage}           attempts by outcome (the Stage constants)
//	switchyard_proxy_session_setup_seconds           request to established (ok sessions)
//	switchyard_proxy_session_duration_seconds        established to end
//	switchyard_proxy_sessions_active                 established sessions (the autoscaling signal)
//	switchyard_proxy_sessions_inflight               admitted attempts, what MaxSessions limits
//	switchyard_proxy_session_retries_total           place-and-attach attempts after the first
//	switchyard_proxy_session_bytes_total{direction}  client_to_backend, backend_to_client
//	                                                 (added when a session ends)
//
// Every attempt is counted once in switchyard_proxy_sessions_total. The session success SLO is
//
//	sum(rate(switchyard_proxy_sessions_total{stage="ok"}[5m]))
//	  /
//	sum(rate(switchyard_proxy_sessions_total{stage!~"client|token"}[5m]))
//
// that is, failures the client caused — it went away during setup, sent no upgrade, or held a
// bad or expired token — are outside the denominator; placement, dial, backend and limit are
// the platform's failures. (Watch the token rate on its own: a jump means a key-rotation
// problem, not bad clients.) A session that was established counts ok when either side closed
// normally (1000/1001, or the client left) and backend when conman closed with any other code
// (1011, 1012 at a VM drain, …) or its connection broke. Logs carry session, repl, vm, stage.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	metrics *proxyMetrics
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	wsHTTP  *http.Client // Frame mode's backend dialer
	// fenceHTTP asks conman to stop a repl that is moving away from its VM.
	fenceHTTP *http.Client
	loops     *spliceLoops // Splice mode's event loops; nil: none

	mu       sync.Mutex
	closing  bool
	inflight int // admitted ServeHTTP calls (setup or relay)
	live     map[*liveSession]struct{}
	perKey   map[string]int // sessions per repl, token and client IP (admitKeys)
	relays   sync.WaitGroup // relay goroutines of established sessions
	idle     chan struct{}  // closed when inflight reaches 0 while closing
	stopCtx  context.Context
	stopNow  context.CancelFunc // cancels setups still running when Shutdown's ctx ends
	shutDone bool
}

// New returns a Proxy. It returns an error wrapping nothing but a message when
// the configuration is unusable, and registers its metrics with cfg.Registerer.
func New(cfg Config) (*Proxy, error) {
	if cfg.Cluster == "" {
		return nil, errors.New("sessions: Config.Cluster is required")
	}
	if cfg.Tokens == nil {
		return nil, errors.New("sessions: Config.Tokens is required")
	}
	if cfg.Placer == nil {
		return nil, errors.New("sessions: Config.Placer is required")
	}
	if cfg.Mode != Splice && cfg.Mode != Frame {
		return nil, fmt.Errorf("sessions: unknown relay mode %d", cfg.Mode)
	}
	if strings.ContainsAny(cfg.Credential, "\r\n") {
		return nil, errors.New("sessions: Config.Credential must not contain CR or LF")
	}
	for _, c := range []struct {
		v   *int
		def int
	}{{&cfg.MaxSessionsPerRepl, 64}, {&cfg.MaxSessionsPerToken, 8}, {&cfg.MaxSessionsPerIP, 256}} {
		if *c.v == 0 {
			*c.v = c.def
		}
	}
	if cfg.RetryBudget == 0 {
		cfg.RetryBudget = 3 * time.Second
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 20 * time.Millisecond
	}
	if cfg.MaxRetryBackoff <= 0 {
		cfg.MaxRetryBackoff = 500 * time.Millisecond
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.AttachTimeout <= 0 {
		cfg.AttachTimeout = 15 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 8 << 10
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 4 << 20
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 15 * time.Second
	}
	if cfg.LingerTimeout <= 0 {
		cfg.LingerTimeout = 10 * time.Second
	}
	if cfg.ReattachTimeout == 0 {
		cfg.ReattachTimeout = time.Minute
	}
	s := &Proxy{
		cfg:    cfg,
		log:    cfg.Logger,
		live:   make(map[*liveSession]struct{}),
		perKey: make(map[string]int),
		idle:   make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "proxy.sessions", "mode", cfg.Mode.String())
	s.dial = cfg.DialContext
	if s.dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		s.dial = d.DialContext
	}
	s.stopCtx, s.stopNow = context.WithCancel(context.Background())
	m, err := newSessionsMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	if cfg.Mode == Frame {
		s.wsHTTP = &http.Client{Transport: &upgradeTransport{s: s}}
	}
	s.fenceHTTP = &http.Client{Transport: &http.Transport{
		DialContext: s.dial, TLSClientConfig: cfg.BackendTLS, MaxIdleConnsPerHost: 1, IdleConnTimeout: 30 * time.Second,
	}}
	if cfg.Mode == Splice && cfg.EventLoops > 0 {
		budget := cfg.LoopBudget
		if budget == nil {
			budget = new(LoopBudget)
		}
		s.loops = newSpliceLoops(cfg.EventLoops, budget, s.metrics)
		if s.loops == nil {
			s.log.Warn("event loops not used: they need Linux and GOMAXPROCS above their number",
				"event_loops", cfg.EventLoops, "gomaxprocs", runtime.GOMAXPROCS(0))
		}
	}
	if cfg.Mode == Splice && cfg.MaxSessions > 0 {
		if limit, ok := fileLimit(); ok && limit < uint64(cfg.MaxSessions)*spliceFDs {
			s.log.Warn("open-file limit cannot hold MaxSessions spliced sessions",
				"rlimit_nofile", limit, "max_sessions", cfg.MaxSessions,
				"needed", uint64(cfg.MaxSessions)*spliceFDs,
				"fds_per_session", spliceFDs)
		}
	}
	return s, nil
}

// spliceFDs is how many descriptors one spliced session can hold on Linux: the two
// sockets and, while a splice(2) is under way in each direction, a pipe (two descriptors) each.
const spliceFDs = 6

// Active returns the number of established sessions.
func (s *Proxy) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

// Shutdown stops the proxy like http.Server.Shutdown, but for the hijacked WebSocket sessions
// the standard library does not track: new sessions are refused with 503 at once, every live
// session keeps running until it ends on its own, and Shutdown returns nil when the last one
// has ended. When ctx ends first, the remaining sessions are closed with 1001 (going away),
// setups still in progress are abandoned, and Shutdown returns ctx.Err() once every goroutine
// the proxy started has finished. The grace period is the caller's: a context with a 30-hour
// deadline keeps sessions for 30 hours.
func (s *Proxy) Shutdown(ctx context.Context) error {
	defer s.fenceHTTP.CloseIdleConnections()
	s.mu.Lock()
	if s.shutDone {
		s.mu.Unlock()
		return ErrClosed
	}
	if !s.closing {
		s.closing = true
		if s.inflight == 0 {
			close(s.idle)
		}
	}
	n := len(s.live)
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("draining sessions", "live", n)
	}
	select {
	case <-s.idle:
		s.relays.Wait()
		s.loops.wait()
		s.finishShutdown()
		return nil
	case <-ctx.Done():
	}
	s.stopNow()
	s.mu.Lock()
	live := make([]*liveSession, 0, len(s.live))
	for l := range s.live {
		live = append(live, l)
	}
	s.mu.Unlock()
	if len(live) > 0 {
		s.log.Warn("grace period over: closing sessions with 1001", "live", len(live))
	}
	for _, l := range live {
		l.goAway()
	}
	<-s.idle
	s.relays.Wait()
	s.loops.wait()
	s.finishShutdown()
	return ctx.Err()
}

func (s *Proxy) finishShutdown() {
	s.stopNow()
	s.mu.Lock()
	s.shutDone = true
	s.mu.Unlock()
}

// liveSession is an established session as Shutdown sees it.
type liveSession struct {
	goAway func() // closes the session with 1001; safe to call concurrently with its end
}

// admit reserves a session slot, or says why not.
func (s *Proxy) admit() (ok bool, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false, "draining"
	}
	if s.cfg.MaxSessions > 0 && s.inflight >= s.cfg.MaxSessions {
		return false, "too many sessions"
	}
	s.inflight++
	s.metrics.inflight(s.inflight)
	return true, ""
}

func (s *Proxy) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	s.metrics.inflight(s.inflight)
	if s.inflight == 0 && s.closing {
		close(s.idle)
	}
}

func (s *Proxy) track(l *liveSession) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopCtx.Err() != nil {
		return false // Shutdown's grace ended while this session was being set up
	}
	s.live[l] = struct{}{}
	s.metrics.active.Set(float64(len(s.live)))
	return true
}

func (s *Proxy) untrack(l *liveSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, l)
	s.metrics.active.Set(float64(len(s.live)))
}

// setupAttempt is the state of one ServeHTTP call, for logs and metrics.
type setupAttempt struct {
	id    string
	start time.Time
	repl  string
	vm    string
	tries int
	keys  []string // per-repl, per-token and per-IP counters it holds (see admitKeys)
}

// admitKeys counts the attempt against the per-repl, per-token and per-IP caps, all or none.
func (s *Proxy) admitKeys(a *setupAttempt, claims lore.Claims, remote string) (ok bool, reason string) {
	type key struct {
		k    string
		max  int
		what string
	}
	ip := remote
	if host, _, err := net.SplitHostPort(remote); err == nil {
		ip = host
	}
	if addr, err := netip.ParseAddr(ip); err == nil && addr.Unmap().Is6() {
		p, _ := addr.Prefix(64)
		ip = p.String()
	}
	keys := []key{
		{"repl\x00" + claims.Repl, s.cfg.MaxSessionsPerRepl, "too many sessions for this repl"},
		{"ip\x00" + ip, s.cfg.MaxSessionsPerIP, "too many sessions from your address"},
	}
	if claims.ID != "" {
		keys = append(keys, key{"jti\x00" + claims.ID, s.cfg.MaxSessionsPerToken, "too many sessions with this token"})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if k.max > 0 && s.perKey[k.k] >= k.max {
			return false, k.what
		}
	}
	for _, k := range keys {
		if k.max > 0 {
			s.perKey[k.k]++
			a.keys = append(a.keys, k.k)
		}
	}
	return true, ""
}

// releaseKeys gives back what admitKeys counted.
func (s *Proxy) releaseKeys(a *setupAttempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range a.keys {
		if s.perKey[k]--; s.perKey[k] <= 0 {
			delete(s.perKey, k)
		}
	}
	a.keys = nil
}

func (a *setupAttempt) attrs(stage string) []any {
	return []any{"session", a.id, "repl", a.repl, "vm", a.vm, "stage", stage, "attempts", a.tries}
}

// ServeHTTP handles one session from the client's upgrade request to its end.
func (s *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := &setupAttempt{id: newID(), start: time.Now()}

	if size := headerSize(r); size > s.cfg.MaxHeaderBytes {
		s.fail(w, a, StageLimit, http.StatusRequestHeaderFieldsTooLarge, "request headers too large",
			fmt.Errorf("request headers are %d bytes, limit %d", size, s.cfg.MaxHeaderBytes))
		return
	}
	if err := checkUpgrade(r); err != nil {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Sec-WebSocket-Version", "13")
		status := http.StatusUpgradeRequired
		if r.Method != http.MethodGet {
			status = http.StatusMethodNotAllowed
			w.Header().Set("Allow", http.MethodGet)
		} else if errors.Is(err, errSessionsBadHandshake) {
			status = http.StatusBadRequest
		}
		s.fail(w, a, StageClient, status, err.Error(), err)
		return
	}
	if ok, reason := s.admit(); !ok {
		w.Header().Set("Retry-After", "1")
		s.fail(w, a, StageLimit, http.StatusServiceUnavailable, reason, errors.New(reason))
		return
	}
	started := false // an established session releases its slot when it ends
	defer func() {
		if !started {
			s.release()
		}
	}()

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(s.stopCtx, cancel)
	defer stop()

	token := tokenFrom(r)
	if token == "" {
		s.fail(w, a, StageToken, http.StatusUnauthorized, "missing connect token", errors.New("no token in query, Authorization or Sec-WebSocket-Protocol"))
		return
	}
	claims, err := s.cfg.Tokens.Verify(ctx, token, s.cfg.Cluster)
	if err != nil {
		if s.clientGone(r) {
			s.fail(w, a, StageClient, 0, "", err)
			return
		}
		s.fail(w, a, StageToken, http.StatusUnauthorized, "invalid connect token", err)
		return
	}
	if claims.Repl == "" || (claims.Cluster != "" && claims.Cluster != s.cfg.Cluster) {
		s.fail(w, a, StageToken, http.StatusUnauthorized, "invalid connect token",
			fmt.Errorf("claims for repl %q cluster %q", claims.Repl, claims.Cluster))
		return
	}
	a.repl = claims.Repl
	if ok, reason := s.admitKeys(a, claims, r.RemoteAddr); !ok {
		w.Header().Set("Retry-After", "5")
		s.fail(w, a, StageLimit, http.StatusTooManyRequests, reason, errors.New(reason))
		return
	}
	defer func() {
		if !started {
			s.releaseKeys(a)
		}
	}()
	if s.cfg.Directory != nil {
		if status, msg, err := s.checkCluster(ctx, claims.Repl); err != nil {
			s.fail(w, a, StageToken, status, msg, err)
			return
		}
	}

	v2 := selectSubprotocol(r) == SubprotocolV2
	leg, stage, status, msg, err := s.connectBackend(ctx, r.URL.Query(), a, connectOpts{
		frame: v2 || s.cfg.Mode == Frame, budget: s.cfg.RetryBudget,
	})
	if err != nil {
		if s.clientGone(r) {
			stage, status = StageClient, 0
		} else if s.stopCtx.Err() != nil {
			stage, status, msg = StageLimit, http.StatusServiceUnavailable, "proxy shutting down"
		}
		s.fail(w, a, stage, status, msg, err)
		return
	}
	if v2 {
		started = s.serveResilient(ctx, w, r, a, leg.(*frameBackend))
	} else if s.cfg.Mode == Frame {
		started = s.serveFrame(ctx, w, r, a, leg)
	} else {
		started = s.serveSplice(ctx, w, r, a, leg)
	}
}

// checkCluster refuses a repl that no longer lives in this cluster: its token was issued
// before a move, and the repl's sessions belong to its new cluster now.
func (s *Proxy) checkCluster(ctx context.Context, repl string) (int, string, error) {
	rp, err := s.cfg.Directory.Repl(ctx, repl)
	switch {
	case errors.Is(err, lore.ErrNotFound):
		return http.StatusNotFound, "repl not found", fmt.Errorf("directory: %w", err)
	case err != nil:
		return http.StatusServiceUnavailable, "cannot check where the repl lives", fmt.Errorf("directory: %w", err)
	case rp.Cluster != s.cfg.Cluster:
		return http.StatusMisdirectedRequest, "the repl moved to another cluster: connect again through lore",
			fmt.Errorf("repl %s lives in cluster %q, not %q", repl, rp.Cluster, s.cfg.Cluster)
	}
	return 0, "", nil
}

// relay runs an established session's relay in a goroutine of its own, so the HTTP server's
// connection goroutine, its buffers and the request can go as soon as the upgrade is done (an
// idle session then holds only its relay goroutines and sockets). It takes over the admission
// slot and the attempt's per-key counts and releases them when the session ends.
func (s *Proxy) relay(a *setupAttempt, goAway func(), run func()) {
	live := &liveSession{goAway: goAway}
	tracked := s.track(live)
	s.relays.Add(1)
	go func() {
		defer s.relays.Done()
		defer s.release()
		defer s.releaseKeys(a)
		if tracked {
			defer s.untrack(live)
		} else {
			goAway()
		}
		run()
	}()
}

func (s *Proxy) clientGone(r *http.Request) bool {
	return r.Context().Err() != nil
}

// fail ends an attempt that never became a session: it answers the client (unless status is 0,
// the client is gone), logs once and counts the stage once.
func (s *Proxy) fail(w http.ResponseWriter, a *setupAttempt, stage string, status int, msg string, cause error) {
	if status != 0 {
		httpjson.Error(w, status, msg)
	}
	s.metrics.outcome(stage)
	lvl := slog.LevelWarn
	if stage == StageClient || stage == StageToken {
		lvl = slog.LevelInfo
	}
	s.log.Log(context.Background(), lvl, "session refused",
		append(a.attrs(stage), "status", status, "err", cause)...)
}

// end records the outcome of an established session and the bytes it relayed.
func (s *Proxy) end(a *setupAttempt, stage string, established time.Time, reason string, c2b, b2c int64) {
	s.metrics.bytes.WithLabelValues("client_to_backend").Add(float64(c2b))
	s.metrics.bytes.WithLabelValues("backend_to_client").Add(float64(b2c))
	s.metrics.outcome(stage)
	s.metrics.duration.Observe(time.Since(established).Seconds())
	lvl := slog.LevelInfo
	if stage != StageOK {
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, "session ended",
		append(a.attrs(stage), "duration", time.Since(established), "reason", reason,
			"bytes_in", c2b, "bytes_out", b2c)...)
}

var errSessionsBadHandshake = errors.New("sessions: bad WebSocket handshake")

// checkUpgrade validates a client's RFC 6455 opening handshake.
func checkUpgrade(r *http.Request) error {
	if !headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", "websocket") {
		return errors.New("WebSocket upgrade required")
	}
	if r.Method != http.MethodGet {
		return fmt.Errorf("method %s not allowed for a WebSocket upgrade", r.Method)
	}
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return fmt.Errorf("%w: HTTP/1.1 required", errSessionsBadHandshake)
	}
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		return fmt.Errorf("%w: Sec-WebSocket-Version %q, want 13", errSessionsBadHandshake, v)
	}
	if !validKey(r.Header.Get("Sec-WebSocket-Key")) {
		return fmt.Errorf("%w: invalid Sec-WebSocket-Key", errSessionsBadHandshake)
	}
	return nil
}

// headerHasToken reports whether a comma-separated header holds token (any case).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// tokenFrom finds the connect token: ?token=, Authorization: Bearer, or a
// Sec-WebSocket-Protocol entry switchyard.token.<jwt>, in that order.
func tokenFrom(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	for _, p := range subprotocols(r) {
		if strings.HasPrefix(p, TokenSubprotocolPrefix) {
			return p[len(TokenSubprotocolPrefix):]
		}
	}
	return ""
}

func subprotocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// selectSubprotocol returns the newest session subprotocol the client offered: SubprotocolV2,
// Subprotocol, or "" for none.
func selectSubprotocol(r *http.Request) string {
	sel := ""
	for _, p := range subprotocols(r) {
		switch p {
		case SubprotocolV2:
			return p
		case Subprotocol:
			sel = p
		}
	}
	return sel
}

func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + 12
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// retryBackoff returns d with ±25% jitter.
func withJitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d*3/4 + time.Duration(mrand.Int64N(int64(d)/2+1))
}

// connectOpts shape a place-and-attach with retries.
type connectOpts struct {
	frame  bool          // terminate WebSocket on conman's leg
	budget time.Duration // retry budget (negative: one attempt)
}

// connectBackend places the repl and attaches to conman, retrying on another VM within the
// retry budget. On failure it returns the stage, the HTTP status and message for the client.
func (s *Proxy) connectBackend(ctx context.Context, q url.Values, a *setupAttempt, co connectOpts) (backendLeg, string, int, string, error) {
	budget := co.budget
	deadline := time.Now().Add(budget)
	backoff := s.cfg.RetryBackoff
	var avoid []string
	var lastErr error
	stage, status, msg := StagePlacement, http.StatusServiceUnavailable, "no VM available for the repl"
	dialFailed := false
	for {
		a.tries++
		if a.tries > 1 {
			s.metrics.retries.Inc()
		}
		asg, err := s.cfg.Placer.Place(ctx, placement.Request{Repl: a.repl, Avoid: avoid})
		if err != nil {
			lastErr = fmt.Errorf("place: %w", err)
			switch {
			case errors.Is(err, placement.ErrNotFound):
				return nil, StagePlacement, http.StatusNotFound, "repl not found", lastErr
			case errors.Is(err, placement.ErrInvalid):
				return nil, StagePlacement, http.StatusBadGateway, "placement rejected the request", lastErr
			case errors.Is(err, placement.ErrNoCapacity) && len(avoid) == 0:
				return nil, StagePlacement, http.StatusServiceUnavailable, "no VM available for the repl", lastErr
			case errors.Is(err, placement.ErrNoCapacity):
				// Every VM we could use has failed once; try them again after the backoff.
				avoid = avoid[:0]
			}
			if !dialFailed {
				stage, status, msg = StagePlacement, http.StatusServiceUnavailable, "no VM available for the repl"
			}
		} else {
			a.vm = asg.VM
			leg, err := s.attach(ctx, q, asg, attachOpts{frame: co.frame})
			if err == nil {
				return leg, "", 0, "", nil
			}
			lastErr = err
			var ae *AttachError
			if errors.As(err, &ae) && ae.Code == conman.ErrorRepl {
				// The repl's own failure: another VM would fare no better, and avoiding this
				// one would start the repl twice.
				return nil, StageBackend, http.StatusBadGateway, "the repl's shell could not start: " + ae.Message, lastErr
			}
			if ae != nil && ae.Status != http.StatusUnauthorized {
				// conman answered, so the VM is alive: have it stop the repl before the repl is
				// placed on another VM, so it never runs on two.
				if ferr := fence.Repl(ctx, s.fenceHTTP, asg.Addr, a.repl, s.credential(asg.VM)); ferr != nil {
					s.log.Warn("could not fence the repl on the VM it leaves", append(a.attrs(StageDial), "err", ferr)...)
				}
			}
			dialFailed = true
			stage, status, msg = StageDial, http.StatusBadGateway, "could not attach to the repl"
			s.log.Debug("attach failed", append(a.attrs(StageDial), "addr", asg.Addr, "err", err)...)
			if !contains(avoid, asg.VM) {
				avoid = append(avoid, asg.VM)
			}
		}
		if ctx.Err() != nil {
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				status, msg = http.StatusGatewayTimeout, "session setup timed out"
			}
			return nil, stage, status, msg, lastErr
		}
		wait := withJitter(backoff)
		if budget < 0 || time.Now().Add(wait).After(deadline) {
			return nil, stage, status, msg, lastErr
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				status, msg = http.StatusGatewayTimeout, "session setup timed out"
			}
			return nil, stage, status, msg, lastErr
		case <-t.C:
		}
		backoff = min(backoff*2, s.cfg.MaxRetryBackoff)
	}
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
