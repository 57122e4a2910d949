package lore_test

import (
	"context"
	"net"

	"github.com/switchyard-dev/switchyard/lore"
)

// directoryContract is the method set the brief promises on both *lore.Directory and
// *lore.Client; other packages declare interfaces over subsets of it.
type directoryContract interface {
	Repl(ctx context.Context, id string) (lore.Repl, error)
	ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error)
	ReplByDomain(ctx context.Context, domain string) (lore.Repl, error)
	ReplByHost(ctx context.Context, host string) (lore.Repl, error)
	Repls(ctx context.Context, q lore.ReplQuery) (lore.ReplPage, error)
	Cluster(ctx context.Context, id string) (lore.Cluster, error)
	Clusters(ctx context.Context) ([]lore.Cluster, error)
	Watch(ctx context.Context) (<-chan lore.Event, error)
	Connect(ctx context.Context, replID string) (lore.ConnectInfo, error)
	CreateRepl(ctx context.Context, r lore.Repl) (lore.Repl, error)
	MoveRepl(ctx context.Context, id, cluster string) (lore.Repl, error)
	DeleteRepl(ctx context.Context, id string) error
	PutCluster(ctx context.Context, c lore.Cluster) (lore.Cluster, error)
	Domain(ctx context.Context, domain string) (lore.Domain, error)
	AddDomain(ctx context.Context, domain, repl string) (lore.Domain, error)
	VerifyDomain(ctx context.Context, domain string) (lore.Domain, error)
	DeleteDomain(ctx context.Context, domain string) error
}

type tokenVerifier interface {
	Verify(ctx context.Context, token, audience string) (lore.Claims, error)
}

var (
	_ directoryContract = (*lore.Directory)(nil)
	_ directoryContract = (*lore.Client)(nil)
	_ tokenVerifier     = (*lore.KeySet)(nil)
	_ tokenVerifier     = (*lore.RemoteKeySet)(nil)
	_ lore.Store        = (*lore.MemStore)(nil)
	_ lore.TXTResolver  = (*net.Resolver)(nil)
)
