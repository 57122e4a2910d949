package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchyard-dev/switchyard/internal/httpjson"
)

// adminHandler serves the platform's own operations, so the rollout story can be watched live:
//
//	POST /v1/clusters/{cluster}/roll            drain the oldest active VM and start a replacement
//	POST /v1/clusters/{cluster}/vms/{vm}/roll   the same for a named VM
//	POST /v1/clusters/{cluster}/eval/restart    start a new Eval on the same address; the old one drains
//	POST /v1/clusters/{cluster}/vms/{vm}/upgrade upgrade the VM's conman in place: shells and sessions stay
//	GET  /v1/clusters                           what runs where
//	GET  /metrics                               Prometheus metrics of every Eval, VM, hosting proxy,
//	                                            tombstone forwarder and controlplane (label cluster),
//	                                            lore, and the etcd mirrors
//
// Every request needs "Authorization: Bearer <admin key>".
func (p *Platform) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/clusters/{cluster}/roll", func(w http.ResponseWriter, r *http.Request) {
		p.adminRoll(w, r, "")
	})
	mux.HandleFunc("POST /v1/clusters/{cluster}/vms/{vm}/roll", func(w http.ResponseWriter, r *http.Request) {
		p.adminRoll(w, r, r.PathValue("vm"))
	})
	mux.HandleFunc("POST /v1/clusters/{cluster}/vms/{vm}/upgrade", func(w http.ResponseWriter, r *http.Request) {
		c := p.clusters[r.PathValue("cluster")]
		if c == nil {
			writeJSONError(w, http.StatusNotFound, "no such cluster")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		err := c.upgradeVM(ctx, r.PathValue("vm"))
		switch {
		case errors.Is(err, errNoSuchVM):
			writeJSONError(w, http.StatusNotFound, err.Error())
		case err != nil:
			writeJSONError(w, http.StatusInternalServerError, err.Error())
		default:
			writeJSON(w, http.StatusOK, map[string]string{"vm": r.PathValue("vm")})
		}
	})
	mux.HandleFunc("POST /v1/clusters/{cluster}/eval/restart", func(w http.ResponseWriter, r *http.Request) {
		c := p.clusters[r.PathValue("cluster")]
		if c == nil {
			writeJSONError(w, http.StatusNotFound, "no such cluster")
			return
		}
		ctx, cancel := operationContext(r)
		defer cancel()
		draining, err := c.restartEval(ctx)
		if err != nil {
			writeJSONError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"eval": c.evalURL(), "draining_sessions": draining})
	})
	// The metrics of every Eval generation and VM, labelled by cluster and generation or vm.
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/clusters", func(w http.ResponseWriter, r *http.Request) {
		out := []map[string]any{}
		for _, id := range p.order {
			c := p.clusters[id]
			var vms []map[string]string
			for _, v := range c.liveVMs() {
				vms = append(vms, map[string]string{"id": v.id, "addr": v.addr})
			}
			out = append(out, map[string]any{
				"id": id, "hosting": "http://" + c.hosting.Addr(), "eval": c.evalURL(),
				"controlplane": c.controlplaneURL(), "vms": vms, "sessions": c.activeSessions(),
			})
		}
		writeJSON(w, http.StatusOK, out)
	})
	return p.requireAdmin(mux)
}

// operationContext is the context of an operation the admin API starts: it runs to its end (or
// two minutes) even if the caller goes away, since a roll or a restart stopped half-way leaves a
// VM or an Eval generation half stopped.
func operationContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Minute)
}

func (p *Platform) adminRoll(w http.ResponseWriter, r *http.Request, vm string) {
	c := p.clusters[r.PathValue("cluster")]
	if c == nil {
		writeJSONError(w, http.StatusNotFound, "no such cluster")
		return
	}
	ctx, cancel := operationContext(r)
	defer cancel()
	old, replacement, err := c.rollVM(ctx, vm)
	switch {
	case errors.Is(err, errNoSuchVM):
		writeJSONError(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeJSONError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusOK, map[string]string{"drained": old, "replacement": replacement})
	}
}

func (p *Platform) requireAdmin(next http.Handler) http.Handler {
	return requireKey(p.cfg.AdminKey, next)
}

// requireKey lets through requests carrying "Authorization: Bearer <key>".
func requireKey(key string, next http.Handler) http.Handler {
	want := []byte("Bearer " + key)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			writeJSONError(w, http.StatusUnauthorized, "admin key required (Authorization: Bearer <key>)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) { httpjson.Write(w, status, v) }

func writeJSONError(w http.ResponseWriter, status int, msg string) { httpjson.Error(w, status, msg) }

// runAdmin is the roll and restart-eval subcommands: clients of adminHandler.
func runAdmin(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	admin := fs.String("admin", "http://127.0.0.1:8401", "platform admin API base URL")
	adminKey := adminKeyFlag(fs)
	cluster := fs.String("cluster", "a", "cluster")
	vm := fs.String("vm", "", "VM to roll (default the oldest active VM) or upgrade (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	k, err := adminKey()
	if err != nil {
		return err
	}
	key := &k
	path := "/v1/clusters/" + *cluster + "/eval/restart"
	switch {
	case cmd == "upgrade" && *vm == "":
		return errors.New("upgrade needs -vm (e.g. -vm a-vm1)")
	case cmd == "upgrade":
		path = "/v1/clusters/" + *cluster + "/vms/" + *vm + "/upgrade"
	}
	if cmd == "roll" {
		path = "/v1/clusters/" + *cluster + "/roll"
		if *vm != "" {
			path = "/v1/clusters/" + *cluster + "/vms/" + *vm + "/roll"
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(*admin, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := readAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	fmt.Println(body)
	return nil
}
