package etcd_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/lore/loretest"
)

var prefixes atomic.Int64

// prefix gives every store of a test its own key space in a shared etcd.
func prefix(kind string) string { return fmt.Sprintf("/t%d/%s/", prefixes.Add(1), kind) }

func TestLoreConformance(t *testing.T) {
	for _, members := range []int{1, 3} {
		t.Run(fmt.Sprintf("members=%d", members), func(t *testing.T) {
			c := etcdtest.New(t, members)
			cli := c.Client(t)
			loretest.Run(t, func(t *testing.T) lore.Store {
				if raceEnabled && members == 3 && strings.HasSuffix(t.Name(), "/WatchSlowWatcher") {
					// 6000 sequential raft commits on 3 members under the race detector take
					// ~50 s on 2 cores; the case runs on 1 member under -race and on 3 without.
					t.Skip("slow-watcher case on 3 members runs without -race only")
				}
				s, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: cli, Prefix: prefix("lore")})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			})
		})
	}
}
