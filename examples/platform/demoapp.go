package main

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/lore"
)

// demoAppCommand is the hidden subcommand each repl runs as its web app: the platform gives
// conman this binary as the repl's command, so the demo needs nothing installed.
const demoAppCommand = "demo-app"

// Environment the platform sets for a repl's demo app (conman adds PORT).
const (
	envRepl    = "SWITCHYARD_REPL"
	envName    = "SWITCHYARD_REPL_NAME"
	envCluster = "SWITCHYARD_CLUSTER"
	envVM      = "SWITCHYARD_VM"
)

// runDemoApp serves a page saying which repl, cluster and VM served it, on $HOST:$PORT (conman
// sets both), until SIGTERM.
func runDemoApp() error {
	port := os.Getenv("PORT")
	if port == "" {
		return errors.New("demo-app: PORT is not set")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ln, err := net.Listen("tcp", net.JoinHostPort(os.Getenv("HOST"), port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: demoHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func demoHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		host, _ := os.Hostname()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Served-By", fmt.Sprintf("repl=%s cluster=%s vm=%s", os.Getenv(envRepl), os.Getenv(envCluster), os.Getenv(envVM)))
		fmt.Fprintf(w, `<!doctype html>
<title>%[1]s</title>
<h1>Hello from %[1]s</h1>
<p>repl <b>%[2]s</b> · cluster <b>%[3]s</b> · VM <b>%[4]s</b> · hostname <b>%[5]s</b> · pid %[6]d</p>
<p>You asked for <code>%[7]s</code> as <code>%[8]s</code> over <code>%[9]s</code>.</p>
`, html.EscapeString(os.Getenv(envName)), html.EscapeString(os.Getenv(envRepl)), html.EscapeString(os.Getenv(envCluster)),
			html.EscapeString(os.Getenv(envVM)), html.EscapeString(host), os.Getpid(), html.EscapeString(r.URL.RequestURI()), html.EscapeString(r.Host),
			html.EscapeString(r.Header.Get("X-Forwarded-Proto")))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

// demoSpec is the conman.Spec function of the platform's VMs: every repl runs this binary's
// demo app, told its ID, its name (looked up through repl, when it answers), its cluster and
// its VM, with its files under stateDir/repls/<id>.
func demoSpec(exe, stateDir, cluster, vm string, repl func(context.Context, string) (lore.Repl, error)) func(context.Context, string) (conman.Spec, error) {
	return func(ctx context.Context, id string) (conman.Spec, error) {
		name := id
		if r, err := repl(ctx, id); err == nil {
			name = r.Slug + "." + r.Owner
		}
		// The sandbox shows the repl nothing of the VM but its system directories: the demo app
		// (this binary) is bound in read-only, as a platform binds its language runtimes.
		return conman.Spec{
			Hostname: id,
			Command:  []string{demoAppPath, demoAppCommand},
			Mounts:   []conman.Mount{{Source: exe, Target: demoAppPath, ReadOnly: true}},
			Env: []string{
				envRepl + "=" + id, envName + "=" + name,
				envCluster + "=" + cluster, envVM + "=" + vm,
			},
			Dir:    filepath.Join(stateDir, "repls", id),
			Shell:  []string{"/bin/sh"},
			Limits: demoLimits,
		}, nil
	}
}

// demoAppPath is where the demo app is inside every repl's sandbox.
const demoAppPath = "/opt/switchyard/platform"

// demoLimits are every demo repl's limits: memory, processes and CPU are always capped.
var demoLimits = conman.Limits{MemoryBytes: 512 << 20, Pids: 512, CPUMilli: 1000}
