package connlimit

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Rate is a per-client request rate: a token bucket of Burst requests refilled at PerSecond.
type Rate struct {
	// PerSecond is the sustained rate. Zero means 50.
	PerSecond float64
	// Burst is how many requests may come at once. Zero means 2×PerSecond.
	Burst int
	// Name labels the metric switchyard_connlimit_rate_limited_total{handler}.
	Name string
	// Exempt, if set, reports client addresses the rate does not apply to.
	Exempt func(netip.Addr) bool
	// Registerer receives the metric. Nil means none.
	Registerer prometheus.Registerer
}

type bucket struct {
	tokens float64
	last   time.Time
}

// RateLimit returns h behind a per-client-IP rate limit (IPv6 clients by /64): requests over
// it get 429 with Retry-After, and h never sees them. Clients are told apart by the
// connection's address, never by a header a client could forge. It is NewLimiter(r).Wrap(h).
func RateLimit(h http.Handler, r Rate) http.Handler {
	return NewLimiter(r).Wrap(h)
}

// A Limiter is a per-client-IP request rate (Rate), for servers that see requests outside an
// http.Handler too (hosting.Server's fast path asks Allow from its Divert, and serves the rest
// through Wrap). It is safe for concurrent use.
type Limiter struct {
	r       Rate
	limited prometheus.Counter

	mu      sync.Mutex
	buckets map[netip.Prefix]*bucket
	swept   time.Time
}

// NewLimiter returns a Limiter for r and registers its metric with r.Registerer.
func NewLimiter(r Rate) *Limiter {
	if r.PerSecond <= 0 {
		r.PerSecond = 50
	}
	if r.Burst <= 0 {
		r.Burst = int(2 * r.PerSecond)
	}
	l := &Limiter{r: r, buckets: map[netip.Prefix]*bucket{}, swept: time.Now()}
	l.limited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchyard_connlimit_rate_limited_total", Help: "Requests refused over a client's rate.",
		ConstLabels: prometheus.Labels{"handler": r.Name},
	})
	if r.Registerer != nil {
		r.Registerer.MustRegister(l.limited)
	}
	return l
}

// Allow takes one request from addr's bucket and reports whether it may go on; when not, it
// says how long until it could and takes nothing, so a caller may hand the request to Wrap's
// handler, which refuses it (429) and counts it.
func (l *Limiter) Allow(addr netip.Addr) (bool, time.Duration) {
	key, ok := prefixOf(addr)
	if !ok || (l.r.Exempt != nil && l.r.Exempt(key.Addr())) {
		return true, 0
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute || len(l.buckets) > 100_000 {
		// Full buckets are the default: forget them.
		for k, b := range l.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*l.r.PerSecond >= float64(l.r.Burst) {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: float64(l.r.Burst), last: now}
		l.buckets[key] = b
	}
	b.tokens = min(float64(l.r.Burst), b.tokens+now.Sub(b.last).Seconds()*l.r.PerSecond)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.r.PerSecond * float64(time.Second))
}

// Wrap returns h behind the limit: requests over it get 429 with Retry-After and are counted
// in switchyard_connlimit_rate_limited_total; h never sees them.
func (l *Limiter) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		key, ok := clientKey(addrOf(req.RemoteAddr))
		if ok {
			if ok, wait := l.Allow(key.Addr()); !ok {
				l.limited.Inc()
				w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
				http.Error(w, "too many requests from your address", http.StatusTooManyRequests)
				return
			}
		}
		h.ServeHTTP(w, req)
	})
}

type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

func addrOf(s string) net.Addr { return strAddr(s) }
