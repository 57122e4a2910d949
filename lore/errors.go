package lore

import (
	"context"
	"fmt"
	"net/netip"
)

// notFound is ErrNotFound with what was not found, for the lookups on the DNS and hosting hot
// paths. It formats its message only when Error is called, so a miss costs one small allocation
// instead of fmt.Errorf's formatting (and the stack growth fmt brings to a DNS server's
// per-query goroutine). errors.Is(err, ErrNotFound) holds.
type notFound struct {
	what string // "repl", "cluster", "domain", "no verified domain"
	key  string
	slug string // set for a repl name: key is the owner
	name bool
}

func (e *notFound) Error() string {
	if e.name {
		return fmt.Sprintf("%v: %s %s/%s", ErrNotFound, e.what, e.key, e.slug)
	}
	return fmt.Sprintf("%v: %s %q", ErrNotFound, e.what, e.key)
}

func (e *notFound) Unwrap() error { return ErrNotFound }

func errNotFound(what, key string) error { return &notFound{what: what, key: key} }

func errNameNotFound(owner, slug string) error {
	return &notFound{what: "repl", key: owner, slug: slug, name: true}
}

// hostingStore is the optional Store method behind Directory.AppendHosting: a Store that has it
// hands out a cluster's addresses without copying the Cluster. MemStore has it.
type hostingStore interface {
	AppendHosting(ctx context.Context, cluster string, v4, v6 []netip.Addr) ([]netip.Addr, []netip.Addr, error)
}
