package placement

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

// API is the method set *Controlplane (in-process) and *Client (HTTP) share. Consumers should
// declare the smaller interface they need (the proxies need only Place).
type API interface {
	Place(ctx context.Context, req Request) (Assignment, error)
	Lookup(ctx context.Context, repl string) (Assignment, error)
	Release(ctx context.Context, repl, vm string) error
	Register(ctx context.Context, vm VM) (VM, error)
	Heartbeat(ctx context.Context, hb Heartbeat) error
	SetState(ctx context.Context, vm string, s State) error
	VM(ctx context.Context, id string) (VM, error)
	VMs(ctx context.Context) ([]VM, error)
	Deregister(ctx context.Context, id string) error
	Assignments(ctx context.Context, vm string) ([]Assignment, error)
	Explain(ctx context.Context, req Request) (Decision, error)
	Autoscale(ctx context.Context) ([]PoolScale, error)
}

var (
	_ API = (*Controlplane)(nil)
	_ API = (*Client)(nil)
)

// HandlerConfig configures NewHandler.
type HandlerConfig struct {
	// Controlplane serves the requests. Required.
	Controlplane *Controlplane
	// Credential is the shared bearer credential every request but GET /healthz must carry as
	// "Authorization: Bearer <Credential>". Empty means every such request is refused (401): the
	// API never runs open by accident.
	Credential string
	// VMSecret, if set, lets each VM's agent authenticate as itself: with header
	// Switchyard-VM: <id> and the bearer VMCredential(VMSecret, id). Such a caller may
	// register, heartbeat, read and deregister only its own VM, set it Draining, release its own
	// assignments and look assignments up; nothing else (403). So a VM that is taken over cannot
	// place, drain or release anything of another VM. Empty means VMs use Credential.
	VMSecret string
	// MaxBodyBytes bounds request bodies; larger ones get 413. 0 means 1 MiB.
	MaxBodyBytes int64
	// Logger receives internal errors (answered 500 without details). nil means slog.Default().
	Logger *slog.Logger
}

// NewHandler returns the Controlplane's HTTP API. Bodies are JSON; errors are
// {"error": "...", "code": "..."} with status 400 (invalid), 401 (credential), 404 (not found),
// 405 (method), 409 (conflict), 413 (body too large), 503 (no capacity) or 500. Routes:
//
//	GET    /healthz                          {"status":"ok"} (no credential needed)
//	POST   /v1/vms                           register: VM → VM
//	GET    /v1/vms                           {"vms":[VM...]}
//	GET    /v1/vms/{id}                      VM
//	DELETE /v1/vms/{id}                      deregister (409 while it has assignments) → 204
//	POST   /v1/vms/{id}/heartbeat            Heartbeat (vm from the path) → 204
//	PUT    /v1/vms/{id}/state                {"state":"draining"} → 204
//	POST   /v1/vms/{id}/drain|cordon|activate  shortcuts for PUT state → 204
//	GET    /v1/vms/{id}/assignments          {"assignments":[Assignment...]}
//	POST   /v1/place                         Request → Assignment
//	POST   /v1/explain                       Request → Decision
//	GET    /v1/assignments                   {"assignments":[...]} (every live assignment)
//	GET    /v1/assignments/{repl}            Assignment
//	DELETE /v1/assignments/{repl}[?vm=ID]    release → 204
//	GET    /v1/autoscale                     {"pools":[PoolScale...]}
func NewHandler(cfg HandlerConfig) http.Handler {
	h := &handler{cp: cfg.Controlplane, maxBody: cfg.MaxBodyBytes, log: cfg.Logger, vmSecret: cfg.VMSecret}
	if cfg.Credential != "" {
		sum := sha256.Sum256([]byte(cfg.Credential))
		h.cred = sum[:]
	}
	pathVM := func(r *http.Request, vm string) bool { return r.PathValue("id") == vm }
	anyVM := func(*http.Request, string) bool { return true }
	queryVM := func(r *http.Request, vm string) bool { return r.URL.Query().Get("vm") == vm }
	if h.maxBody <= 0 {
		h.maxBody = 1 << 20
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", h.methods(map[string]http.HandlerFunc{http.MethodGet: h.healthz}))
	mux.HandleFunc("/v1/vms", h.methods(map[string]http.HandlerFunc{
		http.MethodPost: h.vmAuth(anyVM, h.register), http.MethodGet: h.auth(h.listVMs)}))
	mux.HandleFunc("/v1/vms/{id}", h.vmAuth(pathVM, h.methods(map[string]http.HandlerFunc{
		http.MethodGet: h.getVM, http.MethodDelete: h.deregister})))
	mux.HandleFunc("/v1/vms/{id}/heartbeat", h.vmAuth(pathVM, h.methods(map[string]http.HandlerFunc{http.MethodPost: h.heartbeat})))
	mux.HandleFunc("/v1/vms/{id}/state", h.vmAuth(pathVM, h.methods(map[string]http.HandlerFunc{http.MethodPut: h.setState})))
	for verb, s := range map[string]State{"drain": Draining, "cordon": Cordoned, "activate": Active} {
		mux.HandleFunc("/v1/vms/{id}/"+verb, h.auth(h.methods(map[string]http.HandlerFunc{http.MethodPost: h.setStateTo(s)})))
	}
	mux.HandleFunc("/v1/vms/{id}/assignments", h.auth(h.methods(map[string]http.HandlerFunc{http.MethodGet: h.vmAssignments})))
	mux.HandleFunc("/v1/place", h.auth(h.methods(map[string]http.HandlerFunc{http.MethodPost: h.place})))
	mux.HandleFunc("/v1/explain", h.auth(h.methods(map[string]http.HandlerFunc{http.MethodPost: h.explain})))
	mux.HandleFunc("/v1/assignments", h.auth(h.methods(map[string]http.HandlerFunc{http.MethodGet: h.allAssignments})))
	mux.HandleFunc("/v1/assignments/{repl}", h.methods(map[string]http.HandlerFunc{
		http.MethodGet: h.vmAuth(anyVM, h.lookup), http.MethodDelete: h.vmAuth(queryVM, h.release)}))
	mux.HandleFunc("/v1/autoscale", h.auth(h.methods(map[string]http.HandlerFunc{http.MethodGet: h.autoscale})))
	mux.HandleFunc("/", h.auth(func(w http.ResponseWriter, r *http.Request) {
		httpjson.ErrorCode(w, http.StatusNotFound, "not_found", "placement: no such endpoint: "+r.URL.Path)
	}))
	return mux
}

type handler struct {
	cp       *Controlplane
	cred     []byte // sha256 of the credential; nil refuses everything
	vmSecret string
	maxBody  int64
	log      *slog.Logger
}

// HeaderVM names the VM an agent authenticates as (with VMCredential).
const HeaderVM = "Switchyard-VM"

// VMCredential is the credential of VM id's agent, derived from a controlplane's VMSecret
// (HMAC-SHA256): the controlplane checks it without storing one per VM, and a VM that knows its
// own cannot compute another's.
func VMCredential(secret, id string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("switchyard placement vm\x00" + id))
	return hex.EncodeToString(m.Sum(nil))
}

type principalKey struct{}

// authenticate returns who calls: "" with the full credential, the VM's id with a VM's.
func (h *handler) authenticate(r *http.Request) (vm string, ok bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return "", false
	}
	sum := sha256.Sum256([]byte(tok))
	if h.cred != nil && subtle.ConstantTimeCompare(sum[:], h.cred) == 1 {
		return "", true
	}
	if id := r.Header.Get(HeaderVM); h.vmSecret != "" && id != "" {
		want := sha256.Sum256([]byte(VMCredential(h.vmSecret, id)))
		if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			return id, true
		}
	}
	return "", false
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="placement"`)
	httpjson.ErrorCode(w, http.StatusUnauthorized, "unauthorized", "placement: missing or wrong bearer credential")
}

// auth admits the full credential only.
func (h *handler) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		vm, ok := h.authenticate(r)
		switch {
		case !ok:
			unauthorized(w)
		case vm != "":
			httpjson.ErrorCode(w, http.StatusForbidden, "forbidden", "placement: a VM's credential does not allow "+r.Method+" "+r.URL.Path)
		default:
			next(w, r)
		}
	}
}

// vmAuth admits the full credential, and a VM's where allowed says the request concerns that
// VM; handlers that read the VM from the body check it against callerVM.
func (h *handler) vmAuth(allowed func(r *http.Request, vm string) bool, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		vm, ok := h.authenticate(r)
		switch {
		case !ok:
			unauthorized(w)
		case vm != "" && !allowed(r, vm):
			httpjson.ErrorCode(w, http.StatusForbidden, "forbidden", fmt.Sprintf("placement: VM %s may not %s %s", vm, r.Method, r.URL.Path))
		default:
			next(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, vm)))
		}
	}
}

// callerVM is the VM a request authenticated as; "" for the full credential.
func callerVM(r *http.Request) string {
	vm, _ := r.Context().Value(principalKey{}).(string)
	return vm
}

func (h *handler) methods(m map[string]http.HandlerFunc) http.HandlerFunc {
	allow := make([]string, 0, len(m))
	for k := range m {
		allow = append(allow, k)
	}
	allowed := strings.Join(allow, ", ")
	return func(w http.ResponseWriter, r *http.Request) {
		f, ok := m[r.Method]
		if !ok && r.Method == http.MethodHead {
			f, ok = m[http.MethodGet]
		}
		if !ok {
			w.Header().Set("Allow", allowed)
			httpjson.ErrorCode(w, http.StatusMethodNotAllowed, "method", fmt.Sprintf("placement: method %s not allowed on %s", r.Method, r.URL.Path))
			return
		}
		f(w, r)
	}
}

// fail maps a Controlplane error to its status.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		httpjson.ErrorCode(w, http.StatusBadRequest, "invalid", err.Error())
	case errors.Is(err, ErrNotFound):
		httpjson.ErrorCode(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrConflict):
		httpjson.ErrorCode(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, ErrNoCapacity):
		httpjson.ErrorCode(w, http.StatusServiceUnavailable, "no_capacity", err.Error())
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client is gone; the status is for the access log.
		httpjson.ErrorCode(w, 499, "canceled", "placement: request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		httpjson.ErrorCode(w, http.StatusServiceUnavailable, "timeout", "placement: timed out")
	default:
		h.log.Error("placement: internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		httpjson.ErrorCode(w, http.StatusInternalServerError, "internal", "placement: internal error")
	}
}

// decode reads one JSON value from the body into v; it answers the error itself and returns false.
func (h *handler) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, h.maxBody)
	dec := json.NewDecoder(r.Body)
	err := dec.Decode(v)
	if err == nil {
		if _, e := dec.Token(); e != io.EOF {
			err = errors.New("trailing data after the JSON value")
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpjson.ErrorCode(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("placement: body larger than %d bytes", h.maxBody))
			return false
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("empty body")
		}
		httpjson.ErrorCode(w, http.StatusBadRequest, "invalid", "placement: invalid: bad JSON body: "+err.Error())
		return false
	}
	return true
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (h *handler) register(w http.ResponseWriter, r *http.Request) {
	var vm VM
	if !h.decode(w, r, &vm) {
		return
	}
	if c := callerVM(r); c != "" && vm.ID != c {
		httpjson.ErrorCode(w, http.StatusForbidden, "forbidden", fmt.Sprintf("placement: VM %s may not register %q", c, vm.ID))
		return
	}
	out, err := h.cp.Register(r.Context(), vm)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (h *handler) listVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := h.cp.VMs(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if vms == nil {
		vms = []VM{}
	}
	httpjson.Write(w, http.StatusOK, struct {
		VMs []VM `json:"vms"`
	}{vms})
}

func (h *handler) getVM(w http.ResponseWriter, r *http.Request) {
	vm, err := h.cp.VM(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, vm)
}

func (h *handler) deregister(w http.ResponseWriter, r *http.Request) {
	if err := h.cp.Deregister(r.Context(), r.PathValue("id")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) heartbeat(w http.ResponseWriter, r *http.Request) {
	var hb Heartbeat
	if !h.decode(w, r, &hb) {
		return
	}
	id := r.PathValue("id")
	if hb.VM != "" && hb.VM != id {
		httpjson.ErrorCode(w, http.StatusBadRequest, "invalid", fmt.Sprintf("placement: invalid: heartbeat for vm %q posted to vm %q", hb.VM, id))
		return
	}
	hb.VM = id
	if err := h.cp.Heartbeat(r.Context(), hb); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type stateBody struct {
	State State `json:"state"`
}

func (h *handler) setState(w http.ResponseWriter, r *http.Request) {
	var b stateBody
	if !h.decode(w, r, &b) {
		return
	}
	if callerVM(r) != "" && b.State != Draining {
		httpjson.ErrorCode(w, http.StatusForbidden, "forbidden", "placement: a VM may only set itself draining")
		return
	}
	h.setStateTo(b.State)(w, r)
}

func (h *handler) setStateTo(s State) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h.cp.SetState(r.Context(), r.PathValue("id"), s); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

type assignmentsBody struct {
	Assignments []Assignment `json:"assignments"`
}

func (h *handler) vmAssignments(w http.ResponseWriter, r *http.Request) {
	as, err := h.cp.Assignments(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if as == nil {
		as = []Assignment{}
	}
	httpjson.Write(w, http.StatusOK, assignmentsBody{as})
}

func (h *handler) allAssignments(w http.ResponseWriter, r *http.Request) {
	as, err := h.cp.Assignments(r.Context(), "")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if as == nil {
		as = []Assignment{}
	}
	httpjson.Write(w, http.StatusOK, assignmentsBody{as})
}

func (h *handler) place(w http.ResponseWriter, r *http.Request) {
	var req Request
	if !h.decode(w, r, &req) {
		return
	}
	a, err := h.cp.Place(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, a)
}

func (h *handler) explain(w http.ResponseWriter, r *http.Request) {
	var req Request
	if !h.decode(w, r, &req) {
		return
	}
	d, err := h.cp.Explain(r.Context(), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, d)
}

func (h *handler) lookup(w http.ResponseWriter, r *http.Request) {
	a, err := h.cp.Lookup(r.Context(), r.PathValue("repl"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, a)
}

func (h *handler) release(w http.ResponseWriter, r *http.Request) {
	if err := h.cp.Release(r.Context(), r.PathValue("repl"), r.URL.Query().Get("vm")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) autoscale(w http.ResponseWriter, r *http.Request) {
	s, err := h.cp.Autoscale(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, struct {
		Pools []PoolScale `json:"pools"`
	}{s})
}
