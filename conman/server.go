package conman

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/placement"
)

// VMCredential is the credential of the conman on VM vm, derived from a cluster secret
// (HMAC-SHA256): give each VM's Server its own (Config.Credential) and the proxies the
// derivation (sessions.Config.VMCredential, hosting.Config.VMCredential), so a VM knows only its own credential and
// cannot reach another VM's conman with it.
func VMCredential(secret, vm string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("switchyard conman vm\x00" + vm))
	return hex.EncodeToString(m.Sum(nil))
}

// Header names of the conman HTTP contract.
const (
	// HeaderCredential carries the internal credential on every request to conman.
	HeaderCredential = "Switchyard-Credential"
	// HeaderRepl marks a hosting request: forward it to this repl's web port.
	HeaderRepl = "Switchyard-Repl"
	// HeaderError says why conman answered a hosting request itself (502/503).
	HeaderError = "Switchyard-Error"
)

// Values of HeaderError.
const (
	ErrorStart       = "start-failed"
	ErrorUnreachable = "port-unreachable"
	ErrorDraining    = "draining"
	ErrorInvalid     = "invalid-repl"
	// ErrorRepl: the repl itself failed (its shell could not start in its running container);
	// proxies must not move it to another VM for that.
	ErrorRepl = "repl-failed"
	// ErrorUnauthorized marks conman's own 401, so a proxy can tell it from the app's.
	ErrorUnauthorized = "unauthorized"
	// ErrorSessionGone: a resume named a session that ended, expired, never existed or is
	// another repl's (404).
	ErrorSessionGone = "session-gone"
)

// Headers of an attach's 101 response.
const (
	// HeaderSession carries the attach's session id (128 random bits, URL-safe base64): resume
	// it with ?resume=<id>&offset=<n>.
	HeaderSession = "Switchyard-Session"
	// HeaderResumeGap, on a resume's 101, is how many bytes of output before the requested
	// offset the session no longer held (the replay starts after them).
	HeaderResumeGap = "Switchyard-Resume-Gap"
)

// WebSocket close codes conman uses on attach sessions.
const (
	CloseShellExited   = 1000 // the shell (or its container) exited
	CloseInternalError = 1011
	CloseDraining      = 1012 // service restart: the VM drains; reconnect elsewhere
	// CloseTakenOver: a resume of this session on another connection took the shell.
	CloseTakenOver = 4000
	// CloseResumeHere: an upgrade in place handed the shell to the successor conman while this
	// connection was in its handshake: resume the session (same id, offset) on the same VM.
	// Live connections are handed over themselves and see no close.
	CloseResumeHere = 4001
)

// PortRange is an inclusive range of TCP ports.
type PortRange struct {
	Min, Max int
}

// Config configures a Server.
type Config struct {
	// Runtime runs the containers. Required. The Server does not close it.
	Runtime Runtime
	// Credential is the internal credential every request must carry in HeaderCredential.
	// Required.
	Credential string
	// Spec returns what the repl runs (command, environment, limits, shell). Nil means a
	// shell-only container (no main process, /bin/sh on attach). The Server sets Spec.Port and
	// adds HOST (ReplHost) and PORT to its environment.
	Spec func(ctx context.Context, repl string) (Spec, error)
	// ReplHost is the address at which the repls' web ports are reached, exported to the repl as
	// HOST (bind HOST:PORT). Empty means 127.0.0.1; use the VM's address when several VMs share
	// a host.
	ReplHost string
	// Ports is the range web ports are assigned from. Zero means 20000-29999.
	Ports PortRange
	// StartTimeout bounds starting a container. Zero means 15s.
	StartTimeout time.Duration
	// PortWait is how long a hosting request waits for a just-started repl's port to accept.
	// Zero means 10s.
	PortWait time.Duration
	// StopGrace is how long a stopping container gets between SIGTERM and SIGKILL. Zero means 10s.
	StopGrace time.Duration

	// ResumeWindow is how long a shell whose attach connection broke (no close frame: the
	// TCP connection ended or reset) is kept for a resume; then it is killed. A close frame
	// from the client, any code, kills the shell at once. Zero means 60s; negative disables
	// (a broken connection kills the shell).
	ResumeWindow time.Duration
	// OutputBuffer is how many bytes of a shell's most recent output a resume can replay.
	// Zero means 64 KiB; at least 1 KiB.
	OutputBuffer int
	// MaxDetachedPerRepl caps the detached shells of one repl; past it the one detached longest
	// is killed. Zero means 16.
	MaxDetachedPerRepl int

	// Inherit, from ReceiveHandoff, makes this Server the successor of another conman process
	// on the VM (an upgrade in place): New adopts its shells and live attach connections. Nil
	// means none.
	Inherit *Inheritance

	// Placement, when set, runs the agent: it registers VM, heartbeats every HeartbeatInterval,
	// releases repls whose containers exit, and marks the VM draining on Shutdown.
	// *placement.Controlplane and *placement.Client satisfy it.
	Placement Placement
	// VM is what the agent registers; VM.ID and VM.Addr are required with Placement.
	VM placement.VM
	// HeartbeatInterval: zero means 5s.
	HeartbeatInterval time.Duration
	// OrphanGrace: a running repl that placement has assigned to another VM for this long (a
	// split brain: the repl was placed elsewhere while it ran here) is stopped and removed. The
	// agent checks at every heartbeat. (A repl placement does not know is adopted by placement
	// from the heartbeat, so it is not an orphan; to stop a repl, e.g. after a move to another
	// cluster, call Stop or DELETE /v1/repls/{id}.) Zero means 1 minute; negative disables.
	OrphanGrace time.Duration

	// Logger: nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the server's metrics. Nil means no metrics.
	Registerer prometheus.Registerer
}

// Placement is what the agent needs of the control plane.
type Placement interface {
	Lookup(ctx context.Context, repl string) (placement.Assignment, error)
	Register(ctx context.Context, vm placement.VM) (placement.VM, error)
	Heartbeat(ctx context.Context, hb placement.Heartbeat) error
	SetState(ctx context.Context, vm string, s placement.State) error
	Release(ctx context.Context, repl, vm string) error
}

var (
	_ Placement = (*placement.Controlplane)(nil)
	_ Placement = (*placement.Client)(nil)
)

// Server is one VM's container manager: the HTTP endpoints the proxies call (attach, hosting
// forwarding, health), the repls' containers, and the agent that reports to placement. It does
// not listen: serve it with an http.Server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	rt      Runtime
	credSum [32]byte
	mux     *http.ServeMux
	proxy   *httputil.ReverseProxy
	tr      *http.Transport
	m       *metrics

	ctx    context.Context // the server's lifetime
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	repls     map[string]*repl
	ports     map[int]string
	nextPort  int
	shells    map[string]*shell // by session id
	detachSeq uint64
	draining  bool
	closed    bool

	agentDone chan struct{}
	// registered is closed once the agent first registers the VM (at once without Placement).
	registered     chan struct{}
	registeredOnce sync.Once
}

// repl is a repl whose container is starting or running on this VM.
type repl struct {
	id       string
	port     int
	ready    chan struct{} // closed when the start attempt ends
	err      error         // why it did not start
	stopping bool          // the server stops it: its exit is expected
	started  time.Time     // when it became ready
	orphan   time.Time     // since when placement has not assigned it here (zero: assigned)
	noWeb    bool          // no main process: nothing listens on the port
	exited   chan struct{} // closed when the container exited
	removed  chan struct{} // closed once the exited container was removed (or conman closed)
}

// New returns a Server over cfg.Runtime, adopting the containers the runtime recovered, and
// starts the agent when cfg.Placement is set.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Runtime == nil {
		return nil, fmt.Errorf("%w: conman: Config.Runtime is required", ErrInvalid)
	}
	if cfg.Credential == "" {
		return nil, fmt.Errorf("%w: conman: Config.Credential is required", ErrInvalid)
	}
	if cfg.Placement != nil && (cfg.VM.ID == "" || cfg.VM.Addr == "") {
		return nil, fmt.Errorf("%w: conman: Config.VM.ID and Addr are required with Placement", ErrInvalid)
	}
	if cfg.ReplHost == "" {
		cfg.ReplHost = "127.0.0.1"
	}
	if cfg.Ports == (PortRange{}) {
		cfg.Ports = PortRange{Min: 20000, Max: 29999}
	}
	if cfg.Ports.Min < 1 || cfg.Ports.Max > 65535 || cfg.Ports.Min > cfg.Ports.Max {
		return nil, fmt.Errorf("%w: conman: port range %d-%d", ErrInvalid, cfg.Ports.Min, cfg.Ports.Max)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	if cfg.PortWait == 0 {
		cfg.PortWait = 10 * time.Second
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.OrphanGrace == 0 {
		cfg.OrphanGrace = time.Minute
	}
	if cfg.ResumeWindow == 0 {
		cfg.ResumeWindow = time.Minute
	}
	if cfg.OutputBuffer == 0 {
		cfg.OutputBuffer = 64 << 10
	}
	if cfg.OutputBuffer < 1<<10 {
		return nil, fmt.Errorf("%w: conman: Config.OutputBuffer %d is below 1 KiB", ErrInvalid, cfg.OutputBuffer)
	}
	if cfg.MaxDetachedPerRepl == 0 {
		cfg.MaxDetachedPerRepl = 16
	}
	if cfg.MaxDetachedPerRepl < 0 {
		return nil, fmt.Errorf("%w: conman: Config.MaxDetachedPerRepl %d", ErrInvalid, cfg.MaxDetachedPerRepl)
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		rt:       cfg.Runtime,
		credSum:  sha256.Sum256([]byte(cfg.Credential)),
		repls:    make(map[string]*repl),
		ports:    make(map[int]string),
		nextPort: cfg.Ports.Min,
		shells:   make(map[string]*shell),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s.m = m
	s.tr = &http.Transport{
		DialContext:         s.dialRepl,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      s.tr,
		ModifyResponse: stripResponse,
		ErrorHandler:   s.forwardError,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /v1/repls/{id}/attach", s.serveAttach)
	s.mux.HandleFunc("GET /v1/repls", s.serveList)
	s.mux.HandleFunc("DELETE /v1/repls/{id}", s.serveStop)
	s.mux.HandleFunc("GET /healthz", s.serveHealth)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint", "")
	})
	s.ctx, s.cancel = context.WithCancel(context.Background())

	if err := s.adopt(ctx); err != nil {
		s.cancel()
		return nil, err
	}
	if cfg.Inherit != nil {
		s.inherit(ctx, cfg.Inherit)
	}
	s.registered = make(chan struct{})
	if cfg.Placement == nil {
		close(s.registered)
	} else {
		s.agentDone = make(chan struct{})
		s.wg.Add(1)
		go s.agent()
	}
	return s, nil
}

// Registered is closed once the agent has registered the VM with placement for the first time
// (at once when Config.Placement is nil). Until then placement sends the VM no repls, so a
// deployment that starts VMs and then opens its doors waits on it (bounded by a context)
// rather than on a sleep.
func (s *Server) Registered() <-chan struct{} { return s.registered }

// adopt takes over the containers the runtime knows: running ones are served again, exited
// ones are removed.
func (s *Server) adopt(ctx context.Context) error {
	sts, err := s.rt.List(ctx)
	if err != nil {
		return fmt.Errorf("conman: list containers: %w", err)
	}
	for _, st := range sts {
		if st.State != Running {
			if err := s.rt.Remove(ctx, st.ID); err != nil && !errors.Is(err, ErrNotFound) {
				s.log.Warn("conman: remove exited container", "repl", st.ID, "err", err)
			}
			continue
		}
		r := &repl{id: st.ID, port: st.Spec.Port, noWeb: len(st.Spec.Command) == 0, started: time.Now(),
			ready: make(chan struct{}), exited: make(chan struct{}), removed: make(chan struct{})}
		close(r.ready)
		s.mu.Lock()
		s.repls[r.id] = r
		if r.port != 0 {
			s.ports[r.port] = r.id
		}
		s.mu.Unlock()
		s.m.containers.Inc()
		s.wg.Add(1)
		go s.watch(r)
		s.log.Info("conman: adopted running container", "repl", st.ID, "port", st.Spec.Port, "pid", st.Pid)
	}
	return nil
}

// ServeHTTP implements the conman HTTP contract: every request must carry the credential;
// requests with HeaderRepl are forwarded to the repl's web port; the rest is the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got := sha256.Sum256([]byte(r.Header.Get(HeaderCredential)))
	if r.Header.Get(HeaderCredential) == "" || subtle.ConstantTimeCompare(got[:], s.credSum[:]) != 1 {
		writeError(w, http.StatusUnauthorized, "missing or wrong "+HeaderCredential, ErrorUnauthorized)
		return
	}
	if id := r.Header.Get(HeaderRepl); id != "" {
		s.serveForward(w, r, id)
		return
	}
	s.mux.ServeHTTP(w, r)
}

func writeError(w http.ResponseWriter, status int, msg, reason string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if reason != "" {
		h.Set(HeaderError, reason)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	draining, n := s.draining, len(s.repls)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	status, state := http.StatusOK, "ok"
	if draining {
		status, state = http.StatusServiceUnavailable, "draining"
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": state, "containers": n})
}

func (s *Server) serveList(w http.ResponseWriter, r *http.Request) {
	sts, err := s.rt.List(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error(), "")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"containers": sts})
}

// serveStop stops and removes a repl's container (operators, migrations): 204, or 404.
func (s *Server) serveStop(w http.ResponseWriter, r *http.Request) {
	err := s.Stop(r.Context(), r.PathValue("id"))
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error(), "")
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error(), "")
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// Running returns the IDs of the repls whose containers run (or are starting) on this VM.
func (s *Server) Running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.repls))
	for id := range s.repls {
		ids = append(ids, id)
	}
	return ids
}

// Ensure starts the repl's container unless it runs already, and returns its web port.
// Concurrent callers for one repl share one start. ErrDraining once Shutdown began.
func (s *Server) Ensure(ctx context.Context, id string) (int, error) {
	r, err := s.ensure(ctx, id)
	if err != nil {
		return 0, err
	}
	return r.port, nil
}

func (s *Server) ensure(ctx context.Context, id string) (*repl, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: repl id %q", ErrInvalid, id)
	}
	s.mu.Lock()
	if s.draining || s.closed {
		s.mu.Unlock()
		return nil, ErrDraining
	}
	r, ok := s.repls[id]
	if !ok {
		r = &repl{id: id, ready: make(chan struct{}), exited: make(chan struct{}), removed: make(chan struct{})}
		s.repls[id] = r
		s.wg.Add(1)
		go s.start(r)
	}
	s.mu.Unlock()
	select {
	case <-r.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	return r, nil
}

// start runs one start attempt for r, detached from any one caller.
func (s *Server) start(r *repl) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StartTimeout)
	defer cancel()
	began := time.Now()
	err := s.startContainer(ctx, r)
	s.m.startSeconds.Observe(time.Since(began).Seconds())
	s.mu.Lock()
	if err != nil {
		r.err = err
		delete(s.repls, r.id)
		if r.port != 0 && s.ports[r.port] == r.id {
			delete(s.ports, r.port)
		}
		s.m.starts.WithLabelValues("error").Inc()
		s.log.Warn("conman: repl failed to start", "repl", r.id, "err", err)
	} else {
		r.started = time.Now()
		s.m.starts.WithLabelValues("ok").Inc()
		s.m.containers.Inc()
		s.wg.Add(1)
		go s.watch(r)
	}
	close(r.ready)
	s.mu.Unlock()
}

// errNotAssigned: placement assigns the repl to another VM; starting it here would run it twice.
var errNotAssigned = errors.New("conman: the repl is assigned to another VM")

func (s *Server) startContainer(ctx context.Context, r *repl) error {
	// A repl runs on one VM at a time: never start one that placement has on another VM (a
	// proxy with a stale assignment, or one that moved it away from here). A repl placement
	// does not know yet may start; the heartbeat reports it.
	if s.cfg.Placement != nil {
		a, err := s.cfg.Placement.Lookup(ctx, r.id)
		switch {
		case errors.Is(err, placement.ErrNotFound):
		case err != nil:
			return fmt.Errorf("conman: check the repl's assignment: %w", err)
		case a.VM != s.cfg.VM.ID:
			return fmt.Errorf("%w (%s)", errNotAssigned, a.VM)
		}
	}
	var spec Spec
	if s.cfg.Spec != nil {
		var err error
		if spec, err = s.cfg.Spec(ctx, r.id); err != nil {
			return fmt.Errorf("conman: spec for %s: %w", r.id, err)
		}
	}
	port, err := s.allocPort(r.id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	r.port = port
	s.mu.Unlock()
	spec.Port = port
	spec.Env = append([]string{"HOST=" + s.cfg.ReplHost}, spec.Env...)
	err = s.rt.Create(ctx, r.id, spec)
	if errors.Is(err, ErrExists) {
		// A leftover of an earlier container of this repl.
		_ = s.rt.Stop(ctx, r.id, 0)
		if err = s.rt.Remove(ctx, r.id); err == nil {
			err = s.rt.Create(ctx, r.id, spec)
		}
	}
	if err != nil {
		return fmt.Errorf("conman: create %s: %w", r.id, err)
	}
	s.mu.Lock()
	r.noWeb = len(spec.Command) == 0
	s.mu.Unlock()
	if err := s.rt.Start(ctx, r.id); err != nil {
		_ = s.rt.Remove(context.WithoutCancel(ctx), r.id)
		return fmt.Errorf("conman: start %s: %w", r.id, err)
	}
	return nil
}

// allocPort picks a free port of the range: not assigned here and bindable on ReplHost.
func (s *Server) allocPort(id string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.cfg.Ports.Max - s.cfg.Ports.Min + 1
	for range n {
		p := s.nextPort
		s.nextPort++
		if s.nextPort > s.cfg.Ports.Max {
			s.nextPort = s.cfg.Ports.Min
		}
		if _, used := s.ports[p]; used {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.ReplHost, strconv.Itoa(p)))
		if err != nil {
			continue // something else holds it
		}
		ln.Close()
		s.ports[p] = id
		return p, nil
	}
	return 0, fmt.Errorf("conman: no free port in %d-%d", s.cfg.Ports.Min, s.cfg.Ports.Max)
}

// watch waits for r's container to exit, reports an unexpected exit and cleans up so that the
// next request starts a fresh container.
func (s *Server) watch(r *repl) {
	defer s.wg.Done()
	defer close(r.removed)
	st, err := s.rt.Wait(s.ctx, r.id)
	if err != nil && s.ctx.Err() != nil {
		return // Close: the container keeps running for the next conman
	}
	s.mu.Lock()
	expected := r.stopping
	if s.repls[r.id] == r {
		delete(s.repls, r.id)
	}
	if r.port != 0 && s.ports[r.port] == r.id {
		delete(s.ports, r.port)
	}
	s.m.containers.Dec()
	if expected {
		s.m.exits.WithLabelValues("stopped").Inc()
	} else {
		s.m.exits.WithLabelValues("unexpected").Inc()
	}
	close(r.exited)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if !expected {
		s.log.Warn("conman: repl container exited unexpectedly", "repl", r.id, "exit_code", st.ExitCode,
			"oom_killed", st.OOMKilled, "err", err)
		if s.cfg.Placement != nil {
			if err := s.cfg.Placement.Release(ctx, r.id, s.cfg.VM.ID); err != nil && !errors.Is(err, placement.ErrNotFound) {
				s.log.Warn("conman: release exited repl in placement", "repl", r.id, "err", err)
			}
		}
	}
	if err := s.rt.Remove(ctx, r.id); err != nil && !errors.Is(err, ErrNotFound) {
		s.log.Warn("conman: remove exited container", "repl", r.id, "err", err)
	}
}

// Stop stops a repl's container (grace StopGrace) and removes it; it is not an unexpected exit.
func (s *Server) Stop(ctx context.Context, id string) error {
	s.mu.Lock()
	r, ok := s.repls[id]
	if ok {
		r.stopping = true
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	select {
	case <-r.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.err != nil {
		return nil
	}
	if err := s.rt.Stop(ctx, id, s.cfg.StopGrace); err != nil {
		return err
	}
	// Once removed, not just exited: a listing right after Stop must not show it.
	select {
	case <-r.removed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serveForward forwards a hosting request to the repl's web port.
func (s *Server) serveForward(w http.ResponseWriter, req *http.Request, id string) {
	if !ValidID(id) {
		writeError(w, http.StatusBadRequest, "invalid "+HeaderRepl, ErrorInvalid)
		return
	}
	r, err := s.ensure(req.Context(), id)
	switch {
	case errors.Is(err, ErrDraining):
		s.m.forwardErrors.WithLabelValues(ErrorDraining).Inc()
		writeError(w, http.StatusServiceUnavailable, "conman is draining", ErrorDraining)
		return
	case err != nil:
		s.m.forwardErrors.WithLabelValues(ErrorStart).Inc()
		writeError(w, http.StatusBadGateway, "repl cannot start: "+err.Error(), ErrorStart)
		return
	}
	if r.noWeb {
		s.m.forwardErrors.WithLabelValues(ErrorUnreachable).Inc()
		writeError(w, http.StatusBadGateway, "repl runs no web app (its spec has no command)", ErrorUnreachable)
		return
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(s.cfg.ReplHost, strconv.Itoa(r.port))}
	ctx := context.WithValue(req.Context(), targetKey{}, forwardTarget{url: target, repl: r})
	s.proxy.ServeHTTP(w, req.WithContext(ctx))
}

type targetKey struct{}

type forwardTarget struct {
	url  *url.URL
	repl *repl
}

// rewrite points the outbound request at the repl, keeps the original Host and the forwarding
// headers the hosting proxy set, and strips every Switchyard-* header.
func rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(targetKey{}).(forwardTarget)
	pr.SetURL(t.url)
	pr.Out.Host = pr.In.Host
	for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	for k := range pr.Out.Header {
		if strings.HasPrefix(k, "Switchyard-") {
			delete(pr.Out.Header, k)
		}
	}
}

// stripResponse removes every Switchyard-* header from the app's response: only conman itself
// may tell a proxy why it failed (HeaderError), so a hostile app cannot make the proxies avoid a
// healthy VM or move its repl.
func stripResponse(resp *http.Response) error {
	for k := range resp.Header {
		if strings.HasPrefix(k, "Switchyard-") {
			delete(resp.Header, k)
		}
	}
	stripTrailer(resp.Trailer)
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil && resp.Body != http.NoBody {
		// Trailers arrive with the end of the body: strip them then, before they are copied.
		resp.Body = &trailerStripper{ReadCloser: resp.Body, resp: resp}
	}
	return nil
}

func stripTrailer(h http.Header) {
	for k := range h {
		if strings.HasPrefix(k, "Switchyard-") {
			delete(h, k)
		}
	}
}

type trailerStripper struct {
	io.ReadCloser
	resp *http.Response
}

func (t *trailerStripper) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err != nil {
		stripTrailer(t.resp.Trailer)
	}
	return n, err
}

// dialRepl dials a repl's port, retrying while a just-started app is not listening yet. With a
// runtime that implements Dialer, the connection is made inside the container (its own
// loopback); otherwise on ReplHost.
func (s *Server) dialRepl(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	var exited <-chan struct{}
	dial := func() (net.Conn, error) { return d.DialContext(ctx, network, addr) }
	if t, ok := ctx.Value(targetKey{}).(forwardTarget); ok {
		exited = t.repl.exited
		if cd, ok := s.rt.(Dialer); ok {
			id, port := t.repl.id, t.repl.port
			dial = func() (net.Conn, error) {
				c, err := cd.DialContainer(ctx, id, port)
				if errors.Is(err, errors.ErrUnsupported) {
					return d.DialContext(ctx, network, addr)
				}
				return c, err
			}
		}
	}
	deadline := time.Now().Add(s.cfg.PortWait)
	wait := 5 * time.Millisecond
	for {
		c, err := dial()
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return c, err
		}
		t := time.NewTimer(min(wait, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-exited:
			t.Stop()
			return nil, fmt.Errorf("repl exited: %w", err)
		case <-t.C:
		}
		wait = min(wait*2, 100*time.Millisecond)
	}
}

func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client went away
	}
	s.m.forwardErrors.WithLabelValues(ErrorUnreachable).Inc()
	s.log.Debug("conman: forward to repl failed", "repl", r.Header.Get(HeaderRepl), "err", err)
	writeError(w, http.StatusBadGateway, "repl web port does not answer: "+err.Error(), ErrorUnreachable)
}
