package process_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
)

// latencies collects samples and reports percentiles as benchmark metrics.
type latencies []time.Duration

func (l latencies) report(b *testing.B, name string) {
	if len(l) == 0 {
		return
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	p := func(q float64) float64 {
		return float64(l[min(len(l)-1, int(q*float64(len(l))))].Microseconds()) / 1000
	}
	b.ReportMetric(p(0.50), name+"-p50-ms")
	b.ReportMetric(p(0.99), name+"-p99-ms")
	if os.Getenv("CONMAN_BENCH_VERBOSE") != "" {
		b.Logf("%s slowest: %v", name, l[max(0, len(l)-5):])
	}
}

func benchRuntime(b *testing.B, iso process.Isolation) *process.Runtime {
	return benchRuntimeInit(b, iso, "")
}

func benchRuntimeInit(b *testing.B, iso process.Isolation, initPath string) *process.Runtime {
	b.Helper()
	if os.Geteuid() != 0 && iso != process.None {
		b.Skip("needs root")
	}
	r, err := process.New(process.Config{StateDir: b.TempDir(), CgroupParent: "switchyard-bench-process", Isolation: iso, InitPath: initPath})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx := context.Background()
		sts, _ := r.List(ctx)
		for _, st := range sts {
			_ = r.Stop(ctx, st.ID, 0)
			_ = r.Remove(ctx, st.ID)
		}
		r.Close()
	})
	return r
}

// BenchmarkColdStart measures Create+Start of a container with limits, until its init is ready
// for Exec (namespaces, cgroups, /proc and devpts mounted).
func BenchmarkColdStart(b *testing.B) {
	type variant struct {
		name     string
		iso      process.Isolation
		initPath string
	}
	vs := []variant{
		{"sandbox", process.Sandbox, ""},
		{"plain", process.None, ""},
	}
	if p := os.Getenv("CONMAN_BENCH_INIT"); p != "" {
		// A standalone init (go build ./conman/process/cmd/conman-init) instead of the test binary.
		vs = append(vs, variant{"sandbox-standalone-init", process.Sandbox, p})
	}
	for _, v := range vs {
		b.Run(v.name, func(b *testing.B) {
			r := benchRuntimeInit(b, v.iso, v.initPath)
			ctx := context.Background()
			spec := conman.Spec{Limits: conman.Limits{MemoryBytes: 256 << 20, Pids: 256, CPUMilli: 1000}}
			var lat latencies
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("c%d", i)
				t0 := time.Now()
				if err := r.Create(ctx, id, spec); err != nil {
					b.Fatal(err)
				}
				if err := r.Start(ctx, id); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				b.StopTimer()
				_ = r.Stop(ctx, id, time.Second)
				_ = r.Remove(ctx, id)
				b.StartTimer()
			}
			lat.report(b, "start")
		})
	}
}

// BenchmarkFirstPtyByte measures a cold start plus an Exec of /bin/sh on a pty until the first
// byte of its prompt arrives.
func BenchmarkFirstPtyByte(b *testing.B) {
	r := benchRuntime(b, process.Sandbox)
	ctx := context.Background()
	var lat latencies
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("p%d", i)
		t0 := time.Now()
		if err := r.Create(ctx, id, conman.Spec{}); err != nil {
			b.Fatal(err)
		}
		if err := r.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		p, err := r.Exec(ctx, id, conman.ExecOptions{Args: []string{"/bin/sh"}, TTY: true})
		if err != nil {
			b.Fatal(err)
		}
		one := make([]byte, 1)
		if _, err := io.ReadFull(p.Stdout(), one); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		p.Close()
		_ = r.Stop(ctx, id, time.Second)
		_ = r.Remove(ctx, id)
		b.StartTimer()
	}
	lat.report(b, "first-byte")
}

// BenchmarkConcurrentContainers starts n containers at once (bounded parallelism), checks every
// one answers an Exec, then stops them.
func BenchmarkConcurrentContainers(b *testing.B) {
	n := 500
	r := benchRuntime(b, process.Sandbox)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for j := 0; j < n; j++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				id := fmt.Sprintf("m%d-%d", i, j)
				if err := r.Create(ctx, id, conman.Spec{Limits: conman.Limits{MemoryBytes: 64 << 20, Pids: 64}}); err != nil {
					errs <- err
					return
				}
				if err := r.Start(ctx, id); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(t0).Milliseconds()), "start-all-ms")
		sts, _ := r.List(ctx)
		running := 0
		var mem int64
		for _, st := range sts {
			if st.State == conman.Running {
				running++
				mem += st.Usage.MemoryBytes
			}
		}
		if running != n {
			b.Fatalf("%d of %d running", running, n)
		}
		b.ReportMetric(float64(running), "running")
		b.ReportMetric(float64(mem)/float64(n)/(1<<20), "MiB/container")
		t1 := time.Now()
		for _, st := range sts {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				_ = r.Stop(ctx, st.ID, 5*time.Second)
				_ = r.Remove(ctx, st.ID)
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(time.Since(t1).Milliseconds()), "stop-all-ms")
	}
}
