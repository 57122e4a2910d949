package lore_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
)

// TestNotFoundErrors: the hot-path lookups report a miss as ErrNotFound with a message naming
// what was missing.
func TestNotFoundErrors(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		get  func() error
		msg  string
	}{
		{"repl by id", func() error { _, err := f.dir.Repl(ctx, "nope"); return err }, `lore: not found: repl "nope"`},
		{"repl by name", func() error { _, err := f.dir.ReplByName(ctx, "Alice", "blog"); return err }, `lore: not found: repl alice/blog`},
		{"domain", func() error { _, err := f.dir.ReplByDomain(ctx, "nope.example"); return err }, `lore: not found: no verified domain "nope.example"`},
		{"cluster", func() error { _, err := f.dir.Cluster(ctx, "zz"); return err }, `lore: not found: cluster "zz"`},
		{"hosting", func() error { _, _, err := f.dir.AppendHosting(ctx, "zz", nil, nil); return err }, `lore: not found: cluster "zz"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.get()
			if !errors.Is(err, lore.ErrNotFound) || err.Error() != tc.msg {
				t.Fatalf("err = %v, want %q matching ErrNotFound", err, tc.msg)
			}
		})
	}
}

// TestAppendHosting: the addresses of a cluster, appended to the caller's slices, match
// Cluster's, and the store's copy cannot be changed through them.
func TestAppendHosting(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, id := range []string{"a", "B"} {
		c, err := f.dir.Cluster(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		pre := netip.MustParseAddr("192.0.2.1")
		v4, v6, err := f.dir.AppendHosting(ctx, id, []netip.Addr{pre}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(v4, append([]netip.Addr{pre}, c.Hosting4...)) || !slices.Equal(v6, c.Hosting6) {
			t.Fatalf("cluster %s: AppendHosting = %v %v, Cluster has %v %v", id, v4, v6, c.Hosting4, c.Hosting6)
		}
		v4[1] = pre
		if again, _ := f.dir.Cluster(ctx, id); !slices.Equal(again.Hosting4, c.Hosting4) {
			t.Fatalf("cluster %s changed through AppendHosting's slice: %v", id, again.Hosting4)
		}
	}
	if _, _, err := f.dir.AppendHosting(ctx, "not a label", nil, nil); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("bad cluster id: %v", err)
	}
	buf4, buf6 := make([]netip.Addr, 0, 4), make([]netip.Addr, 0, 4)
	if n := testing.AllocsPerRun(100, func() { _, _, _ = f.dir.AppendHosting(ctx, "b", buf4, buf6) }); n != 0 {
		t.Fatalf("AppendHosting allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = f.dir.ReplByName(ctx, "alice", "nope") }); n > 1 {
		t.Fatalf("a ReplByName miss allocates %v times, want at most 1", n)
	}
}
