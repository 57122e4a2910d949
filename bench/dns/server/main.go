// Command server is the DNS server the dnsperf load script (bench/dns/run.sh) measures:
//
//	server -mode bare    -addr 127.0.0.1:5390   a bare miekg/dns server answering a fixed A record
//	server -mode dnsauth -addr 127.0.0.1:5391   dnsauth over an in-process lore Directory of -repls repls
//
// Both serve UDP and TCP on addr (TCP with MaxTCPQueries -1, so dnsperf's pipelined connections
// stay open), print "ready" on stdout once both listen, and stop on SIGINT or SIGTERM. The repls
// are named s<i>.o<i/10>.<zone> in 4 clusters, cluster c<k> answering 127.0.<k+1>.1 and
// fd00::<k+1>:1, the same shape run.sh writes for NSD.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

func main() {
	mode := flag.String("mode", "dnsauth", "bare or dnsauth")
	addr := flag.String("addr", "127.0.0.1:5391", "UDP and TCP listen address")
	zone := flag.String("zone", "repl.test", "zone")
	repls := flag.Int("repls", 100_000, "repls in the directory (dnsauth mode)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the serving phase to this file")
	memprofile := flag.String("memprofile", "", "write an allocation profile of the serving phase to this file at exit")
	flag.BoolVar(&packet, "packet", false, "dnsauth mode: serve UDP with dnsauth.PacketServer (batched system calls, answers reused for 2 s) instead of miekg/dns")
	flag.BoolVar(&blocking, "blocking", false, "with -packet: read each socket in a blocking recvmmsg on a locked OS thread (PacketServer.Blocking) instead of Go's netpoller")
	flag.BoolVar(&plainUDP, "plain-udp", false, "hand miekg/dns the UDP socket as a plain net.PacketConn, so it skips the IP_PKTINFO session (fine when bound to one address, not to a wildcard)")
	flag.Parse()
	profile, memProfile = *cpuprofile, *memprofile
	if err := run(*mode, *addr, *zone, *repls); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

var (
	packet              bool
	profile, memProfile string
	plainUDP            bool
	blocking            bool
)

func run(mode, addr, zone string, repls int) error {
	var h dns.Handler
	var dir *lore.Directory
	switch mode {
	case "bare":
		h = bare()
	case "dnsauth":
		var err error
		dir, err = directory(zone, repls)
		if err != nil {
			return err
		}
		defer dir.Close()
		// Metrics on, as a production embedder would run it (the registry is just not served).
		h, err = dnsauth.New(dnsauth.Config{
			Directory:  dir,
			Zones:      []dnsauth.Zone{{Name: zone, NS: []dnsauth.NameServer{{Name: "ns1." + zone, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.53")}}}}},
			Registerer: prometheus.NewRegistry(),
			Logger:     slog.New(slog.NewTextHandler(os.Stderr, nil)),
		})
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	var servers []*dns.Server
	if packet {
		// UDP on dnsauth's PacketServer; TCP on miekg/dns as below.
		dh, ok := h.(*dnsauth.Handler)
		if !ok {
			return errors.New("-packet needs -mode dnsauth")
		}
		conns, err := dnsauth.ListenUDP(context.Background(), addr, runtime.GOMAXPROCS(0))
		if err != nil {
			return err
		}
		// Reused answers are dropped whenever the directory changes, as examples/platform does.
		ps := &dnsauth.PacketServer{Handler: dh, Conns: conns, Blocking: blocking, Version: dir.Version}
		go func() { _ = ps.Serve() }()
		defer ps.Shutdown(context.Background())
	} else {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		if plainUDP {
			// Not a *net.UDPConn: miekg reads with ReadFrom and writes with WriteTo instead of
			// keeping a SessionUDP with the destination address from IP_PKTINFO.
			pc = struct{ net.PacketConn }{pc}
		}
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: h})
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	servers = append(servers, &dns.Server{Listener: ln, Handler: h, MaxTCPQueries: -1})
	errs := make(chan error, len(servers))
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { errs <- s.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-errs:
			return err
		}
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if memProfile != "" {
		runtime.MemProfileRate = 64 << 10
		defer func() {
			if f, err := os.Create(memProfile); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case err := <-errs:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errAll error
	for _, s := range servers {
		errAll = errors.Join(errAll, s.ShutdownContext(ctx))
	}
	return errAll
}

// bare answers every query with one fixed A record.
func bare() dns.Handler {
	a := &dns.A{Hdr: dns.RR_Header{Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 1, 1).To4()}
	return dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			rr := *a
			rr.Hdr.Name = r.Question[0].Name
			m.Answer = []dns.RR{&rr}
		}
		_ = w.WriteMsg(m)
	})
}

func directory(zone string, repls int) (*lore.Directory, error) {
	dir, err := lore.New(lore.Config{Zone: zone})
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	for k := 0; k < 4; k++ {
		_, err := dir.PutCluster(ctx, lore.Cluster{ID: fmt.Sprintf("c%d", k), EvalURL: "ws://127.0.0.1:8443/",
			Hosting4: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, byte(k + 1), 1})},
			Hosting6: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("fd00::%d:1", k+1))}})
		if err != nil {
			return nil, err
		}
	}
	for i := 0; i < repls; i++ {
		_, err := dir.CreateRepl(ctx, lore.Repl{ID: fmt.Sprintf("r%d", i), Owner: fmt.Sprintf("o%d", i/10),
			Slug: fmt.Sprintf("s%d", i), Cluster: fmt.Sprintf("c%d", i%4)})
		if err != nil {
			return nil, err
		}
	}
	return dir, nil
}
