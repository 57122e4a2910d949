package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/internal/chaos"
)

// TestPlatformSessionsSurviveChaos is a short run of the chaos harness (bench/chaos) against the
// platform: switchyard.v2 clients open sessions without pause while VMs roll, conman upgrades in
// place and Eval restarts. Every setup succeeds and no session is closed by the platform; the
// rolls show as in-band restarts. (Longer runs, and v1 beside v2: docs/benchmarks.md.)
func TestPlatformSessionsSurviveChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("a bounded chaos run")
	}
	p := startPlatformWith(t, "127.64.0.0/16", func(c *Config) { c.Clusters = []string{"a"} })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := chaos.Config{
		Lore: p.LoreURL(), Admin: p.AdminURL(), Key: "test-admin-key", Cluster: "a",
		Clients: 4, Commands: 5, Duration: 8 * time.Second, Hold: 200 * time.Millisecond,
		RollEvery: 1500 * time.Millisecond, EvalEvery: 3 * time.Second, UpgradeEvery: 2 * time.Second,
		Timeout: time.Minute,
	}
	r, err := chaos.Run(ctx, cfg)
	require.NoError(t, err)
	var out strings.Builder
	r.Print(&out, cfg)
	t.Log("\n" + out.String())
	require.Zero(t, r.SetupFails.Load(), "setups failed")
	require.Zero(t, r.Drops.Load(), "sessions dropped")
	require.Positive(t, r.Setups.Load())
	require.Positive(t, r.Restarted.Load(), "no session saw a VM roll under it")
	for _, kind := range []string{"roll", "upgrade", "eval-restart"} {
		ok, failed := r.Done(kind)
		require.Positive(t, ok, kind)
		require.Zero(t, failed, kind)
	}
}
