package hosting

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

// Directory resolves the names a hosting request can carry. *lore.Directory and *lore.Client
// satisfy it.
type Directory interface {
	Repl(ctx context.Context, id string) (lore.Repl, error)
	ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error)
	// ReplByDomain returns the repl a verified custom domain points at (ErrNotFound otherwise).
	ReplByDomain(ctx context.Context, domain string) (lore.Repl, error)
}
