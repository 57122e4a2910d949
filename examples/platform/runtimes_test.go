package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/internal/runscbin"
	"github.com/switchyard-dev/switchyard/lore"
)

// TestPlatformOnOCIRuntimes runs the platform's repls on runc and on runsc (gVisor), as
// -runtime runc|runsc does: the page, a shell through Eval, a VM roll and a move.
func TestPlatformOnOCIRuntimes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs whole platforms")
	}
	for i, rt := range []string{RuntimeRunc, RuntimeRunsc} {
		t.Run(rt, func(t *testing.T) {
			var err error
			if rt == RuntimeRunsc {
				_, err = runscbin.Path()
			} else {
				_, err = exec.LookPath(rt)
			}
			if err == nil {
				_, err = exec.LookPath("busybox")
			}
			if err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("%s: %v (.ci/run installs it)", rt, err)
				}
				t.Skipf("%s: %v (.ci/run installs it)", rt, err)
			}
			net16 := []string{"127.95.0.0/16", "127.96.0.0/16"}[i]
			p := startPlatformWith(t, net16, func(c *Config) { c.Runtime = rt })
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)
			repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
			require.NoError(t, err)
			base := strings.TrimSuffix(net16, "0.0/16")
			host := "blog.replbot.repl.test"
			require.Contains(t, getPage(t, base+"1.1:8080", host), repl.ID)

			s := openSession(ctx, t, lc, "replbot/blog")
			vm1 := s.run(ctx, t, "echo MARK-$SWITCHYARD_VM")
			require.True(t, strings.HasPrefix(vm1, "a-vm"), vm1)
			require.Equal(t, "hi", s.run(ctx, t, "printf 'MARK-%s\\n' hi"))

			_, _, err = p.Cluster("a").rollVM(ctx, vm1)
			require.NoError(t, err)
			require.Equal(t, websocket.StatusServiceRestart, s.waitClose(ctx, t))
			s = openSession(ctx, t, lc, "replbot/blog")
			require.NotEqual(t, vm1, s.run(ctx, t, "echo MARK-$SWITCHYARD_VM"))
			s.close()

			_, err = lc.MoveRepl(ctx, repl.ID, "b")
			require.NoError(t, err)
			for {
				// Until a's tombstone follower has caught up, a may answer 404; then it
				// forwards to b by the tombstone.
				status, body := fetchPage(t, ctx, base+"1.1:8080", host)
				if status == http.StatusOK && strings.Contains(body, "cluster <b>b</b>") {
					break
				}
				select {
				case <-time.After(50 * time.Millisecond):
				case <-ctx.Done():
					t.Fatalf("cluster a never forwarded to b (last %d %s)", status, body)
				}
			}
		})
	}
}
