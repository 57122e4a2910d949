package etcd_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/etcd/etcdtest"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
)

var (
	_ dnsauth.Directory        = (*etcd.Mirror)(nil)
	_ dnsauth.HostingDirectory = (*etcd.Mirror)(nil)
	_ hosting.Directory        = (*etcd.Mirror)(nil)
)

// cutProxy is a TCP relay between a client and etcd that the test can cut and restore, so
// one reader loses etcd while writers keep using it.
type cutProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	down    bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newCutProxy(t *testing.T, backend string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, backend: backend, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c], p.conns[b] = struct{}{}, struct{}{}
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(b, c); b.Close(); c.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, b); b.Close(); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

func waitFor(t *testing.T, m interface{ Changed() <-chan struct{} }, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		ch := m.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond): // conditions on Stale change without a new view
		case <-deadline:
			t.Fatalf("mirror never got to: %s", what)
		}
	}
}

func TestMirror(t *testing.T) {
	c := etcdtest.New(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := prefix("lore")
	writer, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: c.Client(t), Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writer.Close() })
	if _, err := writer.PutCluster(ctx, lore.Cluster{ID: "a", Healthy: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.CreateRepl(ctx, lore.Repl{ID: "r0", Owner: "o", Slug: "before", Cluster: "a"}); err != nil {
		t.Fatal(err)
	}

	// The reader reaches etcd through a relay the test can cut.
	relay := newCutProxy(t, c.Endpoints[0][len("http://"):])
	readerCli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + relay.ln.Addr().String()},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { readerCli.Close() })
	readerStore, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: readerCli, Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := etcd.NewMirror(ctx, etcd.MirrorConfig{Store: readerStore, Probe: 100 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); readerStore.Close() })

	// The initial snapshot, then every kind of change.
	if r, err := m.Repl(ctx, "r0"); err != nil || r.Slug != "before" {
		t.Fatalf("snapshot: %+v %v", r, err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err = writer.PutCluster(ctx, lore.Cluster{ID: "b", Healthy: true, Hosting4: []netip.Addr{netip.MustParseAddr("127.0.2.1")}})
	must(err)
	_, err = writer.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "o", Slug: "blog", Cluster: "a"})
	must(err)
	_, _, err = writer.MoveRepl(ctx, "r1", "b")
	must(err)
	_, err = writer.CreateDomain(ctx, lore.Domain{Name: "x.example", Repl: "r1", Challenge: "k"})
	must(err)
	_, err = writer.VerifyDomain(ctx, "x.example", "k")
	must(err)
	_, err = writer.DeleteRepl(ctx, "r0")
	must(err)
	waitFor(t, m, "every change applied", func() bool {
		r, err := m.ReplByDomain(ctx, "x.example")
		_, gone := m.Repl(ctx, "r0")
		return err == nil && r.Cluster == "b" && errors.Is(gone, lore.ErrNotFound)
	})
	if r, err := m.ReplByName(ctx, "o", "blog"); err != nil || r.Cluster != "b" {
		t.Fatalf("by name: %+v %v", r, err)
	}
	if cl, err := m.Cluster(ctx, "b"); err != nil || !cl.Healthy {
		t.Fatalf("cluster: %+v %v", cl, err)
	}
	if v4, v6, err := m.AppendHosting(ctx, "b", nil, nil); err != nil || len(v4) != 1 || v4[0] != netip.MustParseAddr("127.0.2.1") || len(v6) != 0 {
		t.Fatalf("AppendHosting: %v %v %v", v4, v6, err)
	}

	// The reader loses etcd: it keeps serving its last view and says it is stale.
	relay.cut()
	waitFor(t, m, "stale", m.Stale)
	if v := testutil.ToFloat64(mustGauge(t, reg, "switchyard_etcd_mirror_stale")); v != 1 {
		t.Fatalf("stale metric %v while etcd is lost", v)
	}
	if r, err := m.Repl(ctx, "r1"); err != nil || r.Cluster != "b" {
		t.Fatalf("last view not served while etcd is lost: %+v %v", r, err)
	}
	// Meanwhile the directory changes and etcd compacts the history the reader's watch needs.
	_, err = writer.CreateRepl(ctx, lore.Repl{ID: "r2", Owner: "o", Slug: "during", Cluster: "a"})
	must(err)
	_, _, err = writer.MoveRepl(ctx, "r1", "a")
	must(err)
	if _, err := c.Compact(ctx, c.Client(t)); err != nil {
		t.Fatal(err)
	}
	relay.restore()
	waitFor(t, m, "re-listed after compaction, current and not stale", func() bool {
		r1, err1 := m.Repl(ctx, "r1")
		_, err2 := m.Repl(ctx, "r2")
		return err1 == nil && r1.Cluster == "a" && err2 == nil && !m.Stale()
	})
	if n := testutil.ToFloat64(mustGauge(t, reg, "switchyard_etcd_mirror_relists_total")); n < 1 {
		t.Fatalf("relists = %v after a compacted watch", n)
	}
	// And it follows again.
	_, err = writer.CreateRepl(ctx, lore.Repl{ID: "r3", Owner: "o", Slug: "after", Cluster: "b"})
	must(err)
	waitFor(t, m, "following after re-list", func() bool { _, err := m.Repl(ctx, "r3"); return err == nil })
}

func mustGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := mf.GetMetric()[0]
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name})
			if v.Gauge != nil {
				g.Set(v.Gauge.GetValue())
			} else {
				g.Set(v.Counter.GetValue())
			}
			return g
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}
