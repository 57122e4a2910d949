package autotls_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
)

// BenchmarkFirstCertificate is the time from a new owner's first HTTPS request to its answer:
// the decision (lore), a new ACME order at the in-process Pebble, the DNS-01 value written to
// the challenge store, Pebble's lookup through dnsauth, finalization and the handshake. A DNS
// provider that takes 60 s to propagate adds those 60 s to every first certificate.
func BenchmarkFirstCertificate(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		owner := fmt.Sprintf("owner%d", i)
		if _, err := e.dir.CreateRepl(ctx, lore.Repl{Owner: owner, Slug: "blog"}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, _, err := e.get(b, "blog."+owner+".repl.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstCertificateDomain is the same for a verified custom domain (TLS-ALPN-01).
func BenchmarkFirstCertificateDomain(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	blog, err := e.dir.ReplByName(ctx, "replbot", "blog")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		name := fmt.Sprintf("shop%d.example.test", i)
		d, err := e.dir.AddDomain(ctx, name, blog.ID)
		if err != nil {
			b.Fatal(err)
		}
		e.txt[lore.ChallengeName(name)] = []string{d.Challenge}
		if _, err := e.dir.VerifyDomain(ctx, name); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, _, err := e.get(b, name); err != nil {
			b.Fatal(err)
		}
	}
}
