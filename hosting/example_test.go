package hosting_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// Proxy routes by Host: lore names the repl, placement picks its VM, and the request goes to
// that VM's conman with the repl's ID and the internal credential.
func ExampleProxy() {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// A stand-in for a VM's conman: it would start the repl and forward to its web port.
	conmanVM := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(conman.HeaderCredential) != "internal-secret" {
			http.Error(w, "bad credential", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "repl %s answers %s%s", r.Header.Get(conman.HeaderRepl), r.Host, r.URL.Path)
	}))
	defer conmanVM.Close()

	dir, _ := lore.New(lore.Config{Zone: "repl.test", Logger: quiet})
	_, _ = dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.0.1:1/v1/connect", Healthy: true})
	_, _ = dir.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "alice", Slug: "blog", Cluster: "a"})
	cp, _ := placement.New(placement.Config{Logger: quiet})
	_, _ = cp.Register(ctx, placement.VM{ID: "vm1", Addr: conmanVM.URL, Capacity: placement.Resources{Containers: 10}})

	proxy, err := hosting.New(hosting.Config{
		Zone: "repl.test", Cluster: "a", Directory: dir, Placer: cp, Credential: "internal-secret", Logger: quiet,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := httptest.NewServer(proxy)
	defer srv.Close()

	for _, host := range []string{"blog.alice.repl.test", "r1.id.repl.test", "nope.alice.repl.test"} {
		req, _ := http.NewRequest("GET", srv.URL+"/index.html", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			// Failures are JSON {"error", "request_id"}; the id is also in the log line.
			fmt.Println(resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get(hosting.HeaderRequestID) != "")
			continue
		}
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	_ = proxy.Shutdown(ctx)
	// Output:
	// 200 repl r1 answers blog.alice.repl.test/index.html
	// 200 repl r1 answers r1.id.repl.test/index.html
	// 404 application/json true
}
