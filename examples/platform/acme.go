package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/autotls"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/internal/acmeca"
	"github.com/switchyard-dev/switchyard/tombstone"
)

// ACMEConfig is the HTTPS side of the deployment: the acme-dns API, the ACME CA, and each
// cluster's HTTPS hosting listener. Every field is a flag of the run command.
type ACMEConfig struct {
	// Disable turns HTTPS off: no acme-dns API, no CA, no HTTPS listeners.
	Disable bool
	// APIAddr is where the acme-dns compatible API listens. Empty: 127.0.0.1:8403.
	APIAddr string
	// RegisterKey, when set, is required (Authorization: Bearer) to register acme-dns accounts.
	// Empty: registration is open, within acmedns's rate limits.
	RegisterKey string
	// HTTPSPort is the hosting HTTPS port on each cluster's .1 address. Zero: 4443.
	HTTPSPort int
	// CA is an ACME directory URL (Let's Encrypt in production). Empty: Pebble in process.
	CA string
	// CARoot is a PEM file trusted for CA's HTTPS API (with CA). Empty: the system roots.
	CARoot string
	// CAAddr is where the in-process Pebble listens. Empty: 127.0.0.1:0.
	CAAddr string
	// Resolver is the DNS server (host:port) the in-process CA validates through, and lore
	// verifies custom domains through. Empty: the CA asks the platform's DNS (platform names
	// only) and lore the system resolver.
	Resolver string
	// Redirect makes each cluster's plain-HTTP hosting answer 308 to HTTPS (requests forwarded
	// by another cluster's tombstones excepted).
	Redirect bool
	// HSTS adds Strict-Transport-Security (one year) to HTTPS answers.
	HSTS bool
}

func (c *ACMEConfig) setDefaults() error {
	if c.APIAddr == "" {
		c.APIAddr = "127.0.0.1:8403"
	}
	if c.HTTPSPort == 0 {
		c.HTTPSPort = 4443
	}
	if c.HTTPSPort < 0 || c.HTTPSPort > 65535 {
		return fmt.Errorf("bad HTTPS port %d", c.HTTPSPort)
	}
	if c.CAAddr == "" {
		c.CAAddr = "127.0.0.1:0"
	}
	if c.CARoot != "" && c.CA == "" {
		return errors.New("-acme-ca-root without -acme-ca")
	}
	return nil
}

// acmePlatform is the running HTTPS side.
type acmePlatform struct {
	store    acmedns.Store
	api      *server
	ca       *acmeca.CA // nil with an external CA
	caURL    string
	caRoots  *x509.CertPool
	rootPath string // the in-process CA's root certificate, for curl --cacert
	// scope keeps the in-process CA's certificates apart from an earlier run's: that CA is new
	// at every start, so certificates it signed before are worthless (a hash of its root).
	scope string
}

// challengeZone is where acme-dns accounts' values live: a "_" label is never an owner.
func (p *Platform) challengeZone() string { return "_acme." + p.cfg.Zone }

// challenges returns the store of DNS-01 values dnsauth serves (etcd with the etcd store, so
// every DNS replica sees them), creating it on first use.
func (p *Platform) challenges() (acmedns.Store, error) {
	if p.acme == nil {
		p.acme = &acmePlatform{}
	}
	if p.acme.store != nil {
		return p.acme.store, nil
	}
	if p.cfg.Store == StoreEtcd {
		s, err := etcd.NewACMEStore(etcd.ACMEStoreConfig{Client: p.etcdCli})
		if err != nil {
			return nil, err
		}
		p.acme.store = s
	} else {
		p.acme.store = acmedns.NewMemStore(acmedns.MemStoreConfig{})
	}
	return p.acme.store, nil
}

// txtResolver is what lore verifies custom domains through: ACME.Resolver when set.
func (p *Platform) txtResolver() *net.Resolver {
	if p.cfg.ACME.Resolver == "" {
		return nil
	}
	addr := p.cfg.ACME.Resolver
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
}

// startACME starts the acme-dns API and the CA (after DNS, which the CA validates through).
func (p *Platform) startACME(ctx context.Context) error {
	cfg := &p.cfg.ACME
	store, err := p.challenges()
	if err != nil {
		return err
	}
	api, err := acmedns.NewHandler(acmedns.HandlerConfig{
		Store: store, Zone: p.challengeZone(), RegisterKey: cfg.RegisterKey,
		Logger: p.log.With("component", "acme-dns"),
	})
	if err != nil {
		return err
	}
	if p.acme.api, err = serve(ctx, "acme-dns", cfg.APIAddr, api, false); err != nil {
		return err
	}
	p.stop.add(p.acme.api.Shutdown)
	if cfg.CA != "" {
		p.acme.caURL = cfg.CA
		if cfg.CARoot != "" {
			pem, err := os.ReadFile(cfg.CARoot)
			if err != nil {
				return fmt.Errorf("-acme-ca-root: %w", err)
			}
			p.acme.caRoots = x509.NewCertPool()
			if !p.acme.caRoots.AppendCertsFromPEM(pem) {
				return fmt.Errorf("-acme-ca-root %s: no PEM certificate", cfg.CARoot)
			}
		}
		return nil
	}
	resolver := cfg.Resolver
	if resolver == "" {
		resolver = p.DNSAddr()
	}
	p.acme.ca, err = acmeca.Start(acmeca.Config{
		Addr: cfg.CAAddr, Resolver: resolver, TLSPort: cfg.HTTPSPort,
		Log: slogWriter{p.log.With("component", "pebble")},
	})
	if err != nil {
		return err
	}
	p.stop.add(func(context.Context) error { return p.acme.ca.Close() })
	p.acme.caURL, p.acme.caRoots = p.acme.ca.DirectoryURL(), p.acme.ca.APIRoots()
	sum := sha256.Sum256(p.acme.ca.RootPEM())
	p.acme.scope = hex.EncodeToString(sum[:6])
	p.acme.rootPath = filepath.Join(p.cfg.StateDir, "acme-ca-root.pem")
	return os.WriteFile(p.acme.rootPath, p.acme.ca.RootPEM(), 0o644)
}

// ACMEAPIURL is the acme-dns API's base URL.
func (p *Platform) ACMEAPIURL() string { return "http://" + p.acme.api.Addr() }

// CARootPath is the in-process CA's root certificate file ("" with an external CA).
func (p *Platform) CARootPath() string { return p.acme.rootPath }

// startHTTPS serves the cluster's hosting handler over HTTPS with certificates from autotls,
// stored under the state directory and shared by every cluster of this process.
func (c *cluster) startHTTPS(ctx context.Context, h http.Handler) error {
	p := c.p
	addr := c.hostPort(1, p.cfg.ACME.HTTPSPort)
	store, err := p.challenges()
	if err != nil {
		return err
	}
	acfg := autotls.Config{
		Zone: p.cfg.Zone, Directory: p.reader, Challenges: store,
		CA: p.acme.caURL, CARoots: p.acme.caRoots,
		Dir: filepath.Join(p.cfg.StateDir, "certs", p.acme.scope), TLSALPNAddr: addr,
		Logger: c.log.With("component", "autotls"),
	}
	if p.cfg.Store == StoreEtcd {
		// Certificates and their locks in etcd, shared by every hosting replica.
		cs, err := etcd.NewCertStorage(etcd.CertStorageConfig{Client: p.etcdCli, Prefix: "/switchyard/certs/" + p.acme.scope + "/"})
		if err != nil {
			return err
		}
		c.stops.add(func(context.Context) error { return cs.Close() })
		acfg.Storage = cs
	}
	c.certs, err = autotls.New(acfg)
	if err != nil {
		return err
	}
	c.stops.add(func(context.Context) error { return c.certs.Close() })
	if p.cfg.ACME.HSTS {
		h = autotls.HSTS(h, 0)
	}
	c.https, err = serveTLS(ctx, "hosting https", addr, h, false, c.certs.TLSConfig())
	if err != nil {
		return err
	}
	c.stops.add(c.https.Shutdown)
	return nil
}

// redirectHTTPS answers plain HTTP with a redirect to HTTPS, except a request another
// cluster's tombstones forwarded (it carries a hop header, which the forwarder verifies).
func redirectHTTPS(next http.Handler, httpsPort int) http.Handler {
	redirect := autotls.Redirect(httpsPort)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(tombstone.HopHeader) != "" {
			next.ServeHTTP(w, r)
			return
		}
		redirect.ServeHTTP(w, r)
	})
}

// slogWriter turns Pebble's log lines into debug records.
type slogWriter struct {
	log interface{ Debug(string, ...any) }
}

func (w slogWriter) Write(b []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(b)))
	return len(b), nil
}

var _ io.Writer = slogWriter{}

// printACME writes the HTTPS endpoints and how to try them.
func (p *Platform) printACME(w io.Writer) {
	if p.acme == nil || p.acme.api == nil {
		return
	}
	// The acme-dns line begins the line, so scripts find it.
	fmt.Fprintf(w, "acme-dns API      %s   (challenge zone %s)\n", p.ACMEAPIURL(), p.challengeZone())
	if p.acme.ca != nil {
		fmt.Fprintf(w, "  ACME CA         %s   (Pebble in process; root certificate %s)\n", p.acme.caURL, p.acme.rootPath)
	} else {
		fmt.Fprintf(w, "  ACME CA         %s\n", p.acme.caURL)
	}
	var first *cluster
	for _, id := range p.order {
		c := p.clusters[id]
		if c.https == nil {
			continue
		}
		if first == nil {
			first = c
		}
		fmt.Fprintf(w, "  cluster %-7s https://%s\n", id, c.https.Addr())
	}
	if first == nil || p.acme.rootPath == "" {
		return
	}
	dnsHost, dnsPort, _ := net.SplitHostPort(p.DNSAddr())
	port := p.cfg.ACME.HTTPSPort
	fmt.Fprintf(w, "\n  HTTPS (a certificate for *.replbot.%[1]s is obtained on the first request):\n"+
		"  curl --cacert %[2]s --resolve blog.replbot.%[1]s:%[3]d:$(dig @%[4]s -p %[5]s +short blog.replbot.%[1]s) https://blog.replbot.%[1]s:%[3]d/\n",
		p.cfg.Zone, p.acme.rootPath, port, dnsHost, dnsPort)
}

// processesACME is the HTTPS side in -processes mode, run by the parent: the acme-dns API over
// etcd.ACMEStore and the in-process CA (or an external one). The hosting children get the CA's
// URL and the file trusting its API, and serve HTTPS themselves.
type processesACME struct {
	cli      *clientv3.Client
	api      *server
	ca       *acmeca.CA
	caURL    string
	caRoot   string // PEM trusted for the CA's API, for the children (-acme-ca-root)
	rootPath string // the in-process CA's root certificate, for curl --cacert
}

// startProcessesACME starts the parent's part once DNS (dnsAddr) is up.
func startProcessesACME(ctx context.Context, cfg Config, endpoints []string, etls EtcdTLS, dnsAddr string) (_ *processesACME, err error) {
	a := &processesACME{caURL: cfg.ACME.CA, caRoot: cfg.ACME.CARoot}
	defer func() {
		if err != nil {
			a.stop(context.Background())
		}
	}()
	if a.cli, err = etcdClient(endpoints, etls); err != nil {
		return a, fmt.Errorf("etcd: %w", err)
	}
	store, err := etcd.NewACMEStore(etcd.ACMEStoreConfig{Client: a.cli})
	if err != nil {
		return a, err
	}
	api, err := acmedns.NewHandler(acmedns.HandlerConfig{
		Store: store, Zone: "_acme." + cfg.Zone, RegisterKey: cfg.ACME.RegisterKey,
		Logger: cfg.Logger.With("component", "acme-dns"),
	})
	if err != nil {
		return a, err
	}
	if a.api, err = serve(ctx, "acme-dns", cfg.ACME.APIAddr, api, false); err != nil {
		return a, err
	}
	if a.caURL != "" {
		return a, nil
	}
	resolver := cfg.ACME.Resolver
	if resolver == "" {
		resolver = dnsAddr
	}
	a.ca, err = acmeca.Start(acmeca.Config{Addr: cfg.ACME.CAAddr, Resolver: resolver, TLSPort: cfg.ACME.HTTPSPort,
		Log: slogWriter{cfg.Logger.With("component", "pebble")}})
	if err != nil {
		return a, err
	}
	a.caURL = a.ca.DirectoryURL()
	a.caRoot = filepath.Join(cfg.StateDir, "acme-ca-api.pem")
	a.rootPath = filepath.Join(cfg.StateDir, "acme-ca-root.pem")
	if err := os.WriteFile(a.caRoot, a.ca.APIRootPEM(), 0o644); err != nil {
		return a, err
	}
	return a, os.WriteFile(a.rootPath, a.ca.RootPEM(), 0o644)
}

// hostingArgs are the HTTPS flags of a hosting child serving on addr.
func (a *processesACME) hostingArgs(addr string) []string {
	args := []string{"-https", addr, "-acme-ca", a.caURL}
	if a.caRoot != "" {
		args = append(args, "-acme-ca-root", a.caRoot)
	}
	return args
}

func (a *processesACME) print(w io.Writer) {
	fmt.Fprintf(w, "acme-dns API      http://%s\n", a.api.Addr())
	if a.ca != nil {
		fmt.Fprintf(w, "  ACME CA         %s   (Pebble in process; root certificate %s)\n", a.caURL, a.rootPath)
	} else {
		fmt.Fprintf(w, "  ACME CA         %s\n", a.caURL)
	}
}

func (a *processesACME) stop(ctx context.Context) error {
	var errs []error
	if a.api != nil {
		errs = append(errs, a.api.Shutdown(ctx))
	}
	if a.ca != nil {
		errs = append(errs, a.ca.Close())
	}
	if a.cli != nil {
		errs = append(errs, a.cli.Close())
	}
	return errors.Join(errs...)
}

// startComponentHTTPS serves a hosting child's handler over HTTPS on addr: certificates and
// challenge values in etcd, shared with every other hosting process.
func startComponentHTTPS(ctx context.Context, f *componentFlags, c *component, dir autotls.Directory, h http.Handler) error {
	var roots *x509.CertPool
	if f.acmeCARoot != "" {
		pem, err := os.ReadFile(f.acmeCARoot)
		if err != nil {
			return err
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-acme-ca-root %s: no PEM certificate", f.acmeCARoot)
		}
	}
	store, err := etcd.NewACMEStore(etcd.ACMEStoreConfig{Client: f.cli})
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(f.acmeCA))
	certs, err := etcd.NewCertStorage(etcd.CertStorageConfig{Client: f.cli, Prefix: "/switchyard/certs/" + hex.EncodeToString(sum[:6]) + "/"})
	if err != nil {
		return err
	}
	c.stop.add(func(context.Context) error { return certs.Close() })
	t, err := autotls.New(autotls.Config{
		Zone: f.zone, Directory: dir, Challenges: store, CA: f.acmeCA, CARoots: roots,
		Storage: certs, TLSALPNAddr: f.https, Logger: f.log.With("component", "autotls"),
	})
	if err != nil {
		return err
	}
	c.stop.add(func(context.Context) error { return t.Close() })
	srv, err := serveTLS(ctx, "hosting https", f.https, h, false, t.TLSConfig())
	if err != nil {
		return err
	}
	c.stop.add(srv.Shutdown)
	return nil
}
