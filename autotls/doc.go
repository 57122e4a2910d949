// Package autotls gives the hosting proxy automatic HTTPS: a *tls.Config whose GetCertificate
// serves, obtains and renews certificates through ACME (github.com/caddyserver/certmagic).
//
// # What it issues
//
//   - Platform names: <slug>.<owner>.<zone> and <id>.id.<zone> are served by one wildcard per
//     owner, *.<owner>.<zone> (and *.id.<zone>), obtained on the first handshake that needs it
//     through DNS-01. The solver writes the challenge value straight into the challenge store
//     that dnsauth answers from (Config.Challenges; *acmedns.MemStore or the etcd store), so
//     there is no propagation to wait for.
//   - Verified custom domains: a certificate per domain, obtained on demand through TLS-ALPN-01
//     on the hosting listener itself, only once lore has verified the domain.
//
// Config.Directory decides: a name is issued only if lore has the repl (by name or ID) or the
// verified domain; anything else fails the handshake without reaching the CA, so a stranger's
// SNI cannot spend the CA's rate limits.
//
// Certificates and ACME accounts live in Config.Storage (certmagic's interface): files under
// Config.Dir by default, or etcd.CertStorage from the etcd module, so every hosting replica
// shares them and only one obtains each (storage locks). Certificates renew when a third of
// their lifetime is left (checked every Config.RenewCheckInterval and on handshakes); OCSP
// responses are fetched and stapled when the certificate names a responder.
//
// # HTTP
//
// Redirect answers plain HTTP with 308 to the same URL over HTTPS; HSTS adds
// Strict-Transport-Security to every answer of a handler. Both are optional: the hosting proxy
// keeps serving HTTP when an operator wants it.
//
// # Metrics
//
// With Config.Registerer: switchyard_autotls_certificates{days_left} (a gauge of cached
// certificates by time left: expired, lt7, lt14, lt30, ge30) and
// switchyard_autotls_obtained_total{kind,result} (kind: wildcard, domain; result: ok, error).
package autotls
