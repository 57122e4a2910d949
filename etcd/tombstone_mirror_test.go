package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/tombstone"
	"github.com/switchyard-dev/switchyard/tombstone/tombstonetest"
)

// The mirror is a whole tombstone.Store: writes through it are seen by its own reads at once.
func TestTombstoneMirrorConformance(t *testing.T) {
	c := etcdtest.New(t, 1)
	cli := c.Client(t)
	tombstonetest.Run(t, func(t *testing.T, now func() time.Time) tombstone.Store {
		s, err := etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: cli, Prefix: prefix("tombstone"), Now: now})
		if err != nil {
			t.Fatal(err)
		}
		m, err := etcd.NewTombstoneMirror(context.Background(), etcd.TombstoneMirrorConfig{Store: s, Probe: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	})
}

func stoneFor(repl, owner, slug, cluster string) tombstone.Tombstone {
	now := time.Now()
	return tombstone.Tombstone{Repl: repl, Owner: owner, Slug: slug, Cluster: cluster, Created: now, Expires: now.Add(time.Hour)}
}

// TestTombstoneMirror: one proxy's mirror follows what another proxy of the cluster writes,
// skips what is not a tombstone, keeps serving while it cannot reach etcd, and re-lists after
// etcd compacted the history its watch needed.
func TestTombstoneMirror(t *testing.T) {
	c := etcdtest.New(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := prefix("tombstone")
	wcli := c.Client(t)
	writer, err := etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: wcli, Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(writer.Put(ctx, stoneFor("r0", "o", "before", "b")))

	relay := newCutProxy(t, c.Endpoints[0][len("http://"):])
	readerCli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + relay.ln.Addr().String()},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	must(err)
	t.Cleanup(func() { readerCli.Close() })
	reader, err := etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: readerCli, Prefix: p})
	must(err)
	reg := prometheus.NewRegistry()
	m, err := etcd.NewTombstoneMirror(ctx, etcd.TombstoneMirrorConfig{Store: reader, Probe: 100 * time.Millisecond, Registerer: reg})
	must(err)
	t.Cleanup(func() { m.Close() })

	found := func(repl, cluster string) bool {
		got, err := m.Get(ctx, repl)
		return err == nil && got.Cluster == cluster
	}
	gone := func(repl string) bool {
		_, err := m.Get(ctx, repl)
		return errors.Is(err, tombstone.ErrNotFound)
	}
	// The snapshot.
	if got, err := m.GetByName(ctx, "o", "before"); err != nil || got.Repl != "r0" {
		t.Fatalf("snapshot: %+v %v", got, err)
	}

	// Another proxy's writes: a new tombstone, one renamed, one deleted.
	must(writer.Put(ctx, stoneFor("r1", "o", "blog", "c")))
	must(writer.Put(ctx, stoneFor("r0", "o", "renamed", "c")))
	waitFor(t, m, "the other proxy's writes", func() bool { return found("r1", "c") && found("r0", "c") })
	if _, err := m.GetByName(ctx, "o", "before"); !errors.Is(err, tombstone.ErrNotFound) {
		t.Fatalf("old name still answers after a rename: %v", err)
	}
	must(writer.Delete(ctx, "r1"))
	waitFor(t, m, "a deletion", func() bool { return gone("r1") })

	// Values that are not tombstones (written by anyone with access to the prefix) are skipped;
	// the rest is served.
	_, err = wcli.Put(ctx, p+"t/bad", "{not json")
	must(err)
	bad := stoneFor("r9", "o", "else", "c") // the key names r8, the value r9
	_, err = wcli.Put(ctx, p+"t/r8", fmt.Sprintf(`{"repl":%q,"cluster":"c","created":%q,"expires":%q}`,
		bad.Repl, bad.Created.Format(time.RFC3339Nano), bad.Expires.Format(time.RFC3339Nano)))
	must(err)
	_, err = wcli.Put(ctx, p+"t/r7", `{"repl":"r7","cluster":"c"}`) // no times: invalid
	must(err)
	must(writer.Put(ctx, stoneFor("r2", "", "", "c")))
	waitFor(t, m, "a valid tombstone after malformed ones", func() bool { return found("r2", "c") })
	for _, r := range []string{"bad", "r7", "r8", "r9"} {
		if !gone(r) {
			t.Fatalf("a malformed value under t/ became tombstone %q", r)
		}
	}
	// A write through the mirror is read back at once.
	must(m.Put(ctx, stoneFor("r3", "o", "mine", "d")))
	if !found("r3", "d") {
		t.Fatal("the mirror's own write was not visible when Put returned")
	}

	// The reader loses etcd: it keeps serving its last view and says it is stale.
	relay.cut()
	waitFor(t, m, "stale", m.Stale)
	if v := testutil.ToFloat64(mustGauge(t, reg, "switchyard_etcd_tombstone_mirror_stale")); v != 1 {
		t.Fatalf("stale metric %v while etcd is lost", v)
	}
	if !found("r0", "c") || !found("r2", "c") {
		t.Fatal("last view not served while etcd is lost")
	}
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := m.Put(wctx, stoneFor("r4", "", "", "c")); err == nil {
		t.Fatal("a write through a mirror that cannot reach etcd succeeded")
	}
	wcancel()
	// Meanwhile the other proxy moves things on and etcd compacts the history the watch needs.
	must(writer.Put(ctx, stoneFor("r5", "o", "during", "c")))
	must(writer.Delete(ctx, "r0"))
	if _, err := c.Compact(ctx, wcli); err != nil {
		t.Fatal(err)
	}
	relay.restore()
	waitFor(t, m, "re-listed after compaction, current and not stale", func() bool {
		return found("r5", "c") && gone("r0") && !m.Stale()
	})
	if n := testutil.ToFloat64(mustGauge(t, reg, "switchyard_etcd_tombstone_mirror_relists_total")); n < 1 {
		t.Fatalf("relists = %v after a compacted watch", n)
	}
	// And it follows again.
	must(writer.Put(ctx, stoneFor("r6", "", "", "c")))
	waitFor(t, m, "following after re-list", func() bool { return found("r6", "c") })
	if m.Revision() == 0 {
		t.Fatal("no revision")
	}

	// Closed: reads answer from the last view; writes reach etcd without waiting for the view.
	m.Close()
	must(m.Put(ctx, stoneFor("r10", "", "", "c")))
	if got, err := writer.Get(ctx, "r10"); err != nil || got.Cluster != "c" {
		t.Fatalf("write through a closed mirror: %+v %v", got, err)
	}
	if !found("r6", "c") {
		t.Fatal("a closed mirror forgot its view")
	}
}

type benchStore struct {
	name  string
	store tombstone.Store
}

// benchStores returns a cluster's 1,000 tombstones (repls r<i> named s<i>.o, moved to cluster
// b) in etcd, as a bare TombstoneStore and through a TombstoneMirror.
func benchStores(b *testing.B) []benchStore {
	c := etcdtest.New(b, 1)
	ctx := context.Background()
	s, err := etcd.NewTombstoneStore(etcd.TombstoneStoreConfig{Client: c.Client(b), Prefix: prefix("tombstone")})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		if err := s.Put(ctx, stoneFor(fmt.Sprintf("r%d", i), "o", fmt.Sprintf("s%d", i), "b")); err != nil {
			b.Fatal(err)
		}
	}
	m, err := etcd.NewTombstoneMirror(ctx, etcd.TombstoneMirrorConfig{Store: s})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return []benchStore{{"store", s}, {"mirror", m}}
}

// BenchmarkTombstoneLookup is the lookup the tombstone forwarder makes for every hosting
// request: a bare TombstoneStore asks etcd, a TombstoneMirror its memory.
func BenchmarkTombstoneLookup(b *testing.B) {
	ctx := context.Background()
	for _, st := range benchStores(b) {
		b.Run(st.name+"/hit", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := st.store.GetByName(ctx, "o", "s500"); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(st.name+"/miss", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := st.store.Get(ctx, "not-moved"); !errors.Is(err, tombstone.ErrNotFound) {
					b.Fatal(err)
				}
			}
		})
	}
}

// clusterOf is a fixed cluster registry for the forwarder.
type clusterOf map[string]lore.Cluster

func (c clusterOf) Cluster(_ context.Context, id string) (lore.Cluster, error) {
	if cl, ok := c[id]; ok {
		return cl, nil
	}
	return lore.Cluster{}, lore.ErrNotFound
}

// BenchmarkForwarderDivert is what the tombstone forwarder adds to each request on a hosting
// Server's fast path (Forwarder.Divert, and the Done it returns), with the cluster's 1,000
// tombstones in etcd read directly or through a mirror: a request for a repl that did not move
// (passed), and one for a moved repl (forwarded: lookup by name and a signed hop header).
func BenchmarkForwarderDivert(b *testing.B) {
	clusters := clusterOf{"b": {ID: "b", Healthy: true, HostingURL: "http://127.0.0.1:1"}}
	secret := make([]byte, 32)
	peer := netip.MustParseAddr("127.0.0.1")
	for _, st := range benchStores(b) {
		f, err := tombstone.New(tombstone.Config{Cluster: "a", Zone: "repl.test", Store: st.store, Clusters: clusters, Secret: secret})
		if err != nil {
			b.Fatal(err)
		}
		for _, req := range []struct{ name, host string }{{"passed", "blog.alice.repl.test"}, {"forwarded", "s500.o.repl.test"}} {
			b.Run(st.name+"/"+req.name, func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					d := f.Divert(peer, req.host, "GET", "/")
					if (d.URL != nil) != (req.name == "forwarded") || d.Handoff {
						b.Fatalf("Divert(%s) = %+v", req.host, d)
					}
					if d.Done != nil {
						d.Done(nil, true)
					}
				}
			})
		}
	}
}
