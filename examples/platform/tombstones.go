package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// startTombstones wires the cluster's side of moves: a tombstone store; a follower that, when
// lore moves a repl away from this cluster, writes its tombstone, stops its container and
// releases its VM; and the forwarding middleware in front of the hosting proxy, which sends
// requests for moved repls to the new cluster's hosting proxy.
func (c *cluster) startTombstones(ctx context.Context) (http.Handler, error) {
	var store tombstone.Store
	var err error
	if c.p.cfg.Store == StoreEtcd {
		store, err = etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: c.p.etcdCli, Prefix: "/switchyard/tombstone/" + c.id + "/"})
	} else {
		store, err = tombstone.NewMemStore(tombstone.MemStoreConfig{})
	}
	if err != nil {
		return nil, err
	}
	follower, err := tombstone.NewFollower(tombstone.FollowerConfig{
		Cluster:   c.id,
		Store:     store,
		Watcher:   c.p.dir,
		Placement: c.cpClient,
		Stop:      c.stopRepl,
		Logger:    c.log.With("component", "tombstone"),
	})
	if err != nil {
		return nil, err
	}
	if err := follower.Start(); err != nil {
		return nil, err
	}
	c.stops.add(func(context.Context) error { return follower.Close() })
	fwd, err := tombstone.New(tombstone.Config{
		Cluster:  c.id,
		Zone:     c.p.cfg.Zone,
		Store:    store,
		Clusters: c.p.dir,
		Resolver: c.hostingProxy,
		Secret:   c.p.hopSecret,
		Logger:   c.log.With("component", "tombstone"),
	})
	if err != nil {
		return nil, err
	}
	c.stops.add(fwd.Shutdown)
	return fwd.Wrap(c.hostingProxy), nil
}

// stopRepl stops a moved repl's container on the VM that runs it.
func (c *cluster) stopRepl(ctx context.Context, a placement.Assignment) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.vms {
		if v.id == a.VM {
			if v.stopped() {
				return nil // its containers stop with it
			}
			return v.cm.Stop(ctx, a.Repl)
		}
	}
	return fmt.Errorf("%w %q", errNoSuchVM, a.VM)
}
