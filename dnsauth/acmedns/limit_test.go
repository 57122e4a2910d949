package acmedns

import (
	"net/netip"
	"testing"
	"time"
)

// A flood of addresses neither grows the limiter past maxLimited nor escapes the limit: once
// full, new addresses share one bucket.
func TestLimiterBounded(t *testing.T) {
	l := newLimiter(1, 0)
	now := time.Unix(1_800_000_000, 0)
	ok := 0
	for i := range 3 * maxLimited {
		if l.take(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now) == 0 {
			ok++
		}
	}
	if len(l.buckets) > maxLimited+1 || ok != maxLimited+1 {
		t.Fatalf("%d buckets, %d allowed; want at most %d and exactly %d", len(l.buckets), ok, maxLimited+1, maxLimited+1)
	}
	// A minute later every bucket has refilled, so the old ones are pruned for new addresses.
	now = now.Add(time.Minute)
	if l.take(netip.MustParseAddr("192.0.2.1"), now) != 0 || len(l.buckets) > 2 {
		t.Fatalf("after refill: %d buckets", len(l.buckets))
	}
	if newLimiter(-1, 10).take(netip.Addr{}, now) != 0 {
		t.Fatal("a negative limit limits")
	}
}
