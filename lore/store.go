package lore

import "context"

// Store is where the directory keeps its state. The Directory validates and normalizes every
// value before it reaches a Store; a Store enforces uniqueness and references inside its own
// transactions, so concurrent writers (several lore replicas over one backend) never break them.
//
// NewMemStore (in process) is the default. Every implementation must pass the
// conformance suite in package lore/loretest. All methods are safe for concurrent use. Errors
// wrap ErrNotFound, ErrExists or ErrInvalid where those apply.
type Store interface {
	// Repl returns the repl with the given ID.
	Repl(ctx context.Context, id string) (Repl, error)
	// ReplByName returns the repl with the given owner and slug.
	ReplByName(ctx context.Context, owner, slug string) (Repl, error)
	// Repls lists repls ordered by owner then slug, as selected by q (Limit zero: no limit).
	Repls(ctx context.Context, q ReplQuery) ([]Repl, error)
	// CreateRepl stores a new repl. It fails with ErrExists if the ID or the owner/slug pair is
	// taken and ErrNotFound if the cluster does not exist.
	CreateRepl(ctx context.Context, r Repl) (Repl, error)
	// MoveRepl changes a repl's cluster and returns the repl as it now is and the cluster it
	// left. Moving a repl to the cluster it is in changes nothing and publishes no event. The
	// target cluster must exist (else ErrNotFound).
	MoveRepl(ctx context.Context, id, cluster string) (r Repl, from string, err error)
	// DeleteRepl removes a repl and every custom domain that points at it, and returns the repl
	// as it was.
	DeleteRepl(ctx context.Context, id string) (Repl, error)

	// Cluster returns one cluster; Clusters all of them ordered by ID.
	Cluster(ctx context.Context, id string) (Cluster, error)
	Clusters(ctx context.Context) ([]Cluster, error)
	// ClusterLoads returns every cluster with the number of repls it holds, ordered by ID.
	ClusterLoads(ctx context.Context) ([]ClusterLoad, error)
	// PutCluster creates or replaces a cluster.
	PutCluster(ctx context.Context, c Cluster) (Cluster, error)

	// Domain returns a custom domain, verified or not.
	Domain(ctx context.Context, name string) (Domain, error)
	// ReplByDomain returns the repl a verified custom domain points at; an unknown or unverified
	// domain is ErrNotFound.
	ReplByDomain(ctx context.Context, domain string) (Repl, error)
	// CreateDomain stores a new, unverified domain. ErrExists if the name is taken, ErrNotFound
	// if the repl does not exist.
	CreateDomain(ctx context.Context, d Domain) (Domain, error)
	// VerifyDomain marks a domain verified if its challenge is still the given one (so a domain
	// deleted and added again meanwhile is not verified by a stale check); otherwise
	// ErrNotFound.
	VerifyDomain(ctx context.Context, name, challenge string) (Domain, error)
	// DeleteDomain removes a domain and returns it as it was.
	DeleteDomain(ctx context.Context, name string) (Domain, error)

	// Watch returns a channel of every change committed after the call, in commit order, each
	// with a growing Index. The channel is closed when ctx ends, when the store closes, or when
	// the watcher falls too far behind; in the last two cases ctx.Err() is still nil and the
	// watcher must re-read what it caches and watch again (no event is ever silently dropped).
	// Events are shared between watchers: treat what their pointers point to as read-only.
	Watch(ctx context.Context) (<-chan Event, error)
}

// ReplQuery selects a page of repls, ordered by owner then slug.
type ReplQuery struct {
	// Owner restricts the listing to one owner. Empty means every owner.
	Owner string
	// After resumes a listing after the repl named "<owner>/<slug>" (a ReplPage.Next). Empty
	// means from the start.
	After string
	// Limit is the most repls returned. Zero means DefaultListLimit from a Directory or Client,
	// and no limit from a Store.
	Limit int
}

// ReplPage is one page of a listing.
type ReplPage struct {
	Repls []Repl `json:"repls"`
	// Next is the After of the following page; empty on the last page.
	Next string `json:"next,omitempty"`
}

// Listing limits of Directory.Repls and the HTTP API.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 10000
)

// ClusterLoad is a cluster and how many repls live in it, what a ClusterPolicy chooses from.
type ClusterLoad struct {
	Cluster Cluster `json:"cluster"`
	Repls   int     `json:"repls"`
}
