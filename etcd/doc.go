// Package etcd keeps switchyard's state in etcd, so many processes on many machines share it:
// lore replicas, DNS servers and hosting proxies in every cluster, controlplane replicas and
// hundreds of conman VMs. It is a separate module (github.com/switchyard-dev/switchyard/etcd)
// so the core module never depends on etcd; its go.mod replaces the core module with ../ so it
// builds against the working tree, and the repository's go.work uses both for development.
//
// # Stores
//
// Each store implements a core Store interface and passes that interface's conformance suite
// against a real etcd (1 and 3 members):
//
//   - LoreStore: lore.Store. Writes are optimistic transactions comparing the mod revision of
//     every key they read (repl, name, cluster, domains), so lore replicas never break
//     uniqueness or references. Every write also puts its events on one log key; Watch is an
//     etcd watch of that key, so events arrive in commit order and Index is the etcd revision.
//     A watcher that falls WatchBuffer behind, a watch whose revisions were compacted and a
//     watch cancelled because its member lost the leader all close the channel with the
//     caller's ctx still live: the caller re-reads and watches again (lore.Store's contract).
//   - PlacementStore: placement.Store and placement.BatchAssigner. Every change to a VM's
//     assignments rewrites the VM key; Assign, AssignBatch and Release commit only if the VM
//     keys they read are unchanged, so controlplanes on separate clients never over-commit.
//   - TombstoneStore: tombstone.Store, one prefix per cluster. Hosting proxies read it through
//     a TombstoneMirror (below).
//   - ACMEStore: acmedns.Store (and dnsauth.Challenges), shared by every DNS replica.
//
// Keys live under a per-store Prefix ("/switchyard/lore/", "/switchyard/placement/", ...);
// give each cluster its own placement and tombstone prefix.
//
// # VM liveness
//
// A conman agent calls KeepVMAlive: a lease of TTL seconds holds the key <prefix><vm>, kept
// alive while the agent runs. A controlplane runs WatchLiveness with its
// *placement.Controlplane (or *placement.Client) as StateSetter: when the key vanishes (the
// agent died and the lease expired, or it revoked the lease with Close on a graceful stop) the
// VM is set Dead, which releases its repls, and with Deregister it is removed. No core change
// is needed; heartbeats (HeartbeatTimeout) still back this up.
//
// # Mirrors for readers
//
// NewMirror loads a lore directory from one etcd snapshot into an in-process lore.MemStore and
// follows the event log; its lookups are in-process. It satisfies dnsauth.Directory and
// hosting.Directory. When its watch cannot continue (ErrCompacted, overflow, lost leader) it
// re-lists into a fresh MemStore and swaps it in; while etcd is unreachable it keeps serving its
// last view and reports switchyard_etcd_mirror_stale = 1.
//
// NewTombstoneMirror does the same for a cluster's tombstones: a tombstone.Store whose reads
// are in-process (the tombstone forwarder asks on every hosting request; a bare TombstoneStore
// would put an etcd round trip on each) and whose writes go to etcd and return once the
// mirror has seen them.
//
// # etcd settings
//
// Any etcd v3.5+ works. PlacementStore keeps each transaction within MaxTxnOps (etcd's
// --max-txn-ops, 128 by default). Compact history as usual (--auto-compaction-retention):
// watchers and mirrors recover from compaction by re-listing. Package etcdtest runs etcd in
// process for tests, benchmarks and single-host demos.
//
// # Example
//
//	cli, _ := clientv3.New(clientv3.Config{Endpoints: []string{"http://10.0.0.1:2379"}})
//	loreStore, _ := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: cli})
//	dir, _ := lore.New(lore.Config{Store: loreStore /* ... */})            // a lore replica
//	mirror, _ := etcd.NewMirror(ctx, etcd.MirrorConfig{Store: loreStore}) // a DNS server or proxy
//	dns, _ := dnsauth.New(dnsauth.Config{Directory: mirror /* ... */})
package etcd
