package acmedns

import (
	"net/netip"
	"sync"
	"time"
)

// maxLimited bounds how many client addresses the per-address limiter tracks: beyond it, buckets
// that have refilled are dropped (swept at most once a second) (they hold nothing a new bucket would not), and if none has,
// every new address shares one bucket, so a flood of addresses cannot grow memory.
const maxLimited = 16384

// limiter is a token bucket per key: perMinute tokens a minute, holding at most perMinute.
type limiter struct {
	perMinute float64
	mu        sync.Mutex
	buckets   map[netip.Addr]*bucket
	pruned    time.Time // last prune: a full map is swept at most once a second
}

type bucket struct {
	tokens float64
	at     time.Time
}

// newLimiter returns a limiter of n a minute (zero: def; negative: nil, no limit).
func newLimiter(n, def int) *limiter {
	if n < 0 {
		return nil
	}
	if n == 0 {
		n = def
	}
	return &limiter{perMinute: float64(n), buckets: map[netip.Addr]*bucket{}}
}

// take spends a token of key's bucket; when there is none it returns how long until there is.
func (l *limiter) take(key netip.Addr, now time.Time) time.Duration {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxLimited && now.Sub(l.pruned) >= time.Second {
			l.prune(now)
		}
		if len(l.buckets) >= maxLimited {
			key = netip.IPv6Unspecified() // the overflow bucket, shared
			if b, ok = l.buckets[key]; !ok {
				b = &bucket{tokens: l.perMinute, at: now}
				l.buckets[key] = b
			}
		} else {
			b = &bucket{tokens: l.perMinute, at: now}
			l.buckets[key] = b
		}
	}
	b.tokens = min(l.perMinute, b.tokens+now.Sub(b.at).Minutes()*l.perMinute)
	b.at = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) / l.perMinute * float64(time.Minute))
	}
	b.tokens--
	return 0
}

func (l *limiter) prune(now time.Time) {
	l.pruned = now
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Minutes()*l.perMinute >= l.perMinute {
			delete(l.buckets, k)
		}
	}
}
