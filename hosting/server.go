package hosting

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/internal/h1"
	"github.com/switchyard-dev/switchyard/internal/idlepark"
)

// ServerConfig configures a Server. Proxy is required.
type ServerConfig struct {
	// Proxy routes and forwards the requests.
	Proxy *Proxy
	// Handler serves the requests the fast path passes to net/http. Nil means Proxy. With
	// tombstones it is forwarder.Wrap(proxy), and Divert must then be set. Middleware in
	// Handler sees only what the fast path hands over: whatever it must apply to every request
	// (a per-client rate limit, such as connlimit.RateLimit) needs Divert too, answering
	// Handoff for the requests it would refuse.
	Handler http.Handler
	// Divert decides, for each fast-path request, whether it goes to Proxy (the zero
	// Diversion), to Handler, or straight to another cluster (a forward on the fast path):
	// (*tombstone.Forwarder).Divert when Handler is the forwarder's Wrap. Required when Handler
	// is set. peer is the client's address (the connection's, never a header's); target is the
	// request target (path and query).
	Divert func(peer netip.Addr, host, method, target string) Diversion
	// ReadHeaderTimeout bounds the reading of a request head once its first byte arrived. Zero
	// means 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no request for this long. Zero
	// means 2 minutes.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request head (net/http answers 431 past it). Zero means 1 MiB,
	// net/http's default.
	MaxHeaderBytes int
	// ParkIdleAfter is how long a fast-path connection waits for its next request (or its
	// first) with a goroutine and a read buffer of its own, 8–10 KiB. Past it the connection is
	// parked for the rest of its IdleTimeout (ReadHeaderTimeout for one that has not sent a
	// request yet): no goroutine and no buffer, its socket in an epoll set the Server waits on;
	// it is served again when the client sends (or closes), for about 2 µs of CPU more than a
	// waiting goroutine costs. Linux only; connections a listener wrapped are parked when the
	// wrapper implements idlepark.Rewrapper (connlimit's does). Zero means 50 ms; negative never.
	ParkIdleAfter time.Duration
	// ParkColdAfter is how long a connection stays parked with its net.Conn (about 0.5 KiB of
	// the runtime's heap, and a poll descriptor it never frees) before it gives that up too,
	// keeping only its socket's descriptor (about 0.1 KiB); waking it then costs some 16 µs of
	// CPU more (a new net.Conn, see internal/idlepark). Zero means 1 s; negative never.
	ParkColdAfter time.Duration
	// Registerer, when set, receives switchyard_hosting_client_connections{state}: serving,
	// loop, parked_warm, parked_cold.
	Registerer prometheus.Registerer
	// EventLoops is the number of event loops serving keep-alive connections between their
	// requests, and their common requests (no body or a small one that came with the head, a
	// cached route, an answer of at most 64 KiB that is there at once), without a goroutine each
	// (Linux only; see loop_linux.go). Zero
	// means one per GOMAXPROCS at NewServer; negative, none.
	EventLoops int
	// DivertInLoop says Divert answers from memory without waiting, so an event loop may call
	// it. Without it, a Server with a Divert has no event loops (a Divert that looks a tombstone
	// up in a store over the network would stall every connection of a loop).
	DivertInLoop bool
}

// Server serves a Proxy on listeners. Plain HTTP/1.1 requests of the common kind (a method
// other than CONNECT; an origin-form target; a Content-Length body or none; no Upgrade, Expect
// or Transfer-Encoding; Connection only keep-alive or close; no Switchyard-* field; see
// internal/h1 for the exact subset) take a fast path: a strict parser, the Proxy's cached
// route, and a pooled keep-alive connection to the VM's conman, with large bodies spliced by
// the kernel. Every other connection — from the first request outside that subset on, TLS
// connections, requests Divert claims, and requests whose forwarding headers need
// Config.TrustForwarded — is handed, with the bytes read so far, to a net/http server serving
// Handler, which answers it exactly as Proxy's ServeHTTP does (upgrades, chunked bodies and
// trailers, HTTP/2 over TLS, 100-continue). Both paths strip Switchyard-* fields, send the
// per-VM credential, count the same metrics and retry on another VM the same way.
//
// The fast path does not notice a client that leaves while the app is still working on its
// answer (net/http's path cancels the request); it notices at the first write.
//
// Proxy's ServeHTTP stays usable on its own: Server is an option for the listeners of a
// cluster's hosting proxy.
type Server struct {
	cfg     ServerConfig
	h       *Proxy
	handler http.Handler
	pool    *h1.Pool
	slow    *http.Server
	handoff *handoffListener

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*fastConn]struct{}
	closing   bool
	slowOnce  sync.Once
	wg        sync.WaitGroup
	idle      chan struct{} // closed when closing and conns is empty

	closed bool                // Close was called: nothing is served any more
	park   *idlepark.Set[bool] // idle connections, with whether they are fresh; nil: none
	loops  *loops              // event loops; nil: none

	handoffs    atomic.Int64 // connections given to net/http, for tests
	closingFlag atomic.Bool  // closing, for the fast path's checks without the lock
}

// ErrHandedOff is passed to Diversion.Done when the fast path did not forward the request
// itself but gave it to ServerConfig.Handler.
var ErrHandedOff = errors.New("hosting: request handed to net/http")

// Diversion is ServerConfig.Divert's decision for one request. The zero value sends it to Proxy.
type Diversion struct {
	// Handoff sends the connection, from this request on, to Handler (net/http).
	Handoff bool
	// URL, when set, forwards the request on the fast path to this plain-HTTP hosting proxy
	// (another cluster's) instead of Proxy: method, target, Host and fields unchanged but for
	// the hop-by-hop and forwarding fields (the chain starts here, as for an untrusted peer;
	// requests that carry forwarding fields are handed off instead), plus Fields. The answer is
	// passed on as it is, Switchyard-* fields included.
	URL *url.URL
	// Fields are added to a forwarded request: name, value, name, value, ...
	Fields []string
	// Done is called exactly once when a forward ends: err is nil when the other side
	// answered, ErrHandedOff when the fast path gave the request to Handler after all (it
	// carries forwarding fields, or URL is not plain HTTP); started reports whether any of the
	// answer reached the client. When err is another error and nothing was sent, the client
	// is answered status with msg.
	Done func(err error, started bool) (status int, msg string)
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Proxy == nil {
		return nil, errors.New("hosting: ServerConfig.Proxy is required")
	}
	if cfg.Handler != nil && cfg.Divert == nil {
		return nil, errors.New("hosting: ServerConfig.Divert is required with a Handler")
	}
	if cfg.Handler == nil {
		cfg.Handler = cfg.Proxy
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	if cfg.ParkIdleAfter == 0 {
		cfg.ParkIdleAfter = 50 * time.Millisecond
	}
	if cfg.ParkColdAfter == 0 {
		cfg.ParkColdAfter = time.Second
	}
	s := &Server{
		cfg:       cfg,
		h:         cfg.Proxy,
		handler:   cfg.Handler,
		pool:      h1.NewPool(256, 90*time.Second, 256<<10),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*fastConn]struct{}),
	}
	s.handoff = newHandoffListener(&s.handoffs)
	if cfg.EventLoops == 0 {
		cfg.EventLoops = runtime.GOMAXPROCS(0)
	}
	if cfg.EventLoops > 0 && loopsSupported && (cfg.Divert == nil || cfg.DivertInLoop) {
		s.loops = newLoops(s, cfg.EventLoops)
	}
	if cfg.ParkIdleAfter > 0 {
		s.park = idlepark.New(func(nc net.Conn, fresh bool) {
			if c := s.unpark(nc, fresh); c != nil {
				c.serve()
			}
		}, cfg.ParkColdAfter)
	}
	s.slow = &http.Server{
		Handler:           cfg.Handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          s.h.rp.ErrorLog,
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newServerCollector(s)); err != nil {
			return nil, fmt.Errorf("hosting: register the server's metrics: %w", err)
		}
	}
	return s, nil
}

// Serve accepts connections on l until Shutdown or Close, and returns http.ErrServerClosed
// then (or the listener's error).
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	s.slowOnce.Do(func() {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = s.slow.Serve(s.handoff) }()
	})
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if _, ok := nc.(*tls.Conn); ok {
			// net/http does the handshake and speaks HTTP/2 when the client asks.
			s.handoff.push(nc)
			continue
		}
		c := &fastConn{s: s, nc: nc, fresh: true}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go c.serve()
	}
}

// unpark takes back a parked connection that woke (or that Shutdown drains): nil, and the
// connection closed, when the Server is closed, or shutting down and the connection is idle
// between requests, or Shutdown is past draining the parked connections (s.idle is set).
func (s *Server) unpark(nc net.Conn, fresh bool) *fastConn {
	c := &fastConn{s: s, nc: nc, fresh: fresh}
	s.mu.Lock()
	if s.closed || s.closing && (!fresh || s.idle != nil) {
		s.mu.Unlock()
		_ = nc.Close()
		return nil
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	return c
}

// Parked returns the number of parked idle connections (see ServerConfig.ParkIdleAfter).
func (s *Server) Parked() int { return s.park.Len() }

// Looped returns the number of client connections the Server's event loops hold.
func (s *Server) Looped() int { return s.loops.count() }

// resumeFromLoop serves c, which an event loop handed back with pending (bytes read from the
// client) and in (the request it began, or nil), on this goroutine.
func (s *Server) resumeFromLoop(c *fastConn, pending []byte, in *inflight) {
	nc, err := idlepark.Attach(c.ls.fd, c.ls.w)
	c.ls.fd, c.ls.w = -1, nil
	if err != nil {
		if in != nil {
			in.abandon(s)
		}
		s.forget(c)
		return
	}
	c.mu.Lock()
	c.nc, c.inLoop = nc, false
	c.mu.Unlock()
	c.rd = h1.NewReader(nc, 2048, c.maxHead())
	c.rd.Preload(pending)
	c.run(in)
}

// Shutdown stops the listeners, closes idle fast-path connections (a connection that has not
// sent its first request yet is still answered), waits for the fast path's requests to end and
// shuts down the net/http server of the handed-off connections (http.Server.Shutdown). It does
// not wait for upgraded connections: call Proxy.Shutdown too. When ctx ends first it closes the
// remaining connections and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.closingFlag.Store(true)
	for l := range s.listeners {
		_ = l.Close()
	}
	for c := range s.conns {
		c.wake()
	}
	s.mu.Unlock()
	// Parked connections come back: the idle ones are closed, a new one that has not sent its
	// first request yet may still send it.
	s.loops.shutdown()
	s.park.Drain(func(nc net.Conn, fresh bool) {
		if c := s.unpark(nc, fresh); c != nil {
			go c.serve()
		}
	})
	s.mu.Lock()
	if s.idle == nil {
		s.idle = make(chan struct{})
		if len(s.conns) == 0 {
			close(s.idle)
		}
	}
	idle := s.idle
	s.mu.Unlock()
	s.handoff.close()
	err := s.slow.Shutdown(ctx)
	select {
	case <-idle:
	case <-ctx.Done():
		s.closeConns()
		err = ctx.Err()
	}
	s.pool.Close()
	if err == nil {
		s.wg.Wait()
	}
	return err
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	s.closingFlag.Store(true)
	for l := range s.listeners {
		_ = l.Close()
	}
	s.closed = true
	s.mu.Unlock()
	s.handoff.close()
	err := s.slow.Close()
	s.closeConns()
	s.loops.close()
	_ = s.park.Close()
	s.pool.Close()
	return err
}

func (s *Server) closeConns() {
	s.mu.Lock()
	for c := range s.conns {
		c.mu.Lock()
		if !c.inLoop {
			_ = c.nc.Close()
		}
		c.mu.Unlock()
	}
	s.mu.Unlock()
	s.loops.close()
}

func (s *Server) forget(c *fastConn) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.idle != nil && len(s.conns) == 0 {
		select {
		case <-s.idle:
		default:
			close(s.idle)
		}
	}
	s.mu.Unlock()
}

// handoffListener is the listener of the net/http server: connections the fast path gives up.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
	n    *atomic.Int64
}

func newHandoffListener(n *atomic.Int64) *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: &net.TCPAddr{}, n: n}
}

func (l *handoffListener) push(c net.Conn) {
	l.n.Add(1)
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) close() { l.once.Do(func() { close(l.done) }) }

func (l *handoffListener) Close() error { l.close(); return nil }

func (l *handoffListener) Addr() net.Addr { return l.addr }
