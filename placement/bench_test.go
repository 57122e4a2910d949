package placement

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The benchmark cluster: 10,000 VMs in one pool holding 1,000,000 assigned repls (100 each, room
// for 200), built once per test binary because loading it takes seconds.
const (
	benchVMs      = 10_000
	benchRepls    = 1_000_000
	benchCapacity = 200
)

var (
	benchMu       sync.Mutex
	benchClusters = map[string]Store{}
	benchNext     atomic.Int64 // unique ids for repls placed by benchmarks
)

// benchStores are the stores benchmarked side by side.
var benchStores = []string{"memdb", "map"}

func benchCluster(b *testing.B, kind string) Store {
	benchMu.Lock()
	defer benchMu.Unlock()
	if s := benchClusters[kind]; s != nil {
		return s
	}
	ctx := context.Background()
	var s Store = newMemStore()
	if kind == "map" {
		s = NewMapStore()
	}
	now := time.Now()
	for i := range benchVMs {
		_, err := s.PutVM(ctx, VM{
			ID: fmt.Sprintf("vm-%05d", i), Addr: "http://127.0.0.1:8600", State: Active,
			Capacity:      Resources{Containers: benchCapacity, CPUMilli: 64_000, MemoryBytes: 256 << 30},
			LastHeartbeat: now.Add(time.Hour), // stays fresh for the whole run
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	batch := make([]Assignment, 0, 10_000)
	flush := func() {
		if ba, ok := s.(BatchAssigner); ok {
			if _, errs := ba.AssignBatch(ctx, batch); errs[0] != nil {
				b.Fatal(errs[0])
			}
		} else {
			for _, a := range batch {
				if _, err := s.Assign(ctx, a); err != nil {
					b.Fatal(err)
				}
			}
		}
		batch = batch[:0]
	}
	for i := range benchRepls {
		batch = append(batch, Assignment{
			Repl: fmt.Sprintf("repl-%07d", i), VM: fmt.Sprintf("vm-%05d", i%benchVMs), Addr: "http://127.0.0.1:8600",
			Resources: Resources{Containers: 1, CPUMilli: 100, MemoryBytes: 512 << 20}, Created: now,
		})
		if len(batch) == cap(batch) {
			flush()
		}
	}
	benchClusters[kind] = s
	return s
}

func benchCP(b *testing.B, kind string, s Strategy) *Controlplane {
	c, err := New(Config{Store: benchCluster(b, kind), DefaultStrategy: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// latencies records one duration per operation and reports rate and percentiles. Besides the
// wall-clock rate it reports operations per CPU-second of the whole process (GC included): on a
// shared, overloaded machine the wall clock measures the neighbours, the CPU time measures us.
type latencies struct {
	d     []time.Duration
	start time.Time
	cpu   time.Duration
}

func newLatencies(n int) *latencies {
	return &latencies{d: make([]time.Duration, 0, n), start: time.Now(), cpu: cpuTime()}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (l *latencies) report(b *testing.B, unit string) {
	elapsed := time.Since(l.start)
	cpu := cpuTime() - l.cpu
	if len(l.d) == 0 {
		return
	}
	if cpu > 0 {
		b.ReportMetric(float64(len(l.d))/cpu.Seconds(), unit+"/cpu-s")
	}
	slices.Sort(l.d)
	pct := func(p float64) float64 {
		return float64(l.d[min(len(l.d)-1, int(p*float64(len(l.d))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(float64(len(l.d))/elapsed.Seconds(), unit+"/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(0.999), "p99.9-µs")
}

// BenchmarkPlace places new repls (a decision plus a committed assignment each) on the
// 10,000-VM / 1,000,000-repl cluster, with sampling (log2 n = 14 candidates) and with a full
// scan of every VM. Every 2nd iteration releases an earlier repl so usage stays near steady.
func BenchmarkPlace(b *testing.B) {
	full := BinPack()
	full.SampleSize = -1
	spread := Spread()
	for _, tc := range []struct {
		name string
		s    Strategy
	}{{"sampled-binpack", BinPack()}, {"sampled-spread", spread}, {"fullscan-binpack", full}} {
		for _, kind := range benchStores {
			b.Run(kind+"/"+tc.name, func(b *testing.B) {
				c := benchCP(b, kind, tc.s)
				ctx := context.Background()
				base := benchNext.Add(int64(b.N)) - int64(b.N)
				lat := newLatencies(b.N)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					repl := "new-" + strconv.FormatInt(base+int64(i), 10)
					t0 := time.Now()
					if _, err := c.Place(ctx, Request{Repl: repl}); err != nil {
						b.Fatal(err)
					}
					lat.d = append(lat.d, time.Since(t0))
					if i%2 == 1 {
						if err := c.Release(ctx, "new-"+strconv.FormatInt(base+int64(i-1), 10), ""); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.StopTimer()
				lat.report(b, "decisions")
			})
		}
	}
}

// BenchmarkDecide measures the decision alone, on the cached read snapshot, without the store
// commit: what Place costs before its memdb write transaction.
func BenchmarkDecide(b *testing.B) {
	full := BinPack()
	full.SampleSize = -1
	for _, tc := range []struct {
		name string
		s    Strategy
	}{{"sampled", BinPack()}, {"fullscan", full}} {
		b.Run(tc.name, func(b *testing.B) {
			c := benchCP(b, "map", tc.s)
			lat := newLatencies(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				t0 := time.Now()
				cy := Cycle{Request: Request{Repl: "x", Resources: Resources{Containers: 1}}, Previous: "vm-00042", Now: c.now(), HeartbeatTimeout: c.hbTimeout}
				if c.decide(&cy, c.strategy(""), nil, nil) == nil {
					b.Fatal("no vm")
				}
				lat.d = append(lat.d, time.Since(t0))
				_ = i
			}
			b.StopTimer()
			lat.report(b, "decisions")
		})
	}
}

// BenchmarkLookup looks up existing assignments among the 1,000,000.
func BenchmarkLookup(b *testing.B) {
	for _, kind := range benchStores {
		b.Run(kind, func(b *testing.B) { benchLookup(b, kind) })
	}
}

func benchLookup(b *testing.B, kind string) {
	c := benchCP(b, kind, BinPack())
	ctx := context.Background()
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = fmt.Sprintf("repl-%07d", (i*7919)%benchRepls)
	}
	b.Run("Lookup", func(b *testing.B) {
		lat := newLatencies(b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			if _, err := c.Lookup(ctx, ids[i%len(ids)]); err != nil {
				b.Fatal(err)
			}
			lat.d = append(lat.d, time.Since(t0))
		}
		b.StopTimer()
		lat.report(b, "lookups")
	})
	b.Run("PlaceExisting", func(b *testing.B) {
		lat := newLatencies(b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			if _, err := c.Place(ctx, Request{Repl: ids[i%len(ids)]}); err != nil {
				b.Fatal(err)
			}
			lat.d = append(lat.d, time.Since(t0))
		}
		b.StopTimer()
		lat.report(b, "decisions")
	})
}

// BenchmarkPlaceParallel places new repls from many goroutines (as many proxies do): the group
// commit batches their assignments into shared memdb write transactions.
func BenchmarkPlaceParallel(b *testing.B) {
	for _, kind := range benchStores {
		b.Run(kind, func(b *testing.B) { benchPlaceParallel(b, kind) })
	}
}

func benchPlaceParallel(b *testing.B, kind string) {
	c := benchCP(b, kind, BinPack())
	ctx := context.Background()
	start := time.Now()
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := benchNext.Add(1)
			if _, err := c.Place(ctx, Request{Repl: "par-" + strconv.FormatInt(id, 10)}); err != nil {
				b.Error(err)
				return
			}
			n.Add(1)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "decisions/s")
}
