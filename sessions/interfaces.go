package sessions

import (
	"context"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// Placer finds the VM that runs a repl, or should. *placement.Controlplane and *placement.Client
// satisfy it.
type Placer interface {
	Place(ctx context.Context, req placement.Request) (placement.Assignment, error)
}

// TokenVerifier verifies a connect token for this cluster. *lore.KeySet and *lore.RemoteKeySet
// satisfy it.
type TokenVerifier interface {
	Verify(ctx context.Context, token, audience string) (lore.Claims, error)
}
