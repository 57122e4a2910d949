package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/sessions"
)

// The operator console: what runs where, live sessions, session outcomes by failure stage, and
// the rollout actions of admin.go. The page fetches /console/state (server-rendered tables)
// every second, so an action's effect shows as it happens: a rolled VM draining and its
// sessions moving, a new Eval generation taking new sessions, DNS answering a moved repl's
// new cluster.

// consoleStages are the session outcome stages in display order.
var consoleStages = []string{
	sessions.StageOK, sessions.StageClient, sessions.StageToken, sessions.StagePlacement,
	sessions.StageDial, sessions.StageBackend, sessions.StageLimit,
}

// outcomeWindow is the console's "last minutes" of session outcomes.
const outcomeWindow = 5 * time.Minute

// consoleMaxRepls bounds the repls the console lists (and looks up in DNS) per refresh.
const consoleMaxRepls = 100

type consoleData struct {
	Now       time.Time
	Clusters  []consoleCluster
	Repls     []consoleRepl
	MoreRepls bool
	Stages    []string
	Outcomes  []consoleOutcomes
	Window    string // how far back the window's counts go
	IDs       []string
}

type consoleCluster struct {
	ID, Region, Eval, Hosting string
	Healthy                   bool
	Generations               []consoleGeneration
	VMs                       []consoleVM
	Err                       string
}

type consoleGeneration struct {
	N        int
	Active   int
	Draining bool
}

type consoleVM struct {
	ID, Addr, State      string
	Containers, Capacity int
	Sessions             int
	Heartbeat            time.Time
}

type consoleRepl struct {
	ID, Owner, Slug, Cluster, VM, DNS, OwnerKey string
}

type consoleOutcomes struct {
	Cluster string
	Counts  []outcomeCount // by consoleStages
}

type outcomeCount struct{ Window, Total int }

func (w *webServer) requireAdmin(rw http.ResponseWriter, r *http.Request) (webSession, bool) {
	s, ok := w.session(r)
	if !ok || !s.Admin {
		if r.Method == http.MethodGet && r.URL.Path == "/console" {
			http.Redirect(rw, r, "/console/signin", http.StatusSeeOther)
		} else {
			writeJSONError(rw, http.StatusUnauthorized, "admin sign-in required")
		}
		return s, false
	}
	return s, true
}

func (w *webServer) console(rw http.ResponseWriter, r *http.Request) {
	s, ok := w.requireAdmin(rw, r)
	if !ok {
		return
	}
	w.render(rw, http.StatusOK, "console.html", page{Title: "Console", Session: s, Data: w.consoleData(r.Context())})
}

func (w *webServer) consoleState(rw http.ResponseWriter, r *http.Request) {
	s, ok := w.requireAdmin(rw, r)
	if !ok {
		return
	}
	w.render(rw, http.StatusOK, "state", page{Session: s, Data: w.consoleData(r.Context())})
}

func (w *webServer) consoleSigninForm(rw http.ResponseWriter, r *http.Request) {
	w.render(rw, http.StatusOK, "console_signin.html", page{Title: "Console sign-in"})
}

func (w *webServer) consoleSignin(rw http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(r.PostFormValue("key"))), []byte(w.adminKey)) != 1 {
		w.render(rw, http.StatusUnauthorized, "console_signin.html", page{Title: "Console sign-in", Error: "Wrong admin key."})
		return
	}
	w.setSession(rw, r, webSession{Admin: true})
	http.Redirect(rw, r, "/console", http.StatusSeeOther)
}

// consoleAction runs one of the platform's admin operations and answers {"message"} or
// {"error"} in JSON.
func (w *webServer) consoleAction(rw http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	s, ok := w.requireAdmin(rw, r)
	if !ok {
		return
	}
	if !w.checkCSRF(r, s) {
		writeJSONError(rw, http.StatusForbidden, "missing or bad CSRF token")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	c := w.p.clusters[r.PostFormValue("cluster")]
	switch r.PathValue("action") {
	case "roll":
		if c == nil {
			writeJSONError(rw, http.StatusNotFound, "no such cluster")
			return
		}
		old, replacement, err := c.rollVM(ctx, r.PostFormValue("vm"))
		switch {
		case errors.Is(err, errNoSuchVM):
			writeJSONError(rw, http.StatusNotFound, err.Error())
		case err != nil:
			writeJSONError(rw, http.StatusInternalServerError, err.Error())
		default:
			writeJSON(rw, http.StatusOK, map[string]string{"message": "rolled " + old + ": drained, replaced by " + replacement})
		}
	case "restart-eval":
		if c == nil {
			writeJSONError(rw, http.StatusNotFound, "no such cluster")
			return
		}
		n, err := c.restartEval(ctx)
		if err != nil {
			writeJSONError(rw, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(rw, http.StatusOK, map[string]string{"message": "cluster " + c.id + ": a new Eval generation serves; the old one drains " + itoa(n) + " sessions"})
	case "move":
		if c == nil {
			writeJSONError(rw, http.StatusNotFound, "no such cluster")
			return
		}
		repl, err := w.lore.MoveRepl(ctx, r.PostFormValue("repl"), c.id)
		switch {
		case errors.Is(err, lore.ErrNotFound):
			writeJSONError(rw, http.StatusNotFound, err.Error())
		case err != nil:
			writeJSONError(rw, http.StatusBadGateway, "lore: "+err.Error())
		default:
			writeJSON(rw, http.StatusOK, map[string]string{"message": repl.Owner + "/" + repl.Slug + " now lives in cluster " + repl.Cluster})
		}
	default:
		writeJSONError(rw, http.StatusNotFound, "no such action")
	}
}

// consoleData gathers the console's tables. Parts that fail show their error in place.
func (w *webServer) consoleData(ctx context.Context) consoleData {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d := consoleData{Now: time.Now(), Stages: consoleStages, IDs: append([]string(nil), w.p.order...)}
	sort.Strings(d.IDs)

	vmSessions := map[string]int{}
	if mfs, err := w.p.metrics.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "switchyard_conman_attach_sessions" {
				for _, m := range mf.GetMetric() {
					vmSessions[labelValue(m.GetLabel(), "vm")] = int(m.GetGauge().GetValue())
				}
			}
		}
	}
	counts := w.p.outcomeCounts()

	loreClusters := map[string]lore.Cluster{}
	if cls, err := w.lore.Clusters(ctx); err == nil {
		for _, cl := range cls {
			loreClusters[cl.ID] = cl
		}
	}
	for _, id := range d.IDs {
		c := w.p.clusters[id]
		cc := consoleCluster{ID: id, Eval: c.evalURL(), Hosting: "http://" + c.hosting.Addr()}
		if cl, ok := loreClusters[id]; ok {
			cc.Region, cc.Healthy = cl.Region, cl.Healthy
		}
		cc.Generations = c.generations()
		vms, err := c.cp.VMs(ctx)
		if err != nil {
			cc.Err = err.Error()
		}
		sort.Slice(vms, func(i, j int) bool { return vms[i].ID < vms[j].ID })
		for _, v := range vms {
			cc.VMs = append(cc.VMs, consoleVM{
				ID: v.ID, Addr: v.Addr, State: string(v.State),
				Containers: v.Usage.Containers, Capacity: v.Capacity.Containers,
				Sessions: vmSessions[v.ID], Heartbeat: v.LastHeartbeat,
			})
		}
		d.Clusters = append(d.Clusters, cc)
	}

	if pg, err := w.lore.Repls(ctx, lore.ReplQuery{Limit: consoleMaxRepls}); err == nil {
		d.MoreRepls = pg.Next != ""
		dnsc := w.p.dnsLookups(ctx)
		defer dnsc.close()
		for _, r := range pg.Repls {
			cr := consoleRepl{ID: r.ID, Owner: r.Owner, Slug: r.Slug, Cluster: r.Cluster, OwnerKey: ownerKey(w.adminKey, r.Owner)}
			if c := w.p.clusters[r.Cluster]; c != nil {
				if a, err := c.cp.Lookup(ctx, r.ID); err == nil {
					cr.VM = a.VM
				} else if !errors.Is(err, placement.ErrNotFound) {
					cr.VM = "? " + err.Error()
				}
			}
			cr.DNS = dnsc.lookupA(ctx, r.Slug+"."+r.Owner+"."+w.p.cfg.Zone)
			d.Repls = append(d.Repls, cr)
		}
	}

	base, since := w.history.base(d.Now.Add(-outcomeWindow))
	d.Window = fmt.Sprintf("last %d min", int(outcomeWindow.Minutes()))
	if since.After(d.Now.Add(-outcomeWindow)) {
		d.Window = "since " + since.Format("15:04:05")
	}
	for _, id := range d.IDs {
		o := consoleOutcomes{Cluster: id}
		for _, st := range consoleStages {
			total := counts[id][st]
			o.Counts = append(o.Counts, outcomeCount{Window: total - base[id][st], Total: total})
		}
		d.Outcomes = append(d.Outcomes, o)
	}
	return d
}

func labelValue(ls []*dto.LabelPair, name string) string {
	for _, l := range ls {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// generations are the cluster's Eval generations still serving or draining, newest first.
func (c *cluster) generations() []consoleGeneration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []consoleGeneration{{N: c.eval.gen, Active: c.eval.sessions.Active()}}
	for i := len(c.old) - 1; i >= 0; i-- {
		e := c.old[i]
		select {
		case <-e.drained:
			continue
		default:
		}
		out = append(out, consoleGeneration{N: e.gen, Active: e.sessions.Active(), Draining: true})
	}
	return out
}

// evalRegisterer is where one Eval generation's metrics go: the platform's registry, labelled
// with the cluster and generation.
func (p *Platform) evalRegisterer(cluster string, gen int) prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"cluster": cluster, "generation": itoa(gen)}, p.metrics)
}

// vmRegisterer is where one conman VM's metrics go.
func (p *Platform) vmRegisterer(cluster, vm string) prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"cluster": cluster, "vm": vm}, p.metrics)
}

// outcomeCounts sums switchyard_proxy_sessions_total by cluster and stage over every Eval
// generation: the counters the platform's /metrics exports.
func (p *Platform) outcomeCounts() map[string]map[string]int {
	out := map[string]map[string]int{}
	mfs, err := p.metrics.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "switchyard_proxy_sessions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			cl, st := labelValue(m.GetLabel(), "cluster"), labelValue(m.GetLabel(), "stage")
			if out[cl] == nil {
				out[cl] = map[string]int{}
			}
			out[cl][st] += int(m.GetCounter().GetValue())
		}
	}
	return out
}

// dnsLookups asks the platform's DNS, as a resolver would, over one TCP connection (UDP
// answers are rate-limited per client; a console refresh asks once per repl).
func (p *Platform) dnsLookups(ctx context.Context) *dnsLookups {
	l := &dnsLookups{c: &dns.Client{Net: "tcp", Timeout: time.Second}}
	l.conn, l.err = l.c.DialContext(ctx, p.DNSAddr())
	return l
}

type dnsLookups struct {
	c    *dns.Client
	conn *dns.Conn
	err  error
}

// lookupA is the A records DNS answers for name: they move when a repl moves.
func (l *dnsLookups) lookupA(ctx context.Context, name string) string {
	if l.err != nil {
		return "error: " + l.err.Error()
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in, _, err := l.c.ExchangeWithConnContext(ctx, m, l.conn)
	if err != nil {
		l.err = err // the connection is unusable now
		return "error: " + err.Error()
	}
	var addrs []string
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	if len(addrs) == 0 {
		return dns.RcodeToString[in.Rcode]
	}
	return strings.Join(addrs, " ")
}

func (l *dnsLookups) close() {
	if l.conn != nil {
		l.conn.Close()
	}
}

// outcomeHistory samples the outcome counters so the console can show the last minutes.
type outcomeHistory struct {
	mu      sync.Mutex
	samples []outcomeSample
}

type outcomeSample struct {
	at     time.Time
	counts map[string]map[string]int
}

const outcomeSampleEvery = 5 * time.Second

// run samples every outcomeSampleEvery until ctx ends, keeping a little over the window.
func (h *outcomeHistory) run(ctx context.Context, counts func() map[string]map[string]int) {
	t := time.NewTicker(outcomeSampleEvery)
	defer t.Stop()
	for {
		now := time.Now()
		c := counts()
		h.mu.Lock()
		h.samples = append(h.samples, outcomeSample{at: now, counts: c})
		for len(h.samples) > 1 && h.samples[1].at.Before(now.Add(-outcomeWindow-outcomeSampleEvery)) {
			h.samples = h.samples[1:]
		}
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// base returns the newest sample taken at or before t, else the oldest, and when it was taken.
func (h *outcomeHistory) base(t time.Time) (map[string]map[string]int, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.samples) == 0 {
		return nil, time.Now()
	}
	b := h.samples[0]
	for _, s := range h.samples {
		if s.at.After(t) {
			break
		}
		b = s
	}
	return b.counts, b.at
}
