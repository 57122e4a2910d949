// Package dnsauth is switchyard's authoritative DNS: a miekg/dns Handler that answers for the
// platform's hosting zone from lore, so that <slug>.<owner>.<zone> resolves to the hosting proxy
// of the cluster where the repl lives and web traffic lands there with no extra hop.
//
// # Description
//
// A Handler is a dns.Handler. It serves one or more zones (Config.Zones) and answers:
//
//   - A and AAAA for <slug>.<owner>.<zone> and <replid>.id.<zone>: the Hosting4 and Hosting6
//     addresses of the repl's cluster, looked up in a Directory on every query (TTL Config.TTL,
//     60 s), so a create, move or delete is visible in the next answer. Users' custom domains
//     CNAME to <replid>.id.<zone>.
//   - SOA and NS at the apex, with glue for name servers inside the zone.
//   - ACME DNS-01: _acme-challenge.<name>.<zone> is a CNAME into a validation zone
//     (Zone.ACMETarget, or per name Zone.ACMEDelegate), or the TXT values of a challenge store
//     (Config.Challenges). A zone marked Zone.ChallengeZone serves acme-dns style
//     <subdomain>.<zone> TXT records; package dnsauth/acmedns provides the store and the
//     acme-dns compatible HTTP API that lego and certmagic already speak.
//
// It behaves as NSD and Knot do: AA on every answer from a zone; NXDOMAIN and NODATA carry the
// zone's SOA in the authority section, whose TTL and MINIMUM are the negative TTL (RFC 2308);
// <owner>.<zone> and id.<zone> are empty non-terminals (NOERROR, no data: an owner is never
// denied, RFC 8020); names below a repl name are NXDOMAIN; names outside every zone, other
// classes, AXFR and IXFR are REFUSED; UPDATE, NOTIFY and unknown opcodes are NOTIMP; CAA,
// HTTPS, SVCB, TXT, MX and unknown types at a repl name are NODATA (Let's Encrypt's CAA check
// needs that); ANY gets one RRset (RFC 8482); the question is echoed with its exact case and
// answers use it as owner name (0x20). A message with the QR bit set is never answered.
//
// EDNS0 follows RFC 6891 and RFC 8906 §8: DO is echoed, unknown options are ignored, version
// > 0 is BADVERS, the advertised size is Config.UDPSize (1232). A UDP answer never exceeds the
// client's size (512 without EDNS): it is sent uncompressed when it fits, compressed when that
// fits, else truncated with TC set and the OPT kept; the retry over TCP gets everything.
// Malformed queries get FORMERR (no or several questions, several OPT records, OPT as qtype).
//
// A directory failure is SERVFAIL, never NXDOMAIN: only an error matching lore.ErrNotFound
// denies a name. Lookups run under a per-query deadline (Config.Timeout, 2 s).
//
// The answer path does not allocate: labels are sliced out of the query name (lowercased only
// when it has upper case), the reply is built in pooled records and packed into a pooled buffer
// that is written directly, and the lookup context allocates its timer only if the directory
// waits on it. A Directory that also has AppendHosting (HostingDirectory; *lore.Directory does)
// hands over a cluster's addresses into pooled buffers, so an A or AAAA answer from an
// in-process lore allocates nothing at all; a miss (NXDOMAIN) costs lore one small error value.
// What remains is the directory's own cost (see docs/benchmarks/dnsauth.md).
//
// # Configuration
//
// Config and Zone document every field with its default; the minimum is a Directory and one
// zone:
//
//	h, err := dnsauth.New(dnsauth.Config{
//		Directory: dir, // *lore.Directory in process, *lore.Client over HTTP, or a *Cache of either
//		Zones: []dnsauth.Zone{{
//			Name: "repl.test",
//			NS:   []dnsauth.NameServer{{Name: "ns1.repl.test", Addrs: []netip.Addr{nsAddr}}},
//		}},
//	})
//	mux.Handle("repl.test.", h)
//
// Embedders own the server: a dns.Server for UDP and one for TCP. Set MaxTCPQueries to -1 on the
// TCP server: miekg's default of 128 closes a connection after 128 queries, which breaks
// resolvers that pipeline (unbound, dnsperf -m tcp).
//
// Riding out a lore outage: the handler answers SERVFAIL while the directory fails, and
// resolvers keep serving what they cached for up to the TTL (and longer with serve-stale,
// RFC 8767). To keep answering beyond that, put a Cache between the handler and a remote
// directory: it asks the backend on every lookup while it works, and when it fails serves the
// last good answer for up to CacheConfig.Stale (1 h), without retrying the backend more than
// once per CacheConfig.RetryAfter (1 s). Names it never saw still get SERVFAIL.
//
// Abuse resistance, each off unless configured:
//
//   - Config.RRL: response-rate limiting of UDP answers per client prefix (/24, /56) and kind
//     of answer, with slip: past the rate, answers are dropped but every Slip-th goes out
//     empty and truncated, so a real client retries over TCP. Per-prefix rates override the
//     default (0 exempts). TCP, and clients with a valid DNS cookie, are never limited.
//   - Config.Cookies: DNS cookies (RFC 7873) with RFC 9018 server cookies (SipHash-2-4, a
//     shared secret with an optional previous one for rotation); a malformed option is FORMERR.
//   - ANY gets one RRset (RFC 8482), so it cannot amplify.
//
// Answers reach miekg/dns's own ResponseWriter as bytes packed in a pooled buffer; any other
// writer (a middleware's wrapper, such as CoreDNS's) gets the *dns.Msg through WriteMsg and sees
// every answer (Config.Write).
//
// # Metrics
//
// With Config.Registerer set:
//
//   - switchyard_dnsauth_queries_total{qtype, rcode}: queries answered. qtype is one of A, AAAA, ANY, CAA,
//     CNAME, HTTPS, MX, NS, SOA, SVCB, TXT, AXFR, IXFR or "other"; rcode one of NOERROR,
//     FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS or "other".
//   - switchyard_dnsauth_answer_duration_seconds: histogram of the time from ServeDNS to the written
//     answer, directory lookups included.
//   - switchyard_dnsauth_directory_errors_total{op}: failed lookups (op: repl, cluster, challenges,
//     acme_delegate), each answered SERVFAIL.
//   - switchyard_dnsauth_truncated_total: UDP answers truncated to the client's size.
//   - switchyard_dnsauth_dropped_total: messages not answered (responses, and RRL drops).
//   - switchyard_dnsauth_rrl_total{action="dropped"|"slipped"}: answers RRL limited.
//   - switchyard_dnsauth_cookies_total{server_cookie="valid"|"none"}: queries with a cookie.
//
// A Cache with a Registerer adds switchyard_dnsauth_cache_stale_answers_total and
// switchyard_dnsauth_cache_backend_errors_total.
//
// # Examples
//
// The package Example mounts a Handler on a dns.ServeMux next to another zone. A resolver in
// front of it (unbound):
//
//	server:
//	  do-not-query-localhost: no       # when dnsauth listens on loopback
//	  local-zone: "test." nodefault    # only for zones under the RFC 6761 name test.
//	stub-zone:
//	  name: "repl.test."
//	  stub-addr: 127.0.0.1@5353
//
// ACME with acme-dns clients, served by the same handler:
//
//	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
//	api, _ := acmedns.NewHandler(acmedns.HandlerConfig{Store: store, Zone: "acme.repl.test"})
//	// POST /register once → fulldomain; then:
//	h, _ := dnsauth.New(dnsauth.Config{Directory: dir, Challenges: store, Zones: []dnsauth.Zone{
//		{Name: "repl.test", ACMETarget: fulldomain},
//		{Name: "acme.repl.test", ChallengeZone: true},
//	}})
package dnsauth
