package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// TestPlatformHoldsUnderIdleFlood: one client opens 19,000 idle connections to Hosting, lore
// and Eval (what the test process's descriptor limit allows) and holds them. The platform
// refuses what is over its per-client limits, stays under its descriptor budget, and a normal
// client from another address gets its answers from all three within 1 s.
func TestPlatformHoldsUnderIdleFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("19,000 connections")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pp := startPlatformProcess(ctx, t, "-cluster-net", "127.93.0.0/16", "-clusters", "a",
		"-dns", "127.93.0.1:0", "-lore", "127.93.0.1:0", "-admin", "127.93.0.1:0", "-web", "127.93.0.1:0", "-acme-dns", "127.93.0.1:0")
	loreAddr := strings.TrimPrefix(pp.field("  lore API", 2), "http://")
	lc := lore.NewClient("http://"+loreAddr, "k", nil)
	_, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	require.NoError(t, err)
	const hosting, eval = "127.93.1.1:8080", "127.93.1.1:8443"
	require.Contains(t, getPage(t, hosting, "blog.replbot.repl.test"), "Hello")

	// The flood, from one address.
	attacker := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.93.0.200")}, Timeout: 5 * time.Second}
	targets := []struct {
		addr string
		n    int
	}{{hosting, 7000}, {loreAddr, 6000}, {eval, 6000}}
	var (
		mu      sync.Mutex
		held    []net.Conn
		failed  atomic.Int32
		started = time.Now()
	)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	for _, tg := range targets {
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < tg.n; i += 8 {
					c, err := attacker.DialContext(ctx, "tcp", tg.addr)
					if err != nil {
						failed.Add(1)
						continue
					}
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("flood: %d connections opened in %v (%d dials failed)", len(held), time.Since(started).Round(time.Millisecond), failed.Load())

	// A normal client, from another address, within 1 s each.
	normal := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.93.0.201")}}
	client := &http.Client{Transport: &http.Transport{DialContext: normal.DialContext}, Timeout: time.Second}
	defer client.CloseIdleConnections()
	within := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		began := time.Now()
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		require.NoError(t, f(cctx), what)
		t.Logf("%s answered in %v", what, time.Since(began).Round(time.Microsecond))
	}
	within("lore", func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+loreAddr+"/healthz", nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return errors.New(resp.Status)
		}
		return nil
	})
	within("hosting", func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+hosting+"/", nil)
		req.Host = "blog.replbot.repl.test"
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return errors.New(resp.Status)
		}
		return nil
	})
	within("eval", func(ctx context.Context) error {
		// No token: refused with 401 before any upgrade, which is Eval answering.
		_, resp, err := websocket.Dial(ctx, "ws://"+eval+"/v1/connect", &websocket.DialOptions{HTTPClient: client})
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil
		}
		return errors.Join(errors.New("want 401"), err)
	})
	for _, c := range held {
		c.Close()
	}
	held = nil
	pp.stop(t, 30*time.Second)
}
