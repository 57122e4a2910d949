package lore_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/lore"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	iss := newIssuer(t, newKey(t), "k1", nil)
	dir, err := lore.New(lore.Config{Zone: "repl.test", Issuer: iss, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	ctx := context.Background()
	dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://a", Healthy: true})
	r, _ := dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "s"})
	dir.CreateRepl(ctx, lore.Repl{Owner: "o", Slug: "s"})
	dir.CreateRepl(ctx, lore.Repl{Owner: "www", Slug: "s"})
	dir.MoveRepl(ctx, r.ID, "zz")
	dir.Connect(ctx, r.ID)
	for _, tt := range []struct {
		op, result string
		want       float64
	}{
		{"create_repl", "ok", 1}, {"create_repl", "exists", 1}, {"create_repl", "invalid", 1},
		{"move_repl", "not_found", 1}, {"put_cluster", "ok", 1},
	} {
		got := counterValue(t, reg, "lore_writes_total", map[string]string{"op": tt.op, "result": tt.result})
		if got != tt.want {
			t.Errorf("lore_writes_total{op=%q,result=%q} = %v, want %v", tt.op, tt.result, got, tt.want)
		}
	}
	if n := counterValue(t, reg, "lore_tokens_issued_total", nil); n != 1 {
		t.Fatalf("lore_tokens_issued_total = %v, want 1", n)
	}
	// Registering twice on one registry is an error, not a panic.
	if _, err := lore.New(lore.Config{Zone: "repl.test", Registerer: reg}); err == nil {
		t.Fatal("second registration succeeded")
	}
}

// counterValue reads one series of a counter through the registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
