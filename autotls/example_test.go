package autotls_test

import (
	"log"
	"net/http"

	"github.com/switchyard-dev/switchyard/autotls"
	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
	"github.com/switchyard-dev/switchyard/lore"
)

// Serve the hosting handler over HTTPS: the DNS-01 solver writes into the same challenge store
// dnsauth answers from, and lore decides which names get certificates.
func Example() {
	dir, _ := lore.New(lore.Config{Zone: "repl.test"})
	challenges := acmedns.NewMemStore(acmedns.MemStoreConfig{})
	_, _ = dnsauth.New(dnsauth.Config{Directory: dir, Challenges: challenges, Zones: []dnsauth.Zone{{Name: "repl.test"}}})

	certs, err := autotls.New(autotls.Config{
		Zone:        "repl.test",
		Directory:   dir,
		Challenges:  challenges,
		CA:          "https://acme-v02.api.letsencrypt.org/directory",
		Dir:         "/var/lib/hosting/certs",
		TLSALPNAddr: ":443", // custom domains: TLS-ALPN-01 on the HTTPS listener
	})
	if err != nil {
		log.Fatal(err)
	}
	defer certs.Close()
	var hosting http.Handler // hosting.New(...), behind tombstone's Forwarder
	srv := &http.Server{Addr: ":443", Handler: autotls.HSTS(hosting, 0), TLSConfig: certs.TLSConfig()}
	go http.ListenAndServe(":80", autotls.Redirect(443))
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
