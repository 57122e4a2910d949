package main

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// TestPlatformHostingFastPathLimits: the platform serves hosting through hosting.Server, and
// the per-client request rate (200/s, burst 400) holds on its fast path too: a client that
// sends plain GETs as fast as it can gets pages, then 429 with Retry-After.
func TestPlatformHostingFastPathLimits(t *testing.T) {
	p := startPlatformWith(t, "127.63.0.0/16", func(c *Config) { c.Clusters = []string{"a"}; c.ACME.Disable = true })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)
	_, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	require.NotNil(t, p.Cluster("a").hosting.fast, "hosting is served by hosting.Server")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	ok, limited := 0, 0
	for i := 0; i < 1000 && limited == 0; i++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.63.1.1:8080/", nil)
		require.NoError(t, err)
		req.Host = "blog.replbot.repl.test"
		resp, err := client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
		default:
			t.Fatalf("request %d: %s", i, resp.Status)
		}
	}
	require.Equal(t, 1, limited, "the rate limit never answered")
	require.GreaterOrEqual(t, ok, 400, "the burst")
}
