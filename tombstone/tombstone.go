package tombstone

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultTTL is how long a tombstone lives when nobody says otherwise: far past the 60 s TTL of
// the platform's DNS answers, so that resolvers which ignore TTLs (or clients that pin
// addresses) are still served.
const DefaultTTL = 24 * time.Hour

// Errors. Match them with errors.Is.
var (
	// ErrNotFound: no live (unexpired) tombstone for that repl or name.
	ErrNotFound = errors.New("tombstone: not found")
	// ErrInvalid: a tombstone or configuration is malformed.
	ErrInvalid = errors.New("tombstone: invalid")
)

// Tombstone records, in the cluster a repl left, that the repl now lives in another cluster.
type Tombstone struct {
	// Repl is the repl's ID.
	Repl string `json:"repl"`
	// Owner and Slug are the repl's name, so a request for <slug>.<owner>.<zone> finds the
	// tombstone without asking the directory. Both or neither.
	Owner string `json:"owner,omitempty"`
	Slug  string `json:"slug,omitempty"`
	// Cluster is the ID of the cluster the repl moved to; requests are forwarded there.
	Cluster string    `json:"cluster"`
	Created time.Time `json:"created"`
	// Expires is when the tombstone stops forwarding; after it, the cluster answers as if it had
	// never hosted the repl.
	Expires time.Time `json:"expires"`
}

// Validate reports what is wrong with t (errors wrap ErrInvalid).
func (t Tombstone) Validate() error {
	switch {
	case t.Repl == "":
		return fmt.Errorf("%w: tombstone without a repl", ErrInvalid)
	case t.Cluster == "":
		return fmt.Errorf("%w: tombstone for repl %s without a cluster", ErrInvalid, t.Repl)
	case (t.Owner == "") != (t.Slug == ""):
		return fmt.Errorf("%w: tombstone for repl %s has only one of owner and slug", ErrInvalid, t.Repl)
	case t.Created.IsZero() || t.Expires.IsZero():
		return fmt.Errorf("%w: tombstone for repl %s without created or expiry time", ErrInvalid, t.Repl)
	case !t.Expires.After(t.Created):
		return fmt.Errorf("%w: tombstone for repl %s expires before it is created", ErrInvalid, t.Repl)
	}
	return nil
}

// Store holds one cluster's tombstones. Every method is safe for concurrent use. Expired
// tombstones are invisible to Get, GetByName and List (the store's clock decides) and are
// removed by DeleteExpired. Every implementation must pass tombstonetest.Run.
type Store interface {
	// Put creates or replaces the tombstone of t.Repl.
	Put(ctx context.Context, t Tombstone) error
	// Get returns the live tombstone of a repl, or ErrNotFound.
	Get(ctx context.Context, repl string) (Tombstone, error)
	// GetByName returns the newest live tombstone of the repl named <slug>.<owner>, or
	// ErrNotFound. owner and slug are compared as given (lowercase).
	GetByName(ctx context.Context, owner, slug string) (Tombstone, error)
	// Delete removes the tombstone of a repl (live or expired); ErrNotFound if there is none.
	Delete(ctx context.Context, repl string) error
	// List returns every live tombstone, ordered by repl ID.
	List(ctx context.Context) ([]Tombstone, error)
	// DeleteExpired removes the expired tombstones and returns how many it removed.
	DeleteExpired(ctx context.Context) (int, error)
}
