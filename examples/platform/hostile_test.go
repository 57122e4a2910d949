package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/conmantest"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// TestPlatformHostileRepl: a repl owner's program, run from the repl's shell through lore and
// Eval as a person would, attacks the VM, another owner's repl and every internal service of
// the platform, and gets nowhere.
func TestPlatformHostileRepl(t *testing.T) {
	p := startPlatform(t, "127.92.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)
	bin, err := conmantest.HostileBinary()
	require.NoError(t, err)

	// The victim keeps a secret in its files; the attacker's files hold its program.
	victim, err := lc.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "diary", Cluster: "a"})
	require.NoError(t, err)
	attacker, err := lc.CreateRepl(ctx, lore.Repl{Owner: "mallory", Slug: "tools", Cluster: "a"})
	require.NoError(t, err)
	vs := openSession(ctx, t, lc, "alice/diary")
	require.Equal(t, "ok", vs.run(ctx, t, "echo alice-private-secret > $HOME/secret.txt && printf 'MARK-%s\\n' ok"))
	victimDir := filepath.Join(p.cfg.StateDir, "repls", victim.ID)
	attackerDir := filepath.Join(p.cfg.StateDir, "repls", attacker.ID)
	require.NoError(t, os.MkdirAll(attackerDir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(attackerDir, "hostile"), bin, 0o755))

	// The platform's secrets on the host: the admin key in a file, a process with a marker.
	hostDir := t.TempDir()
	require.NoError(t, os.Chmod(hostDir, 0o755))
	keyFile := filepath.Join(hostDir, "admin-key")
	require.NoError(t, os.WriteFile(keyFile, []byte("test-admin-key"), 0o644))
	marker := "switchyard-host-marker-" + victim.ID
	sleepPath, err := exec.LookPath("sleep")
	require.NoError(t, err)
	mp := &exec.Cmd{Path: sleepPath, Args: []string{marker, "120"}}
	require.NoError(t, mp.Start())
	defer func() { _ = mp.Process.Kill(); _ = mp.Wait() }()

	// Every internal service the platform runs.
	internal := []string{strings.TrimPrefix(p.LoreURL(), "http://"), strings.TrimPrefix(p.AdminURL(), "http://"), p.DNSAddr()}
	for _, id := range []string{"a", "b"} {
		c := p.Cluster(id)
		internal = append(internal, strings.TrimPrefix(c.controlplaneURL(), "http://"),
			c.hostPort(1, p.cfg.HostingPort), c.hostPort(1, p.cfg.EvalPort))
		c.mu.Lock()
		for _, v := range c.vms {
			internal = append(internal, strings.TrimPrefix(v.addr, "http://"))
		}
		c.mu.Unlock()
	}

	s := openSession(ctx, t, lc, "mallory/tools")
	require.NoError(t, s.conn.Write(ctx, websocket.MessageBinary, []byte(strings.Join([]string{
		"./hostile", "-secret", "test-admin-key", "-secret-file", keyFile, "-write-dir", hostDir,
		"-neighbour", victimDir, "-neighbour-secret", "alice-private-secret",
		"-tcp", strings.Join(internal, ","), "-marker-reversed", conmantest.Reverse(marker),
		"> $HOME/report.json 2>&1; echo MARK-fin\"\"ished", // quoted: the echo of the typed line must not match
	}, " ")+"\n")))
	var out strings.Builder
	for !strings.Contains(out.String(), "MARK-finished") {
		select {
		case chunk, ok := <-s.out:
			require.True(t, ok, "session ended: %q", out.String())
			out.WriteString(chunk)
		case <-ctx.Done():
			t.Fatalf("the hostile program did not finish: %q", out.String())
		}
	}
	report, err := os.ReadFile(filepath.Join(attackerDir, "report.json"))
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(report)), "\n") {
		var r struct {
			Attack  string `json:"attack"`
			Blocked bool   `json:"blocked"`
			Detail  string `json:"detail"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &r), "line %q", line)
		seen[r.Attack] = true
		if !r.Blocked {
			t.Errorf("NOT BLOCKED %s: %s", r.Attack, r.Detail)
		} else {
			t.Logf("blocked %-20s %s", r.Attack, r.Detail)
		}
	}
	for _, a := range append(conmantest.HostileAttacks, "done") {
		require.True(t, seen[a], "the hostile program never reported %q", a)
	}
	ents, err := os.ReadDir(hostDir)
	require.NoError(t, err)
	require.Len(t, ents, 1, "the repl wrote into a host directory")
	// The victim's shell is unharmed.
	require.Equal(t, "still", vs.run(ctx, t, "grep -q alice-private-secret $HOME/secret.txt && printf 'MARK-%s\\n' still"))
}

// TestPlatformCredentialsPerVM: what one VM knows opens nothing of another. Its conman
// credential is refused by every other conman, and its placement credential only acts on
// itself.
func TestPlatformCredentialsPerVM(t *testing.T) {
	p := startPlatform(t, "127.94.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := p.Cluster("a")
	c.mu.Lock()
	vm1, vm2 := c.vms[0], c.vms[1]
	c.mu.Unlock()
	// vm1's own credential works on vm1, and is refused by vm2.
	require.ErrorIs(t, conman.NewClient(vm1.addr, c.conmanCredential(vm1.id), nil).Stop(ctx, "nosuchrepl"), conman.ErrNotFound)
	err := conman.NewClient(vm2.addr, c.conmanCredential(vm1.id), nil).Stop(ctx, "nosuchrepl")
	require.ErrorContains(t, err, "401")
	// vm1's placement credential cannot drain vm2.
	pc := placement.NewVMClient(c.controlplaneURL(), vm1.id, placement.VMCredential(c.vmSecret, vm1.id), nil)
	var ae *placement.APIError
	require.ErrorAs(t, pc.SetState(ctx, vm2.id, placement.Draining), &ae)
	require.Equal(t, 403, ae.Status)
}
