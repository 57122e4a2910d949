package lore

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

type ownerKey struct{}

// authorizeOwner accepts the admin key (the request acts as admin: owner "") or an owner token
// (the request acts as that owner), and returns the request carrying who it acts as.
func (h *handler) authorizeOwner(r *http.Request) (*http.Request, int, string) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return r, http.StatusUnauthorized, "lore: missing Authorization: Bearer <admin key or owner token>"
	}
	sum := sha256.Sum256([]byte(tok))
	if h.hasAdmin && subtle.ConstantTimeCompare(sum[:], h.admin[:]) == 1 {
		return r.WithContext(context.WithValue(r.Context(), ownerKey{}, "")), 0, ""
	}
	owner, err := h.d.VerifyOwnerToken(r.Context(), tok)
	if err != nil {
		return r, http.StatusUnauthorized, "lore: not the admin key nor a valid owner token: " + err.Error()
	}
	return r.WithContext(context.WithValue(r.Context(), ownerKey{}, owner)), 0, ""
}

// OwnerTokenResponse is the body of POST /v1/owners/{owner}/token.
type OwnerTokenResponse struct {
	Owner     string    `json:"owner"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (h *handler) ownerToken(w http.ResponseWriter, r *http.Request) {
	tok, c, err := h.d.OwnerToken(r.Context(), r.PathValue("owner"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, OwnerTokenResponse{Owner: c.Repl, Token: tok, ExpiresAt: c.ExpiresAt})
}

// ACMEDelegationRequest is the body of PUT /v1/acme/{name}.
type ACMEDelegationRequest struct {
	Target string `json:"target"`
}

// ACMEDelegationInfo is a delegation as the HTTP API returns it. For a custom domain, Record is
// the CNAME its owner publishes once in the domain's own DNS so that validations reach the
// platform's DNS (see DomainACMEName).
type ACMEDelegationInfo struct {
	ACMEDelegation
	Record *CNAMERecord `json:"record,omitempty"`
}

// CNAMERecord is a DNS CNAME record.
type CNAMERecord struct {
	Name   string `json:"name"`
	Target string `json:"target"`
}

func (h *handler) delegationInfo(d ACMEDelegation) ACMEDelegationInfo {
	info := ACMEDelegationInfo{ACMEDelegation: d}
	if d.Name != h.d.zone && !strings.HasSuffix(d.Name, "."+h.d.zone) {
		info.Record = &CNAMERecord{Name: "_acme-challenge." + d.Name, Target: DomainACMEName(d.Name, h.d.zone)}
	}
	return info
}

func (h *handler) acmeDelegation(w http.ResponseWriter, r *http.Request) {
	owner, _ := r.Context().Value(ownerKey{}).(string)
	name := r.PathValue("name")
	switch r.Method {
	case http.MethodPut:
		var req ACMEDelegationRequest
		if err := decode(r, &req); err != nil {
			h.fail(w, r, err)
			return
		}
		d, err := h.d.PutACMEDelegation(r.Context(), owner, name, req.Target)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		httpjson.Write(w, http.StatusOK, h.delegationInfo(d))
	case http.MethodDelete:
		if err := h.d.DeleteACMEDelegation(r.Context(), owner, name); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		d, err := h.d.ACMEDelegation(r.Context(), owner, name)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		httpjson.Write(w, http.StatusOK, h.delegationInfo(d))
	}
}
