// Package connlimit bounds what one client, and all of them together, can hold of a server: a
// cap on concurrent connections per client IP, a descriptor budget shared by every listener of
// a process (so the process answers 503 long before accept fails with EMFILE and its own
// clients, files and sockets starve), and a per-IP request rate for HTTP handlers.
//
// Wrap each public listener with a Listener sharing one Budget, and the handler with
// RateLimit:
//
//	budget := connlimit.NewBudget(0) // 90 % of RLIMIT_NOFILE
//	ln = connlimit.NewListener(ln, connlimit.Config{Name: "hosting", PerIP: 256, Budget: budget})
//	srv := &http.Server{Handler: connlimit.RateLimit(h, connlimit.Rate{PerSecond: 50, Burst: 100}), ...}
//
// A connection over a limit is answered with a plain HTTP/1.1 503 (or 429 for a rate) and
// closed, so a client sees why; the refusal is counted by reason. Connections keep their slot
// until closed: pair the listener with http.Server's ReadHeaderTimeout and IdleTimeout, so
// idle ones give their slot back.
package connlimit

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Budget is a number of descriptors that the listeners sharing it may hold in connections.
type Budget struct {
	max  int64
	used atomic.Int64
}

// NewBudget returns a budget of max connections. Zero or less means 90 % of the process's
// RLIMIT_NOFILE (the rest is left to files, outbound connections and the runtime).
func NewBudget(max int64) *Budget {
	if max <= 0 {
		var rl syscall.Rlimit
		max = 1 << 16
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 0 {
			max = int64(rl.Cur) * 9 / 10
		}
	}
	return &Budget{max: max}
}

// Max is the budget; Used the connections holding it now.
func (b *Budget) Max() int64  { return b.max }
func (b *Budget) Used() int64 { return b.used.Load() }

func (b *Budget) take() bool {
	if b.used.Add(1) > b.max {
		b.used.Add(-1)
		return false
	}
	return true
}

func (b *Budget) give() { b.used.Add(-1) }

// Config configures a Listener.
type Config struct {
	// Name labels the listener's metrics and logs (e.g. "hosting").
	Name string
	// PerIP caps the concurrent connections of one client IP (IPv6 clients by /64). Zero means
	// 512; negative means no cap.
	PerIP int
	// Budget is shared by every listener of the process. Nil means none.
	Budget *Budget
	// Exempt, if set, reports client addresses that no limit applies to (the platform's own
	// proxies forwarding on behalf of many clients).
	Exempt func(netip.Addr) bool
	// Registerer receives switchyard_connlimit_refused_total{listener,reason} and
	// switchyard_connlimit_connections{listener}. Nil means none.
	Registerer prometheus.Registerer
	// Logger receives a line for the first refusal of a client in a minute. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Listener is a net.Listener that refuses connections over its limits.
type Listener struct {
	net.Listener
	cfg     Config
	log     *slog.Logger
	refused *prometheus.CounterVec
	open    prometheus.Gauge

	mu     sync.Mutex
	perIP  map[netip.Prefix]int
	logged map[netip.Prefix]time.Time
}

// NewListener wraps ln. It panics if cfg.Registerer refuses its metrics (a duplicate Name).
func NewListener(ln net.Listener, cfg Config) *Listener {
	if cfg.PerIP == 0 {
		cfg.PerIP = 512
	}
	l := &Listener{Listener: ln, cfg: cfg, log: cfg.Logger, perIP: map[netip.Prefix]int{}, logged: map[netip.Prefix]time.Time{}}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchyard_connlimit_refused_total", Help: "Connections refused over a limit, by reason (per_ip, budget).",
		ConstLabels: prometheus.Labels{"listener": cfg.Name},
	}, []string{"reason"})
	l.open = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "switchyard_connlimit_connections", Help: "Connections open through the listener.",
		ConstLabels: prometheus.Labels{"listener": cfg.Name},
	})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(l.refused, l.open)
	}
	return l
}

// clientKey groups a client: its IPv4 address, or its IPv6 /64.
func clientKey(addr net.Addr) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}, false
	}
	return prefixOf(ap.Addr())
}

// prefixOf is the key a client address counts under: the IPv4 address, or the IPv6 /64.
func prefixOf(addr netip.Addr) (netip.Prefix, bool) {
	if !addr.IsValid() {
		return netip.Prefix{}, false
	}
	ip := addr.Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32), true
	}
	p, _ := ip.Prefix(64)
	return p, true
}

// Accept returns the next connection within the limits; those over them are answered 503 and
// closed in the background.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, ok := clientKey(c.RemoteAddr())
		if ok && l.cfg.Exempt != nil && l.cfg.Exempt(key.Addr()) {
			ok = false
		}
		if b := l.cfg.Budget; b != nil && !b.take() {
			l.refuse(c, key, "budget", "the server is at its connection limit")
			continue
		}
		if ok && l.cfg.PerIP > 0 {
			l.mu.Lock()
			if l.perIP[key] >= l.cfg.PerIP {
				l.mu.Unlock()
				if l.cfg.Budget != nil {
					l.cfg.Budget.give()
				}
				l.refuse(c, key, "per_ip", "too many connections from your address")
				continue
			}
			l.perIP[key]++
			l.mu.Unlock()
		}
		l.open.Inc()
		return &conn{Conn: c, l: l, key: key, counted: ok && l.cfg.PerIP > 0}, nil
	}
}

func (l *Listener) refuse(c net.Conn, key netip.Prefix, reason, msg string) {
	l.refused.WithLabelValues(reason).Inc()
	l.mu.Lock()
	now := time.Now()
	if t, seen := l.logged[key]; !seen || now.Sub(t) > time.Minute {
		l.logged[key] = now
		if len(l.logged) > 4096 {
			clear(l.logged)
		}
		l.mu.Unlock()
		l.log.Warn("connlimit: connection refused", "listener", l.cfg.Name, "client", key, "reason", reason)
	} else {
		l.mu.Unlock()
	}
	// A short, bounded answer, off the accept loop.
	go func() {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\nRetry-After: 5\r\nContent-Length: "+itoa(len(msg)+1)+"\r\n\r\n"+msg+"\n")
		c.Close()
	}()
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for n >= 10 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	i--
	b[i] = byte('0' + n)
	return string(b[i:])
}

type conn struct {
	net.Conn
	l       *Listener
	key     netip.Prefix
	counted bool
	once    sync.Once
}

// NetConn returns the connection the listener accepted (as tls.Conn.NetConn does), e.g. to
// duplicate its descriptor for a handoff to another process.
func (c *conn) NetConn() net.Conn { return c.Conn }

// SetNetConn replaces the connection underneath, closing the old one, while the connection stays
// counted: hosting.Server parks an idle connection's socket this way (internal/idlepark's
// Rewrapper). Only while nothing else uses the connection.
func (c *conn) SetNetConn(nc net.Conn) {
	_ = c.Conn.Close()
	c.Conn = nc
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.counted {
			c.l.mu.Lock()
			if c.l.perIP[c.key]--; c.l.perIP[c.key] <= 0 {
				delete(c.l.perIP, c.key)
			}
			c.l.mu.Unlock()
		}
		if c.l.cfg.Budget != nil {
			c.l.cfg.Budget.give()
		}
		c.l.open.Dec()
	})
	return err
}
