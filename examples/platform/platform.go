package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/sessions"
)

// Stores the platform keeps its state in (Config.Store).
const (
	StoreMemory = "memory" // in-process stores: one process holds all state
	StoreEtcd   = "etcd"   // etcd: lore, placement, tombstones and VM liveness shared through etcd
)

// The repls' container runtimes (Config.Runtime).
const (
	// RuntimeProcess is conman/process, the sandbox of our own (nothing to install).
	RuntimeProcess = "process"
	// RuntimeRunc is conman/oci over runc, on a busybox image the platform builds.
	RuntimeRunc = "runc"
	// RuntimeRunsc is conman/oci over gVisor's runsc ($RUNSC, the build .ci/run makes, or runsc
	// on the PATH; a gVisor from 2026 on), on the same image.
	RuntimeRunsc = "runsc"
)

// Config is the shape of one reference deployment. Every address is a flag of the run command.
type Config struct {
	// Zone is the platform zone: repls are <slug>.<owner>.<Zone>.
	Zone string
	// DNSAddr is where dnsauth answers, over UDP and TCP.
	DNSAddr string
	// LoreAddr is lore's HTTP API.
	LoreAddr string
	// AdminAddr serves the platform's own admin endpoints (roll a VM, restart Eval).
	AdminAddr string
	// AdminKey guards lore's admin API and the platform admin endpoints.
	AdminKey string
	// WebAddr serves the workspace and console pages (web.go). Empty means no web server.
	WebAddr string
	// WebAssetCache is where the pages' npm files are cached (webassets.go). Empty means the
	// user's cache directory.
	WebAssetCache string
	// Clusters are the cluster IDs; the Nth (from 1) lives in ClusterNet's Nth /24.
	Clusters []string
	// ClusterNet holds every cluster's /24: cluster N is ClusterNet.Addr() + N<<8.
	ClusterNet netip.Prefix
	// VMs is the number of conman VMs per cluster.
	VMs int
	// Ports of each cluster's components, on the cluster's .1 address (VMs on .11, .12, …).
	HostingPort, EvalPort, ControlplanePort, ConmanPort int
	// ACME is the HTTPS side: the acme-dns API, the CA and the HTTPS hosting listeners (acme.go).
	ACME ACMEConfig
	// StateDir holds the repls' files and conman state. It must exist.
	StateDir string
	// EvalGrace is how long a draining Eval keeps live sessions.
	EvalGrace time.Duration
	// Runtime names the repls' container runtime (RuntimeProcess). Empty means RuntimeProcess.
	Runtime string
	// Isolation is the conman/process isolation mode: "" is the sandbox, "none" runs repls as
	// plain processes with the platform's privileges (trusted code only).
	Isolation string
	// Logger receives every component's log lines.
	Logger *slog.Logger

	// Store is where state lives: "" or StoreMemory (in-process stores) or StoreEtcd (lore,
	// placement and tombstones in etcd; DNS and hosting read through etcd mirrors; VM liveness
	// through etcd leases).
	Store string
	// EtcdEndpoints are the etcd client URLs with StoreEtcd. Empty means an etcd member started
	// in this process, with its data under StateDir/etcd (a single-host demo, not durable).
	EtcdEndpoints []string
	// EtcdHost is the loopback address the in-process etcd listens on. Empty means 127.0.0.1.
	EtcdHost string
	// EtcdTLS is how to reach EtcdEndpoints: TLS with the given CA and client certificate.
	// Ignored for the in-process etcd, which always runs TLS with the deployment's own CA.
	EtcdTLS EtcdTLS
	// ComponentMetrics, in the multi-process mode (runProcesses), has every component process
	// serve Prometheus /metrics on its own host address (an ephemeral port, printed with it).
	ComponentMetrics bool
	// AliveTTL is how long a VM stays placeable after its agent stops, with StoreEtcd (the
	// TTL of its etcd lease, whole seconds). Zero means 5 s.
	AliveTTL time.Duration
}

func (c *Config) setDefaults() error {
	if c.Zone == "" {
		c.Zone = "repl.test"
	}
	if len(c.Clusters) == 0 {
		c.Clusters = []string{"a", "b"}
	}
	if !c.ClusterNet.IsValid() {
		c.ClusterNet = netip.MustParsePrefix("127.0.0.0/16")
	}
	if !c.ClusterNet.Addr().Is4() || c.ClusterNet.Bits() > 16 {
		return fmt.Errorf("cluster net %s: need an IPv4 prefix of /16 or wider", c.ClusterNet)
	}
	if len(c.Clusters) > 254 {
		return errors.New("at most 254 clusters")
	}
	if c.VMs <= 0 {
		c.VMs = 2
	}
	if c.VMs > 200 {
		return errors.New("at most 200 VMs per cluster")
	}
	for _, p := range []*int{&c.HostingPort, &c.EvalPort, &c.ControlplanePort, &c.ConmanPort} {
		if *p < 0 || *p > 65535 {
			return fmt.Errorf("bad port %d", *p)
		}
	}
	if c.HostingPort == 0 {
		c.HostingPort = 8080
	}
	if c.EvalPort == 0 {
		c.EvalPort = 8443
	}
	if c.ControlplanePort == 0 {
		c.ControlplanePort = 8500
	}
	if c.ConmanPort == 0 {
		c.ConmanPort = 8600
	}
	if c.EvalGrace <= 0 {
		c.EvalGrace = 30 * time.Hour
	}
	if err := c.ACME.setDefaults(); err != nil {
		return err
	}
	if c.StateDir == "" {
		return errors.New("no state directory")
	}
	if c.AdminKey == "" {
		c.AdminKey = randomKey()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch c.Runtime {
	case "":
		c.Runtime = RuntimeProcess
	case RuntimeProcess, RuntimeRunc, RuntimeRunsc:
	default:
		return fmt.Errorf("runtime %q: want %q, %q or %q", c.Runtime, RuntimeProcess, RuntimeRunc, RuntimeRunsc)
	}
	switch c.Isolation {
	case "", "none":
	default:
		return fmt.Errorf("isolation %q: want \"\" (the sandbox) or \"none\"", c.Isolation)
	}
	switch c.Store {
	case "":
		c.Store = StoreMemory
	case StoreMemory, StoreEtcd:
	default:
		return fmt.Errorf("store %q: want %q or %q", c.Store, StoreMemory, StoreEtcd)
	}
	if len(c.EtcdEndpoints) > 0 && c.Store != StoreEtcd {
		return errors.New("etcd endpoints given without the etcd store")
	}
	if c.AliveTTL <= 0 {
		c.AliveTTL = 5 * time.Second
	}
	seen := map[string]bool{}
	for _, id := range c.Clusters {
		if _, err := lore.NormalizeName("cluster", id); err != nil {
			return err
		}
		if seen[id] {
			return fmt.Errorf("cluster %q named twice", id)
		}
		seen[id] = true
	}
	return nil
}

// clusterAddr is host .h of cluster number n (from 1).
func (c *Config) clusterAddr(n, h int) netip.Addr {
	a := c.ClusterNet.Addr().As4()
	a[2] += byte(n)
	a[3] = byte(h)
	return netip.AddrFrom4(a)
}

func randomKey() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// Platform is a running reference deployment.
type Platform struct {
	cfg  Config
	log  *slog.Logger
	dir  *lore.Directory
	lore *server

	// reader is what DNS and hosting look repls up in: the directory itself with the memory
	// store, an etcd mirror (in-process lookups, fed by a watch) with etcd.
	reader interface {
		dnsauth.Directory
		hosting.Directory
	}
	etcdServer *embeddedEtcd // the in-process etcd, when no endpoints were given

	// loopBudget is shared by the clusters' session proxies, so that their event loops
	// together leave a P to the rest of the process.
	loopBudget sessions.LoopBudget
	etcdTLS    EtcdTLS // how this platform reaches etcd
	etcdCli    *clientv3.Client
	loreStore  *etcd.LoreStore
	mirror     *etcd.Mirror
	dnsAddr    string // where DNS answers, UDP and TCP

	acme *acmePlatform // the HTTPS side (acme.go); nil with ACME.Disable

	// hopSecret signs the hop header tombstone forwarding sends between clusters.
	hopSecret []byte

	admin    *server
	web      *webServer
	metrics  *prometheus.Registry // every Eval generation's and VM's metrics, labelled
	clusters map[string]*cluster
	order    []string // cluster IDs in start order

	stop     group
	stopOnce sync.Once
	stopErr  error
}

// Start brings the whole deployment up: lore, DNS, then every cluster. On error it stops what it
// started.
func Start(ctx context.Context, cfg Config) (_ *Platform, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := &Platform{cfg: cfg, log: cfg.Logger, clusters: map[string]*cluster{}, hopSecret: make([]byte, 32), metrics: prometheus.NewRegistry()}
	if _, err := rand.Read(p.hopSecret); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p.Shutdown(sctx)
		}
	}()

	// lore: the global directory and the connect-token issuer.
	var store lore.Store // nil: lore's own in-memory store
	if cfg.Store == StoreEtcd {
		if err := p.startEtcd(); err != nil {
			return nil, err
		}
		store = p.loreStore
	}
	var resolver lore.TXTResolver
	if r := p.txtResolver(); r != nil {
		resolver = r
	}
	dir, loreAPI, err := newLore(loreConfig{
		zone: cfg.Zone, store: store, resolver: resolver, adminKey: cfg.AdminKey,
		onStop: p.stop.add, registerer: p.metrics, log: p.log.With("component", "lore"),
	})
	if err != nil {
		return nil, err
	}
	p.dir = dir
	p.reader = p.dir
	if cfg.Store == StoreEtcd {
		// DNS and hosting read a local mirror, as they would on their own machines.
		p.mirror, err = etcd.NewMirror(ctx, etcd.MirrorConfig{Store: p.loreStore, Logger: p.log.With("component", "mirror"),
			Registerer: p.metrics})
		if err != nil {
			return nil, err
		}
		p.stop.add(func(context.Context) error { return p.mirror.Close() })
		p.reader = p.mirror
	}
	p.lore, err = serve(ctx, "lore", cfg.LoreAddr, loreAPI, false)
	if err != nil {
		return nil, err
	}
	p.stop.add(p.lore.Shutdown)

	// dnsauth on UDP and TCP.
	if err := p.startDNS(); err != nil {
		return nil, err
	}
	if !cfg.ACME.Disable {
		if err := p.startACME(ctx); err != nil {
			return nil, err
		}
	}

	// The clusters.
	for i, id := range cfg.Clusters {
		c, err := startCluster(ctx, p, id, i+1)
		if c != nil {
			p.clusters[id] = c
			p.order = append(p.order, id)
			p.stop.add(c.shutdown)
		}
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", id, err)
		}
	}

	p.admin, err = serve(ctx, "admin", cfg.AdminAddr, p.adminHandler(), false)
	if err != nil {
		return nil, err
	}
	p.stop.add(p.admin.Shutdown)
	if cfg.WebAddr != "" {
		cache := cfg.WebAssetCache
		if cache == "" {
			cache = defaultAssetCache()
		}
		if p.web, err = startWeb(ctx, p, cfg.WebAddr, cache); err != nil {
			return nil, err
		}
		p.stop.add(p.web.shutdown)
	}
	return p, nil
}

// startEtcd connects to etcd (starting one in process when no endpoints are configured) and
// opens lore's store in it.
func (p *Platform) startEtcd() error {
	eps, t := p.cfg.EtcdEndpoints, p.cfg.EtcdTLS
	if len(eps) == 0 {
		ca, err := openPKI(filepath.Join(p.cfg.StateDir, "pki"))
		if err != nil {
			return err
		}
		c, err := startEmbeddedEtcd(filepath.Join(p.cfg.StateDir, "etcd"), p.cfg.EtcdHost, ca)
		if err != nil {
			return err
		}
		p.etcdServer = c
		p.stop.add(func(context.Context) error { c.Close(); return nil })
		eps = c.Endpoints
		cert, key, err := ca.issue("platform", false)
		if err != nil {
			return err
		}
		t = EtcdTLS{CAFile: ca.CAFile(), CertFile: cert, KeyFile: key}
		p.log.Info("started etcd in process (TLS, client certificates)", "endpoints", strings.Join(eps, ","))
	}
	p.etcdTLS = t
	cli, err := etcdClient(eps, t)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	p.etcdCli = cli
	p.stop.add(func(context.Context) error { return cli.Close() })
	p.loreStore, err = etcd.NewLoreStore(etcd.LoreStoreConfig{Client: cli})
	if err != nil {
		return err
	}
	p.stop.add(func(context.Context) error { return p.loreStore.Close() })
	return nil
}

// EtcdEndpoints are the etcd client URLs the platform uses (none with the memory store).
func (p *Platform) EtcdEndpoints() []string {
	if p.etcdServer != nil {
		return p.etcdServer.Endpoints
	}
	return p.cfg.EtcdEndpoints
}

func (p *Platform) startDNS() error {
	dcfg := dnsauth.Config{
		Zones: []dnsauth.Zone{{
			Name: p.cfg.Zone,
			NS:   []dnsauth.NameServer{{Name: "ns1." + p.cfg.Zone, Addrs: []netip.Addr{dnsHostAddr(p.cfg.DNSAddr)}}},
		}},
		Directory: p.reader,
		Logger:    p.log.With("component", "dns"),
		// Abuse resistance: rate-limited UDP answers per client prefix (slip 2: a real
		// client retries over TCP), and DNS cookies, which spare a client from the limit.
		RRL:     &dnsauth.RRL{ResponsesPerSecond: 200},
		Cookies: &dnsauth.Cookies{Secret: randomSecret16()},
	}
	if !p.cfg.ACME.Disable {
		// _acme-challenge names: owners' delegations from lore, else the challenge store (which
		// autotls writes to); acme-dns accounts live in the challenge zone.
		store, err := p.challenges()
		if err != nil {
			return err
		}
		dcfg.Challenges = store
		dcfg.Zones[0].ACMEDelegate = p.dir.ACMETarget
		dcfg.Zones = append(dcfg.Zones, dnsauth.Zone{Name: p.challengeZone(), ChallengeZone: true})
	}
	h, err := dnsauth.New(dcfg)
	if err != nil {
		return err
	}
	// UDP on dnsauth's own batched loop, one SO_REUSEPORT socket per core; TCP on miekg/dns.
	conns, err := dnsauth.ListenUDP(context.Background(), p.cfg.DNSAddr, runtime.GOMAXPROCS(0))
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	ps := &dnsauth.PacketServer{Handler: h, Conns: conns}
	// Reused answers are dropped whenever the directory DNS reads changes, so a move shows
	// in the next answer (lore's write counter, or the etcd mirror's revision).
	switch r := p.reader.(type) {
	case interface{ Version() uint64 }:
		ps.Version = r.Version
	case interface{ Revision() int64 }:
		ps.Version = func() uint64 { return uint64(r.Revision()) }
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = ps.Serve() }()
	p.stop.add(func(ctx context.Context) error {
		err := ps.Shutdown(ctx)
		<-served
		return err
	})
	p.dnsAddr = conns[0].LocalAddr().String()
	// TCP on the port UDP got, so a ":0" address gives one port for both.
	ln, err := net.Listen("tcp", p.dnsAddr)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	s := &dns.Server{Listener: ln, Handler: h, MaxTCPQueries: -1, IdleTimeout: func() time.Duration { return 30 * time.Second }}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- s.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		return fmt.Errorf("dns: %w", err)
	}
	p.stop.add(s.ShutdownContext)
	return nil
}

// dnsHostAddr is the address of host:port, or 127.0.0.1 when host is empty or unparsable.
func dnsHostAddr(hostport string) netip.Addr {
	host, _, _ := net.SplitHostPort(hostport)
	if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
		return a
	}
	return netip.MustParseAddr("127.0.0.1")
}

// DNSAddr is where dnsauth answers (UDP and TCP).
func (p *Platform) DNSAddr() string { return p.dnsAddr }

// LoreURL is lore's API base URL.
func (p *Platform) LoreURL() string { return "http://" + p.lore.Addr() }

// AdminURL is the platform admin API's base URL.
func (p *Platform) AdminURL() string { return "http://" + p.admin.Addr() }

// Directory is lore's in-process directory.
func (p *Platform) Directory() *lore.Directory { return p.dir }

// Cluster returns a running cluster by ID.
func (p *Platform) Cluster(id string) *cluster { return p.clusters[id] }

// Shutdown stops everything in reverse order: admin, clusters (Eval and hosting drain, VMs stop
// their containers), DNS, lore. It returns when all is stopped or ctx ends.
func (p *Platform) Shutdown(ctx context.Context) error {
	p.stopOnce.Do(func() { p.stopErr = p.stop.shutdown(ctx) })
	return p.stopErr
}

// printEndpoints writes the endpoints and a "try it" block for people.
func (p *Platform) printEndpoints(w *os.File) {
	zone := p.cfg.Zone
	dnsHost, dnsPort, _ := net.SplitHostPort(p.DNSAddr())
	fmt.Fprintf(w, "\nswitchyard reference platform is up\n\n")
	if p.web != nil {
		fmt.Fprintf(w, "web %s/   (workspace: /<owner>/<slug>, owner key: platform owner-key <owner>; console: /console, admin key)\n\n", p.web.URL())
	}
	fmt.Fprintf(w, "  zone            %s\n", zone)
	fmt.Fprintf(w, "  DNS (UDP+TCP)   %s\n", p.DNSAddr())
	fmt.Fprintf(w, "  lore API        %s   (admin key: %s)\n", p.LoreURL(), p.cfg.AdminKey)
	fmt.Fprintf(w, "  platform admin  %s\n", p.AdminURL())
	fmt.Fprintf(w, "  state           %s\n", p.cfg.StateDir)
	if p.cfg.Store == StoreEtcd {
		fmt.Fprintf(w, "  etcd            %s\n", strings.Join(p.EtcdEndpoints(), ","))
	}
	ids := append([]string(nil), p.order...)
	sort.Strings(ids)
	for _, id := range ids {
		c := p.clusters[id]
		fmt.Fprintf(w, "  cluster %-7s hosting http://%s  eval %s  controlplane %s\n", id, c.hosting.Addr(), c.evalURL(), c.controlplaneURL())
		for _, v := range c.liveVMs() {
			fmt.Fprintf(w, "                  vm %-10s %s\n", v.id, v.addr)
		}
	}
	p.printACME(w)
	p.printWeb(w)
	a := p.clusters[p.order[0]]
	_, hostingPort, _ := net.SplitHostPort(a.hosting.Addr())
	fmt.Fprintf(w, `
Try it (in another terminal):

  export SWITCHYARD_ADMIN_KEY=%[1]s LORE=%[2]s
  curl -s -H "Authorization: Bearer $SWITCHYARD_ADMIN_KEY" $LORE/v1/repls \
       -d '{"owner":"replbot","slug":"blog","cluster":"%[3]s"}'
  dig @%[4]s -p %[5]s blog.replbot.%[6]s A +short
  curl -s -H 'Host: blog.replbot.%[6]s' http://%[7]s:%[8]s/
  go run ./examples/platform connect -lore $LORE replbot/blog       # a shell in the repl
  curl -s -H "Authorization: Bearer $SWITCHYARD_ADMIN_KEY" $LORE/v1/repls/<id>/move -d '{"cluster":"%[9]s"}'
  go run ./examples/platform roll -admin %[10]s -cluster %[3]s        # drain and replace a VM
  go run ./examples/platform restart-eval -admin %[10]s -cluster %[3]s

Stop with Ctrl-C (a second Ctrl-C closes open sessions at once).
`, p.cfg.AdminKey, p.LoreURL(), a.id, dnsHost, dnsPort, zone, a.cfgHostingHost(), hostingPort, p.otherCluster(a.id), p.AdminURL())
}

// printWeb writes how to open the web pages, when they are served.
func (p *Platform) printWeb(w *os.File) {
	if p.web == nil {
		return
	}
	fmt.Fprintf(w, `
  In a browser, once replbot/blog exists: %[1]s/replbot/blog
  (sign in as replbot, key %[2]s); the console: %[1]s/console (the admin key).
`, p.web.URL(), ownerKey(p.cfg.AdminKey, "replbot"))
}

func (p *Platform) otherCluster(id string) string {
	for _, o := range p.order {
		if o != id {
			return o
		}
	}
	return id
}

func itoa(n int) string { return strconv.Itoa(n) }

// randomSecret16 is a random 16-byte secret (the DNS cookie key of this run).
func randomSecret16() [16]byte {
	var k [16]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return k
}
