// Command lore is a load program for package lore: it fills a directory with repls, reports
// the store's live heap and the in-process lookup cost, then serves the HTTP API on loopback and
// measures lookups per second through lore.Client.
//
//	go run ./bench/lore -repls 1000000 -http 10s -workers 8
//
// Every address it uses is on 127.0.0.1; the run is bounded by -repls, -lookups and -http.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

func main() {
	n := flag.Int("repls", 1_000_000, "repls to create")
	lookups := flag.Int("lookups", 2_000_000, "in-process ReplByName lookups to time")
	httpFor := flag.Duration("http", 5*time.Second, "how long to load the HTTP API (0 = skip)")
	workers := flag.Int("workers", 8, "concurrent HTTP clients")
	flag.Parse()
	if err := run(*n, *lookups, *httpFor, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "lore bench:", err)
		os.Exit(1)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func run(n, lookups int, httpFor time.Duration, workers int) error {
	ctx := context.Background()
	before := heap()
	dir, err := lore.New(lore.Config{Zone: "repl.test"})
	if err != nil {
		return err
	}
	defer dir.Close()
	for _, c := range []string{"a", "b"} {
		if _, err := dir.PutCluster(ctx, lore.Cluster{ID: c, EvalURL: "ws://" + c, Healthy: true}); err != nil {
			return err
		}
	}
	owners := make([]string, 0, n)
	slugs := make([]string, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		r, err := dir.CreateRepl(ctx, lore.Repl{Owner: fmt.Sprintf("user-%d", i/10), Slug: fmt.Sprintf("project-%d", i%10),
			Plan: "free", Cluster: []string{"a", "b"}[i%2]})
		if err != nil {
			return err
		}
		owners, slugs = append(owners, r.Owner), append(slugs, r.Slug)
	}
	build := time.Since(start)
	h := heap() - before - uint64(cap(owners)+cap(slugs))*16
	fmt.Printf("repls: %d  build: %v (%.1f µs/create)  store heap: %.0f MiB (%.0f B/repl)\n",
		n, build.Round(time.Millisecond), float64(build.Microseconds())/float64(n), float64(h)/(1<<20), float64(h)/float64(n))

	start = time.Now()
	j := 0
	for i := 0; i < lookups; i++ {
		j = (j + 7919) % n
		if _, err := dir.ReplByName(ctx, owners[j], slugs[j]); err != nil {
			return err
		}
	}
	el := time.Since(start)
	fmt.Printf("in-process ReplByName: %d lookups, %.0f ns/lookup\n", lookups, float64(el.Nanoseconds())/float64(lookups))

	if httpFor <= 0 {
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: lore.NewHandler(lore.HandlerConfig{Directory: dir, AdminKey: "bench"})}
	go srv.Serve(ln)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	cl := lore.NewClient("http://"+ln.Addr().String(), "bench", &http.Client{Transport: tr, Timeout: 5 * time.Second})
	var done, failed atomic.Int64
	lctx, cancel := context.WithTimeout(ctx, httpFor)
	defer cancel()
	var wg sync.WaitGroup
	start = time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			k := w * 104729
			for lctx.Err() == nil {
				k = (k + 7919) % n
				if _, err := cl.ReplByName(lctx, owners[k], slugs[k]); err != nil {
					if lctx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				done.Add(1)
			}
		}(w)
	}
	wg.Wait()
	el = time.Since(start)
	fmt.Printf("HTTP ReplByName over loopback: %d workers, %d lookups in %v = %.0f/s, %d failed\n",
		workers, done.Load(), el.Round(time.Millisecond), float64(done.Load())/el.Seconds(), failed.Load())
	return nil
}
