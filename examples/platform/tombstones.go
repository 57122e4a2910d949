package main

import (
	"context"
	"net/http"
)

// tombstones is the cluster's side of moves: the tombstone store, the follower that writes a
// tombstone and releases the VM when lore moves a repl away, and the forwarding middleware.
type tombstones struct{}

// startTombstones wires tombstone forwarding in front of the hosting proxy.
func (c *cluster) startTombstones(ctx context.Context) (http.Handler, error) {
	return c.hostingProxy, nil
}
