package acmedns

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HandlerConfig configures the acme-dns compatible HTTP API.
type HandlerConfig struct {
	// Store holds accounts and values. Required.
	Store Store
	// Zone is the challenge zone: an account's values are served at <subdomain>.<Zone>, its
	// "fulldomain". Serve it with a dnsauth.Zone{Name: Zone, ChallengeZone: true}. Required.
	Zone string
	// Lifetime is how long an updated value is served. Zero: 1 hour (a validation takes
	// seconds to minutes; acme-dns never expires values, we do).
	Lifetime time.Duration
	// DisableRegistration makes POST /register answer 403, for deployments that create accounts
	// out of band.
	DisableRegistration bool
	// RegisterFrom limits POST /register to clients in these networks. Empty: anyone (as
	// acme-dns); an account's own allowfrom still limits its updates.
	RegisterFrom []netip.Prefix
	// RegisterKey, if set, must come as "Authorization: Bearer <RegisterKey>" with every POST
	// /register (401 forbidden otherwise): the platform hands it to its own tooling, and owners
	// register through it. Empty: no key (acme-dns's behaviour; the rate limits still apply).
	RegisterKey string
	// RegisterPerMinute is how many registrations one client address may make a minute (a
	// token bucket holding as many). Zero: 10. Negative: no per-address limit.
	RegisterPerMinute int
	// RegisterTotalPerMinute caps registrations from all clients together, which bounds how fast
	// the store grows whatever the addresses. Zero: 600. Negative: no cap.
	RegisterTotalPerMinute int
	// ClientIPHeader names a header holding the client address (e.g. "X-Forwarded-For", first
	// entry) when the API runs behind a trusted reverse proxy. Empty: the connection's address.
	ClientIPHeader string
	// Logger receives storage failures (answered 500). Nil: slog.Default().
	Logger *slog.Logger
	// Registerer receives switchyard_acmedns_requests_total{endpoint,code}. Nil: no metrics.
	Registerer prometheus.Registerer
}

// NewHandler returns the HTTP API of acme-dns (https://github.com/joohoi/acme-dns), so that the
// acme-dns providers of lego and certmagic work unchanged:
//
//	POST /register  {"allowfrom": ["192.0.2.0/24"]} (body optional)
//	                → 201 {"username", "password", "fulldomain", "subdomain", "allowfrom"}
//	POST /update    X-Api-User, X-Api-Key; {"subdomain": "...", "txt": "<43 chars>"} → 200 {"txt": "..."}
//	GET  /health    → 200
//
// Errors are JSON {"error": "..."} with acme-dns's messages: 400 bad_allowfrom / bad_subdomain
// / bad_txt / malformed_json, 401 forbidden (unknown user, wrong key, other subdomain, address
// not allowed, no or wrong RegisterKey), 403 registration_disabled, 405, 413, 429 rate_limited,
// 500 internal.
func NewHandler(cfg HandlerConfig) (http.Handler, error) {
	if cfg.Store == nil {
		return nil, errors.New("acmedns: HandlerConfig.Store is required")
	}
	zone := strings.ToLower(strings.Trim(cfg.Zone, "."))
	if zone == "" {
		return nil, errors.New("acmedns: HandlerConfig.Zone is required")
	}
	h := &handler{cfg: cfg, zone: zone, lifetime: cfg.Lifetime, log: cfg.Logger}
	if cfg.RegisterKey != "" {
		h.registerKey = sha256.Sum256([]byte(cfg.RegisterKey))
	}
	h.perClient = newLimiter(cfg.RegisterPerMinute, 10)
	h.total = newLimiter(cfg.RegisterTotalPerMinute, 600)
	if h.lifetime <= 0 {
		h.lifetime = time.Hour
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if cfg.Registerer != nil {
		h.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_acmedns_requests_total",
			Help: "acme-dns API requests by endpoint and HTTP status code.",
		}, []string{"endpoint", "code"})
		if err := cfg.Registerer.Register(h.requests); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/register", h.register)
	mux.HandleFunc("/update", h.update)
	mux.HandleFunc("/health", h.health)
	h.mux = mux
	return h, nil
}

type handler struct {
	cfg      HandlerConfig
	zone     string
	lifetime time.Duration
	log      *slog.Logger
	requests *prometheus.CounterVec
	mux      *http.ServeMux

	registerKey [sha256.Size]byte
	perClient   *limiter // per client address
	total       *limiter // every client together (key: the zero address)
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

const maxBody = 64 << 10

type registerRequest struct {
	AllowFrom []string `json:"allowfrom"`
}

// RegisterResponse is the body of a successful POST /register.
type RegisterResponse struct {
	Username   string   `json:"username"`
	Password   string   `json:"password"`
	FullDomain string   `json:"fulldomain"`
	Subdomain  string   `json:"subdomain"`
	AllowFrom  []string `json:"allowfrom"`
}

// UpdateRequest is the body of POST /update.
type UpdateRequest struct {
	Subdomain string `json:"subdomain"`
	TXT       string `json:"txt"`
}

func (h *handler) register(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		h.fail(w, "register", http.StatusMethodNotAllowed, "method_not_allowed")
		return
	}
	if h.cfg.DisableRegistration {
		h.fail(w, "register", http.StatusForbidden, "registration_disabled")
		return
	}
	ip, ok := h.clientIP(r)
	if len(h.cfg.RegisterFrom) > 0 && (!ok || !(Account{AllowFrom: h.cfg.RegisterFrom}).Allowed(ip)) {
		h.fail(w, "register", http.StatusUnauthorized, "forbidden")
		return
	}
	if h.cfg.RegisterKey != "" {
		scheme, key, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		sum := sha256.Sum256([]byte(key))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], h.registerKey[:]) != 1 {
			h.fail(w, "register", http.StatusUnauthorized, "forbidden")
			return
		}
	}
	now := time.Now()
	if wait := h.perClient.take(ip, now); wait > 0 {
		h.limited(w, wait)
		return
	}
	if wait := h.total.take(netip.Addr{}, now); wait > 0 {
		h.limited(w, wait)
		return
	}
	var req registerRequest
	if code, msg := decodeOptional(w, r, &req); code != 0 {
		h.fail(w, "register", code, msg)
		return
	}
	acct := Account{Created: time.Now()}
	for _, s := range req.AllowFrom {
		p, err := parsePrefix(s)
		if err != nil {
			h.fail(w, "register", http.StatusBadRequest, "bad_allowfrom")
			return
		}
		acct.AllowFrom = append(acct.AllowFrom, p)
	}
	key := randomKey()
	acct.KeyHash = sha256.Sum256([]byte(key))
	var err error
	for range 3 { // a UUID collision is astronomically unlikely; retry rather than fail on one
		acct.Username, acct.Subdomain = uuid(), uuid()
		if err = h.cfg.Store.CreateAccount(r.Context(), acct); !errors.Is(err, ErrExists) {
			break
		}
	}
	if err != nil {
		h.internal(w, "register", err)
		return
	}
	allow := make([]string, 0, len(acct.AllowFrom))
	for _, p := range acct.AllowFrom {
		allow = append(allow, p.String())
	}
	h.reply(w, "register", http.StatusCreated, RegisterResponse{
		Username: acct.Username, Password: key, Subdomain: acct.Subdomain,
		FullDomain: acct.Subdomain + "." + h.zone, AllowFrom: allow,
	})
}

// limited answers 429 rate_limited with Retry-After in whole seconds.
func (h *handler) limited(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	h.fail(w, "register", http.StatusTooManyRequests, "rate_limited")
}

func (h *handler) update(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		h.fail(w, "update", http.StatusMethodNotAllowed, "method_not_allowed")
		return
	}
	user, key := r.Header.Get("X-Api-User"), r.Header.Get("X-Api-Key")
	if user == "" || key == "" {
		h.fail(w, "update", http.StatusUnauthorized, "forbidden")
		return
	}
	acct, err := h.cfg.Store.Account(r.Context(), user)
	if errors.Is(err, ErrNotFound) {
		h.fail(w, "update", http.StatusUnauthorized, "forbidden")
		return
	}
	if err != nil {
		h.internal(w, "update", err)
		return
	}
	ip, ok := h.clientIP(r)
	if !acct.CheckKey(key) || !ok || !acct.Allowed(ip) {
		h.fail(w, "update", http.StatusUnauthorized, "forbidden")
		return
	}
	var req UpdateRequest
	if code, msg := decode(w, r, &req); code != 0 {
		h.fail(w, "update", code, msg)
		return
	}
	if !isUUID(req.Subdomain) {
		h.fail(w, "update", http.StatusBadRequest, "bad_subdomain")
		return
	}
	if req.Subdomain != acct.Subdomain {
		h.fail(w, "update", http.StatusUnauthorized, "forbidden")
		return
	}
	if !validTXT(req.TXT) {
		h.fail(w, "update", http.StatusBadRequest, "bad_txt")
		return
	}
	if err := h.cfg.Store.AddTXT(r.Context(), acct.Subdomain+"."+h.zone, req.TXT, time.Now().Add(h.lifetime)); err != nil {
		h.internal(w, "update", err)
		return
	}
	h.reply(w, "update", http.StatusOK, map[string]string{"txt": req.TXT})
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.fail(w, "health", http.StatusMethodNotAllowed, "method_not_allowed")
		return
	}
	h.count("health", http.StatusOK)
	w.WriteHeader(http.StatusOK)
}

// validTXT reports whether s is a DNS-01 key authorization digest: base64url of a SHA-256,
// 43 characters without padding (RFC 8555 §8.4).
func validTXT(s string) bool {
	if len(s) != 43 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func (h *handler) clientIP(r *http.Request) (netip.Addr, bool) {
	s := r.RemoteAddr
	if h.cfg.ClientIPHeader != "" {
		s, _, _ = strings.Cut(r.Header.Get(h.cfg.ClientIPHeader), ",")
		s = strings.TrimSpace(s)
		if a, err := netip.ParseAddr(s); err == nil {
			return a.Unmap(), true
		}
		return netip.Addr{}, false
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		host = s
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// decode reads a required JSON body into v; a non-zero code is the error to answer.
func decode(w http.ResponseWriter, r *http.Request, v any) (int, string) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, "body_too_large"
		}
		return http.StatusBadRequest, "malformed_json"
	}
	return 0, ""
}

// decodeOptional is decode for a body that may be empty.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) (int, string) {
	if r.ContentLength == 0 {
		return 0, ""
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	err := json.NewDecoder(r.Body).Decode(v)
	var tooBig *http.MaxBytesError
	switch {
	case err == nil || errors.Is(err, io.EOF):
		return 0, ""
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, "body_too_large"
	default:
		return http.StatusBadRequest, "malformed_json"
	}
}

func (h *handler) reply(w http.ResponseWriter, endpoint string, code int, v any) {
	h.count(endpoint, code)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *handler) fail(w http.ResponseWriter, endpoint string, code int, msg string) {
	h.reply(w, endpoint, code, map[string]string{"error": msg})
}

func (h *handler) internal(w http.ResponseWriter, endpoint string, err error) {
	if !errors.Is(err, context.Canceled) {
		h.log.Error("acmedns: store failed", "endpoint", endpoint, "err", err)
	}
	h.fail(w, endpoint, http.StatusInternalServerError, "internal")
}

func (h *handler) count(endpoint string, code int) {
	if h.requests != nil {
		h.requests.WithLabelValues(endpoint, fmt.Sprint(code)).Inc()
	}
}

// randomKey returns a 40-character API key: 240 bits from crypto/rand in the base64url alphabet.
// With that much entropy an unsalted SHA-256 is enough to store it: nobody can search 2^240
// candidates, so a slow password hash (bcrypt) would add cost and a dependency, not safety.
func randomKey() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	var b [40]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	for i := range b {
		b[i] = alphabet[b[i]&63]
	}
	return string(b[:])
}

// uuid returns a random (version 4) UUID.
func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}
