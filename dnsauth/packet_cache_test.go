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
		c.put(key(i), &cachedAnswer{resp: []byte{byte(i)}, expires: now.Add(time.Minute)})
		if len(c.entries) > 100 {
			t.Fatalf("after %d puts the cache holds %d answers, more than its bound 100", i+1, len(c.entries))
		}
	}
	if c.get([]byte(key(149)), now) == nil {
		t.Fatal("the newest answer is not in the cache")
	}
	if len(c.entries) != 100 {
		t.Fatalf("the full cache holds %d answers, want 100", len(c.entries))
	}
}
