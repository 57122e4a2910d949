package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// startHosting starts the cluster's hosting proxy behind the tombstone forwarder and returns
// the handler to serve.
func (c *cluster) startHosting(ctx context.Context) (http.Handler, error) {
	var store tombstone.Store
	var err error
	if c.p.cfg.Store == StoreEtcd {
		store, err = tombstoneMirror(ctx, c.p.etcdCli, c.id, c.log, c.registerer(), c.stops.add)
	} else {
		store, err = tombstone.NewMemStore(tombstone.MemStoreConfig{})
	}
	if err != nil {
		return nil, err
	}
	h, handler, fwd, err := newHosting(hostingConfig{
		zone:      c.p.cfg.Zone,
		cluster:   c.id,
		directory: c.p.reader,
		// The cluster registry from memory too (the etcd mirror or the in-memory directory), so
		// the hosting Server's event loops may ask the forwarder (serveHosting).
		clusters:   c.p.reader,
		watcher:    c.p.dir,
		placer:     c.cpClient,
		conmanCred: c.conmanCredential,
		store:      store,
		secret:     c.p.hopSecret,
		stopRepl:   c.stopRepl,
		onStop:     c.stops.add,
		registerer: c.registerer(),
		log:        c.log,
	})
	c.hostingProxy, c.hostingFwd = h, fwd
	return handler, err
}

// tombstoneMirror returns the cluster's tombstones in etcd, read from memory: every hosting
// request asks them whether its repl moved. onStop gets the mirror's Close.
func tombstoneMirror(ctx context.Context, cli *clientv3.Client, cluster string, log *slog.Logger,
	reg prometheus.Registerer, onStop func(func(context.Context) error)) (*etcd.TombstoneMirror, error) {
	s, err := etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: cli, Prefix: "/switchyard/tombstone/" + cluster + "/"})
	if err != nil {
		return nil, err
	}
	m, err := etcd.NewTombstoneMirror(ctx, etcd.TombstoneMirrorConfig{Store: s, Logger: log.With("component", "tombstone-mirror"), Registerer: reg})
	if err != nil {
		return nil, err
	}
	onStop(func(context.Context) error { return m.Close() })
	return m, nil
}

// registerer is where the cluster's hosting metrics go: the platform's registry, labelled
// with the cluster.
func (c *cluster) registerer() prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"cluster": c.id}, c.p.metrics)
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
			return v.conman().Stop(ctx, a.Repl)
		}
	}
	return fmt.Errorf("%w %q", errNoSuchVM, a.VM)
}
