package lore_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestMemStoreConformanceCollisions runs the suite with every index hash equal, so every repl
// but the first of each index is found through the overflow maps by its real bytes.
func TestMemStoreConformanceCollisions(t *testing.T) {
	loretest.Run(t, func(t *testing.T) lore.Store {
		s := newMemStore(t, lore.MemStoreConfig{})
		lore.SetHashMask(s, 0)
		return s
	})
}

// TestMemStoreConformanceCompacting runs the suite with the repl arena rebuilt after every write
// that leaves more garbage than live records.
func TestMemStoreConformanceCompacting(t *testing.T) {
	loretest.Run(t, func(t *testing.T) lore.Store {
		s := newMemStore(t, lore.MemStoreConfig{})
		lore.SetCompactThreshold(s, 1)
		return s
	})
}

// TestMemStoreModel drives the store with random creates, moves and deletes against a plain map
// and checks every lookup and the whole listing after each step, with hashes masked to 4 bits
// (constant collisions) and the arena compacting often. Repls read before a compaction must
// keep their values: their strings point into the chunks the compaction replaced.
func TestMemStoreModel(t *testing.T) {
	for _, mask := range []uint64{0xf, ^uint64(0)} {
		t.Run(fmt.Sprintf("mask=%#x", mask), func(t *testing.T) {
			s := newMemStore(t, lore.MemStoreConfig{})
			lore.SetHashMask(s, mask)
			lore.SetCompactThreshold(s, 256)
			ctx := context.Background()
			for _, c := range []string{"a", "bb", "ccc"} {
				if _, err := s.PutCluster(ctx, lore.Cluster{ID: c}); err != nil {
					t.Fatal(err)
				}
			}
			rng := rand.New(rand.NewPCG(1, mask))
			model := map[string]lore.Repl{} // by ID
			var held, copies []lore.Repl    // values read earlier, and deep copies of them
			created := time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
			for step := 0; step < 3000; step++ {
				id := fmt.Sprintf("r%d", rng.IntN(120))
				cl := []string{"a", "bb", "ccc"}[rng.IntN(3)]
				cur, exists := model[id]
				switch op := rng.IntN(10); {
				case op < 5:
					r := lore.Repl{ID: id, Owner: fmt.Sprintf("o%d", rng.IntN(8)), Slug: fmt.Sprintf("s%d", rng.IntN(20)),
						Cluster: cl, Plan: []string{"", "free", "pro"}[rng.IntN(3)], Created: created.Add(time.Duration(step) * time.Microsecond)}
					if step%7 == 0 {
						r.Created = time.Time{}
					}
					nameTaken := false
					for _, m := range model {
						nameTaken = nameTaken || m.Owner == r.Owner && m.Slug == r.Slug
					}
					got, err := s.CreateRepl(ctx, r)
					switch {
					case exists || nameTaken:
						if !errors.Is(err, lore.ErrExists) {
							t.Fatalf("step %d: create %+v over a taken id or name: %v", step, r, err)
						}
					case err != nil || got != r:
						t.Fatalf("step %d: create %+v = %+v, %v", step, r, got, err)
					default:
						model[id] = r
						held = append(held, got)
						copies = append(copies, lore.Repl{ID: strings.Clone(got.ID), Owner: strings.Clone(got.Owner),
							Slug: strings.Clone(got.Slug), Cluster: strings.Clone(got.Cluster), Plan: strings.Clone(got.Plan), Created: got.Created})
					}
				case op < 8:
					got, from, err := s.MoveRepl(ctx, id, cl)
					if !exists {
						if !errors.Is(err, lore.ErrNotFound) {
							t.Fatalf("step %d: move of a missing repl: %v", step, err)
						}
						break
					}
					want := cur
					want.Cluster = cl
					if err != nil || got != want || from != cur.Cluster {
						t.Fatalf("step %d: move %s to %s = %+v from %q, %v", step, id, cl, got, from, err)
					}
					model[id] = want
				default:
					got, err := s.DeleteRepl(ctx, id)
					if !exists {
						if !errors.Is(err, lore.ErrNotFound) {
							t.Fatalf("step %d: delete of a missing repl: %v", step, err)
						}
						break
					}
					if err != nil || got != cur {
						t.Fatalf("step %d: delete %s = %+v, %v", step, id, got, err)
					}
					delete(model, id)
				}
				if live, garbage, _ := lore.ArenaStats(s); garbage >= 256 && garbage > live {
					t.Fatalf("step %d: arena not rebuilt with %d garbage and %d live bytes", step, garbage, live)
				}
				checkModel(t, s, model, step)
			}
			for i, r := range held {
				if r != copies[i] {
					t.Fatalf("repl %d read earlier changed to %+v, was %+v", i, r, copies[i])
				}
			}
			if _, _, n := lore.ArenaStats(s); n < 3 {
				t.Fatalf("the arena was rebuilt %d times, want many", n)
			}
			loads, _ := s.ClusterLoads(ctx)
			n := 0
			for _, l := range loads {
				n += l.Repls
			}
			if n != len(model) {
				t.Fatalf("cluster loads count %d repls, model has %d", n, len(model))
			}
		})
	}
}

func checkModel(t *testing.T, s *lore.MemStore, model map[string]lore.Repl, step int) {
	t.Helper()
	ctx := context.Background()
	want := make([]lore.Repl, 0, len(model))
	for _, r := range model {
		want = append(want, r)
		if got, err := s.Repl(ctx, r.ID); err != nil || got != r {
			t.Fatalf("step %d: Repl(%s) = %+v, %v; want %+v", step, r.ID, got, err, r)
		}
		if got, err := s.ReplByName(ctx, r.Owner, r.Slug); err != nil || got != r {
			t.Fatalf("step %d: ReplByName(%s/%s) = %+v, %v; want %+v", step, r.Owner, r.Slug, got, err, r)
		}
	}
	slices.SortFunc(want, func(a, b lore.Repl) int {
		return cmp.Or(strings.Compare(a.Owner, b.Owner), strings.Compare(a.Slug, b.Slug))
	})
	got, err := s.Repls(ctx, lore.ReplQuery{})
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("step %d: listing\n got %v\nwant %v (%v)", step, got, want, err)
	}
	// Pages of 3, resumed by cursor, and one owner's listing, agree with the whole listing.
	var paged []lore.Repl
	after := ""
	for {
		page, err := s.Repls(ctx, lore.ReplQuery{After: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, page...)
		if len(page) < 3 {
			break
		}
		after = page[2].Owner + "/" + page[2].Slug
	}
	if !slices.Equal(paged, want) {
		t.Fatalf("step %d: paged listing\n got %v\nwant %v", step, paged, want)
	}
	o3, _ := s.Repls(ctx, lore.ReplQuery{Owner: "o3"})
	if !slices.Equal(o3, slices.DeleteFunc(slices.Clone(want), func(r lore.Repl) bool { return r.Owner != "o3" })) {
		t.Fatalf("step %d: owner listing %v", step, o3)
	}
	if _, err := s.ReplByName(ctx, "o1", "missing"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("step %d: missing name: %v", step, err)
	}
	if _, err := s.Repl(ctx, "missing"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("step %d: missing id: %v", step, err)
	}
}

// TestMemStoreFieldLimits: a record stores each string's length in 16 bits, so a longer string
// (which no Directory passes: they are DNS labels) is refused, not truncated.
func TestMemStoreFieldLimits(t *testing.T) {
	s := newMemStore(t, lore.MemStoreConfig{})
	ctx := context.Background()
	long := strings.Repeat("x", 1<<16)
	for _, c := range []string{"a", long} {
		if _, err := s.PutCluster(ctx, lore.Cluster{ID: c}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "o", Slug: "s", Cluster: "a", Plan: long}); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("create with a %d-byte plan: %v", len(long), err)
	}
	if _, err := s.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "o", Slug: "s", Cluster: "a", Plan: long[:1<<16-1]}); err != nil {
		t.Fatalf("create with a %d-byte plan: %v", 1<<16-1, err)
	}
	if _, _, err := s.MoveRepl(ctx, "r1", long); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("move to a %d-byte cluster ID: %v", len(long), err)
	}
	if r, err := s.Repl(ctx, "r1"); err != nil || r.Cluster != "a" || len(r.Plan) != 1<<16-1 {
		t.Fatalf("after the refused move: %v, cluster %q, plan of %d bytes", err, r.Cluster, len(r.Plan))
	}
}

// TestMemStoreConcurrentCompaction: readers look up and list while a writer moves repls back and
// forth, rebuilding the arena every few writes; every read sees a whole repl (run with -race).
func TestMemStoreConcurrentCompaction(t *testing.T) {
	s := newMemStore(t, lore.MemStoreConfig{})
	lore.SetCompactThreshold(s, 512)
	ctx := context.Background()
	for _, c := range []string{"a", "b"} {
		if _, err := s.PutCluster(ctx, lore.Cluster{ID: c}); err != nil {
			t.Fatal(err)
		}
	}
	const n = 50
	for i := 0; i < n; i++ {
		if _, err := s.CreateRepl(ctx, lore.Repl{ID: fmt.Sprintf("r%d", i), Owner: "o", Slug: fmt.Sprintf("s%d", i), Cluster: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	errs := make(chan error, 3)
	for w := 0; w < 2; w++ {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				i := rand.IntN(n)
				r, err := s.ReplByName(ctx, "o", fmt.Sprintf("s%d", i))
				if err != nil || r.ID != fmt.Sprintf("r%d", i) || (r.Cluster != "a" && r.Cluster != "b") {
					errs <- fmt.Errorf("ReplByName s%d = %+v, %v", i, r, err)
					return
				}
				if list, err := s.Repls(ctx, lore.ReplQuery{Owner: "o"}); err != nil || len(list) != n {
					errs <- fmt.Errorf("listing: %d repls, %v", len(list), err)
					return
				}
			}
		}()
	}
	var moveErr error
	for k := 0; k < 2000 && moveErr == nil; k++ {
		_, _, moveErr = s.MoveRepl(ctx, fmt.Sprintf("r%d", k%n), []string{"a", "b"}[k/n%2])
	}
	close(done)
	var readErr error
	for w := 0; w < 2; w++ { // both readers have returned after this loop
		if err := <-errs; err != nil && readErr == nil {
			readErr = err
		}
	}
	if moveErr != nil || readErr != nil {
		t.Fatalf("move: %v; read: %v", moveErr, readErr)
	}
	if _, _, c := lore.ArenaStats(s); c < 10 {
		t.Fatalf("the arena was rebuilt %d times during the test, want many", c)
	}
}
