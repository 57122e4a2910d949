package autotls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/switchyard-dev/switchyard/lore"
)

// Directory is what the decision function asks lore: does this name exist? *lore.Directory,
// *lore.Client and etcd.Mirror satisfy it.
type Directory interface {
	Repl(ctx context.Context, id string) (lore.Repl, error)
	ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error)
	// ReplByDomain answers only for verified domains (lore.ErrNotFound otherwise).
	ReplByDomain(ctx context.Context, domain string) (lore.Repl, error)
}

// Challenges is where the DNS-01 solver publishes values: the store dnsauth serves
// _acme-challenge names from. acmedns.Store satisfies it.
type Challenges interface {
	AddTXT(ctx context.Context, name, value string, expires time.Time) error
}

// ErrNotAllowed is wrapped by the handshake error for a name the platform does not serve.
var ErrNotAllowed = errors.New("autotls: no certificate for this name")

// Config configures a TLS.
type Config struct {
	// Zone is the platform zone ("repl.test"). Required.
	Zone string
	// Directory decides which names get certificates. Required.
	Directory Directory
	// Challenges receives DNS-01 values for platform names. Required.
	Challenges Challenges
	// CA is the ACME directory URL (Let's Encrypt: certmagic.LetsEncryptProductionCA). Required.
	CA string
	// CARoots are trusted for the CA's own HTTPS API. Nil: the system roots.
	CARoots *x509.CertPool
	// Email is the ACME account's contact. Empty: none.
	Email string
	// Storage holds certificates, keys, ACME accounts and locks, shared by every replica. Nil:
	// files under Dir.
	Storage certmagic.Storage
	// Dir is the file storage directory when Storage is nil. Required then.
	Dir string
	// TLSALPNAddr is the address (host:port) of the HTTPS listener serving this config: the CA
	// connects to the custom domain's address on that port for TLS-ALPN-01, and the listener
	// answers with this config. Required for custom domains; empty disables them.
	TLSALPNAddr string
	// ChallengeTTL is how long a DNS-01 value stays published. Zero: 10 minutes.
	ChallengeTTL time.Duration
	// RenewCheckInterval is how often cached certificates are checked for renewal. Zero: 10 min.
	RenewCheckInterval time.Duration
	// DisableOCSPStapling turns stapling off. Default: staple when the certificate has a responder.
	DisableOCSPStapling bool
	// Logger receives obtained and failed certificates. Nil: slog.Default().
	Logger *slog.Logger
	// Registerer receives the package's metrics. Nil: none.
	Registerer prometheus.Registerer
}

// TLS obtains, caches, renews and serves certificates. Use TLSConfig on the hosting listener.
type TLS struct {
	zone      string
	dir       Directory
	log       *slog.Logger
	cache     *certmagic.Cache
	platform  *certmagic.Config // wildcards for platform names, DNS-01
	domains   *certmagic.Config // custom domains, TLS-ALPN-01; nil when disabled
	obtained  *prometheus.CounterVec
	mu        sync.Mutex
	subjects  map[string]struct{} // cached certificates' subjects, for the days-left metric
	closeOnce sync.Once
}

// New returns a TLS for cfg. It starts the cache's maintenance goroutine: call Close.
func New(cfg Config) (*TLS, error) {
	zone := strings.ToLower(strings.Trim(cfg.Zone, "."))
	switch {
	case zone == "":
		return nil, errors.New("autotls: Config.Zone is required")
	case cfg.Directory == nil:
		return nil, errors.New("autotls: Config.Directory is required")
	case cfg.Challenges == nil:
		return nil, errors.New("autotls: Config.Challenges is required")
	case cfg.CA == "":
		return nil, errors.New("autotls: Config.CA is required")
	case cfg.Storage == nil && cfg.Dir == "":
		return nil, errors.New("autotls: Config.Storage or Config.Dir is required")
	}
	var alpnHost string
	var alpnPort int
	if cfg.TLSALPNAddr != "" {
		h, p, err := net.SplitHostPort(cfg.TLSALPNAddr)
		if err != nil {
			return nil, fmt.Errorf("autotls: TLSALPNAddr: %w", err)
		}
		if alpnPort, err = strconv.Atoi(p); err != nil || alpnPort <= 0 || alpnPort > 65535 {
			return nil, fmt.Errorf("autotls: TLSALPNAddr %q: bad port", cfg.TLSALPNAddr)
		}
		alpnHost = h
	}
	if cfg.ChallengeTTL <= 0 {
		cfg.ChallengeTTL = 10 * time.Minute
	}
	if cfg.RenewCheckInterval <= 0 {
		cfg.RenewCheckInterval = 10 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	storage := cfg.Storage
	if storage == nil {
		storage = &certmagic.FileStorage{Path: cfg.Dir}
	}
	t := &TLS{zone: zone, dir: cfg.Directory, log: cfg.Logger, subjects: map[string]struct{}{}}
	if cfg.Registerer != nil {
		t.obtained = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_autotls_obtained_total",
			Help: "Certificates obtained or renewed, by kind (wildcard, domain) and result (ok, error).",
		}, []string{"kind", "result"})
		if err := cfg.Registerer.Register(t.obtained); err != nil {
			return nil, err
		}
		if err := cfg.Registerer.Register(daysLeft{t}); err != nil {
			cfg.Registerer.Unregister(t.obtained)
			return nil, err
		}
	}
	nop := zap.NewNop()
	t.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(c certmagic.Certificate) (*certmagic.Config, error) { return t.configFor(c.Names), nil },
		RenewCheckInterval: cfg.RenewCheckInterval,
		OCSPCheckInterval:  time.Hour,
		Logger:             nop,
	})
	newConfig := func(kind string, decide func(context.Context, string) error, transform func(context.Context, string) string) *certmagic.Config {
		return certmagic.New(t.cache, certmagic.Config{
			Storage:            storage,
			OnDemand:           &certmagic.OnDemandConfig{DecisionFunc: decide},
			SubjectTransformer: transform,
			OCSP:               certmagic.OCSPConfig{DisableStapling: cfg.DisableOCSPStapling},
			OnEvent:            func(ctx context.Context, ev string, data map[string]any) error { t.event(kind, ev, data); return nil },
			Logger:             nop,
		})
	}
	t.platform = newConfig("wildcard", t.decidePlatform, t.wildcard)
	t.platform.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(t.platform, certmagic.ACMEIssuer{
		CA: cfg.CA, TrustedRoots: cfg.CARoots, Email: cfg.Email, Agreed: true,
		DNS01Solver: &solver{store: cfg.Challenges, ttl: cfg.ChallengeTTL},
		Logger:      nop,
	})}
	if alpnPort != 0 {
		t.domains = newConfig("domain", t.decideDomain, nil)
		t.domains.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(t.domains, certmagic.ACMEIssuer{
			CA: cfg.CA, TrustedRoots: cfg.CARoots, Email: cfg.Email, Agreed: true,
			DisableHTTPChallenge: true,
			// certmagic tries to listen here itself; our listener already does, so it relies
			// on GetCertificate (and on storage, when another replica received the order).
			ListenHost: alpnHost, AltTLSALPNPort: alpnPort,
			Logger: nop,
		})}
	}
	return t, nil
}

// Close stops renewal and OCSP maintenance and waits for it.
func (t *TLS) Close() error {
	t.closeOnce.Do(t.cache.Stop)
	return nil
}

// TLSConfig returns a config for the HTTPS listener: GetCertificate, and ALPN for HTTP/2,
// HTTP/1.1 and acme-tls/1.
func (t *TLS) TLSConfig() *tls.Config {
	return &tls.Config{
		GetCertificate: t.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
		MinVersion:     tls.VersionTLS12,
	}
}

// GetCertificate serves a certificate for the handshake's SNI: from the cache, from storage, or
// obtained now (the handshake waits). Names the platform does not serve fail with ErrNotAllowed.
func (t *TLS) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name == "" {
		return nil, fmt.Errorf("%w: the client sent no server name (SNI)", ErrNotAllowed)
	}
	if t.inZone(name) {
		return t.platform.GetCertificate(hello)
	}
	if t.domains == nil {
		return nil, fmt.Errorf("%w: %s (custom domains are not configured)", ErrNotAllowed, name)
	}
	return t.domains.GetCertificate(hello)
}

// Manage obtains (or loads) certificates for names now, rather than on their first handshake:
// platform names map to their wildcard.
func (t *TLS) Manage(ctx context.Context, names ...string) error {
	var plat, doms []string
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if t.inZone(n) {
			plat = append(plat, t.wildcard(ctx, n))
		} else {
			doms = append(doms, n)
		}
	}
	if len(plat) > 0 {
		if err := t.platform.ManageSync(ctx, plat); err != nil {
			return err
		}
	}
	if len(doms) > 0 {
		if t.domains == nil {
			return fmt.Errorf("%w: custom domains are not configured", ErrNotAllowed)
		}
		return t.domains.ManageSync(ctx, doms)
	}
	return nil
}

func (t *TLS) inZone(name string) bool {
	return name == t.zone || strings.HasSuffix(name, "."+t.zone)
}

func (t *TLS) configFor(names []string) *certmagic.Config {
	for _, n := range names {
		if t.inZone(strings.TrimPrefix(n, "*.")) || t.domains == nil {
			return t.platform
		}
	}
	return t.domains
}

// wildcard maps <label>.<owner>.<zone> (a repl name, or <id>.id.<zone>) to *.<owner>.<zone>;
// any other name is returned as it is (and refused by the decision).
func (t *TLS) wildcard(_ context.Context, name string) string {
	rel, ok := strings.CutSuffix(name, "."+t.zone)
	if !ok {
		return name
	}
	if _, parent, ok := strings.Cut(rel, "."); ok && !strings.Contains(parent, ".") {
		return "*." + parent + "." + t.zone
	}
	return name
}

// decidePlatform allows a platform name lore knows: a repl by name or by ID.
func (t *TLS) decidePlatform(ctx context.Context, name string) error {
	rel, ok := strings.CutSuffix(name, "."+t.zone)
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotAllowed, name)
	}
	first, parent, ok := strings.Cut(rel, ".")
	if !ok || strings.Contains(parent, ".") {
		return fmt.Errorf("%w: %s is not a repl name", ErrNotAllowed, name)
	}
	if first == "*" {
		// Only handshakes ask, and no browser sends a wildcard as SNI: a client that does would
		// otherwise have a wildcard issued for an owner that does not exist.
		return fmt.Errorf("%w: %s: a wildcard server name", ErrNotAllowed, name)
	}
	var err error
	if parent == "id" {
		_, err = t.dir.Repl(ctx, first)
	} else {
		_, err = t.dir.ReplByName(ctx, parent, first)
	}
	if errors.Is(err, lore.ErrNotFound) || errors.Is(err, lore.ErrInvalid) {
		return fmt.Errorf("%w: %s: no such repl", ErrNotAllowed, name)
	}
	return err
}

// decideDomain allows a custom domain lore has verified.
func (t *TLS) decideDomain(ctx context.Context, name string) error {
	_, err := t.dir.ReplByDomain(ctx, name)
	if errors.Is(err, lore.ErrNotFound) || errors.Is(err, lore.ErrInvalid) {
		return fmt.Errorf("%w: %s is not a verified custom domain", ErrNotAllowed, name)
	}
	return err
}

func (t *TLS) event(kind, ev string, data map[string]any) {
	switch ev {
	case "cert_obtained":
		t.log.Info("autotls: certificate obtained", "kind", kind, "name", data["identifier"], "renewal", data["renewal"])
		t.count(kind, "ok")
		if s, ok := data["identifier"].(string); ok {
			t.addSubjects(s)
		}
	case "cert_failed":
		t.log.Warn("autotls: obtaining a certificate failed", "kind", kind, "name", data["identifier"], "renewal", data["renewal"], "err", data["error"])
		t.count(kind, "error")
	case "cached_managed_cert":
		if s, ok := data["sans"].([]string); ok {
			t.addSubjects(s...)
		}
	}
}

func (t *TLS) count(kind, result string) {
	if t.obtained != nil {
		t.obtained.WithLabelValues(kind, result).Inc()
	}
}

func (t *TLS) addSubjects(names ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range names {
		t.subjects[n] = struct{}{}
	}
}
