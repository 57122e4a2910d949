package etcd_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/tombstone"
	"github.com/switchyard-dev/switchyard/tombstone/tombstonetest"
)

func TestTombstoneConformance(t *testing.T) {
	for _, members := range []int{1, 3} {
		t.Run(fmt.Sprintf("members=%d", members), func(t *testing.T) {
			c := etcdtest.New(t, members)
			cli := c.Client(t)
			tombstonetest.Run(t, func(t *testing.T, now func() time.Time) tombstone.Store {
				s, err := etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: cli, Prefix: prefix("tombstone"), Now: now})
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}
