package lore

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

// DefaultMaxBodyBytes bounds request bodies when HandlerConfig.MaxBodyBytes is zero.
const DefaultMaxBodyBytes = 64 << 10

// HandlerConfig configures NewHandler.
type HandlerConfig struct {
	// Directory serves the requests. Required.
	Directory *Directory
	// AdminKey is the bearer token of every endpoint that changes state or issues tokens (and of
	// the read endpoints too). Empty means no request is ever authorized as admin: the API is
	// read-only for ReadKey holders, and fully closed without one.
	AdminKey string
	// ReadKey, if set, is a second bearer token that may call the read endpoints (GET lookups
	// and the watch stream) but nothing else — for DNS servers and proxies in other regions.
	// Empty means reads need the AdminKey.
	ReadKey string
	// MaxBodyBytes bounds request bodies; larger ones get 413. Zero means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// WatchKeepalive is how often an idle watch stream gets an empty line, so intermediaries and
	// the client see a live connection. Zero means 30s.
	WatchKeepalive time.Duration
	// Logger receives internal errors (500 answers). Nil means the Directory's logger.
	Logger *slog.Logger
}

// NewHandler returns the HTTP API of the directory (see the package documentation for the
// endpoints). It never binds a port: mount it on any server or mux. A watch stream ends when its
// request context ends or the Directory closes; close the Directory (or cancel the server's
// BaseContext) before http.Server.Shutdown, which waits for streaming requests.
func NewHandler(cfg HandlerConfig) http.Handler {
	if cfg.Directory == nil {
		panic("lore: NewHandler with a nil Directory")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.WatchKeepalive <= 0 {
		cfg.WatchKeepalive = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = cfg.Directory.log
	}
	h := &handler{cfg: cfg, d: cfg.Directory, mux: http.NewServeMux()}
	if cfg.AdminKey != "" {
		h.admin = sha256.Sum256([]byte(cfg.AdminKey))
		h.hasAdmin = true
	}
	if cfg.ReadKey != "" {
		h.read = sha256.Sum256([]byte(cfg.ReadKey))
		h.hasRead = true
	}
	h.route("/healthz", access{get: public}, h.health)
	h.route("/v1/keys", access{get: public}, h.keys)
	h.route("/v1/repls", access{get: reader, post: admin}, h.repls)
	h.route("/v1/repls/{id}", access{get: reader, del: admin}, h.repl)
	h.route("/v1/repls/{id}/move", access{post: admin}, h.move)
	h.route("/v1/repls/{id}/connect", access{post: admin}, h.connect)
	h.route("/v1/names/{owner}/{slug}", access{get: reader}, h.name)
	h.route("/v1/hosts/{host}", access{get: reader}, h.host)
	h.route("/v1/clusters", access{get: reader}, h.clusters)
	h.route("/v1/clusters/{id}", access{get: reader, put: admin}, h.cluster)
	h.route("/v1/domains", access{post: admin}, h.addDomain)
	h.route("/v1/domains/{domain}", access{get: reader, del: admin}, h.domain)
	h.route("/v1/domains/{domain}/verify", access{post: admin}, h.verify)
	h.route("/v1/domains/{domain}/repl", access{get: reader}, h.domainRepl)
	h.route("/v1/watch", access{get: reader}, h.watch)
	h.route("/v1/owners/{owner}/token", access{post: admin}, h.ownerToken)
	h.route("/v1/acme/{name}", access{get: ownerLevel, put: ownerLevel, del: ownerLevel}, h.acmeDelegation)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, fmt.Sprintf("lore: no endpoint %s", r.URL.Path))
	})
	return h
}

type level int

const (
	none level = iota
	public
	reader
	admin
	ownerLevel // the admin key, or an owner token (the handler checks what the owner may do)
)

// access says who may call each method of a route; none means the method is not allowed.
type access struct{ get, post, put, del level }

func (a access) level(method string) level {
	switch method {
	case http.MethodGet, http.MethodHead:
		return a.get
	case http.MethodPost:
		return a.post
	case http.MethodPut:
		return a.put
	case http.MethodDelete:
		return a.del
	}
	return none
}

func (a access) allow() string {
	var m []string
	for _, p := range []struct {
		l level
		m string
	}{{a.get, "GET, HEAD"}, {a.post, "POST"}, {a.put, "PUT"}, {a.del, "DELETE"}} {
		if p.l != none {
			m = append(m, p.m)
		}
	}
	return strings.Join(m, ", ")
}

type handler struct {
	cfg               HandlerConfig
	d                 *Directory
	mux               *http.ServeMux
	admin, read       [sha256.Size]byte
	hasAdmin, hasRead bool
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *handler) route(pattern string, a access, fn func(http.ResponseWriter, *http.Request)) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		need := a.level(r.Method)
		if need == none {
			w.Header().Set("Allow", a.allow())
			httpjson.Error(w, http.StatusMethodNotAllowed, fmt.Sprintf("lore: method %s not allowed on %s", r.Method, r.URL.Path))
			return
		}
		if need == ownerLevel {
			var status int
			var msg string
			if r, status, msg = h.authorizeOwner(r); status != 0 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="lore"`)
				httpjson.Error(w, status, msg)
				return
			}
		} else if need != public {
			status, msg := h.authorize(r, need)
			if status != 0 {
				if status == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Bearer realm="lore"`)
				}
				httpjson.Error(w, status, msg)
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
		fn(w, r)
	})
}

// authorize checks the bearer token in constant time (comparing SHA-256 digests, so neither
// content nor length leaks). It returns 0 when the request may proceed.
func (h *handler) authorize(r *http.Request, need level) (int, string) {
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if auth == "" {
		return http.StatusUnauthorized, "lore: missing Authorization: Bearer <key>"
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return http.StatusUnauthorized, "lore: Authorization must be Bearer <key>"
	}
	sum := sha256.Sum256([]byte(tok))
	isAdmin := h.hasAdmin && subtle.ConstantTimeCompare(sum[:], h.admin[:]) == 1
	isRead := h.hasRead && subtle.ConstantTimeCompare(sum[:], h.read[:]) == 1
	switch {
	case isAdmin:
		return 0, ""
	case isRead && need == reader:
		return 0, ""
	case isRead:
		return http.StatusForbidden, "lore: the read key may not call this endpoint; it needs the admin key"
	}
	return http.StatusUnauthorized, "lore: wrong key"
}

// fail answers err with the status its sentinel maps to; anything else is logged and answered
// 500 without its details.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		httpjson.Error(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("lore: request body larger than %d bytes", tooBig.Limit))
	case errors.Is(err, ErrInvalid):
		httpjson.Error(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotFound):
		httpjson.Error(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrExists):
		httpjson.Error(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrUnavailable):
		httpjson.Error(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
	default:
		h.cfg.Logger.Error("lore: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		httpjson.Error(w, http.StatusInternalServerError, "lore: internal error")
	}
}

// decode reads a JSON body into v: one object, no unknown fields, no trailing data.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return fmt.Errorf("%w: request body: %w", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: request body: data after the JSON object", ErrInvalid)
	}
	return nil
}

// ReplInfo is a repl as the HTTP API returns it: the Repl plus its platform hostname.
type ReplInfo struct {
	Repl
	Hostname string `json:"hostname"`
}

func (h *handler) info(r Repl) ReplInfo { return ReplInfo{Repl: r, Hostname: Hostname(r, h.d.zone)} }

func (h *handler) health(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (h *handler) keys(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=60")
	_ = json.NewEncoder(w).Encode(NewJWKS(h.d.Keys()))
}

// CreateReplRequest is the body of POST /v1/repls.
type CreateReplRequest struct {
	ID      string `json:"id,omitempty"`
	Owner   string `json:"owner"`
	Slug    string `json:"slug"`
	Cluster string `json:"cluster,omitempty"`
	Plan    string `json:"plan,omitempty"`
}

// replsJSON is the body of GET /v1/repls.
type replsJSON struct {
	Repls []ReplInfo `json:"repls"`
	Next  string     `json:"next,omitempty"`
}

func (h *handler) repls(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		var req CreateReplRequest
		if err := decode(r, &req); err != nil {
			h.fail(w, r, err)
			return
		}
		out, err := h.d.CreateRepl(r.Context(), Repl{ID: req.ID, Owner: req.Owner, Slug: req.Slug, Cluster: req.Cluster, Plan: req.Plan})
		if err != nil {
			h.fail(w, r, err)
			return
		}
		w.Header().Set("Location", "/v1/repls/"+out.ID)
		httpjson.Write(w, http.StatusCreated, h.info(out))
		return
	}
	qv := r.URL.Query()
	q := ReplQuery{Owner: qv.Get("owner"), After: qv.Get("after")}
	if l := qv.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			h.fail(w, r, fmt.Errorf("%w: limit %q is not a number", ErrInvalid, l))
			return
		}
		q.Limit = n
		if n == 0 {
			q.Limit = -1 // an explicit 0 is refused, not the default
		}
	}
	page, err := h.d.Repls(r.Context(), q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := replsJSON{Repls: make([]ReplInfo, len(page.Repls)), Next: page.Next}
	for i, rp := range page.Repls {
		out.Repls[i] = h.info(rp)
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (h *handler) repl(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if r.Method == http.MethodDelete {
		if err := h.d.DeleteRepl(r.Context(), id); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	out, err := h.d.Repl(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, h.info(out))
}

// MoveRequest is the body of POST /v1/repls/{id}/move.
type MoveRequest struct {
	Cluster string `json:"cluster"`
}

func (h *handler) move(w http.ResponseWriter, r *http.Request) {
	var req MoveRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	out, err := h.d.MoveRepl(r.Context(), r.PathValue("id"), req.Cluster)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, h.info(out))
}

func (h *handler) connect(w http.ResponseWriter, r *http.Request) {
	info, err := h.d.Connect(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, info)
}

func (h *handler) name(w http.ResponseWriter, r *http.Request) {
	out, err := h.d.ReplByName(r.Context(), r.PathValue("owner"), r.PathValue("slug"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, h.info(out))
}

func (h *handler) host(w http.ResponseWriter, r *http.Request) {
	out, err := h.d.ReplByHost(r.Context(), r.PathValue("host"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, h.info(out))
}

func (h *handler) clusters(w http.ResponseWriter, r *http.Request) {
	out, err := h.d.Clusters(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (h *handler) cluster(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if r.Method == http.MethodPut {
		var c Cluster
		if err := decode(r, &c); err != nil {
			h.fail(w, r, err)
			return
		}
		if c.ID == "" {
			c.ID = id
		}
		if !strings.EqualFold(c.ID, id) {
			h.fail(w, r, fmt.Errorf("%w: body id %q differs from path id %q", ErrInvalid, c.ID, id))
			return
		}
		out, err := h.d.PutCluster(r.Context(), c)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		httpjson.Write(w, http.StatusOK, out)
		return
	}
	out, err := h.d.Cluster(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, out)
}

// AddDomainRequest is the body of POST /v1/domains.
type AddDomainRequest struct {
	Domain string `json:"domain"`
	Repl   string `json:"repl"`
}

// TXTRecord is a DNS TXT record the owner of a custom domain must publish.
type TXTRecord struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// DomainInfo is a custom domain as the HTTP API returns it: the Domain plus the TXT record
// that verifies it.
type DomainInfo struct {
	Domain
	TXT TXTRecord `json:"txt"`
}

func domainInfo(d Domain) DomainInfo {
	return DomainInfo{Domain: d, TXT: TXTRecord{Name: ChallengeName(d.Name), Value: d.Challenge}}
}

func (h *handler) addDomain(w http.ResponseWriter, r *http.Request) {
	var req AddDomainRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	d, err := h.d.AddDomain(r.Context(), req.Domain, req.Repl)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/domains/"+d.Name)
	httpjson.Write(w, http.StatusCreated, domainInfo(d))
}

func (h *handler) domain(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("domain")
	if r.Method == http.MethodDelete {
		if err := h.d.DeleteDomain(r.Context(), name); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	d, err := h.d.Domain(r.Context(), name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, domainInfo(d))
}

func (h *handler) verify(w http.ResponseWriter, r *http.Request) {
	d, err := h.d.VerifyDomain(r.Context(), r.PathValue("domain"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, domainInfo(d))
}

func (h *handler) domainRepl(w http.ResponseWriter, r *http.Request) {
	out, err := h.d.ReplByDomain(r.Context(), r.PathValue("domain"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, h.info(out))
}

// watch streams events as newline-delimited JSON, one Event per line, after flushing the
// response headers once the subscription is in place (so a client that has the headers sees
// every later change). Empty lines are keepalives. The stream ends when the request ends or the
// directory's watch channel closes (the watcher fell behind or the store closed): the client
// must then re-read and watch again.
func (h *handler) watch(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "application/x-ndjson")
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ch, err := h.d.Watch(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	tick := time.NewTicker(h.cfg.WatchKeepalive)
	defer tick.Stop()
	enc := json.NewEncoder(w)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
		case <-tick.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
		case <-ctx.Done():
			return
		}
		// Write out everything queued before flushing, so a burst costs one flush.
		for len(ch) > 0 {
			ev, ok := <-ch
			if !ok {
				_ = rc.Flush()
				return
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
