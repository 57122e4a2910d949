package autotls_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"golang.org/x/crypto/ocsp"

	"github.com/switchyard-dev/switchyard/autotls"
	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
	"github.com/switchyard-dev/switchyard/internal/acmeca"
	"github.com/switchyard-dev/switchyard/lore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(acmeca.IgnoreLeaks),
		// certmagic's process-wide helpers, started once and never stopped.
		// certmagic's process-wide rate limiters per CA account are never stopped, and a file
		// lock's refresher ends on its next tick after the unlock.
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).loop"),
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
		// A renewal certmagic starts from a handshake runs on context.Background() for up to
		// 5 minutes, beyond anyone's Close (handshake.go, renewDynamicCertificate): with the
		// renewal test's 12 s certificates, one may still be retrying when the tests end.
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*Config).renewDynamicCertificate.func2"))
}

// txt is the customer's DNS for custom domains: it holds the verification records.
type txt map[string][]string

func (t txt) LookupTXT(_ context.Context, name string) ([]string, error) {
	if v, ok := t[name]; ok {
		return v, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

type env struct {
	dir   *lore.Directory
	store *acmedns.MemStore
	ca    *acmeca.CA
	ln    net.Listener
	tls   *autotls.TLS
	reg   *prometheus.Registry
	txt   txt // the customer's verification records
}

// newEnv runs lore, dnsauth (the platform zone, and the customer's zone example.test with
// shop.example.test on loopback), Pebble resolving through it, and an HTTPS server on autotls.
func newEnv(t testing.TB) *env { return newEnvWith(t, 0, 0) }

// newEnvWith is newEnv with a certificate lifetime and renewal check interval (zero: defaults).
func newEnvWith(t testing.TB, validity, renewCheck time.Duration) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{store: acmedns.NewMemStore(acmedns.MemStoreConfig{}), reg: prometheus.NewRegistry()}
	custom := txt{}
	e.txt = custom
	var err error
	e.dir, err = lore.New(lore.Config{Zone: "repl.test", Resolver: custom})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.dir.Close() })
	if _, err := e.dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.0.1/", Hosting4: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	blog, err := e.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "shop"}); err != nil {
		t.Fatal(err)
	}
	d, err := e.dir.AddDomain(ctx, "shop.example.test", blog.ID)
	if err != nil {
		t.Fatal(err)
	}
	custom[lore.ChallengeName(d.Name)] = []string{d.Challenge}
	if _, err := e.dir.VerifyDomain(ctx, d.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dir.AddDomain(ctx, "unverified.example.test", blog.ID); err != nil {
		t.Fatal(err)
	}

	h, err := dnsauth.New(dnsauth.Config{Directory: e.dir, Challenges: e.store, Zones: []dnsauth.Zone{{Name: "repl.test"}}})
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.Handle("repl.test.", h)
	mux.HandleFunc("example.test.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Qtype == dns.TypeA && strings.HasSuffix(q.Name, "example.test.") {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(127, 0, 0, 1)})
		}
		_ = w.WriteMsg(m)
	})
	dnsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{Listener: dnsLn, Handler: mux, MaxTCPQueries: -1, NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })

	e.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(e.ln.Addr().String())
	p, _ := net.LookupPort("tcp", port)
	e.ca, err = acmeca.Start(acmeca.Config{Resolver: dnsLn.Addr().String(), TLSPort: p, Validity: validity, OCSP: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ca.Close() })
	e.tls, err = autotls.New(autotls.Config{
		Zone: "repl.test", Directory: e.dir, Challenges: e.store,
		CA: e.ca.DirectoryURL(), CARoots: e.ca.APIRoots(), Dir: t.TempDir(),
		TLSALPNAddr: e.ln.Addr().String(), Registerer: e.reg,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
		RenewCheckInterval: renewCheck,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{
		Handler: autotls.HSTS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello from "+r.Host)
		}), 0),
		TLSConfig: e.tls.TLSConfig(),
		ErrorLog:  log.New(io.Discard, "", 0), // refused handshakes are the test's point
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = hs.ServeTLS(e.ln, "", "") }()
	t.Cleanup(func() { hs.Close(); <-served; e.tls.Close() })
	return e
}

// get fetches https://host/ from the test server, trusting only the CA's root.
func (e *env) get(t testing.TB, host string) (*http.Response, string, error) {
	t.Helper()
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.ca.Roots()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, e.ln.Addr().String())
		},
	}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + host + "/")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func TestHTTPS(t *testing.T) {
	e := newEnv(t)
	for _, host := range []string{"blog.replbot.repl.test", "shop.replbot.repl.test"} {
		resp, body, err := e.get(t, host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if body != "hello from "+host || !strings.HasPrefix(resp.Header.Get("Strict-Transport-Security"), "max-age=31536000") {
			t.Fatalf("%s: %q %v", host, body, resp.Header)
		}
		if names := resp.TLS.PeerCertificates[0].DNSNames; !slices.Equal(names, []string{"*.replbot.repl.test"}) {
			t.Fatalf("%s served by a certificate for %q, want the owner's wildcard", host, names)
		}
		// The CA names an OCSP responder: the handshake staples its answer.
		chain := resp.TLS.PeerCertificates
		if len(resp.TLS.OCSPResponse) == 0 || len(chain) < 2 {
			t.Fatalf("%s: no OCSP response stapled (chain of %d)", host, len(chain))
		}
		if r, err := ocsp.ParseResponseForCert(resp.TLS.OCSPResponse, chain[0], chain[1]); err != nil || r.Status != ocsp.Good {
			t.Fatalf("%s: stapled OCSP response: %+v %v", host, r, err)
		}
	}
	resp, body, err := e.get(t, "shop.example.test")
	if err != nil {
		t.Fatalf("custom domain: %v", err)
	}
	if names := resp.TLS.PeerCertificates[0].DNSNames; body != "hello from shop.example.test" || !slices.Equal(names, []string{"shop.example.test"}) {
		t.Fatalf("custom domain: %q, certificate for %q", body, names)
	}
	// A name under an owner's wildcard is served by it (Hosting then answers 404 if no repl
	// has it); names that would need a new certificate are refused before the CA is asked.
	if _, _, err := e.get(t, "nope.replbot.repl.test"); err != nil {
		t.Fatalf("a name under the cached wildcard: %v", err)
	}
	for _, host := range []string{"blog.nobody.repl.test", "*.nobody.repl.test", "x.id.repl.test", "unverified.example.test", "a.b.replbot.repl.test", "stranger.example.org"} {
		if _, _, err := e.get(t, host); err == nil || !strings.Contains(err.Error(), "handshake failure") && !strings.Contains(err.Error(), "internal error") {
			t.Errorf("%s: got %v, want a failed handshake", host, err)
		}
	}
	n, err := testutil.GatherAndCount(e.reg, "switchyard_autotls_certificates")
	if err != nil || n != 5 {
		t.Fatalf("days-left series: %d %v", n, err)
	}
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(`
# HELP switchyard_autotls_obtained_total Certificates obtained or renewed, by kind (wildcard, domain) and result (ok, error).
# TYPE switchyard_autotls_obtained_total counter
switchyard_autotls_obtained_total{kind="domain",result="ok"} 1
switchyard_autotls_obtained_total{kind="wildcard",result="ok"} 1
`), "switchyard_autotls_obtained_total"); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir, _ := lore.New(lore.Config{Zone: "repl.test"})
	defer dir.Close()
	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
	for _, cfg := range []autotls.Config{
		{Directory: dir, Challenges: store, CA: "https://ca", Dir: "x"},
		{Zone: "repl.test", Challenges: store, CA: "https://ca", Dir: "x"},
		{Zone: "repl.test", Directory: dir, CA: "https://ca", Dir: "x"},
		{Zone: "repl.test", Directory: dir, Challenges: store, Dir: "x"},
		{Zone: "repl.test", Directory: dir, Challenges: store, CA: "https://ca"},
		{Zone: "repl.test", Directory: dir, Challenges: store, CA: "https://ca", Dir: "x", TLSALPNAddr: "nope"},
	} {
		if tl, err := autotls.New(cfg); err == nil {
			tl.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// Certificates renew before they expire: with a 12 s lifetime (renewal in its last third, or
// the CA's renewal info window) and a check every second, the served wildcard changes for a new one without a failed handshake.
func TestRenewal(t *testing.T) {
	e := newEnvWith(t, 12*time.Second, time.Second)
	resp, _, err := e.get(t, "blog.replbot.repl.test")
	if err != nil {
		t.Fatal(err)
	}
	serial := resp.TLS.PeerCertificates[0].SerialNumber
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, _, err := e.get(t, "blog.replbot.repl.test")
		if err != nil {
			t.Fatalf("a handshake failed while renewing: %v", err)
		}
		c := resp.TLS.PeerCertificates[0]
		if c.SerialNumber.Cmp(serial) != 0 {
			if !slices.Equal(c.DNSNames, []string{"*.replbot.repl.test"}) {
				t.Fatalf("renewed for %q", c.DNSNames)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renewed 30 s after issuance (expires %v)", c.NotAfter)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
