// Package switchyard is a library, with reference servers, for running a Replit-style hosting
// platform: users' repls (containers with a filesystem) run on container-manager VMs grouped in
// regional clusters, and switchyard routes every way a person reaches a repl — a DNS lookup, a
// web request, a long-lived WebSocket session — to the right cluster and VM.
//
// This root package holds no code; the work is done by its packages:
//
//   - lore: the global directory (clusters, repls, verified custom domains) and signed connect
//     tokens, with an HTTP API and a Go client.
//   - dnsauth: an authoritative DNS handler (a miekg/dns dns.Handler) that answers each repl's
//     names with the hosting addresses of the cluster it lives in, and serves ACME DNS-01.
//   - placement: the control plane: the VM registry and the repl→VM assignments.
//   - conman: the container runtime abstraction and the per-VM container manager server.
//   - proxy: Sessions, the WebSocket session proxy (Eval), and Hosting, the HTTP proxy by Host.
//   - tombstone: forwarding of requests for repls that moved to another cluster.
//
// # The four flows
//
// A workspace session: the client asks lore to connect to a repl and gets its cluster's Eval URL
// and a short-lived token; sessions.Proxy verifies the token, asks placement for the repl's VM,
// dials conman there (retrying elsewhere on setup failure) and splices bytes both ways.
//
// A web request: dnsauth answers <slug>.<owner>.<zone> with the hosting addresses of the repl's
// cluster; that cluster's hosting proxy (behind tombstone.Forwarder) finds the VM through
// placement and forwards to the repl's web port through conman.
//
// A move between clusters: lore updates the directory, so DNS answers the new cluster; the old
// cluster keeps a tombstone and forwards requests from resolvers still caching the old answer.
//
// A rollout: a conman VM is drained (no new repls, sessions closed with 1012 so clients
// reconnect elsewhere); the session proxy itself drains on SIGTERM, keeping live sessions for a
// grace period of 30 hours or more.
//
// examples/platform runs the whole system on loopback in one command.
package switchyard
