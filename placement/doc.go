// Package placement is switchyard's control plane (the seed system's "Controlplane"): the
// registry of a cluster's container-manager VMs and the repl→VM assignments, and the component
// that decides which VM runs each repl.
//
// # What it is for
//
// A sessions proxy (sessions.Proxy) or the hosting proxy (hosting.Proxy) that must reach a repl
// calls Place: placement answers with the VM already running the repl, or chooses one, records
// the assignment and answers with it. The conman agent on every VM calls Register once and
// Heartbeat periodically, and Release when a repl's container stops. Operators cordon and drain
// VMs for rollouts (SetState), ask why a repl landed where it did (Explain), and feed the
// autoscaling signal (Autoscale) to whatever creates VMs.
//
//	proxies ──Place──▶ Controlplane ◀──Register/Heartbeat/Release── conman agent (per VM)
//	                       │  ▲
//	                  Store (MapStore, memdb, or etcd in the nested etcd module)
//
// # Composition
//
// *Controlplane is the in-process implementation (New). NewHandler serves it as a JSON HTTP API
// and *Client is the Go client of that API; both have the same method set (the API interface),
// so a consumer declares the small interface it needs (hosting.Placer needs only Place) and takes
// either. The HTTP API requires "Authorization: Bearer <credential>" on every request except
// GET /healthz and answers 401 otherwise; see NewHandler for the routes and error statuses.
//
// # Placing
//
// Place(ctx, Request) returns the repl's live assignment if it has one. A live assignment on a VM
// listed in Request.Avoid (the proxy passes the VM whose dial just failed) is released and the
// repl placed again; one on a dead VM, or a VM whose heartbeat expired, is released with all the
// VM's assignments and the VM marked Dead. Otherwise the pool's Strategy decides:
//
//   - Filters (FilterPlugin) drop VMs that cannot take the repl: Schedulable (Active with a
//     fresh heartbeat: Cordoned, Draining and Dead VMs get no new repls), NotAvoided, Fits
//     (room for the request's containers, CPU and memory on every dimension the VM's capacity
//     constrains).
//   - Scores (ScorePlugin, each with a weight) rank the feasible VMs: MostAllocated (bin-pack)
//     or LeastAllocated (spread, least-loaded), Sticky (100 for the VM the repl last ran on, so
//     its files stay warm; weight 10 in the built-in strategies, which beats any load score while
//     that VM is feasible) and Preferred (Request.Prefer; weight 5).
//   - Sampling: with SampleSize 0 a decision visits the pool's VMs in a random order until it
//     has found ceil(log2 n) feasible ones (14 of 10,000), as Nomad does; the previous and the
//     preferred VM are always evaluated too. A negative SampleSize scans every VM.
//
// This is the Kubernetes scheduler framework's filter/score shape; a custom plugin is a type
// with Name and Filter or Score. Strategies are configured per pool (Config.Strategies; the
// request's Pool, e.g. from the repl's plan, selects it) with a default (Config.DefaultStrategy,
// BinPack unless set).
//
// The chosen VM is committed with Store.Assign, a check-and-set: inside one atomic write the
// store re-checks that the repl has no assignment and that the VM is Active and still has room,
// then adds the request to the VM's usage. Decisions read a cache of the VMs (no store access),
// so concurrent Place calls may pick the same nearly full VM; the loser's commit is refused, the
// VM refreshed from the store, and the decision retried on the other candidates (up to
// Config.MaxAttempts). No interleaving of Place calls, from any number of goroutines or
// Controlplanes sharing a store, pushes a VM past its capacity. With a store that implements
// BatchAssigner (etcd.PlacementStore), concurrent commits are grouped into one write transaction.
//
// Lookup returns a live assignment without deciding anything; Release removes it when the
// repl's container stops (vm "" = whatever VM; naming another VM is ErrConflict) and remembers
// the VM for stickiness.
//
// # VM lifecycle and heartbeats
//
// Register adds a VM as Active (or Cordoned, to warm it up first, or Draining) and counts as a
// heartbeat; a registered VM re-registering keeps an operator's Cordoned or Draining state and
// its usage.
// SetState moves a VM between Active, Cordoned, Draining and Dead; existing assignments on a
// Cordoned or Draining VM stay until released (conman drains them and the proxy re-places with
// Avoid), setting Dead releases them all.
//
// A VM whose last heartbeat is older than Config.HeartbeatTimeout is dead: the Schedulable filter
// ignores it at once, and it is marked Dead and its assignments released (so its repls are
// placeable elsewhere) either lazily, by the first Place or Lookup that meets it, or by Sweep,
// which Run calls every Config.SweepInterval. New starts no goroutine: run Run in a goroutine you
// own (it returns when its context ends), or call Sweep from your own loop. The clock is
// Config.Now, so tests expire heartbeats without waiting.
//
// A Dead VM stays Dead: its heartbeats are refused with ErrNotFound (its registration is void)
// until it calls Register again (the conman agent does on that error), which makes it Active
// with no assignments.
// Heartbeat.Running reconciles assignments with what the VM actually runs: an assignment whose
// repl is not running and is older than Config.StartGrace (the proxy places before conman starts
// the container) is released; a running repl with no assignment is adopted onto the VM if it has
// room; a running repl assigned to another VM is logged and left alone. A nil Running skips this.
//
// # Autoscaling signal
//
// Autoscale reports, per pool, the VMs in each state, the containers assigned, the mean container
// capacity of its Active VMs and Desired = max(MinVMs, ceil(containers × (1 + Headroom) /
// capacity per VM)), with Delta = Desired − Active. Containers on cordoned and draining VMs count:
// they will need room once those VMs go.
//
// # Stores
//
// Store is the persistence interface; package placementtest is its conformance suite, which
// every backend must pass. MapStore, the in-process store and the default, keeps sharded maps
// and one lock per VM: a placement commit is a check-and-set on one VM, which per-VM locks serve
// better than a general transaction (docs/benchmarks/placement.md has its numbers). The etcd
// backend (etcd.PlacementStore, in the nested etcd module) implements Assign as a transaction
// comparing the VM key's revision, and batches concurrent commits (BatchAssigner).
//
// # Configuration
//
// Config's zero value works: MapStore, BinPack everywhere, 30 s heartbeat timeout, start grace
// 2 × timeout, sweep every timeout/3, 25 % autoscaling headroom, at least 1 VM per pool, 8
// commit attempts, time.Now, slog.Default(), no metrics.
//
// # Metrics
//
// With Config.Registerer set: switchyard_placement_place_duration_seconds{pool,result}
// (histogram; result ok, no_capacity, invalid, error; unknown pools are "other"),
// switchyard_placement_commit_conflicts_total, switchyard_placement_released_total{reason}
// (release, avoided, dead, not-running), switchyard_placement_vms_expired_total,
// switchyard_placement_adopted_total, and, computed at scrape time,
// switchyard_placement_vms{pool,state}, switchyard_placement_containers{pool} and
// switchyard_placement_desired_vms{pool}.
//
// # Errors
//
// ErrInvalid (HTTP 400), ErrNotFound (404), ErrConflict (409), ErrNoCapacity (503), matched with
// errors.Is on results of both the Controlplane and the Client; the Client's errors are
// *APIError carrying the status and code.
package placement
