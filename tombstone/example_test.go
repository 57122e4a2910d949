package tombstone_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// staticClusters is a one-entry cluster registry (lore.Directory or lore.Client in production).
type staticClusters map[string]lore.Cluster

func (s staticClusters) Cluster(_ context.Context, id string) (lore.Cluster, error) {
	if c, ok := s[id]; ok {
		return c, nil
	}
	return lore.Cluster{}, lore.ErrNotFound
}

// A repl moved from cluster a to cluster b: cluster a's forwarder sends its requests to b.
func ExampleForwarder() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Cluster b's hosting proxy (here: a page).
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "served by b for %s", r.Host)
	}))
	defer b.Close()

	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	now := time.Now()
	_ = store.Put(context.Background(), tombstone.Tombstone{
		Repl: "r1", Owner: "alice", Slug: "blog", Cluster: "b", Created: now, Expires: now.Add(tombstone.DefaultTTL),
	})
	fwd, err := tombstone.New(tombstone.Config{
		Cluster: "a", Zone: "repl.test", Store: store,
		Clusters: staticClusters{"b": {ID: "b", HostingURL: b.URL}},
		Secret:   []byte(strings.Repeat("k", 32)), Logger: quiet,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Cluster a: the forwarder in front of a's hosting proxy (here: 404 for everything).
	a := httptest.NewServer(fwd.Wrap(http.NotFoundHandler()))
	defer a.Close()

	for _, host := range []string{"blog.alice.repl.test", "other.alice.repl.test"} {
		req, _ := http.NewRequest("GET", a.URL, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	_ = fwd.Shutdown(context.Background())
	// Output:
	// 200 served by b for blog.alice.repl.test
	// 404 404 page not found
}

// A request claiming to come from another cluster without the platform's key is refused.
func ExampleInternal() {
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	fwd, _ := tombstone.New(tombstone.Config{
		Cluster: "a", Zone: "repl.test", Store: store, Clusters: staticClusters{},
		Secret: []byte(strings.Repeat("k", 32)), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	h := fwd.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "internal=%v", tombstone.Internal(r))
	}))

	req := httptest.NewRequest("GET", "/", nil)
	req.Host = "blog.alice.repl.test"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	fmt.Println(rec.Code, rec.Body.String())

	req.Header.Set(tombstone.HopHeader, "v1; via=b; t=1; sig=forged")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	fmt.Println(rec.Code)
	// Output:
	// 200 internal=false
	// 508
}

// The Follower writes a's tombstone when lore moves a repl from a to b.
func ExampleFollower() {
	ctx := context.Background()
	dir, _ := lore.New(lore.Config{Zone: "repl.test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, id := range []string{"a", "b"} {
		_, _ = dir.PutCluster(ctx, lore.Cluster{ID: id, EvalURL: "ws://127.0.0.1:1/v1/connect", Healthy: true})
	}
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	f, _ := tombstone.NewFollower(tombstone.FollowerConfig{Cluster: "a", Store: store, Watcher: dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := f.Start(); err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	r, _ := dir.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "blog", Cluster: "a"})
	_, _ = dir.MoveRepl(ctx, r.ID, "b")
	for i := 0; i < 1000; i++ {
		if t, err := store.GetByName(ctx, "alice", "blog"); err == nil {
			fmt.Println("blog.alice moved to", t.Cluster)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println("no tombstone")
	// Output:
	// blog.alice moved to b
}
