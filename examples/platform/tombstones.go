package main

import (
	"context"
	"fmt"
	"net/http"

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
		store, err = etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: c.p.etcdCli, Prefix: "/switchyard/tombstone/" + c.id + "/"})
	} else {
		store, err = tombstone.NewMemStore(tombstone.MemStoreConfig{})
	}
	if err != nil {
		return nil, err
	}
	h, handler, fwd, err := newHosting(hostingConfig{
		zone:       c.p.cfg.Zone,
		cluster:    c.id,
		directory:  c.p.reader,
		clusters:   c.p.dir,
		watcher:    c.p.dir,
		placer:     c.cpClient,
		conmanCred: c.conmanCredential,
		store:      store,
		secret:     c.p.hopSecret,
		stopRepl:   c.stopRepl,
		onStop:     c.stops.add,
		log:        c.log,
	})
	c.hostingProxy, c.hostingFwd = h, fwd
	return handler, err
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
