// Package acmeca runs Let's Encrypt's test CA, Pebble (github.com/letsencrypt/pebble/v2), in
// process: a real ACME server on loopback for tests and the reference deployment, which have no
// Internet. Its validation authority resolves challenge names through a DNS server the caller
// names (dnsauth, or a recursive resolver in front of it), so DNS-01, TLS-ALPN-01 and HTTP-01
// are checked for real.
//
// Pebble reads a few settings from the environment when it starts; Start sets
// PEBBLE_VA_NOSLEEP=1 (no random 0–15 s wait before each validation) and
// PEBBLE_WFE_NONCEREJECT=0 (no deliberately rejected nonces) unless they are already set.
// Pebble's validation goroutine is never stopped: tests that check for leaked goroutines ignore
// IgnoreLeaks.
package acmeca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// IgnoreLeaks names the function of Pebble's one goroutine that outlives Close (its validation
// queue), for goleak.IgnoreTopFunction.
const IgnoreLeaks = "github.com/letsencrypt/pebble/v2/va.VAImpl.processTasks"

// Config configures a CA.
type Config struct {
	// Addr is where the ACME API listens (HTTPS). Empty: 127.0.0.1:0.
	Addr string
	// Resolver is the DNS server (host:port) the validation authority asks, over TCP, for
	// challenge TXT records and for the addresses it connects to. Required.
	Resolver string
	// TLSPort is the port TLS-ALPN-01 validations connect to. Zero: 443.
	TLSPort int
	// HTTPPort is the port HTTP-01 validations connect to. Zero: 80.
	HTTPPort int
	// Validity is the lifetime of issued certificates. Zero: Pebble's default (5 years).
	Validity time.Duration
	// OCSP runs an OCSP responder too (answering "good" for every certificate), named in the
	// certificates it issues, so clients can staple. Pebble then uses RSA keys.
	OCSP bool
	// Log receives Pebble's log lines. Nil: discarded.
	Log io.Writer
}

// CA is a running Pebble.
type CA struct {
	srv      *http.Server
	ln       net.Listener
	ocsp     *http.Server // nil without Config.OCSP
	ocspDone chan struct{}
	apiRoots *x509.CertPool
	apiPEM   []byte
	ca       *ca.CAImpl
	done     chan struct{}
	once     sync.Once
}

// Start starts a CA and returns once its API accepts connections.
func Start(cfg Config) (*CA, error) {
	if cfg.Resolver == "" {
		return nil, errors.New("acmeca: Config.Resolver is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.TLSPort == 0 {
		cfg.TLSPort = 443
	}
	if cfg.HTTPPort == 0 {
		cfg.HTTPPort = 80
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	for k, v := range map[string]string{"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"} {
		if _, ok := os.LookupEnv(k); !ok {
			os.Setenv(k, v)
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("acmeca: %w", err)
	}
	host, _, _ := net.SplitHostPort(ln.Addr().String())
	cert, apiPEM, err := selfSigned(host)
	if err != nil {
		ln.Close()
		return nil, err
	}
	logger := log.New(cfg.Log, "pebble ", log.LstdFlags)
	store := db.NewMemoryStore()
	profiles := map[string]ca.Profile{"default": {Description: "the default profile", ValidityPeriod: uint64(cfg.Validity / time.Second)}}
	keyAlg, ocspURL := "ecdsa", ""
	var ocspLn net.Listener
	if cfg.OCSP {
		if ocspLn, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
			ln.Close()
			return nil, fmt.Errorf("acmeca: %w", err)
		}
		keyAlg, ocspURL = "rsa", "http://"+ocspLn.Addr().String()+"/"
	}
	authority := ca.New(logger, store, ocspURL, keyAlg, 0, 1, profiles)
	validator := va.New(logger, cfg.HTTPPort, cfg.TLSPort, false, cfg.Resolver, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(apiPEM)
	c := &CA{
		ln: ln, apiRoots: pool, apiPEM: apiPEM, ca: authority, done: make(chan struct{}),
		srv: &http.Server{
			Handler:           front.Handler(),
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          logger,
		},
	}
	go func() {
		defer close(c.done)
		c.srv.ServeTLS(ln, "", "")
	}()
	if ocspLn != nil {
		c.ocsp = &http.Server{Handler: ocspResponder(authority), ReadHeaderTimeout: 10 * time.Second, ErrorLog: logger}
		c.ocspDone = make(chan struct{})
		go func() {
			defer close(c.ocspDone)
			c.ocsp.Serve(ocspLn)
		}()
	}
	return c, nil
}

// ocspResponder answers OCSP requests (RFC 6960, GET or POST) for the CA's intermediate: every
// certificate is good for an hour.
func ocspResponder(authority *ca.CAImpl) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var der []byte
		var err error
		if r.Method == http.MethodPost {
			der, err = io.ReadAll(io.LimitReader(r.Body, 10<<10))
		} else {
			der, err = base64.StdEncoding.DecodeString(strings.TrimPrefix(r.URL.Path, "/"))
		}
		if err != nil {
			http.Error(w, "bad OCSP request", http.StatusBadRequest)
			return
		}
		req, err := ocsp.ParseRequest(der)
		if err != nil {
			http.Error(w, "bad OCSP request", http.StatusBadRequest)
			return
		}
		issuer := authority.GetIntermediateCert(0).Cert
		now := time.Now()
		resp, err := ocsp.CreateResponse(issuer, issuer, ocsp.Response{
			Status: ocsp.Good, SerialNumber: req.SerialNumber,
			ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour),
		}, authority.GetIntermediateKey(0))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(resp)
	})
}

// DirectoryURL is the ACME directory URL, for an ACME client's CA setting.
func (c *CA) DirectoryURL() string { return "https://" + c.ln.Addr().String() + "/dir" }

// APIRoots trusts the ACME API's own (self-signed) certificate, for an ACME client.
func (c *CA) APIRoots() *x509.CertPool { return c.apiRoots }

// APIRootPEM is the ACME API's certificate in PEM, for ACME clients in other processes.
func (c *CA) APIRootPEM() []byte { return append([]byte(nil), c.apiPEM...) }

// RootPEM is the root of the certificates the CA issues, in PEM: what a client passes as
// curl --cacert to trust the sites it certified.
func (c *CA) RootPEM() []byte { return c.ca.GetRootCert(0).PEM() }

// Roots is RootPEM as a pool.
func (c *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(c.RootPEM())
	return p
}

// Close stops the API and waits for its server to return.
func (c *CA) Close() error {
	var err error
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = c.srv.Shutdown(ctx)
		<-c.done
		if c.ocsp != nil {
			err = errors.Join(err, c.ocsp.Shutdown(ctx))
			<-c.ocspDone
		}
	})
	return err
}

// selfSigned makes the API's certificate for host (an IP address or a name) and localhost.
func selfSigned(host string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "switchyard test ACME API"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
		DNSNames: []string{"localhost"},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
