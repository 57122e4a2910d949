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
// connection's address, never by a header a client could forge.
func RateLimit(h http.Handler, r Rate) http.Handler {
	if r.PerSecond <= 0 {
		r.PerSecond = 50
	}
	if r.Burst <= 0 {
		r.Burst = int(2 * r.PerSecond)
	}
	limited := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchyard_connlimit_rate_limited_total", Help: "Requests refused over a client's rate.",
		ConstLabels: prometheus.Labels{"handler": r.Name},
	})
	if r.Registerer != nil {
		r.Registerer.MustRegister(limited)
	}
	var (
		mu      sync.Mutex
		buckets = map[netip.Prefix]*bucket{}
		swept   = time.Now()
	)
	allow := func(key netip.Prefix, now time.Time) (bool, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if now.Sub(swept) > time.Minute || len(buckets) > 100_000 {
			// Full buckets are the default: forget them.
			for k, b := range buckets {
				if b.tokens+now.Sub(b.last).Seconds()*r.PerSecond >= float64(r.Burst) {
					delete(buckets, k)
				}
			}
			swept = now
		}
		b := buckets[key]
		if b == nil {
			b = &bucket{tokens: float64(r.Burst), last: now}
			buckets[key] = b
		}
		b.tokens = min(float64(r.Burst), b.tokens+now.Sub(b.last).Seconds()*r.PerSecond)
		b.last = now
		if b.tokens >= 1 {
			b.tokens--
			return true, 0
		}
		return false, time.Duration((1 - b.tokens) / r.PerSecond * float64(time.Second))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		key, ok := clientKey(addrOf(req.RemoteAddr))
		if ok && (r.Exempt == nil || !r.Exempt(key.Addr())) {
			if ok, wait := allow(key, time.Now()); !ok {
				limited.Inc()
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
