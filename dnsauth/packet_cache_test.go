package dnsauth

import (
	"fmt"
	"testing"
	"time"
)

// A full answer cache stays at its bound and keeps most of what it held: a new answer replaces
// one old one, so a working set just above the bound still mostly hits.
func TestAnswerCacheEvictsOne(t *testing.T) {
	s := &PacketServer{CacheEntries: 100}
	c := s.newCache()
	now := time.Now()
	key := func(i int) string { return fmt.Sprintf("query %d", i) }
	for i := 0; i < 150; i++ {
		c.put(key(i), cachedAnswer{resp: []byte{byte(i)}, expires: now.Add(time.Minute)})
		if len(c.entries) > 100 {
			t.Fatalf("after %d puts the cache holds %d answers, more than its bound 100", i+1, len(c.entries))
		}
	}
	if _, ok := c.get([]byte(key(149)), now); !ok {
		t.Fatal("the newest answer is not in the cache")
	}
	if len(c.entries) != 100 {
		t.Fatalf("the full cache holds %d answers, want 100", len(c.entries))
	}
}

// Without Version an answer is reused 2 s by default; with Version (which drops answers on a
// change) a minute; an explicit AnswerTTL wins either way.
func TestAnswerTTLDefault(t *testing.T) {
	v := func() uint64 { return 0 }
	for _, c := range []struct {
		s    *PacketServer
		want time.Duration
	}{
		{&PacketServer{}, 2 * time.Second},
		{&PacketServer{Version: v}, time.Minute},
		{&PacketServer{Version: v, AnswerTTL: time.Second}, time.Second},
		{&PacketServer{AnswerTTL: 5 * time.Second}, 5 * time.Second},
	} {
		if got := c.s.ttl(); got != c.want {
			t.Errorf("AnswerTTL %v, Version set %v: reused %v, want %v", c.s.AnswerTTL, c.s.Version != nil, got, c.want)
		}
	}
	if (&PacketServer{AnswerTTL: -1, Version: v}).newCache() != nil {
		t.Error("a negative AnswerTTL still caches")
	}
}
