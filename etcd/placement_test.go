package etcd_test

import (
	"fmt"
	"testing"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/placement/placementtest"
)

func TestPlacementConformance(t *testing.T) {
	for _, members := range []int{1, 3} {
		t.Run(fmt.Sprintf("members=%d", members), func(t *testing.T) {
			c := etcdtest.New(t, members)
			cli := c.Client(t)
			placementtest.TestStore(t, func(t *testing.T) placement.Store {
				s, err := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: cli, Prefix: prefix("placement")})
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}
