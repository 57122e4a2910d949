package lore

import (
	"context"
	"fmt"
	"time"
)

// OwnerAudience is the audience of owner tokens. It is never a cluster ID (a DNS label), so a
// connect token is never an owner token nor the other way round.
const OwnerAudience = "lore:owner"

// OwnerTokenTTL is how long an owner token is valid.
const OwnerTokenTTL = time.Hour

// OwnerToken signs a token that lets its holder act as owner on the owner endpoints of the HTTP
// API (ACME delegations of the owner's names), for OwnerTokenTTL. The platform's web backend
// hands it to a signed-in user; lore keeps no session. ErrUnavailable without an Issuer.
func (d *Directory) OwnerToken(_ context.Context, owner string) (string, Claims, error) {
	o, err := NormalizeName("owner", owner)
	if err != nil {
		return "", Claims{}, err
	}
	if d.issuer == nil {
		return "", Claims{}, fmt.Errorf("%w: no token issuer configured", ErrUnavailable)
	}
	return d.issuer.issue(OwnerAudience, o, OwnerTokenTTL)
}

// VerifyOwnerToken checks an owner token against the directory's published keys and returns
// the owner it names. Errors wrap the ErrToken... sentinels.
func (d *Directory) VerifyOwnerToken(ctx context.Context, token string) (string, error) {
	c, err := d.ownerKeys.Verify(ctx, token, OwnerAudience)
	if err != nil {
		return "", err
	}
	return c.Repl, nil
}
