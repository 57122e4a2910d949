package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/internal/acmeca"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// httpsLeaks are goroutines the HTTPS side leaves by design: Pebble's validation queue, never
// stopped; certmagic's process-wide rate limiters per ACME account; a file lock's refresher,
// which ends on its next tick after the unlock.
var httpsLeaks = []goleak.Option{
	goleak.IgnoreTopFunction(acmeca.IgnoreLeaks),
	goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).loop"),
	goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
}

// customerDNS is the DNS of a user's own domain (example.test): the TXT record that verifies it
// with lore and the CNAMEs that send it (and its ACME validations) to the platform.
type customerDNS struct {
	mu      sync.Mutex
	records map[string][]dns.RR // by lowercase FQDN
}

func (c *customerDNS) set(rr string) {
	r, err := dns.NewRR(rr)
	if err != nil {
		panic(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := strings.ToLower(r.Header().Name)
	c.records[n] = append(c.records[n], r)
}

func (c *customerDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	c.mu.Lock()
	rrs := c.records[strings.ToLower(q.Name)]
	c.mu.Unlock()
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
			m.Answer = append(m.Answer, rr)
		}
	}
	if len(rrs) == 0 {
		m.Rcode = dns.RcodeNameError
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 1},
			Ns: "ns.example.test.", Mbox: "hostmaster.example.test.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 1}}
	}
	_ = w.WriteMsg(m)
}

// serveDNSAt serves h over UDP and TCP on addr until the test ends.
func serveDNSAt(t *testing.T, addr string, h dns.Handler) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h, MaxTCPQueries: -1}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { defer close(done); _ = s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = s.Shutdown(); <-done })
	}
}

// startUnbound runs Debian's unbound on addr (host:port) as the recursive resolver, with a
// stub zone per name pointing at its authoritative server.
func startUnbound(t *testing.T, addr string, stubs map[string]string) {
	t.Helper()
	bin, err := exec.LookPath("unbound")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("unbound is not installed; CI must install it")
		}
		t.Skip("unbound is not installed")
	}
	host, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	var zones strings.Builder
	for zone, auth := range stubs {
		h, p, _ := net.SplitHostPort(auth)
		fmt.Fprintf(&zones, "stub-zone:\n  name: %q\n  stub-addr: %s@%s\n", zone+".", h, p)
	}
	conf := fmt.Sprintf(`server:
  interface: %s
  port: %s
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  directory: %q
  logfile: ""
  use-syslog: no
  num-threads: 1
  access-control: 127.0.0.0/8 allow_snoop # lego checks propagation with non-recursive queries
  do-not-query-localhost: no
  module-config: "iterator"
  cache-max-negative-ttl: 1
  cache-max-ttl: 1
  local-zone: "test." nodefault
remote-control:
  control-enable: no
%s`, host, port, dir, zones.String())
	path := filepath.Join(dir, "unbound.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "-d", "-c", path)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	// Ready when it answers.
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := new(dns.Msg)
		m.SetQuestion("example.test.", dns.TypeSOA)
		if _, _, err := (&dns.Client{Timeout: 500 * time.Millisecond}).Exchange(m, addr); err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("unbound exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("unbound never answered:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpsGet GETs https://host:port/ the way curl --cacert <root> would, with host resolved
// through the resolver at dnsAddr (A records, CNAMEs followed by it), or pinned to addr if set.
func httpsGet(ctx context.Context, t *testing.T, roots *x509.CertPool, dnsAddr, host string, port int, addr string) (string, *x509.Certificate, error) {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	c := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			a := addr
			if a == "" {
				ips, err := r.LookupHost(ctx, host)
				if err != nil {
					return nil, err
				}
				a = net.JoinHostPort(ips[0], fmt.Sprint(port))
			}
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("https://%s:%d/", host, port), nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", resp.TLS.PeerCertificates[0], fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), resp.TLS.PeerCertificates[0], err
}

// httpsEnv is a platform with its DNS on a fixed address, a customer's DNS for example.test,
// and unbound resolving both, which the platform's CA and lore resolve through.
type httpsEnv struct {
	p           *Platform
	customer    *customerDNS
	platformDNS string
	resolver    string
	roots       *x509.CertPool
	lc          *lore.Client
}

// startHTTPSEnv starts an httpsEnv on net16 ("127.N.0.0/16") with the given store ("" is memory).
func startHTTPSEnv(t *testing.T, net16, store string) *httpsEnv {
	t.Helper()
	base := strings.TrimSuffix(net16, ".0.0/16")
	e := &httpsEnv{customer: &customerDNS{records: map[string][]dns.RR{}}, platformDNS: base + ".0.1:5353", resolver: base + ".0.3:53"}
	customerNS := base + ".0.2:5353"
	serveDNSAt(t, customerNS, e.customer)
	startUnbound(t, e.resolver, map[string]string{"repl.test": e.platformDNS, "example.test": customerNS})
	e.p = startPlatformWith(t, net16, func(c *Config) {
		c.DNSAddr = e.platformDNS
		c.ACME.Resolver = e.resolver
		c.Store = store
		c.EtcdHost = base + ".0.4"
	})
	pem, err := os.ReadFile(e.p.CARootPath())
	require.NoError(t, err)
	e.roots = x509.NewCertPool()
	require.True(t, e.roots.AppendCertsFromPEM(pem))
	e.lc = lore.NewClient(e.p.LoreURL(), "test-admin-key", nil)
	return e
}

// verifyDomain adds domain for repl in lore, publishes its records in the customer's DNS (the
// verification TXT, the CNAME to the repl's id name, and the static _acme-challenge CNAME to the
// platform) and has lore verify it.
func (e *httpsEnv) verifyDomain(ctx context.Context, t *testing.T, domain string, repl lore.Repl) {
	t.Helper()
	dom, err := e.lc.AddDomain(ctx, domain, repl.ID)
	require.NoError(t, err)
	e.customer.set(fmt.Sprintf("%s. 1 IN TXT %q", lore.ChallengeName(dom.Name), dom.Challenge))
	e.customer.set(fmt.Sprintf("%s. 1 IN CNAME %s.id.repl.test.", domain, repl.ID))
	e.customer.set(fmt.Sprintf("_acme-challenge.%s. 1 IN CNAME %s.", domain, lore.DomainACMEName(domain, "repl.test")))
	_, err = e.lc.VerifyDomain(ctx, dom.Name)
	require.NoError(t, err)
}

// TestPlatformHTTPS: the platform's in-process CA issues owners' wildcards through DNS-01
// answered by the platform's DNS, and a verified custom domain's certificate through
// TLS-ALPN-01; both stay served over HTTPS after a move, from either cluster.
func TestPlatformHTTPS(t *testing.T) {
	e := startHTTPSEnv(t, "127.81.0.0/16", "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	roots, lc, resolver, platformDNS := e.roots, e.lc, e.resolver, e.platformDNS
	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	const port = 4443

	// The platform name, resolved by our DNS: the owner's wildcard, obtained on this request.
	start := time.Now()
	page, cert, err := httpsGet(ctx, t, roots, platformDNS, "blog.replbot.repl.test", port, "")
	require.NoError(t, err)
	t.Logf("first HTTPS answer for a new owner after %v", time.Since(start))
	require.Contains(t, page, "cluster <b>a</b>")
	require.Equal(t, []string{"*.replbot.repl.test"}, cert.DNSNames)

	// A custom domain: verified through the customer's DNS, then its own certificate.
	e.verifyDomain(ctx, t, "shop.example.test", repl)
	start = time.Now()
	page, cert, err = httpsGet(ctx, t, roots, resolver, "shop.example.test", port, "")
	require.NoError(t, err)
	t.Logf("first HTTPS answer for a verified custom domain after %v", time.Since(start))
	require.Contains(t, page, "cluster <b>a</b>")
	require.Equal(t, []string{"shop.example.test"}, cert.DNSNames)

	// An unverified domain gets no certificate (and the CA is never asked).
	_, err = lc.AddDomain(ctx, "pending.example.test", repl.ID)
	require.NoError(t, err)
	_, _, err = httpsGet(ctx, t, roots, resolver, "pending.example.test", port, "127.81.1.1:4443")
	require.Error(t, err)

	// Move to b: DNS now answers b, which serves both names; a client still on a's address is
	// forwarded by a's tombstone, TLS ending at a.
	_, err = lc.MoveRepl(ctx, repl.ID, "b")
	require.NoError(t, err)
	for _, host := range []string{"blog.replbot.repl.test", "shop.example.test"} {
		page, _, err := httpsGet(ctx, t, roots, resolver, host, port, "")
		require.NoError(t, err, host)
		require.Contains(t, page, "cluster <b>b</b>", host)
		page, _, err = httpsGet(ctx, t, roots, resolver, host, port, "127.81.1.1:4443")
		require.NoError(t, err, host+" through a's tombstone")
		require.Contains(t, page, "cluster <b>b</b>", host)
		// The repl learns the client came over HTTPS, through the plain-HTTP hop between clusters.
		require.Contains(t, page, "over <code>https</code>", host)
	}
}

// TestPlatformHTTPSEtcd: with -store etcd, certificates and their locks live in etcd
// (etcd.CertStorage) and challenge values in etcd.ACMEStore, and the owner's wildcard is served
// by both clusters.
func TestPlatformHTTPSEtcd(t *testing.T) {
	e := startHTTPSEnv(t, "127.84.0.0/16", StoreEtcd)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := e.lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	waitMirror(ctx, t, e.p, func() bool { _, err := e.p.mirror.ReplByName(ctx, "replbot", "blog"); return err == nil })
	page, cert, err := httpsGet(ctx, t, e.roots, e.platformDNS, "blog.replbot.repl.test", 4443, "")
	require.NoError(t, err)
	require.Contains(t, page, "cluster <b>a</b>")
	require.Equal(t, []string{"*.replbot.repl.test"}, cert.DNSNames)
	// Cluster b loads the same certificate from etcd (and answers 404: the repl is in a).
	_, cert2, err := httpsGet(ctx, t, e.roots, e.platformDNS, "blog.replbot.repl.test", 4443, "127.84.2.1:4443")
	require.ErrorContains(t, err, "status 404")
	require.Equal(t, cert.SerialNumber, cert2.SerialNumber, "b obtained its own certificate")
	resp, err := e.p.etcdCli.Get(ctx, "/switchyard/certs/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Positive(t, resp.Count, "certificates in etcd")
}

// TestPlatformHTTPSCurl is the README's HTTPS example as a person runs it: the platform binary,
// then curl with the root certificate the platform printed, the name resolved by the platform's
// DNS.
func TestPlatformHTTPSCurl(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole platform process")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl is not installed; CI must install it")
		}
		t.Skip("curl is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pp := startPlatformProcess(ctx, t, "-cluster-net", "127.85.0.0/16", "-clusters", "a",
		"-dns", "127.85.0.1:0", "-lore", "127.85.0.1:0", "-admin", "127.85.0.1:0", "-web", "127.85.0.1:0",
		"-acme-dns", "127.85.0.1:0")
	banner := strings.Join(pp.banner, "\n")
	root := regexp.MustCompile(`root certificate (\S+)\)`).FindStringSubmatch(banner)
	require.NotNil(t, root, banner)
	acmeDNS := pp.field("acme-dns", 2)
	require.True(t, strings.HasPrefix(acmeDNS, "http://127.85.0.1:"), banner)
	resp, err := http.Get(acmeDNS + "/health")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	lc := lore.NewClient(pp.field("  lore API", 2), "k", nil)
	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	require.NoError(t, err)
	host := "blog.replbot.repl.test"
	ips := lookupA(t, pp.field("  DNS (UDP+TCP)", 2), "udp", host)
	require.Equal(t, []string{"127.85.1.1"}, ips)
	out, err := exec.CommandContext(ctx, curl, "-sS", "--fail", "--cacert", root[1],
		"--resolve", host+":4443:"+ips[0], "https://"+host+":4443/").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), repl.ID)
	require.Contains(t, string(out), "cluster <b>a</b>")
	pp.stop(t, 15*time.Second)
}

// checkProcessesHTTPS: in -processes mode the hosting process at addr serves host over HTTPS
// with the printed root: its certificate obtained through the parent's CA, challenge values and
// certificates shared through etcd.
func checkProcessesHTTPS(ctx context.Context, t *testing.T, pp *platformProcess, addr, host, want string) {
	t.Helper()
	banner := strings.Join(pp.banner, "\n")
	root := regexp.MustCompile(`root certificate (\S+)\)`).FindStringSubmatch(banner)
	require.NotNil(t, root, banner)
	require.NotEmpty(t, pp.field("acme-dns", 2), banner)
	pem, err := os.ReadFile(root[1])
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pem))
	_, port, _ := net.SplitHostPort(addr)
	var p int
	fmt.Sscan(port, &p)
	page, cert, err := httpsGet(ctx, t, roots, "", host, p, addr)
	require.NoError(t, err, pp.stderr.String())
	require.Contains(t, page, want)
	require.Equal(t, []string{"*.replbot.repl.test"}, cert.DNSNames)
}

// With -https-redirect, plain HTTP is redirected to HTTPS, except requests another cluster's
// tombstones forwarded (they carry a hop header, which the forwarder behind verifies).
func TestRedirectHTTPS(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := redirectHTTPS(next, 4443)
	r := httptest.NewRequest("GET", "http://blog.replbot.repl.test:8080/x?y=1", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	require.Equal(t, http.StatusPermanentRedirect, w.Code)
	require.Equal(t, "https://blog.replbot.repl.test:4443/x?y=1", w.Header().Get("Location"))
	r.Header.Set(tombstone.HopHeader, "v1; via=a")
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	require.Equal(t, http.StatusTeapot, w.Code)
}

// -no-https: no acme-dns API, no CA, no HTTPS listener; hosting still serves HTTP.
func TestPlatformNoHTTPS(t *testing.T) {
	p := startPlatformWith(t, "127.86.0.0/16", func(c *Config) { c.ACME.Disable = true })
	require.Nil(t, p.acme)
	for _, id := range p.order {
		require.Nil(t, p.Cluster(id).https)
	}
	var b strings.Builder
	p.printACME(&b)
	require.Empty(t, b.String())
	_, err := (&net.Dialer{Timeout: time.Second}).Dial("tcp", "127.86.1.1:4443")
	require.Error(t, err, "nothing listens on the HTTPS port")
}
