package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// TestPlatformProcessesUpgradeConmanInPlace upgrades a VM's conman process in place, twice,
// under a shell session opened through lore and Eval: the session's WebSocket stays open and
// the shell keeps its variable, its cwd and its background job; each old conman process is
// gone.
func TestPlatformProcessesUpgradeConmanInPlace(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a platform of processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pp := startPlatformProcess(ctx, t, "-processes", "-clusters", "a", "-vms", "1", "-no-https",
		"-cluster-net", "127.88.0.0/16", "-dns", "127.88.0.1:0", "-lore", "127.88.0.1:0", "-admin", "127.88.0.1:0")
	loreURL, adminURL := pp.field("  lore API", 2), pp.field("  admin API", 2)
	require.NotEmpty(t, loreURL)
	require.NotEmpty(t, adminURL)
	var vmPid string
	for _, line := range pp.banner {
		if m := regexp.MustCompile(`vm a-vm1 .*\(pid (\d+)\)`).FindStringSubmatch(line); m != nil {
			vmPid = m[1]
		}
	}
	require.NotEmpty(t, vmPid, "banner: %q", pp.banner)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("platform stderr:\n%s", pp.stderr.String())
		}
	})

	lc := lore.NewClient(loreURL, "k", nil)
	_, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "up", Cluster: "a"})
	require.NoError(t, err)
	// The repl's directory reaches Eval's mirror through etcd: retry the first session.
	var s *session
	for s == nil {
		if conn, err := dialRepl(ctx, lc, "replbot/up"); err == nil {
			conn.CloseNow()
			s = openSession(ctx, t, lc, "replbot/up")
		} else {
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				t.Fatalf("no session: %v; %s", err, pp.stderr.String())
			}
		}
	}
	require.Equal(t, "42-tmp", s.run(ctx, t, "cd /tmp; X=42; sleep 1000 & S=$!; echo MARK-$X-$(basename $PWD)"))

	prev := vmPid
	for i := range 2 {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, adminURL+"/v1/clusters/a/vms/a-vm1/upgrade", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer k")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var out struct {
			OldPid int `json:"old_pid"`
			Pid    int `json:"pid"`
		}
		require.Equal(t, http.StatusOK, resp.StatusCode, "upgrade %d; %s", i, pp.stderr.String())
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		resp.Body.Close()
		require.Equal(t, prev, itoa(out.OldPid), "upgrade %d replaced the running conman", i)
		require.NotEqual(t, out.OldPid, out.Pid)
		require.True(t, errors.Is(syscall.Kill(out.OldPid, 0), syscall.ESRCH), "the old conman process %d is gone", out.OldPid)
		prev = itoa(out.Pid)

		// The same WebSocket: the shell's variable, cwd and background job are there.
		require.Equal(t, "42-tmp", s.run(ctx, t, "echo MARK-$X-$(basename $PWD)"), "after upgrade %d", i)
		require.Equal(t, "alive", s.run(ctx, t, "kill -0 $S && echo MARK-$(echo alive)"), "after upgrade %d", i)
		select {
		case code := <-s.closed:
			t.Fatalf("the session closed (%d) after upgrade %d", code, i)
		default:
		}
	}
	// New sessions reach the upgraded conman.
	s2 := openSession(ctx, t, lc, "replbot/up")
	require.Equal(t, "fresh", s2.run(ctx, t, "echo MARK-fresh"))
}

// TestPlatformUpgradeConmanInPlace is the same within one process (the default mode): the
// admin API's upgrade replaces a VM's runtime and conman Server under a live session.
func TestPlatformUpgradeConmanInPlace(t *testing.T) {
	p := startPlatform(t, "127.89.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)
	_, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "up", Cluster: "a"})
	require.NoError(t, err)
	s := openSession(ctx, t, lc, "replbot/up")
	vm := s.run(ctx, t, "cd /tmp; X=42; sleep 1000 & S=$!; echo MARK-$SWITCHYARD_VM")
	for i := range 2 {
		require.NoError(t, p.Cluster("a").upgradeVM(ctx, vm), "upgrade %d", i)
		require.Equal(t, "42-tmp", s.run(ctx, t, "echo MARK-$X-$(basename $PWD)"), "after upgrade %d", i)
		require.Equal(t, "alive", s.run(ctx, t, "kill -0 $S && echo MARK-$(echo alive)"), "after upgrade %d", i)
	}
	require.ErrorIs(t, p.Cluster("a").upgradeVM(ctx, "a-vm99"), errNoSuchVM)
}
