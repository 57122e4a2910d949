// Package acmedns serves ACME DNS-01 challenge values: a Store of accounts and TXT values
// (MemStore, on go-memdb) and an HTTP API compatible with acme-dns
// (https://github.com/joohoi/acme-dns), so the acme-dns providers that lego and certmagic ship
// manage certificates for names under a dnsauth zone without changes.
//
// # How it composes
//
// dnsauth answers the DNS side: a zone marked dnsauth.Zone.ChallengeZone serves every
// <subdomain>.<zone> as TXT from the Store (MemStore satisfies dnsauth.Challenges), and
// _acme-challenge.<name> in a hosting zone is either a CNAME into that challenge zone
// (dnsauth.Zone.ACMETarget or ACMEDelegate) or served from the same Store under its own name.
// NewHandler is the HTTP side, mounted wherever the operator's HTTP server wants it:
//
//	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
//	api, _ := acmedns.NewHandler(acmedns.HandlerConfig{Store: store, Zone: "acme.repl.test"})
//	dnsh, _ := dnsauth.New(dnsauth.Config{Directory: dir, Challenges: store, Zones: []dnsauth.Zone{
//		{Name: "repl.test", ACMETarget: fulldomain},
//		{Name: "acme.repl.test", ChallengeZone: true},
//	}})
//
// # Semantics
//
// A name holds the Keep (default 2) most recent values, as acme-dns does, so a certificate for
// a name and its wildcard validate together; values expire after HandlerConfig.Lifetime
// (default 1 h), which acme-dns does not do. API keys are 40 random characters (240 bits);
// the store keeps only their SHA-256 and compares it in constant time: a slow password hash
// protects low-entropy secrets and would add nothing here. An account's allowfrom networks
// limit who may update it; HandlerConfig.RegisterFrom, RegisterKey and DisableRegistration limit
// who may register at all, and registrations are rate limited per client address
// (RegisterPerMinute, 10) and in total (RegisterTotalPerMinute, 600): 429 rate_limited with
// Retry-After beyond that, so anonymous registrations cannot grow the store without bound.
//
// # Metrics
//
// With a Registerer: switchyard_acmedns_requests_total{endpoint="register|update|health",code}.
package acmedns
