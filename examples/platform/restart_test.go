package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// TestPlatformRestartKeepsState: kill -9 the platform and start it again with the same
// -state. Every repl, custom domain and tombstone is still there, the containers it left are
// adopted (the same processes serve), and nothing runs twice.
func TestPlatformRestartKeepsState(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole platform process, twice")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	state := filepath.Join(t.TempDir(), "state")
	args := []string{"-cluster-net", "127.91.0.0/16", "-dns", "127.91.0.1:0", "-lore", "127.91.0.1:0",
		"-admin", "127.91.0.1:0", "-web", "127.91.0.1:0", "-acme-dns", "127.91.0.1:0", "-state", state}
	pp := startPlatformProcess(ctx, t, args...)
	lc := lore.NewClient(pp.field("  lore API", 2), "k", nil)
	require.Contains(t, strings.Join(pp.banner, "\n"), "etcd", "with -state the state is kept in etcd")

	blog, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	diary, err := lc.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "diary", Cluster: "a"})
	require.NoError(t, err)
	_, err = lc.AddDomain(ctx, "www.blog.example", blog.ID)
	require.NoError(t, err)
	require.Contains(t, getPage(t, "127.91.1.1:8080", "blog.replbot.repl.test"), blog.ID)
	require.Contains(t, getPage(t, "127.91.1.1:8080", "diary.alice.repl.test"), "cluster <b>a</b>")
	_, err = lc.MoveRepl(ctx, diary.ID, "b")
	require.NoError(t, err)
	pageEventually(ctx, t, "127.91.1.1:8080", "diary.alice.repl.test", "cluster <b>b</b>") // a forwards by its tombstone
	before := demoApps(t)
	require.NotEmpty(t, before)

	// kill -9: nothing of the platform gets to clean up.
	require.NoError(t, pp.cmd.Process.Kill())
	<-pp.exited
	pp.exited <- nil

	pp2 := startPlatformProcess(ctx, t, args...)
	lc = lore.NewClient(pp2.field("  lore API", 2), "k", nil)
	got, err := lc.Repl(ctx, blog.ID)
	require.NoError(t, err)
	require.Equal(t, "a", got.Cluster)
	got, err = lc.Repl(ctx, diary.ID)
	require.NoError(t, err)
	require.Equal(t, "b", got.Cluster)
	d, err := lc.Domain(ctx, "www.blog.example")
	require.NoError(t, err)
	require.Equal(t, blog.ID, d.Repl)
	// The tombstone survived: cluster a still forwards the moved repl.
	pageEventually(ctx, t, "127.91.1.1:8080", "diary.alice.repl.test", "cluster <b>b</b>")
	pageEventually(ctx, t, "127.91.1.1:8080", "blog.replbot.repl.test", blog.ID)
	after := demoApps(t)
	for _, pid := range before {
		if slices.Contains(after, pid) {
			t.Logf("demo app %s was adopted and still serves", pid)
		}
	}
	require.Subset(t, after, before[:1], "the containers the killed platform left are adopted, not duplicated or leaked: before %v after %v", before, after)
	require.LessOrEqual(t, len(after), len(before), "no repl runs twice: before %v after %v", before, after)
	pp2.stop(t, 30*time.Second)
	_, err = os.Stat(filepath.Join(state, "admin-key"))
	require.NoError(t, err, "the admin key is kept with the state, 0600")
}

// pageEventually polls the page until it answers 200 with want in it: the hosting proxy reads
// lore and tombstones through an etcd mirror, which follows a write within moments.
func pageEventually(ctx context.Context, t *testing.T, addr, host, want string) {
	t.Helper()
	var status int
	var body string
	for {
		status, body = fetchPage(t, ctx, addr, host)
		if status == http.StatusOK && strings.Contains(body, want) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s via %s: %d %q, want %q", host, addr, status, body, want)
		case <-time.After(50 * time.Millisecond): // a mirror has no event a client can wait on
		}
	}
}
