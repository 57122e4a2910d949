package lore_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

// benchRepls is the directory size of the lookup benchmarks.
const benchRepls = 1_000_000

var (
	bigOnce  sync.Once
	bigDir   *lore.Directory
	bigRepls []lore.Repl
	bigHosts []string
	bigHeap  uint64 // live heap growth of the store holding benchRepls repls
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// bigDirectory builds, once per process, a directory of benchRepls repls: 100,000 owners with
// 10 repls each, names like "project-7" under "user-123456", random 16-character IDs.
func bigDirectory(b *testing.B) *lore.Directory {
	b.Helper()
	bigOnce.Do(func() {
		ctx := context.Background()
		before := heapInUse()
		repls := make([]lore.Repl, 0, benchRepls)
		dir, err := lore.New(lore.Config{Zone: "repl.test"})
		if err != nil {
			b.Fatal(err)
		}
		clusters := []string{"a", "b"}
		for _, c := range clusters {
			if _, err := dir.PutCluster(ctx, lore.Cluster{ID: c, EvalURL: "ws://" + c, Healthy: true}); err != nil {
				b.Fatal(err)
			}
		}
		start := time.Now()
		for i := 0; i < benchRepls; i++ {
			r, err := dir.CreateRepl(ctx, lore.Repl{Owner: fmt.Sprintf("user-%d", i/10), Slug: fmt.Sprintf("project-%d", i%10),
				Plan: "free", Cluster: clusters[i%2]})
			if err != nil {
				b.Fatal(err)
			}
			repls = append(repls, r)
		}
		elapsed := time.Since(start)
		// The benchmark's own slice of repls shares its strings with the store (they point into
		// its arena), so the slice adds only its headers (cap*sizeof(Repl)), subtracted here.
		// (Before 2026-11-22 the slice was made before the first measurement and subtracted
		// too, so the store heaps recorded until then read 99 MiB low.)
		after := heapInUse()
		bigHeap = after - before - uint64(cap(repls))*uint64(sizeofRepl)
		b.Logf("built %d repls in %v (%.1f µs per create), store heap %.0f MiB (%.0f bytes per repl)",
			benchRepls, elapsed, float64(elapsed.Microseconds())/benchRepls, float64(bigHeap)/(1<<20), float64(bigHeap)/benchRepls)
		hosts := make([]string, len(repls))
		for i, r := range repls {
			hosts[i] = lore.Hostname(r, "repl.test")
		}
		bigDir, bigRepls, bigHosts = dir, repls, hosts
	})
	return bigDir
}

const sizeofRepl = 5*16 + 24 // five strings and a time.Time

// order is a fixed pseudo-random permutation stride so lookups do not walk memory in order.
const stride = 7919

// BenchmarkReplByName is the hostname hot path at 1,000,000 repls: owner and slug already
// split (as dnsauth and the hosting proxy have them after ParseHost). Target: ≤ 2 µs, ≤ 1 alloc.
func BenchmarkReplByName(b *testing.B) {
	dir := bigDirectory(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	defer func() { b.ReportMetric(cpu.seconds()*1e9/float64(b.N), "cpu-ns/op") }()
	j := 0
	for i := 0; i < b.N; i++ {
		j = (j + stride) % benchRepls
		r := &bigRepls[j]
		if _, err := dir.ReplByName(ctx, r.Owner, r.Slug); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplByHost adds ParseHost: a Host header or DNS name to the repl.
func BenchmarkReplByHost(b *testing.B) {
	dir := bigDirectory(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	defer func() { b.ReportMetric(cpu.seconds()*1e9/float64(b.N), "cpu-ns/op") }()
	j := 0
	for i := 0; i < b.N; i++ {
		j = (j + stride) % benchRepls
		if _, err := dir.ReplByHost(ctx, bigHosts[j]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplByNameParallel runs the lookup on every core (read lock contention).
func BenchmarkReplByNameParallel(b *testing.B) {
	dir := bigDirectory(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		j := 0
		for pb.Next() {
			j = (j + stride) % benchRepls
			r := &bigRepls[j]
			if _, err := dir.ReplByName(ctx, r.Owner, r.Slug); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkReplByID is the <id>.id.<zone> and session path.
func BenchmarkReplByID(b *testing.B) {
	dir := bigDirectory(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	defer func() { b.ReportMetric(cpu.seconds()*1e9/float64(b.N), "cpu-ns/op") }()
	j := 0
	for i := 0; i < b.N; i++ {
		j = (j + stride) % benchRepls
		if _, err := dir.Repl(ctx, bigRepls[j].ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemStoreHeap reports the live heap of the store holding 1,000,000 repls (the repl
// arena, its hash indexes, slots and order blocks). Target: ≤ 1 GiB.
func BenchmarkMemStoreHeap(b *testing.B) {
	bigDirectory(b)
	for i := 0; i < b.N; i++ {
	}
	b.ReportMetric(float64(bigHeap)/(1<<20), "MiB-heap")
	b.ReportMetric(float64(bigHeap)/benchRepls, "B/repl")
}

// BenchmarkGCMark reports the CPU time of one full garbage collection (runtime.GC) in a process
// holding a MemStore of 1,000,000 repls, beside the same process before the store existed: the
// marking work the store adds to every GC cycle of a program that embeds it. Run it alone and
// once (-bench GCMark -benchtime 1x): other benchmarks' data would be marked too.
func BenchmarkGCMark(b *testing.B) {
	gcCPU := func() float64 {
		var t []float64
		for i := 0; i < 5; i++ {
			c := startCPU()
			runtime.GC()
			t = append(t, c.seconds()*1e9)
		}
		slices.Sort(t)
		return t[2]
	}
	empty := gcCPU()
	s, err := lore.NewMemStore(lore.MemStoreConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for _, c := range []string{"a", "b"} {
		if _, err := s.PutCluster(ctx, lore.Cluster{ID: c, EvalURL: "ws://" + c, Healthy: true}); err != nil {
			b.Fatal(err)
		}
	}
	now := time.Now().UTC()
	for i := 0; i < benchRepls; i++ {
		_, err := s.CreateRepl(ctx, lore.Repl{ID: fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15), Owner: fmt.Sprintf("user-%d", i/10),
			Slug: fmt.Sprintf("project-%d", i%10), Plan: "free", Cluster: []string{"a", "b"}[i%2], Created: now})
		if err != nil {
			b.Fatal(err)
		}
	}
	full := gcCPU()
	for i := 0; i < b.N; i++ {
	}
	b.ReportMetric(empty/1e6, "empty-gc-cpu-ms")
	b.ReportMetric(full/1e6, "store-gc-cpu-ms")
	runtime.KeepAlive(s)
}

// BenchmarkCreateRepl is the write path: validation, ID generation, one store write.
func BenchmarkCreateRepl(b *testing.B) {
	dir, err := lore.New(lore.Config{Zone: "repl.test"})
	if err != nil {
		b.Fatal(err)
	}
	defer dir.Close()
	ctx := context.Background()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := dir.CreateRepl(ctx, lore.Repl{Owner: fmt.Sprintf("u%d", i/10), Slug: fmt.Sprintf("p%d", i%10)}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIssue signs connect tokens (run with -cpu 1 for the one-core figure).
func BenchmarkIssue(b *testing.B) {
	iss := newIssuer(b, newKey(b), "k1", nil)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	for i := 0; i < b.N; i++ {
		if _, _, err := iss.Issue("a", "abcdefghijklmnop"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(float64(b.N)/cpu.seconds(), "tokens/cpu-s")
}

// BenchmarkVerify verifies connect tokens (run with -cpu 1 for the one-core figure). Target:
// ≥ 20,000 verifies/s on one core.
func BenchmarkVerify(b *testing.B) {
	iss := newIssuer(b, newKey(b), "k1", nil)
	ks := lore.NewKeySet(iss.PublicKey(), newIssuer(b, newKey(b), "k0", nil).PublicKey())
	tok, _, _ := iss.Issue("a", "abcdefghijklmnop")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	for i := 0; i < b.N; i++ {
		if _, err := ks.Verify(ctx, tok, "a"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
	b.ReportMetric(float64(b.N)/cpu.seconds(), "verifies/cpu-s")
}

// BenchmarkParseHost is the name parser alone.
func BenchmarkParseHost(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := lore.ParseHost("project-7.user-123456.repl.test:443", "repl.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEd25519Verify is the raw signature check, for the side-by-side ratio with Verify.
func BenchmarkEd25519Verify(b *testing.B) {
	key := newKey(b)
	tok, _, _ := newIssuer(b, key, "k1", nil).Issue("a", "abcdefghijklmnop")
	i := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
	msg := []byte(tok[:i])
	pub := key.Public().(ed25519.PublicKey)
	b.ResetTimer()
	cpu := startCPU()
	for n := 0; n < b.N; n++ {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("bad signature")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
	b.ReportMetric(float64(b.N)/cpu.seconds(), "verifies/cpu-s")
}

// cpuClock measures the process's CPU time (user + system), so the token benchmarks can report
// operations per CPU-second: on a shared machine, wall-clock rates measure the neighbours.
type cpuClock struct{ start time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuClock { return cpuClock{processCPU()} }

func (c cpuClock) seconds() float64 { return (processCPU() - c.start).Seconds() }
