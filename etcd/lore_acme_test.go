package etcd_test

import (
	"context"
	"errors"
	"testing"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/lore"
)

// ACME delegations kept in etcd: a Directory over LoreStore publishes, serves (ACMETarget) and
// removes them, and a second store over the same prefix sees them.
func TestLoreACMEDelegations(t *testing.T) {
	c := etcdtest.New(t, 1)
	ctx := context.Background()
	p := prefix("lore")
	newStore := func() *etcd.LoreStore {
		s, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: c.Client(t), Prefix: p})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s1, s2 := newStore(), newStore()
	dir, err := lore.New(lore.Config{Zone: "repl.test", Store: s1})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if _, err := dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a/", Healthy: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"}); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.PutACMEDelegation(ctx, "replbot", "replbot.repl.test", "x._acme.repl.test"); err != nil {
		t.Fatal(err)
	}
	if got, err := dir.ACMETarget(ctx, "replbot.repl.test"); err != nil || got != "x._acme.repl.test" {
		t.Fatalf("ACMETarget: %q %v", got, err)
	}
	if d, err := s2.ACMEDelegation(ctx, "replbot.repl.test"); err != nil || d.Owner != "replbot" {
		t.Fatalf("through another store: %+v %v", d, err)
	}
	if err := dir.DeleteACMEDelegation(ctx, "replbot", "replbot.repl.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.DeleteACMEDelegation(ctx, "replbot.repl.test"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if got, err := dir.ACMETarget(ctx, "replbot.repl.test"); err != nil || got != "" {
		t.Fatalf("after delete: %q %v", got, err)
	}
}
