package placement_test

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/placement"
)

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	clk := newClock()
	cp := newCP(t, placement.Config{Registerer: reg, Now: clk.Now, HeartbeatTimeout: time.Second})
	register(t, cp, vm("a", "", 1), vm("b", "", 1))
	_, err := cp.Place(ctx, placement.Request{Repl: "r1"})
	require.NoError(t, err)
	_, err = cp.Place(ctx, placement.Request{Repl: "r2"})
	require.NoError(t, err)
	_, err = cp.Place(ctx, placement.Request{Repl: "r3"})
	require.ErrorIs(t, err, placement.ErrNoCapacity)
	_, err = cp.Place(ctx, placement.Request{Repl: "r4", Pool: "random-pool-name"})
	require.ErrorIs(t, err, placement.ErrNoCapacity)
	require.NoError(t, cp.Release(ctx, "r1", ""))
	clk.Advance(2 * time.Second)
	dead, err := cp.Sweep(ctx)
	require.NoError(t, err)
	require.Len(t, dead, 2)

	got := gather(t, reg)
	assert.Equal(t, 3.0, got["switchyard_placement_place_duration_seconds|count"], "ok, no_capacity, other/no_capacity")
	assert.Equal(t, 1.0, got[`switchyard_placement_place_duration_seconds{pool="other",result="no_capacity"}`])
	assert.Equal(t, 1.0, got[`switchyard_placement_released_total{reason="dead"}`])
	assert.Equal(t, 1.0, got[`switchyard_placement_released_total{reason="release"}`])
	assert.Equal(t, 2.0, got[`switchyard_placement_vms_expired_total`])
	assert.Equal(t, 2.0, got[`switchyard_placement_vms{pool="default",state="dead"}`])
	assert.Equal(t, 0.0, got[`switchyard_placement_vms{pool="default",state="active"}`])
	assert.Equal(t, 1.0, got[`switchyard_placement_desired_vms{pool="default"}`])

	// A second Controlplane on the same registry is refused, not silently unmetered.
	_, err = placement.New(placement.Config{Registerer: reg, Logger: quiet})
	require.Error(t, err)
}

func TestRunSweepsUntilCanceled(t *testing.T) {
	clk := newClock()
	cp := newCP(t, placement.Config{Now: clk.Now, HeartbeatTimeout: time.Second, SweepInterval: time.Millisecond})
	register(t, cp, vm("a", "", 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	clk.Advance(2 * time.Second)
	deadline := time.After(10 * time.Second)
	for {
		v, err := cp.VM(context.Background(), "a")
		require.NoError(t, err)
		if v.State == placement.Dead {
			break
		}
		select {
		case <-deadline:
			t.Fatal("Run did not mark the silent vm dead")
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	require.True(t, errors.Is(<-done, context.Canceled))
}

func TestNewRejectsBadStrategies(t *testing.T) {
	bad := placement.BinPack()
	bad.Scores = append(bad.Scores, placement.WeightedScore{Plugin: placement.Sticky{}, Weight: -1})
	_, err := placement.New(placement.Config{Strategies: map[string]placement.Strategy{"x": bad}})
	require.ErrorIs(t, err, placement.ErrInvalid)
	_, err = placement.New(placement.Config{DefaultStrategy: placement.Strategy{Filters: []placement.FilterPlugin{nil}}})
	require.ErrorIs(t, err, placement.ErrInvalid)
	_, err = placement.New(placement.Config{HeartbeatTimeout: -time.Second})
	require.ErrorIs(t, err, placement.ErrInvalid)
}

// gather flattens the registry: "name{labels}" → value (histograms: sample count), plus
// "name|count" → number of series.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		out[mf.GetName()+"|count"] = float64(len(mf.GetMetric()))
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
