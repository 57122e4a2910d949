package lore

import (
	"errors"
	"net/netip"
	"time"
)

// Cluster is one regional cluster of the platform: where its sessions proxy (Eval) listens, the
// public addresses of its hosting proxy (what DNS answers), and whether it takes traffic.
type Cluster struct {
	// ID is the cluster's name, a DNS label ("a", "us-east-1").
	ID string `json:"id"`
	// Region is a free-form region name, for placement policies and people.
	Region string `json:"region,omitempty"`
	// EvalURL is the WebSocket URL of the cluster's sessions proxy (sessions.Proxy), the "url"
	// lore hands out from connect, e.g. "ws://127.0.1.1:8443/v1/connect".
	EvalURL string `json:"eval_url"`
	// HostingURL is the internal base URL of the cluster's hosting proxy, where another cluster's
	// tombstone middleware forwards requests for a repl that moved here, e.g. "http://127.0.1.1:8080".
	HostingURL string `json:"hosting_url,omitempty"`
	// Hosting4 and Hosting6 are the public addresses of the cluster's hosting proxies: the A and
	// AAAA answers for every repl that lives in the cluster.
	Hosting4 []netip.Addr `json:"hosting_v4,omitempty"`
	Hosting6 []netip.Addr `json:"hosting_v6,omitempty"`
	// Healthy clusters receive new repls; an unhealthy cluster still serves the repls it has.
	Healthy bool `json:"healthy"`
}

// Repl is one user's repl: a container with a filesystem, addressed by ID and by
// <slug>.<owner>.<zone>.
type Repl struct {
	// ID is random, lowercase and DNS-label-safe; <id>.id.<zone> names the repl too.
	ID string `json:"id"`
	// Owner and Slug are DNS labels, stored lowercase; the pair is unique.
	Owner string `json:"owner"`
	Slug  string `json:"slug"`
	// Cluster is the ID of the cluster the repl lives in.
	Cluster string `json:"cluster"`
	// Plan names the repl's plan ("free", "pro"); placement maps it to a VM pool.
	Plan    string    `json:"plan,omitempty"`
	Created time.Time `json:"created"`
}

// Domain is a user's custom domain pointing at a repl. Only a verified domain routes traffic.
type Domain struct {
	// Name is the fully qualified domain, lowercase, without the trailing dot.
	Name string `json:"domain"`
	// Repl is the ID of the repl the domain serves.
	Repl string `json:"repl"`
	// Challenge is the value the owner must publish in a TXT record at
	// _switchyard-challenge.<Name> to prove ownership.
	Challenge string `json:"challenge"`
	// Verified is set once the TXT record has been seen.
	Verified bool      `json:"verified"`
	Created  time.Time `json:"created"`
}

// Errors returned by the directory, its stores and its client. Match them with errors.Is; the
// HTTP API maps them to statuses (ErrNotFound 404, ErrExists 409, ErrInvalid 400).
var (
	ErrNotFound = errors.New("lore: not found")
	ErrExists   = errors.New("lore: already exists")
	ErrInvalid  = errors.New("lore: invalid")
)

// Claims are the verified contents of a connect token.
type Claims struct {
	// ID is the token's unique id (jti), for audit and replay tracking.
	ID string `json:"jti"`
	// Repl is the repl the holder may connect to (sub).
	Repl string `json:"sub"`
	// Cluster is the cluster whose sessions proxy accepts the token (aud).
	Cluster   string    `json:"aud"`
	IssuedAt  time.Time `json:"iat"`
	ExpiresAt time.Time `json:"exp"`
}

// ConnectInfo tells a client where to open its session and with what token.
type ConnectInfo struct {
	// URL is the repl's cluster Eval (sessions proxy) WebSocket URL.
	URL       string    `json:"url"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// EventKind says what changed in the directory.
type EventKind string

const (
	ReplCreated    EventKind = "repl_created"
	ReplMoved      EventKind = "repl_moved"
	ReplDeleted    EventKind = "repl_deleted"
	ClusterChanged EventKind = "cluster_changed"
	DomainChanged  EventKind = "domain_changed"
	DomainDeleted  EventKind = "domain_deleted"
)

// Event is one change to the directory, delivered to watchers in commit order.
type Event struct {
	Kind EventKind `json:"kind"`
	// Index is the store's commit index of the change; it only grows.
	Index uint64 `json:"index"`
	// Repl is set for repl events (for ReplDeleted, the repl as it was).
	Repl *Repl `json:"repl,omitempty"`
	// FromCluster is the cluster a moved repl left (ReplMoved only).
	FromCluster string   `json:"from_cluster,omitempty"`
	Cluster     *Cluster `json:"cluster,omitempty"`
	Domain      *Domain  `json:"domain,omitempty"`
}
