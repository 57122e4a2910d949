// Package tombstone keeps a repl's URLs working while it moves between clusters.
//
// When lore moves a repl from cluster a to cluster b, DNS starts answering b at once, but
// resolvers and clients that cached the old answer keep sending requests to a for up to the DNS
// TTL (longer for clients that ignore it). Cluster a therefore keeps a tombstone, "repl X now
// lives in cluster b", and its hosting proxy forwards such requests to b's hosting proxy, so the
// client never notices the move. Tombstones expire after a TTL well past the DNS TTL (24 h by
// default); then a answers 404 like any cluster that does not host the repl.
//
// # The pieces
//
//   - Tombstone and Store: one cluster's tombstones, by repl ID and by name (owner, slug).
//     MemStore (go-memdb, with a lock-free-read map index for the request path) is the
//     in-process Store; every Store must pass the conformance suite in tombstonetest. The
//     etcd module's TombstoneStore shares a cluster's tombstones between its proxies, and its
//     TombstoneMirror reads them from memory (the Forwarder asks on every request).
//   - Forwarder (New, then Wrap): HTTP middleware in front of hosting.Proxy. A request whose
//     Host names a repl with a live tombstone here is reverse-proxied to the new cluster's
//     hosting proxy, bodies streamed both ways, WebSocket upgrades included; every other request
//     goes to the wrapped handler. The no-tombstone path allocates nothing
//     (docs/benchmarks/hosting.md).
//   - Follower (NewFollower, Start, Close): gives lore's moves their effect on the cluster. It
//     watches lore; when a repl leaves this cluster it writes the tombstone, stops the repl's
//     container (FollowerConfig.Stop) and releases its VM in placement. The new cluster does
//     nothing: its hosting proxy places and starts the repl on the first request.
//
// Composition in one cluster (see the end-to-end test, TestMoveEndToEnd):
//
//	hosting, _ := hosting.New(hosting.Config{Zone: zone, Cluster: "a", Directory: dir,
//		Placer: cp, Credential: cred, TrustForwarded: tombstone.Internal})
//	store, _ := tombstone.NewMemStore(tombstone.MemStoreConfig{})
//	fwd, _ := tombstone.New(tombstone.Config{Cluster: "a", Zone: zone, Store: store,
//		Clusters: dir, Resolver: hosting, Secret: hopSecret})
//	follower, _ := tombstone.NewFollower(tombstone.FollowerConfig{Cluster: "a", Store: store,
//		Watcher: dir, Placement: cp})
//	_ = follower.Start()
//	srv := &http.Server{Handler: fwd.Wrap(hosting)}
//	// on SIGTERM: srv.Shutdown(ctx), fwd.Shutdown(ctx), hosting.Shutdown(ctx), follower.Close()
//
// # Where forwarded requests go
//
// The target is always the HostingURL of the tombstone's cluster in lore's cluster registry
// (Config.Clusters, cached for ClusterCacheTTL), never anything taken from the request: a
// client cannot steer the forwarder to an address of its choosing (no SSRF). The request keeps
// its method, path, query, body and Host (the next cluster routes by the same name); inbound
// Switchyard-* headers are removed; X-Forwarded-For/-Host/-Proto and Forwarded are written as
// revproxy.SetForwarded describes.
//
// # Loops, and internal versus external hops
//
// Every forwarded request carries a HopHeader, "Switchyard-Hop: v1; via=a,b; t=...; sig=...":
// the clusters it has passed, the signing time, and an HMAC-SHA256 over those, the Host, the
// method and the request target, under a secret shared by the platform's clusters
// (Config.Secret; PreviousSecrets for rotation). It is how a cluster tells a hop from another
// cluster (internal) from a request of the outside world (external):
//
//   - no HopHeader: an external request; its forwarding headers are not trusted.
//   - a HopHeader that verifies: an internal hop. Internal(r) reports true for it, so the
//     hosting proxy keeps the original client address (hosting.Config.TrustForwarded).
//   - a HopHeader that does not verify (forged, wrong secret, another host or URL, signed more
//     than MaxHopAge ago), or more than one: refused with 508 Loop Detected. Refusing rather
//     than stripping keeps a cluster with a misconfigured secret from forwarding in circles.
//   - a verified hop whose via already names this cluster, or lists more than MaxHops (4)
//     clusters, or a tombstone here pointing at a cluster in via: 508 Loop Detected.
//
// Each forward also appends "switchyard; cluster=<id>" to the RFC 8586 CDN-Loop header, for
// people and RFC-aware intermediaries; loop decisions use only the signed HopHeader, which a
// client cannot forge. Chains (a→b→c after two moves) are followed hop by hop, and collapsed by
// the Follower: when a repl that left a moves on to c, a's tombstone is pointed at c directly
// (keeping its expiry). A repl that moves back loses its tombstone.
//
// # Bodies
//
// Request and response bodies are streamed (full duplex), never buffered whole; server-sent
// events and other unknown-length answers are flushed as they arrive. A forward is one attempt
// at one fixed target, so nothing is ever replayed and no body limit applies here: no request
// is refused with 413. (hosting.Proxy, which may retry on another VM, buffers only bodies of at
// most hosting.Config.MaxReplayBody for that purpose and streams larger ones in one attempt.)
//
// # Failure answers
//
// All JSON {"error": "...", "request_id": "..."} (an HTML page for browsers), with the request
// id in the Switchyard-Request-Id header and in the log line: 508 for loops and forged hop
// headers; 502 when the new cluster is unknown to lore, has no usable HostingURL or does not
// answer; 503 while shutting down.
//
// # Metrics
//
// With a Registerer:
//
//	switchyard_tombstone_requests_total{outcome}   forwarded, loop, forged, error, draining, client
//	switchyard_tombstone_passed_total              requests without a tombstone, handed on
//	switchyard_tombstone_upgraded_connections      forwarded WebSockets open now
//	switchyard_tombstone_follower_actions_total{action}  written, collapsed, removed, released, failed
//
// # Limits
//
// lore's Watch has no resume index: moves committed while the Follower's watch is broken (it
// re-opens it after RetryInterval) are not replayed, and the log says so. Between lore
// committing a move and the Follower writing the tombstone (milliseconds in process), a request
// reaching the old cluster is answered 404 by its hosting proxy. Custom-domain hosts cost a
// directory lookup (Config.Resolver) on the forwarder as well as in the hosting proxy.
package tombstone
