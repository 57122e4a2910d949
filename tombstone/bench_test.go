package tombstone_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// nopWriter is the cheapest ResponseWriter, so the benchmark measures the middleware.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

// BenchmarkNoTombstone is the cost the middleware adds to every request of a repl that has not
// moved, with 10,000 tombstones of other repls in the store. Target: ≤ 2 µs.
func BenchmarkNoTombstone(b *testing.B) {
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	now := time.Now()
	for i := 0; i < 10000; i++ {
		id := fmt.Sprintf("moved%d", i)
		_ = store.Put(context.Background(), tombstone.Tombstone{Repl: id, Owner: "o", Slug: id, Cluster: "b", Created: now, Expires: now.Add(time.Hour)})
	}
	f, err := tombstone.New(tombstone.Config{Cluster: "a", Zone: "repl.test", Store: store,
		Clusters: &clusterMap{m: map[string]lore.Cluster{}}, Secret: testSecret})
	if err != nil {
		b.Fatal(err)
	}
	h := f.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for _, host := range []string{"blog.alice.repl.test", "r1xyz.id.repl.test"} {
		b.Run(host, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/", nil)
			req.Host = host
			w := &nopWriter{h: http.Header{}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h.ServeHTTP(w, req)
			}
		})
	}
}

// BenchmarkHop compares one forwarded request (client → cluster a's tombstone forwarder →
// backend) with the same request through a plain httputil.ReverseProxy, over loopback, with
// the same transport settings. Target: forwarded ≤ 1.1 × plain.
func BenchmarkHop(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from b")
	}))
	defer backend.Close()
	u, _ := url.Parse(backend.URL)

	plain := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: revproxy.NewTransport(),
	}
	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	now := time.Now()
	_ = store.Put(context.Background(), tombstone.Tombstone{Repl: "r1", Cluster: "b", Created: now, Expires: now.Add(time.Hour)})
	fwd, err := tombstone.New(tombstone.Config{Cluster: "a", Zone: "repl.test", Store: store,
		Clusters: &clusterMap{m: map[string]lore.Cluster{"b": {ID: "b", HostingURL: backend.URL}}},
		Secret:   testSecret, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		h    http.Handler
	}{
		{"plain", plain},
		{"forwarded", fwd.Wrap(http.NotFoundHandler())},
	} {
		srv := httptest.NewServer(tc.h)
		client := &http.Client{Transport: revproxy.NewTransport()}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", srv.URL+"/page", nil)
					req.Host = "r1.id.repl.test"
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
		client.CloseIdleConnections()
		srv.Close()
	}
	plain.Transport.(*http.Transport).CloseIdleConnections()
}
