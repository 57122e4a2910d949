package lore_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

type watcher interface {
	Watch(ctx context.Context) (<-chan lore.Event, error)
}

func recv(t *testing.T, ch <-chan lore.Event) lore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	return lore.Event{}
}

// TestWatch runs the same scenario on the Directory and on the Client over loopback HTTP.
func TestWatch(t *testing.T) {
	s := newServer(t)
	for name, w := range map[string]watcher{"directory": s.dir, "client": s.reader} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			ch, err := w.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Every change after Watch returned is delivered, in order.
			r, err := s.admin.CreateRepl(ctx, lore.Repl{Owner: "w" + name, Slug: "blog", Cluster: "a"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.admin.MoveRepl(ctx, r.ID, "b"); err != nil {
				t.Fatal(err)
			}
			if err := s.admin.DeleteRepl(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
			e1, e2, e3 := recv(t, ch), recv(t, ch), recv(t, ch)
			if e1.Kind != lore.ReplCreated || e1.Repl.ID != r.ID ||
				e2.Kind != lore.ReplMoved || e2.FromCluster != "a" || e2.Repl.Cluster != "b" ||
				e3.Kind != lore.ReplDeleted || !(e1.Index < e2.Index && e2.Index < e3.Index) {
				t.Fatalf("events %+v %+v %+v", e1, e2, e3)
			}
			cancel()
			for range ch {
			}
		})
	}
}

// TestClientWatchOverflow: when the server-side watcher falls behind, the stream ends and the
// client's channel closes while its context is live.
func TestClientWatchOverflow(t *testing.T) {
	store, err := lore.NewMemStore(lore.MemStoreConfig{WatchBuffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := lore.New(lore.Config{Zone: "repl.test", Store: store})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(lore.NewHandler(lore.HandlerConfig{Directory: dir, AdminKey: adminKey}))
	t.Cleanup(func() { store.Close(); srv.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	ch, err := lore.NewClient(srv.URL, adminKey, nil).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Do not read: the client buffers 64, the TCP buffers some, then the server's 2 fill up.
	// Events are large so the socket buffers fill quickly.
	big := lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true, Region: fmt.Sprintf("%0512d", 0)}
	deadline := time.Now().Add(20 * time.Second)
	closed := false
	for i := 0; !closed && time.Now().Before(deadline); i++ {
		if _, err := dir.PutCluster(ctx, big); err != nil {
			t.Fatal(err)
		}
		if i%500 == 499 {
			// Drain what arrived; a closed channel means the cut-off reached the client.
			for drained := false; !drained; {
				select {
				case _, ok := <-ch:
					if !ok {
						closed = true
						drained = true
					}
				default:
					drained = true
				}
			}
		}
	}
	if !closed {
		t.Fatal("client watch never closed although the server-side watcher overflowed")
	}
	if ctx.Err() != nil {
		t.Fatal("context ended")
	}
}

// TestWatchEndsOnClose: closing the Directory ends every watch stream, so http.Server.Shutdown
// does not wait on them; the Client's channel closes with its context still live.
func TestWatchEndsOnClose(t *testing.T) {
	s := newServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := s.reader.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.dir.Close()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("event after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch stream still open after the Directory closed")
	}
	if ctx.Err() != nil {
		t.Fatal("context ended")
	}
	// New watches are refused with a clear error.
	if _, err := s.reader.Watch(ctx); !errors.Is(err, lore.ErrUnavailable) {
		t.Fatalf("Watch on a closed directory: %v, want ErrUnavailable (503)", err)
	}
}
