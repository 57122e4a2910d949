// Package lore is switchyard's global directory: clusters, repls and custom domains, and the
// signed connect tokens that tell a client where to connect.
//
// Every way a person reaches a repl starts with a question lore answers. The DNS server
// (package dnsauth) asks which cluster's hosting addresses answer for blog.replbot.<zone>; the
// hosting proxy asks which repl a Host header or custom domain names; the web app asks lore to
// create a repl and to hand a client a session URL and token; the sessions proxy verifies that
// token with lore's public keys without calling lore.
//
// # The directory
//
// A Cluster is a regional cluster: its ID (a DNS label), region, the WebSocket URL of its
// sessions proxy (EvalURL), the internal URL of its hosting proxy (HostingURL, where tombstones
// forward), its public hosting addresses (Hosting4, Hosting6: the A and AAAA answers) and
// whether it is healthy (only healthy clusters receive new repls).
//
// A Repl has a random ID (16 lowercase base32 characters, always a DNS label and never a
// reserved one), an owner and a slug (DNS labels, stored lowercase, the pair unique), the
// cluster it lives in, a plan and its creation time. It is named <slug>.<owner>.<zone> and
// <id>.id.<zone>; ParseHost takes either apart (any case, optional :port and trailing dot).
//
// Owner and slug follow the DNS label rules: letters, digits and hyphens, no leading or trailing
// hyphen, at most 63 octets, case-insensitive. Reserved labels are refused with an error that
// says so: id, www, api, admin, lore, eval, hosting, static, status, ns, ns1–ns4, mail, mx,
// smtp, localhost, abuse, postmaster, hostmaster, webmaster, every label starting with "_"
// (_acme-challenge, _dmarc, ...) and every label with "--" in its third and fourth positions
// (RFC 5891: xn-- punycode lookalikes). See Reserved.
//
// A Domain is a user's custom domain pointing at a repl. AddDomain stores it unverified with a
// random challenge; the owner publishes the challenge as a TXT record at
// _switchyard-challenge.<domain> and calls VerifyDomain, which looks it up through
// Config.Resolver (a TXTResolver; *net.Resolver by default). Only a verified domain routes:
// ReplByDomain answers ErrNotFound for an unverified one. The owner then CNAMEs the domain to the
// repl's <id>.id.<zone> (IDHostname). Deleting a repl deletes its domains.
//
// # Directory, Store and Client
//
// *Directory (New) is the directory in process. It validates and lowercases names, generates
// IDs, chooses a cluster for a repl created without one (Config.ClusterPolicy; by default
// LeastRepls: the healthy cluster with the fewest repls, lowest ID on a tie), verifies domains
// and issues connect tokens, over a Store.
//
// A Store keeps the state and enforces uniqueness and references inside its own transactions.
// NewMemStore is the default, in process. It keeps repls out of the garbage collector's way:
// packed records in append-only []byte chunks, found through maps from 64-bit hashes of the ID
// and of (owner, slug) to record slots (the real bytes are compared), listed through sorted
// blocks of slots; none of it holds pointers, so a directory of 1,000,000 repls (about 150 MiB)
// adds a few milliseconds to a full GC instead of seconds, and a process that embeds it (a DNS
// server allocating per query) does not pay for marking it on every cycle. A hostname lookup
// allocates nothing (docs/benchmarks/lore.md has its cost); the Repl it returns shares the
// store's memory, which is never rewritten. Every Store passes the conformance suite
// in lore/loretest; the etcd backend (package etcd) does too.
//
// *Client (NewClient) speaks the HTTP API and has the same lookup and mutation methods as
// *Directory: Repl, ReplByName, ReplByHost, ReplByDomain, Repls, Cluster, Clusters, Watch,
// Connect, CreateRepl, MoveRepl, DeleteRepl, PutCluster, Domain, AddDomain, VerifyDomain,
// DeleteDomain. Consumers declare the few they need as an interface (as dnsauth and proxy do),
// and either satisfies it. Client errors unwrap to the same sentinels (ErrNotFound, ErrExists,
// ErrInvalid, ErrUnavailable); *APIError carries the status.
//
// # Watch
//
// Watch returns a channel with every change committed after the call, in commit order: repls
// created, moved (with FromCluster) and deleted, clusters changed, domains changed and deleted.
// Event.Index grows with each commit (events of one commit share it). Caches and DNS servers
// use it to see a change at once.
//
// A watcher that does not keep up is never silently skipped: each has a bounded buffer
// (MemStoreConfig.WatchBuffer, 4096 by default), and when it is full the watcher's channel is
// closed. So a channel that closes while your context is still live means "you may have missed
// events": re-read what you cache (Repls, Clusters) and Watch again. Over HTTP the same holds:
// the stream ends and the Client's channel closes. The channel also closes when ctx ends.
//
// # Connect tokens
//
// An Issuer (NewIssuer) signs short-lived connect tokens: JWTs signed with Ed25519 (alg EdDSA,
// made and checked with crypto/ed25519 directly) with a "kid" header and the claims aud (the cluster
// ID), sub (the repl ID), iat, exp (DefaultTokenTTL, 2 minutes, unless IssuerConfig.TTL says
// otherwise) and a random jti. Directory.Connect returns the repl's cluster EvalURL and a fresh
// token for that cluster.
//
// A KeySet (NewKeySet) verifies tokens against several public keys, so keys rotate with an
// overlap: publish the next key (Config.PublishedKeys), switch the Issuer to it, and drop the old
// one after the token TTL. A RemoteKeySet (NewRemoteKeySet) verifies against the JWKS lore
// publishes at GET /v1/keys: fetched on first use, cached, refetched when a token names an
// unknown kid (at most once per MinRefresh) and when older than MaxAge. Verify rejects with its
// own error for each failure, all matchable with errors.Is: ErrTokenMalformed, ErrTokenAlgorithm
// (anything but EdDSA, including "none" and HS256 keyed with the public key), ErrTokenUnknownKey,
// ErrTokenSignature (tampered header, payload or signature, or another key), ErrTokenExpired,
// ErrTokenNotYetValid (iat or nbf in the future) and ErrTokenAudience. Clock skew of
// TokenLeeway (10 s) is tolerated on both ends.
//
// # HTTP API
//
// NewHandler serves JSON over HTTP; it never binds a port. Errors are {"error": "..."} with
// status 400 (bad input), 401 (no or wrong key), 403 (the read key on an admin endpoint), 404,
// 405 (with Allow), 409 (name, ID or domain taken), 413 (body over HandlerConfig.MaxBodyBytes,
// 64 KiB by default) and 503 (no healthy cluster, no issuer, resolver failure). Keys travel as
// "Authorization: Bearer <key>" and are compared in constant time.
//
//	GET    /healthz                          public   {"status":"ok"}
//	GET    /v1/keys                          public   JWKS of the token keys
//	POST   /v1/repls                         admin    {"owner","slug","cluster"?,"plan"?,"id"?} → 201 repl + "hostname"
//	GET    /v1/repls?owner=&after=&limit=    read     {"repls":[...],"next"}: a page by owner then slug
//	GET    /v1/repls/{id}                    read     the repl
//	DELETE /v1/repls/{id}                    admin    204
//	POST   /v1/repls/{id}/move               admin    {"cluster"} → the moved repl
//	POST   /v1/repls/{id}/connect            admin    → {"url","token","expires_at"}
//	GET    /v1/names/{owner}/{slug}          read     the repl by name
//	GET    /v1/hosts/{host}                  read     the repl by platform hostname
//	GET    /v1/clusters                      read     every cluster
//	GET    /v1/clusters/{id}                 read     one cluster
//	PUT    /v1/clusters/{id}                 admin    create or replace → the cluster
//	POST   /v1/domains                       admin    {"domain","repl"} → 201 domain + "txt":{"name","value"}
//	GET    /v1/domains/{domain}              read     the domain, verified or not
//	DELETE /v1/domains/{domain}              admin    204
//	POST   /v1/domains/{domain}/verify       admin    checks the TXT record → the domain
//	GET    /v1/domains/{domain}/repl         read     the repl of a verified domain
//	GET    /v1/watch                         read     newline-delimited JSON Events, empty keepalive lines
//	POST   /v1/owners/{owner}/token          admin    → {"owner","token","expires_at"}: an owner token (1 h)
//	PUT    /v1/acme/{name}                   owner    {"target"} → the ACME delegation (+ "record" for a custom domain)
//	GET    /v1/acme/{name}                   owner    the delegation
//	DELETE /v1/acme/{name}                   owner    204
//
// "admin" endpoints need HandlerConfig.AdminKey: they change state or issue tokens, and are
// called by the platform's web backend, never by end users. "read" endpoints accept the admin
// key or HandlerConfig.ReadKey, for DNS servers and proxies in other regions. "owner" endpoints
// take the admin key (any name) or an owner token, which the web backend mints for a signed-in
// user (an EdDSA JWT of the directory's issuer, aud "lore:owner", sub the owner).
//
// # ACME delegations
//
// An owner who runs their own ACME client (lego, certbot with acme-dns) publishes
// _acme-challenge.<name> CNAME <target> for names they own: <owner>.<zone> (the validation name
// of *.<owner>.<zone>), <slug>.<owner>.<zone> of their repls, and their verified custom domains.
// dnsauth serves it through Directory.ACMETarget (Zone.ACMEDelegate). A custom domain's
// validation reaches the platform through one record in the domain's own DNS,
// _acme-challenge.<domain> CNAME _acme-challenge.<domain>._domains.<zone> (DomainACMEName), and is
// served only while the domain is verified and belongs to the delegation's owner. Stores keep
// delegations through the optional ACMEStore interface (MemStore and etcd.LoreStore have it).
//
// # Metrics
//
// With Config.Registerer set, the Directory registers lore_writes_total{op,result} (op:
// create_repl, move_repl, delete_repl, put_cluster, add_domain, verify_domain, delete_domain;
// result: ok, invalid, not_found, exists, error) and lore_tokens_issued_total.
package lore
