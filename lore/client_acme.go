package lore

import (
	"context"
	"net/http"
)

// OwnerToken asks for an owner token (the client's key must be the admin key).
func (c *Client) OwnerToken(ctx context.Context, owner string) (OwnerTokenResponse, error) {
	o, err := NormalizeName("owner", owner)
	if err != nil {
		return OwnerTokenResponse{}, err
	}
	var out OwnerTokenResponse
	err = c.do(ctx, http.MethodPost, "/v1/owners/"+esc(o)+"/token", nil, &out)
	return out, err
}

// PutACMEDelegation publishes _acme-challenge.<name> CNAME <target>, as the client's key: an
// owner token for the owner's names, the admin key for any.
func (c *Client) PutACMEDelegation(ctx context.Context, name, target string) (ACMEDelegationInfo, error) {
	n, err := NormalizeDomain(name)
	if err != nil {
		return ACMEDelegationInfo{}, err
	}
	var out ACMEDelegationInfo
	err = c.do(ctx, http.MethodPut, "/v1/acme/"+esc(n), ACMEDelegationRequest{Target: target}, &out)
	return out, err
}

// ACMEDelegation returns the delegation of name.
func (c *Client) ACMEDelegation(ctx context.Context, name string) (ACMEDelegationInfo, error) {
	n, err := NormalizeDomain(name)
	if err != nil {
		return ACMEDelegationInfo{}, err
	}
	var out ACMEDelegationInfo
	err = c.do(ctx, http.MethodGet, "/v1/acme/"+esc(n), nil, &out)
	return out, err
}

// DeleteACMEDelegation removes the delegation of name.
func (c *Client) DeleteACMEDelegation(ctx context.Context, name string) error {
	n, err := NormalizeDomain(name)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/acme/"+esc(n), nil, nil)
}
