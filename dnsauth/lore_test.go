package dnsauth_test

import (
	"context"
	"testing"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

// The real directory satisfies the handler's interface.
var _ dnsauth.Directory = (*lore.Directory)(nil)

// loreFixture is fixture() in a real lore Directory over its memdb store (without the repl whose
// cluster is missing, which lore refuses to create).
func loreFixture(t testing.TB) *lore.Directory {
	t.Helper()
	d, err := lore.New(lore.Config{Zone: "repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx := context.Background()
	src := fixture()
	for _, c := range src.clusters {
		c.EvalURL = "ws://127.0.0.1:8443/v1/connect"
		if _, err := d.PutCluster(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range src.repls {
		if r.Cluster == "vanished" {
			continue
		}
		if _, err := d.CreateRepl(ctx, r); err != nil {
			t.Fatalf("create %+v: %v", r, err)
		}
	}
	return d
}
