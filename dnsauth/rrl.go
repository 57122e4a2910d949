package dnsauth

import (
	"net/netip"
	"sync"
	"time"
)

// Response-rate limiting (RRL), as NSD, Knot and BIND do it: UDP answers are counted per client
// prefix and per kind of answer (one name and type; all the nonexistent names of a zone
// together; all errors together). Past the rate, answers are dropped, except every Slip-th, which
// goes out truncated and empty (TC set): a real client whose address a flood spoofs then retries
// over TCP, which cannot be spoofed, while the flood's victim gets almost nothing. TCP answers
// and clients with a valid DNS cookie are never limited.

// RRL configures response-rate limiting.
type RRL struct {
	// ResponsesPerSecond is the rate per client prefix and kind of answer (bursts of as many).
	// Zero means 100.
	ResponsesPerSecond int
	// Slip: every Slip-th limited answer is sent truncated instead of dropped. Zero means 2;
	// 1 truncates every one; negative drops every one.
	Slip int
	// IPv4PrefixLen and IPv6PrefixLen group clients. Zero means 24 and 56.
	IPv4PrefixLen, IPv6PrefixLen int
	// Prefixes gives clients in a prefix another rate (the longest match wins); a rate of 0
	// exempts them (e.g. the platform's own resolvers).
	Prefixes []PrefixRate
	// MaxEntries bounds the table of counters; the oldest are forgotten first. Zero means 100,000.
	MaxEntries int
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// PrefixRate is the rate for one client prefix.
type PrefixRate struct {
	Prefix             netip.Prefix
	ResponsesPerSecond int
}

type rrlAction int

const (
	rrlSend rrlAction = iota
	rrlDrop
	rrlSlip
)

type rrlKey struct {
	prefix netip.Prefix
	class  uint64
}

type rrlBucket struct {
	tokens  float64
	last    time.Time
	limited uint32
}

const rrlShards = 32

type rrlLimiter struct {
	cfg    RRL
	shards [rrlShards]struct {
		mu sync.Mutex
		m  map[rrlKey]*rrlBucket
	}
}

func newRRL(cfg RRL) *rrlLimiter {
	if cfg.ResponsesPerSecond <= 0 {
		cfg.ResponsesPerSecond = 100
	}
	if cfg.Slip == 0 {
		cfg.Slip = 2
	}
	if cfg.IPv4PrefixLen <= 0 || cfg.IPv4PrefixLen > 32 {
		cfg.IPv4PrefixLen = 24
	}
	if cfg.IPv6PrefixLen <= 0 || cfg.IPv6PrefixLen > 128 {
		cfg.IPv6PrefixLen = 56
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 100_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &rrlLimiter{cfg: cfg}
	for i := range l.shards {
		l.shards[i].m = make(map[rrlKey]*rrlBucket)
	}
	return l
}

// rate is the rate for ip: a Prefixes match (longest wins) or the default.
func (l *rrlLimiter) rate(ip netip.Addr) int {
	best, rate := -1, l.cfg.ResponsesPerSecond
	for _, p := range l.cfg.Prefixes {
		if p.Prefix.Contains(ip) && p.Prefix.Bits() > best {
			best, rate = p.Prefix.Bits(), p.ResponsesPerSecond
		}
	}
	return rate
}

// decide counts one answer of class to ip and says what to do with it.
func (l *rrlLimiter) decide(ip netip.Addr, class uint64) rrlAction {
	ip = ip.Unmap()
	rate := l.rate(ip)
	if rate <= 0 {
		return rrlSend
	}
	bitsLen := l.cfg.IPv6PrefixLen
	if ip.Is4() {
		bitsLen = l.cfg.IPv4PrefixLen
	}
	prefix, _ := ip.Prefix(bitsLen)
	key := rrlKey{prefix: prefix, class: class}
	sh := &l.shards[class%rrlShards]
	now := l.cfg.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[key]
	if b == nil {
		if len(sh.m) >= l.cfg.MaxEntries/rrlShards {
			for k, old := range sh.m { // forget idle counters, then anything if need be
				if now.Sub(old.last) > 2*time.Second || len(sh.m) >= l.cfg.MaxEntries/rrlShards {
					delete(sh.m, k)
				}
			}
		}
		b = &rrlBucket{tokens: float64(rate), last: now}
		sh.m[key] = b
	}
	b.tokens = min(float64(rate), b.tokens+now.Sub(b.last).Seconds()*float64(rate))
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return rrlSend
	}
	b.limited++
	if l.cfg.Slip > 0 && b.limited%uint32(l.cfg.Slip) == 0 {
		return rrlSlip
	}
	return rrlDrop
}

// fnv1a hashes s (case as given) onto h, without allocating.
func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

const fnvOffset = 14695981039346656037
