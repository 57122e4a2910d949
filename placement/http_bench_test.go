package placement_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/switchyard-dev/switchyard/placement"
)

// BenchmarkHTTP measures the API over real loopback HTTP through the Client (100 VMs): placing
// new repls, and looking up existing ones (the proxies' common case).
func BenchmarkHTTP(b *testing.B) {
	ctx := context.Background()
	cp, err := placement.New(placement.Config{Logger: quiet, Store: placement.NewMapStore()})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		if _, err := cp.Register(ctx, vm(fmt.Sprintf("vm-%03d", i), "", 1<<20)); err != nil {
			b.Fatal(err)
		}
	}
	srv := httptest.NewServer(placement.NewHandler(placement.HandlerConfig{Controlplane: cp, Credential: testCredential, Logger: quiet}))
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := placement.NewClient(srv.URL, testCredential, &http.Client{Transport: tr})
	var n atomic.Int64
	b.Run("PlaceNew", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Place(ctx, placement.Request{Repl: fmt.Sprint("h-", n.Add(1))}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("PlaceExisting", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i++
				if _, err := c.Place(ctx, placement.Request{Repl: fmt.Sprint("h-", 1+i%int(max(n.Load(), 1)))}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
