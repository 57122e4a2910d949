//go:build linux

package oci_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/oci"
	"github.com/switchyard-dev/switchyard/conman/process"
)

// The benchmarks run conman/process's sandbox, oci+runc and oci+runsc side by side in one run,
// so that the machine's noise hits each alike:
//
//	go test -run XXX -bench . -benchtime 30x -count 3 ./conman/oci/

type benchTarget struct {
	name string
	new  func(b *testing.B) conman.Runtime
	// treeRoot returns the host pid whose process tree is the container (for memory).
	treeRoot func(st conman.Status) int
}

func benchTargets() []benchTarget {
	ts := []benchTarget{{
		name: "process",
		new: func(b *testing.B) conman.Runtime {
			r, err := process.New(process.Config{StateDir: b.TempDir(), CgroupParent: "switchyard-bench-oci/process"})
			if err != nil {
				b.Fatal(err)
			}
			return r
		},
		treeRoot: func(st conman.Status) int { return st.Pid },
	}}
	// runsc on each platform this host has: systrap (its default) and ptrace.
	for _, rt := range []struct {
		name, binary string
		args         []string
	}{
		{"runc", "runc", nil},
		{"runsc", "runsc", []string{"--platform=systrap"}},
		{"runsc-ptrace", "runsc", []string{"--platform=ptrace"}},
	} {
		ts = append(ts, benchTarget{
			name: rt.name,
			new: func(b *testing.B) conman.Runtime {
				r, err := oci.New(oci.Config{Binary: binaryOf(b, rt.binary), Args: rt.args, StateDir: b.TempDir(), Image: base(b), CgroupParent: "switchyard-bench-oci/" + rt.name})
				if err != nil {
					b.Fatal(err)
				}
				return r
			},
			treeRoot: shimOf,
		})
	}
	return ts
}

// shimOf finds the host process that holds an oci container's tree: its shim.
func shimOf(st conman.Status) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 4 && args[3] == "conman-oci-shim" && args[len(args)-1] == st.ID {
			return pid
		}
	}
	return 0
}

func cleanupRuntime(_ testing.TB, r conman.Runtime) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sts, _ := r.List(ctx)
	for _, st := range sts {
		_ = r.Stop(ctx, st.ID, 0)
		_ = r.Remove(ctx, st.ID)
	}
	r.Close()
}

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
}

func skipUnlessRoot(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
}

// BenchmarkColdStart measures Create+Start of a container with limits, until it runs and
// takes an Exec.
func BenchmarkColdStart(b *testing.B) {
	skipUnlessRoot(b)
	for _, tg := range benchTargets() {
		b.Run(tg.name, func(b *testing.B) {
			r := tg.new(b)
			defer cleanupRuntime(b, r)
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
// byte of its prompt arrives (what a user opening a repl waits for).
func BenchmarkFirstPtyByte(b *testing.B) {
	skipUnlessRoot(b)
	for _, tg := range benchTargets() {
		b.Run(tg.name, func(b *testing.B) {
			r := tg.new(b)
			defer cleanupRuntime(b, r)
			ctx := context.Background()
			var lat, execLat latencies
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
				t1 := time.Now()
				p, err := r.Exec(ctx, id, conman.ExecOptions{Args: []string{"/bin/sh"}, TTY: true})
				if err != nil {
					b.Fatal(err)
				}
				one := make([]byte, 1)
				if _, err := io.ReadFull(p.Stdout(), one); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				execLat = append(execLat, time.Since(t1))
				b.StopTimer()
				p.Close()
				_ = r.Stop(ctx, id, time.Second)
				_ = r.Remove(ctx, id)
				b.StartTimer()
			}
			lat.report(b, "first-byte")
			execLat.report(b, "exec-first-byte")
		})
	}
}

// BenchmarkIdleMemory starts 10 idle containers and reports the memory each holds: the
// proportional set size (PSS) of every host process of the container (for oci: its shim, the
// runtime's run, and what runs in it; for gVisor the sandbox and gofer), and its cgroup's
// memory use.
func BenchmarkIdleMemory(b *testing.B) {
	skipUnlessRoot(b)
	const n = 10
	for _, tg := range benchTargets() {
		b.Run(tg.name, func(b *testing.B) {
			r := tg.new(b)
			defer cleanupRuntime(b, r)
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				var pss, cg int64
				for j := 0; j < n; j++ {
					id := fmt.Sprintf("m%d-%d", i, j)
					if err := r.Create(ctx, id, conman.Spec{}); err != nil {
						b.Fatal(err)
					}
					if err := r.Start(ctx, id); err != nil {
						b.Fatal(err)
					}
				}
				sts, err := r.List(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for _, st := range sts {
					root := tg.treeRoot(st)
					if root <= 0 {
						b.Fatalf("no process tree for %s", st.ID)
					}
					pss += treePSS(root)
					cg += st.Usage.MemoryBytes
				}
				b.ReportMetric(float64(pss)/n/(1<<20), "PSS-MiB/container")
				b.ReportMetric(float64(cg)/n/(1<<20), "cgroup-MiB/container")
				for _, st := range sts {
					_ = r.Stop(ctx, st.ID, time.Second)
					_ = r.Remove(ctx, st.ID)
				}
			}
		})
	}
}

// treePSS sums the PSS of root and its descendants.
func treePSS(root int) int64 {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 2 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	var total int64
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = append(queue[1:], children[pid]...)
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Pss:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}
