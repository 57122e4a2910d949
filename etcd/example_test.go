package etcd_test

import (
	"context"
	"fmt"
	"os"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// A lore directory in etcd, read by a mirror (what a DNS server or proxy keeps), and two
// controlplanes on one placement store.
func Example() {
	dir, _ := os.MkdirTemp("", "etcd-example")
	defer os.RemoveAll(dir)
	cluster, err := etcdtest.Start(etcdtest.Config{Dir: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	cli, err := cluster.NewClient()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cli.Close()
	ctx := context.Background()

	loreStore, _ := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: cli})
	defer loreStore.Close()
	loreStore.PutCluster(ctx, lore.Cluster{ID: "a", Healthy: true})
	mirror, _ := etcd.NewMirror(ctx, etcd.MirrorConfig{Store: loreStore})
	defer mirror.Close()
	loreStore.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "bob", Slug: "blog", Cluster: "a"})
	for {
		changed := mirror.Changed()
		if r, err := mirror.ReplByName(ctx, "bob", "blog"); err == nil {
			fmt.Println("mirror:", r.ID, "in cluster", r.Cluster)
			break
		}
		<-changed
	}

	ps, _ := etcd.NewPlacementStore(etcd.PlacementStoreConfig{Client: cli, Prefix: "/switchyard/placement/a/"})
	cp1, _ := placement.New(placement.Config{Store: ps})
	cp2, _ := placement.New(placement.Config{Store: ps})
	cp1.Register(ctx, placement.VM{ID: "vm1", Addr: "http://127.0.0.1:8600", Capacity: placement.Resources{Containers: 1}, State: placement.Active})
	cp2.Sweep(ctx)
	a, err := cp2.Place(ctx, placement.Request{Repl: "r1"})
	fmt.Println("placed on", a.VM, err)
	_, err = cp1.Place(ctx, placement.Request{Repl: "r2"})
	fmt.Println("second repl:", err != nil)
	// Output:
	// mirror: r1 in cluster a
	// placed on vm1 <nil>
	// second repl: true
}
