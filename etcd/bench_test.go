package etcd_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// BenchmarkPlacementCommit measures placement commits (Assign transactions) per second against
// a 1- and 3-member etcd: one at a time, 16 concurrent writers on distinct VMs, and batches of
// 32 (AssignBatch, what the Controlplane uses to group concurrent Place commits).
func BenchmarkPlacementCommit(b *testing.B) {
	for _, members := range []int{1, 3} {
		c := etcdtest.New(b, members)
		cli := c.Client(b)
		for _, mode := range []string{"serial", "concurrent16", "batch32"} {
			b.Run(fmt.Sprintf("members=%d/%s", members, mode), func(b *testing.B) {
				ctx := context.Background()
				s, err := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: cli, Prefix: prefix("bench")})
				if err != nil {
					b.Fatal(err)
				}
				const nvm = 16
				for v := 0; v < nvm; v++ {
					if _, err := s.PutVM(ctx, placement.VM{ID: fmt.Sprintf("vm%d", v), State: placement.Active}); err != nil {
						b.Fatal(err)
					}
				}
				asg := func(i int) placement.Assignment {
					return placement.Assignment{Repl: fmt.Sprintf("r%d", i), VM: fmt.Sprintf("vm%d", i%nvm),
						Resources: placement.Resources{Containers: 1}}
				}
				b.ResetTimer()
				start := time.Now()
				switch mode {
				case "serial":
					for i := 0; i < b.N; i++ {
						if _, err := s.Assign(ctx, asg(i)); err != nil {
							b.Fatal(err)
						}
					}
				case "concurrent16":
					var next atomic.Int64
					var wg sync.WaitGroup
					for w := 0; w < 16; w++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for {
								i := int(next.Add(1)) - 1
								if i >= b.N {
									return
								}
								// Writer w always writes to VM w: no conflicts between writers.
								a := placement.Assignment{Repl: fmt.Sprintf("r%d", i), VM: fmt.Sprintf("vm%d", w), Resources: placement.Resources{Containers: 1}}
								if _, err := s.Assign(ctx, a); err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					wg.Wait()
				case "batch32":
					for i := 0; i < b.N; i += 32 {
						var as []placement.Assignment
						for j := i; j < min(b.N, i+32); j++ {
							as = append(as, asg(j))
						}
						_, errs := s.AssignBatch(ctx, as)
						for _, err := range errs {
							if err != nil {
								b.Fatal(err)
							}
						}
					}
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
			})
		}
	}
}

// BenchmarkMirrorStaleness measures how long after a write commits in etcd a Mirror serves
// it: the time from CreateRepl returning to the repl being readable in the mirror.
func BenchmarkMirrorStaleness(b *testing.B) {
	for _, members := range []int{1, 3} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			c := etcdtest.New(b, members)
			ctx := context.Background()
			p := prefix("lore")
			w, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: c.Client(b), Prefix: p})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			r, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: c.Client(b), Prefix: p})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			if _, err := w.PutCluster(ctx, lore.Cluster{ID: "a"}); err != nil {
				b.Fatal(err)
			}
			m, err := etcd.NewMirror(ctx, etcd.MirrorConfig{Store: r})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("r%d", i)
				if _, err := w.CreateRepl(ctx, lore.Repl{ID: id, Owner: "o", Slug: id, Cluster: "a"}); err != nil {
					b.Fatal(err)
				}
				committed := time.Now()
				for {
					ch := m.Changed()
					if _, err := m.Repl(ctx, id); err == nil {
						break
					}
					select {
					case <-ch:
					case <-time.After(5 * time.Second):
						b.Fatal("mirror did not see a write in 5 s")
					}
				}
				lat = append(lat, time.Since(committed))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) }
			b.ReportMetric(q(0.5), "p50-µs")
			b.ReportMetric(q(0.99), "p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
		})
	}
}
