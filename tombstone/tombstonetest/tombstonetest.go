// Package tombstonetest is the conformance suite every tombstone.Store must pass.
//
//	func TestMyStore(t *testing.T) {
//		tombstonetest.Run(t, func(t *testing.T, now func() time.Time) tombstone.Store {
//			return newMyStore(t, now) // a fresh, empty store whose clock is now
//		})
//	}
package tombstonetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/tombstone"
)

// Clock is a settable clock for stores under test.
type Clock struct{ ns atomic.Int64 }

// NewClock returns a clock reading t.
func NewClock(t time.Time) *Clock {
	c := &Clock{}
	c.ns.Store(t.UnixNano())
	return c
}

// Now reads the clock.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// NewStore returns a fresh, empty store whose clock is now.
type NewStore func(t *testing.T, now func() time.Time) tombstone.Store

var epoch = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

func stone(repl, owner, slug, cluster string, created time.Time, ttl time.Duration) tombstone.Tombstone {
	return tombstone.Tombstone{Repl: repl, Owner: owner, Slug: slug, Cluster: cluster, Created: created, Expires: created.Add(ttl)}
}

// Run runs the conformance suite against stores made by newStore.
func Run(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	setup := func(t *testing.T) (tombstone.Store, *Clock) {
		clock := NewClock(epoch)
		return newStore(t, clock.Now), clock
	}

	t.Run("PutGet", func(t *testing.T) {
		s, _ := setup(t)
		want := stone("r1", "alice", "blog", "b", epoch, time.Hour)
		must(t, s.Put(ctx, want))
		got, err := s.Get(ctx, "r1")
		must(t, err)
		equal(t, want, got)
		got, err = s.GetByName(ctx, "alice", "blog")
		must(t, err)
		equal(t, want, got)
	})
	t.Run("Missing", func(t *testing.T) {
		s, _ := setup(t)
		isErr(t, ignore(s.Get(ctx, "nope")), tombstone.ErrNotFound)
		isErr(t, ignore(s.GetByName(ctx, "alice", "blog")), tombstone.ErrNotFound)
		isErr(t, ignore(s.GetByName(ctx, "", "")), tombstone.ErrNotFound)
		isErr(t, s.Delete(ctx, "nope"), tombstone.ErrNotFound)
		l, err := s.List(ctx)
		must(t, err)
		if len(l) != 0 {
			t.Fatalf("List of an empty store = %v", l)
		}
	})
	t.Run("PutReplaces", func(t *testing.T) {
		s, _ := setup(t)
		must(t, s.Put(ctx, stone("r1", "alice", "blog", "b", epoch, time.Hour)))
		want := stone("r1", "alice", "blog", "c", epoch.Add(time.Minute), 2*time.Hour)
		must(t, s.Put(ctx, want))
		got, err := s.Get(ctx, "r1")
		must(t, err)
		equal(t, want, got)
		l, err := s.List(ctx)
		must(t, err)
		if len(l) != 1 {
			t.Fatalf("List after replacing = %v, want one", l)
		}
	})
	t.Run("NoName", func(t *testing.T) {
		s, _ := setup(t)
		want := stone("r1", "", "", "b", epoch, time.Hour)
		must(t, s.Put(ctx, want))
		got, err := s.Get(ctx, "r1")
		must(t, err)
		equal(t, want, got)
		isErr(t, ignore(s.GetByName(ctx, "", "")), tombstone.ErrNotFound)
	})
	t.Run("Invalid", func(t *testing.T) {
		s, _ := setup(t)
		for _, ts := range []tombstone.Tombstone{
			{},
			stone("", "a", "b", "c", epoch, time.Hour),
			stone("r1", "a", "b", "", epoch, time.Hour),
			stone("r1", "a", "", "c", epoch, time.Hour),
			stone("r1", "", "b", "c", epoch, time.Hour),
			stone("r1", "a", "b", "c", epoch, 0),
			stone("r1", "a", "b", "c", epoch, -time.Hour),
			{Repl: "r1", Cluster: "c", Expires: epoch},
		} {
			isErr(t, s.Put(ctx, ts), tombstone.ErrInvalid)
		}
		isErr(t, ignore(s.Get(ctx, "r1")), tombstone.ErrNotFound)
	})
	t.Run("Expiry", func(t *testing.T) {
		s, clock := setup(t)
		must(t, s.Put(ctx, stone("short", "a", "short", "b", epoch, time.Minute)))
		must(t, s.Put(ctx, stone("long", "a", "long", "b", epoch, time.Hour)))
		clock.Advance(time.Minute - time.Nanosecond)
		must(t, ignore(s.Get(ctx, "short")))
		clock.Advance(time.Nanosecond) // expiry is exclusive: at Expires the tombstone is gone
		isErr(t, ignore(s.Get(ctx, "short")), tombstone.ErrNotFound)
		isErr(t, ignore(s.GetByName(ctx, "a", "short")), tombstone.ErrNotFound)
		l, err := s.List(ctx)
		must(t, err)
		if len(l) != 1 || l[0].Repl != "long" {
			t.Fatalf("List = %v, want only long", l)
		}
		n, err := s.DeleteExpired(ctx)
		must(t, err)
		if n != 1 {
			t.Fatalf("DeleteExpired = %d, want 1", n)
		}
		n, err = s.DeleteExpired(ctx)
		must(t, err)
		if n != 0 {
			t.Fatalf("second DeleteExpired = %d, want 0", n)
		}
		isErr(t, s.Delete(ctx, "short"), tombstone.ErrNotFound)
		must(t, ignore(s.Get(ctx, "long")))
	})
	t.Run("DeleteExpiredTombstone", func(t *testing.T) {
		s, clock := setup(t)
		must(t, s.Put(ctx, stone("r1", "a", "b", "c", epoch, time.Minute)))
		clock.Advance(time.Hour)
		must(t, s.Delete(ctx, "r1"))
	})
	t.Run("NameNewestWins", func(t *testing.T) {
		// A repl deleted and its name reused by a new repl that also moved away: the name
		// follows the newest tombstone.
		s, clock := setup(t)
		must(t, s.Put(ctx, stone("old", "alice", "blog", "b", epoch, time.Hour)))
		must(t, s.Put(ctx, stone("new", "alice", "blog", "c", epoch.Add(time.Minute), time.Hour)))
		got, err := s.GetByName(ctx, "alice", "blog")
		must(t, err)
		if got.Repl != "new" {
			t.Fatalf("GetByName = %v, want the newest", got)
		}
		clock.Advance(time.Hour + 30*time.Second) // new still lives, old has expired
		got, err = s.GetByName(ctx, "alice", "blog")
		must(t, err)
		if got.Repl != "new" {
			t.Fatalf("GetByName = %v, want new", got)
		}
		must(t, s.Delete(ctx, "new"))
		isErr(t, ignore(s.GetByName(ctx, "alice", "blog")), tombstone.ErrNotFound)
	})
	t.Run("ListOrder", func(t *testing.T) {
		s, _ := setup(t)
		for _, id := range []string{"r3", "r1", "r2"} {
			must(t, s.Put(ctx, stone(id, "o", id, "b", epoch, time.Hour)))
		}
		l, err := s.List(ctx)
		must(t, err)
		if len(l) != 3 || l[0].Repl != "r1" || l[1].Repl != "r2" || l[2].Repl != "r3" {
			t.Fatalf("List = %v, want r1 r2 r3", l)
		}
	})
	t.Run("CanceledContext", func(t *testing.T) {
		s, _ := setup(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		isErr(t, s.Put(cctx, stone("r1", "a", "b", "c", epoch, time.Hour)), context.Canceled)
		isErr(t, ignore(s.Get(cctx, "r1")), context.Canceled)
		isErr(t, ignore(s.GetByName(cctx, "a", "b")), context.Canceled)
		isErr(t, s.Delete(cctx, "r1"), context.Canceled)
		_, err := s.List(cctx)
		isErr(t, err, context.Canceled)
		_, err = s.DeleteExpired(cctx)
		isErr(t, err, context.Canceled)
	})
	t.Run("Concurrent", func(t *testing.T) {
		s, _ := setup(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8*50)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					id := fmt.Sprintf("r%d-%d", w, i)
					if err := s.Put(ctx, stone(id, "o", id, "b", epoch, time.Hour)); err != nil {
						errs <- err
						return
					}
					if _, err := s.Get(ctx, id); err != nil {
						errs <- err
						return
					}
					if i%2 == 0 {
						if err := s.Delete(ctx, id); err != nil {
							errs <- err
							return
						}
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		l, err := s.List(ctx)
		must(t, err)
		if len(l) != 8*25 {
			t.Fatalf("List has %d tombstones, want %d", len(l), 8*25)
		}
	})
}

func ignore(_ tombstone.Tombstone, err error) error { return err }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func isErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
}

func equal(t *testing.T, want, got tombstone.Tombstone) {
	t.Helper()
	if want.Repl != got.Repl || want.Owner != got.Owner || want.Slug != got.Slug || want.Cluster != got.Cluster ||
		!want.Created.Equal(got.Created) || !want.Expires.Equal(got.Expires) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
