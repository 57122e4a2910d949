package dnsauth_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

// Mount the handler on the dns.ServeMux of an existing server, next to a zone that server
// already serves, and ask it over UDP.
func Example() {
	ctx := context.Background()
	dir, _ := lore.New(lore.Config{Zone: "repl.test"})
	defer dir.Close()
	_, _ = dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.1.1:8443/v1/connect",
		Hosting4: []netip.Addr{netip.MustParseAddr("127.0.1.1")}})
	_, _ = dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})

	h, err := dnsauth.New(dnsauth.Config{
		Directory: dir,
		Zones:     []dnsauth.Zone{{Name: "repl.test", Serial: 1}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	mux := dns.NewServeMux()
	mux.Handle("repl.test.", h)
	mux.HandleFunc("corp.example.", func(w dns.ResponseWriter, r *dns.Msg) { // the zone already there
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		_ = w.WriteMsg(m)
	})

	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	started := make(chan struct{})
	// MaxTCPQueries: -1 on a TCP server keeps pipelining resolvers' connections open.
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	<-started
	defer func() { _ = srv.ShutdownContext(ctx); <-done }()

	for _, q := range []string{"blog.replbot.repl.test.", "nope.replbot.repl.test.", "www.corp.example."} {
		m := new(dns.Msg)
		m.SetQuestion(q, dns.TypeA)
		r, _, err := new(dns.Client).Exchange(m, pc.LocalAddr().String())
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Print(q, " ", dns.RcodeToString[r.Rcode])
		for _, rr := range r.Answer {
			fmt.Print(" ", rr.(*dns.A).A)
		}
		fmt.Println()
	}
	// Output:
	// blog.replbot.repl.test. NOERROR 127.0.1.1
	// nope.replbot.repl.test. NXDOMAIN
	// www.corp.example. NXDOMAIN
}
