package lore_test

import (
	"context"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/lore/loretest"
)

func newMemStore(t *testing.T, cfg lore.MemStoreConfig) *lore.MemStore {
	t.Helper()
	s, err := lore.NewMemStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMemStoreConformance(t *testing.T) {
	loretest.Run(t, func(t *testing.T) lore.Store { return newMemStore(t, lore.MemStoreConfig{}) })
}

func TestMemStoreConformanceSmallBuffer(t *testing.T) {
	loretest.Run(t, func(t *testing.T) lore.Store { return newMemStore(t, lore.MemStoreConfig{WatchBuffer: 200}) })
}

// TestMemStoreWatchOverflow: a watcher that falls behind its buffer has its channel closed after
// exactly the buffered events, while its context is live.
func TestMemStoreWatchOverflow(t *testing.T) {
	s := newMemStore(t, lore.MemStoreConfig{WatchBuffer: 3})
	ctx := context.Background()
	s.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a"})
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a1", "a2", "a3", "a4", "a5"} {
		if _, err := s.CreateRepl(ctx, lore.Repl{ID: id, Owner: "o", Slug: id, Cluster: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for ev := range ch {
		got = append(got, ev.Repl.ID)
	}
	if len(got) != 3 || got[0] != "a1" || got[2] != "a3" {
		t.Fatalf("got %v, want the first 3 then a close", got)
	}
	// Closing the store closes the other watchers and refuses new ones.
	ch2, _ := s.Watch(ctx)
	s.Close()
	if _, ok := <-ch2; ok {
		t.Fatal("watch open after Close")
	}
	if _, err := s.Watch(ctx); err == nil {
		t.Fatal("Watch after Close succeeded")
	}
	if _, err := s.Repl(ctx, "a1"); err != nil {
		t.Fatalf("reads after Close: %v", err)
	}
}
