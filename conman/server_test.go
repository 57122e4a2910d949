package conman_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
	"github.com/switchyard-dev/switchyard/placement"
)

const testCredential = "s3cret-internal"

func TestMain(m *testing.M) {
	process.Init() // the test binary is the containers' init
	if os.Getenv("CONMAN_TEST_WEBAPP") != "" {
		webApp() // the test binary is also the repls' web app
		return
	}
	goleak.VerifyTestMain(m)
}

// webApp is the demo repl program of these tests: it echoes requests on HOST:PORT and echoes
// WebSocket messages on /ws.
func webApp() {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), b...)); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/lie", func(w http.ResponseWriter, r *http.Request) {
		// A hostile app pretending to be conman, to make the proxies avoid this VM.
		w.Header().Set(conman.HeaderError, conman.ErrorDraining)
		w.Header().Set("Switchyard-Credential", "forged")
		w.Header().Set("Trailer", "Switchyard-Error")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "draining, honest")
		w.Header().Set("Switchyard-Error", conman.ErrorDraining)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hostname, _ := os.Hostname()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery, "body": string(body),
			"host": r.Host, "headers": r.Header, "hostname": hostname, "pid": os.Getpid(),
		})
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	fmt.Println("web app listening on", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func webAppSpec(ctx context.Context, repl string) (conman.Spec, error) {
	exe, err := os.Executable()
	if err != nil {
		return conman.Spec{}, err
	}
	// The sandbox shows nothing of the VM but its system directories: the app (this test
	// binary) is bound in read-only, as a platform binds its runtimes or images.
	const app = "/opt/switchyard-test/app"
	return conman.Spec{
		Command: []string{app}, Env: []string{"CONMAN_TEST_WEBAPP=1"},
		Mounts: []conman.Mount{{Source: exe, Target: app, ReadOnly: true}},
	}, nil
}

// recordingPlacement is a real Controlplane that also records Release calls.
type recordingPlacement struct {
	*placement.Controlplane
	mu       sync.Mutex
	released []string
	releases chan string
	lastHB   placement.Heartbeat
}

func (p *recordingPlacement) Heartbeat(ctx context.Context, hb placement.Heartbeat) error {
	p.mu.Lock()
	p.lastHB = hb
	p.mu.Unlock()
	return p.Controlplane.Heartbeat(ctx, hb)
}

func (p *recordingPlacement) heartbeat() placement.Heartbeat {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastHB
}

func (p *recordingPlacement) Release(ctx context.Context, repl, vm string) error {
	err := p.Controlplane.Release(ctx, repl, vm)
	p.mu.Lock()
	p.released = append(p.released, repl)
	p.mu.Unlock()
	select {
	case p.releases <- repl:
	default:
	}
	return err
}

type env struct {
	rt  *process.Runtime
	srv *conman.Server
	ts  *httptest.Server
	pl  *recordingPlacement
	reg *prometheus.Registry
}

type envOpts struct {
	stateDir  string
	spec      func(ctx context.Context, repl string) (conman.Spec, error)
	portWait  time.Duration
	placement bool
	ports     conman.PortRange
	orphan    time.Duration
	tune      func(*conman.Config) // adjusts the config last
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if o.stateDir == "" {
		o.stateDir = t.TempDir()
	}
	rt, err := process.New(process.Config{StateDir: o.stateDir, CgroupParent: "switchyard-test-conman"})
	require.NoError(t, err)
	e := &env{rt: rt}
	cfg := conman.Config{
		Runtime: rt, Credential: testCredential, Spec: o.spec, PortWait: o.portWait,
		StopGrace: 2 * time.Second, Ports: o.ports,
	}
	if o.placement {
		cp, err := placement.New(placement.Config{})
		require.NoError(t, err)
		e.pl = &recordingPlacement{Controlplane: cp, releases: make(chan string, 16)}
		cfg.Placement = e.pl
		cfg.HeartbeatInterval = 50 * time.Millisecond
		cfg.OrphanGrace = o.orphan
	}
	e.reg = prometheus.NewPedanticRegistry()
	cfg.Registerer = e.reg
	if o.tune != nil {
		o.tune(&cfg)
	}
	e.ts = httptest.NewUnstartedServer(nil)
	cfg.VM = placement.VM{ID: "vm1", Addr: "http://" + e.ts.Listener.Addr().String(),
		Capacity: placement.Resources{Containers: 100}}
	srv, err := conman.New(context.Background(), cfg)
	require.NoError(t, err)
	e.srv = srv
	e.ts.Config.Handler = srv
	e.ts.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		e.ts.Close()
		sts, _ := rt.List(ctx)
		for _, st := range sts {
			_ = rt.Stop(ctx, st.ID, 0)
			_ = rt.Remove(ctx, st.ID)
		}
		require.NoError(t, rt.Close())
	})
	return e
}

func (e *env) request(t *testing.T, method, path string, hdr map[string]string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, body)
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.ts.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func (e *env) dialAttach(t *testing.T, repl, query string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(e.ts.URL, "http") + "/v1/repls/" + repl + "/attach" + query
	return websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}},
	})
}

// term reads a session's output into a buffer.
type term struct {
	mu     sync.Mutex
	out    strings.Builder
	closed chan struct{}
	err    error
}

func readTerm(c *websocket.Conn) *term {
	tm := &term{closed: make(chan struct{})}
	go func() {
		defer close(tm.closed)
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				tm.mu.Lock()
				tm.err = err
				tm.mu.Unlock()
				return
			}
			tm.mu.Lock()
			tm.out.Write(b)
			tm.mu.Unlock()
		}
	}()
	return tm
}

func (tm *term) String() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.String()
}

func (tm *term) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(tm.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %q in %q", want, tm.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (tm *term) closeStatus(t *testing.T) websocket.StatusCode {
	t.Helper()
	select {
	case <-tm.closed:
	case <-time.After(15 * time.Second):
		t.Fatal("session did not close")
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return websocket.CloseStatus(tm.err)
}

func send(t *testing.T, c *websocket.Conn, s string) {
	t.Helper()
	require.NoError(t, c.Write(context.Background(), websocket.MessageBinary, []byte(s)))
}

func TestCredential(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct {
		name   string
		path   string
		hdr    map[string]string
		status int
	}{
		{"missing", "/healthz", nil, 401},
		{"wrong", "/healthz", map[string]string{conman.HeaderCredential: "nope"}, 401},
		{"prefix of the right one", "/healthz", map[string]string{conman.HeaderCredential: testCredential[:4]}, 401},
		{"Authorization is not the credential", "/healthz", map[string]string{"Authorization": "Bearer " + testCredential}, 401},
		{"hosting without credential", "/", map[string]string{conman.HeaderRepl: "r1"}, 401},
		{"attach without credential", "/v1/repls/r1/attach", nil, 401},
		{"right", "/healthz", map[string]string{conman.HeaderCredential: testCredential}, 200},
		{"unknown endpoint", "/nope", map[string]string{conman.HeaderCredential: testCredential}, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.request(t, "GET", tt.path, tt.hdr, nil)
			require.Equal(t, tt.status, resp.StatusCode, string(body))
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			if tt.status == 401 {
				require.Equal(t, conman.ErrorUnauthorized, resp.Header.Get(conman.HeaderError))
			}
			if tt.status != 200 {
				var m map[string]string
				require.NoError(t, json.Unmarshal(body, &m))
				require.NotEmpty(t, m["error"])
			}
		})
	}
	require.Empty(t, e.srv.Running(), "no request without credential started anything")
}

func TestAttachShell(t *testing.T) {
	e := newEnv(t, envOpts{})
	c, _, err := e.dialAttach(t, "shell1", "?cols=100&rows=30")
	require.NoError(t, err)
	defer c.CloseNow()
	tm := readTerm(c)
	send(t, c, "stty size; hostname; echo $$\n")
	tm.waitFor(t, "30 100")
	tm.waitFor(t, "shell1")
	require.NoError(t, c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"resize","cols":120,"rows":40}`)))
	send(t, c, "stty size\n")
	tm.waitFor(t, "40 120")
	send(t, c, "exit 3\n")
	require.Equal(t, websocket.StatusNormalClosure, tm.closeStatus(t))
	require.Contains(t, e.srv.Running(), "shell1", "the container outlives the shell")
}

func TestAttachBadInput(t *testing.T) {
	e := newEnv(t, envOpts{spec: func(ctx context.Context, repl string) (conman.Spec, error) {
		if repl == "broken" {
			return conman.Spec{}, errors.New("no such repl in this pool")
		}
		return conman.Spec{}, nil
	}})
	tests := []struct {
		name   string
		repl   string
		query  string
		status int
	}{
		{"invalid id", "Bad.ID", "", 400},
		{"cols not a number", "ok1", "?cols=abc", 400},
		{"rows out of range", "ok1", "?rows=0", 400},
		{"spec fails", "broken", "", 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, resp, err := e.dialAttach(t, tt.repl, tt.query)
			require.Error(t, err)
			require.Equal(t, tt.status, resp.StatusCode)
		})
	}
	// A malformed control message closes with 1007; the shell is not left behind.
	c, _, err := e.dialAttach(t, "ok2", "")
	require.NoError(t, err)
	tm := readTerm(c)
	require.NoError(t, c.Write(context.Background(), websocket.MessageText, []byte(`{not json`)))
	require.Equal(t, websocket.StatusInvalidFramePayloadData, tm.closeStatus(t))
}

func TestForward(t *testing.T) {
	e := newEnv(t, envOpts{spec: webAppSpec})
	hdr := map[string]string{
		conman.HeaderCredential: testCredential, conman.HeaderRepl: "web1",
		"Switchyard-Other": "x", "X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer app-token",
	}
	req, err := http.NewRequest("POST", e.ts.URL+"/some/path?a=1&b=two", strings.NewReader("payload"))
	require.NoError(t, err)
	req.Host = "blog.alice.repl.test"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.ts.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	var got struct {
		Method, Path, Query, Body, Host, Hostname string
		Headers                                   http.Header
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
	require.Equal(t, "POST", got.Method)
	require.Equal(t, "/some/path", got.Path)
	require.Equal(t, "a=1&b=two", got.Query)
	require.Equal(t, "payload", got.Body)
	require.Equal(t, "blog.alice.repl.test", got.Host)
	require.Equal(t, "web1", got.Hostname)
	require.Equal(t, "Bearer app-token", got.Headers.Get("Authorization"))
	require.Equal(t, "203.0.113.9", got.Headers.Get("X-Forwarded-For"))
	for k := range got.Headers {
		require.False(t, strings.HasPrefix(k, "Switchyard-"), "leaked header %s", k)
	}

	// WebSocket upgrades are forwarded too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+"/ws", &websocket.DialOptions{
		HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}, conman.HeaderRepl: {"web1"}},
	})
	require.NoError(t, err)
	defer c.CloseNow()
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("hi")))
	_, b, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "echo:hi", string(b))
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
}

// TestForwardStripsAppSwitchyardHeaders: an app cannot speak for conman. Its 503 with
// Switchyard-Error: draining reaches the proxy as a plain app 503.
func TestForwardStripsAppSwitchyardHeaders(t *testing.T) {
	e := newEnv(t, envOpts{spec: webAppSpec})
	req, err := http.NewRequest("GET", e.ts.URL+"/lie", nil)
	require.NoError(t, err)
	req.Header.Set(conman.HeaderCredential, testCredential)
	req.Header.Set(conman.HeaderRepl, "liar1")
	resp, err := e.ts.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "draining, honest", string(b))
	for k := range resp.Header {
		require.False(t, strings.HasPrefix(k, "Switchyard-"), "header %s reached the proxy", k)
	}
	for k := range resp.Trailer {
		require.False(t, strings.HasPrefix(k, "Switchyard-"), "trailer %s reached the proxy", k)
	}
}

func TestForwardErrors(t *testing.T) {
	e := newEnv(t, envOpts{portWait: 300 * time.Millisecond, spec: func(ctx context.Context, repl string) (conman.Spec, error) {
		switch repl {
		case "nolisten":
			return conman.Spec{Command: []string{"sleep", "600"}}, nil
		case "nostart":
			return conman.Spec{Command: []string{"/no/such/program"}}, nil
		case "shellonly":
			return conman.Spec{}, nil
		}
		return conman.Spec{}, errors.New("unknown repl")
	}})
	tests := []struct {
		name   string
		repl   string
		status int
		reason string
	}{
		{"port does not answer", "nolisten", 502, conman.ErrorUnreachable},
		{"no web app", "shellonly", 502, conman.ErrorUnreachable},
		{"program does not start", "nostart", 502, conman.ErrorStart},
		{"spec fails", "other", 502, conman.ErrorStart},
		{"invalid repl id", "../etc", 400, conman.ErrorInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.request(t, "GET", "/", map[string]string{conman.HeaderCredential: testCredential, conman.HeaderRepl: tt.repl}, nil)
			require.Equal(t, tt.status, resp.StatusCode, string(body))
			require.Equal(t, tt.reason, resp.Header.Get(conman.HeaderError))
			var m map[string]string
			require.NoError(t, json.Unmarshal(body, &m))
			require.NotEmpty(t, m["error"])
		})
	}
}

func TestUnexpectedExitIsReportedAndRestarted(t *testing.T) {
	e := newEnv(t, envOpts{placement: true})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	waitRegistered(t, e)
	_, err := e.pl.Place(ctx, placement.Request{Repl: "dies1"})
	require.NoError(t, err)

	c, _, err := e.dialAttach(t, "dies1", "")
	require.NoError(t, err)
	tm := readTerm(c)
	send(t, c, "echo pid=$$; kill 1\n")
	require.Equal(t, websocket.StatusNormalClosure, tm.closeStatus(t))
	select {
	case got := <-e.pl.releases:
		require.Equal(t, "dies1", got)
	case <-ctx.Done():
		t.Fatal("the exit was not reported to placement")
	}
	_, err = e.pl.Lookup(ctx, "dies1")
	require.ErrorIs(t, err, placement.ErrNotFound)

	// The next attach starts a fresh container.
	var c2 *websocket.Conn
	for {
		c2, _, err = e.dialAttach(t, "dies1", "")
		if err == nil {
			break
		}
		require.Less(t, time.Now().UnixNano(), mustDeadline(ctx), "attach after exit: %v", err)
		time.Sleep(10 * time.Millisecond) // the old container is being cleaned up
	}
	defer c2.CloseNow()
	tm2 := readTerm(c2)
	send(t, c2, "echo fresh; exit\n")
	tm2.waitFor(t, "fresh")
	require.Equal(t, websocket.StatusNormalClosure, tm2.closeStatus(t))
}

func mustDeadline(ctx context.Context) int64 {
	d, _ := ctx.Deadline()
	return d.UnixNano()
}

// waitRegistered waits for the server's readiness signal and checks that it means what it says:
// placement knows the VM the moment Registered is closed.
func waitRegistered(t *testing.T, e *env) placement.VM {
	t.Helper()
	select {
	case <-e.srv.Registered():
	case <-time.After(10 * time.Second):
		t.Fatal("Registered was not closed within 10 s")
	}
	vm, err := e.pl.VM(context.Background(), "vm1")
	require.NoError(t, err, "Registered closed before placement knew the VM")
	return vm
}

func TestAgentHeartbeats(t *testing.T) {
	e := newEnv(t, envOpts{placement: true})
	vm := waitRegistered(t, e)
	require.Equal(t, placement.Active, vm.State)
	port, err := e.srv.Ensure(context.Background(), "hb1")
	require.NoError(t, err)
	require.NotZero(t, port)
	// A heartbeat carrying hb1 keeps the assignment; its usage shows up.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = e.pl.Place(ctx, placement.Request{Repl: "hb1", Prefer: "vm1"})
	require.NoError(t, err)
	before := vm.LastHeartbeat
	for {
		vm, err = e.pl.VM(ctx, "vm1")
		require.NoError(t, err)
		if vm.LastHeartbeat.After(before) {
			break
		}
		require.NoError(t, ctx.Err())
		time.Sleep(10 * time.Millisecond)
	}
	a, err := e.pl.Lookup(ctx, "hb1")
	require.NoError(t, err)
	require.Equal(t, "vm1", a.VM)
	for {
		hb := e.pl.heartbeat()
		if len(hb.Running) == 1 {
			require.Equal(t, []string{"hb1"}, hb.Running)
			require.Equal(t, 1, hb.Used.Containers)
			require.Positive(t, hb.Used.MemoryBytes)
			break
		}
		require.NoError(t, ctx.Err(), "no heartbeat with hb1 running")
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMetrics(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	reg := prometheus.NewPedanticRegistry()
	rt, err := process.New(process.Config{StateDir: t.TempDir(), CgroupParent: "switchyard-test-conman"})
	require.NoError(t, err)
	srv, err := conman.New(context.Background(), conman.Config{Runtime: rt, Credential: testCredential, Registerer: reg,
		Spec: func(ctx context.Context, repl string) (conman.Spec, error) {
			if repl == "bad" {
				return conman.Spec{}, errors.New("no")
			}
			return conman.Spec{}, nil
		}})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = srv.Ensure(ctx, "m1")
	require.NoError(t, err)
	_, err = srv.Ensure(ctx, "bad")
	require.Error(t, err)
	require.Equal(t, 1.0, metricValue(t, reg, "switchyard_conman_containers", ""))
	require.Equal(t, 1.0, metricValue(t, reg, "switchyard_conman_container_starts_total", "ok"))
	require.Equal(t, 1.0, metricValue(t, reg, "switchyard_conman_container_starts_total", "error"))
	require.NoError(t, srv.Stop(ctx, "m1"))
	require.Equal(t, 1.0, metricValue(t, reg, "switchyard_conman_container_exits_total", "stopped"))
	require.Equal(t, 0.0, metricValue(t, reg, "switchyard_conman_containers", ""))
	require.NoError(t, srv.Shutdown(ctx))
	require.NoError(t, rt.Close())
	// A second server on the same registry is refused, not a panic.
	_, err = conman.New(ctx, conman.Config{Runtime: rt, Credential: "x", Registerer: reg})
	require.Error(t, err)
}

// metricValue returns the value of a metric (with one label of value label, or none).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestOrphansAreStopped(t *testing.T) {
	e := newEnv(t, envOpts{placement: true, orphan: 200 * time.Millisecond})
	waitRegistered(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := e.pl.Register(ctx, placement.VM{ID: "vm2", Addr: "http://127.0.0.1:9", Capacity: placement.Resources{Containers: 10}})
	require.NoError(t, err)
	require.NoError(t, e.pl.Heartbeat(ctx, placement.Heartbeat{VM: "vm2"}))
	_, err = e.srv.Ensure(ctx, "kept1") // unknown to placement: adopted from the heartbeat
	require.NoError(t, err)
	_, err = e.srv.Ensure(ctx, "orphan1") // runs here, then placement moves it away (a split brain)
	require.NoError(t, err)
	a, err := e.pl.Place(ctx, placement.Request{Repl: "orphan1", Avoid: []string{"vm1"}})
	require.NoError(t, err)
	require.Equal(t, "vm2", a.VM)
	for {
		_, err := e.rt.Inspect(ctx, "orphan1")
		if errors.Is(err, conman.ErrNotFound) {
			break
		}
		require.NoError(t, ctx.Err(), "the orphan was not stopped")
		time.Sleep(20 * time.Millisecond)
	}
	st, err := e.rt.Inspect(ctx, "kept1")
	require.NoError(t, err)
	require.Equal(t, conman.Running, st.State, "an adopted repl keeps running")
	require.Equal(t, []string{"kept1"}, e.srv.Running())
	a, err = e.pl.Lookup(ctx, "kept1")
	require.NoError(t, err)
	require.Equal(t, "vm1", a.VM)
}

func TestStopEndpoint(t *testing.T) {
	e := newEnv(t, envOpts{})
	hdr := map[string]string{conman.HeaderCredential: testCredential}
	resp, _ := e.request(t, "DELETE", "/v1/repls/none1", hdr, nil)
	require.Equal(t, 404, resp.StatusCode)
	_, err := e.srv.Ensure(context.Background(), "del1")
	require.NoError(t, err)
	resp, body := e.request(t, "DELETE", "/v1/repls/del1", hdr, nil)
	require.Equal(t, 204, resp.StatusCode, string(body))
	require.Empty(t, e.srv.Running())
	resp, body = e.request(t, "GET", "/v1/repls", hdr, nil)
	require.Equal(t, 200, resp.StatusCode)
	require.JSONEq(t, `{"containers":[]}`, string(body))
}

func TestRegisteredWithoutPlacement(t *testing.T) {
	e := newEnv(t, envOpts{})
	select {
	case <-e.srv.Registered():
	default:
		t.Fatal("Registered must be closed at once when there is no placement to register with")
	}
}

func TestClientStop(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	c := conman.NewClient(e.ts.URL, testCredential, nil)
	_, err := e.srv.Ensure(ctx, "cstop1")
	require.NoError(t, err)
	require.NoError(t, c.Stop(ctx, "cstop1"))
	require.Empty(t, e.srv.Running())
	require.ErrorIs(t, c.Stop(ctx, "cstop1"), conman.ErrNotFound)
	require.ErrorIs(t, c.Stop(ctx, "Bad/ID"), conman.ErrInvalid)
	err = conman.NewClient(e.ts.URL, "wrong", nil).Stop(ctx, "cstop1")
	require.ErrorContains(t, err, "401")
}

// TestRefusesReplAssignedElsewhere: conman starts no repl that placement has on another VM,
// whoever asks (a proxy with a stale assignment): it would run twice.
func TestRefusesReplAssignedElsewhere(t *testing.T) {
	e := newEnv(t, envOpts{placement: true})
	waitRegistered(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := e.pl.Register(ctx, placement.VM{ID: "vm2", Addr: "http://127.0.0.1:9", Capacity: placement.Resources{Containers: 10}})
	require.NoError(t, err)
	require.NoError(t, e.pl.Heartbeat(ctx, placement.Heartbeat{VM: "vm2"}))
	a, err := e.pl.Place(ctx, placement.Request{Repl: "elsewhere1", Prefer: "vm2"})
	require.NoError(t, err)
	require.Equal(t, "vm2", a.VM)
	_, resp, err := e.dialAttach(t, "elsewhere1", "")
	require.Error(t, err)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, conman.ErrorStart, resp.Header.Get(conman.HeaderError))
	_, err = e.rt.Inspect(ctx, "elsewhere1")
	require.ErrorIs(t, err, conman.ErrNotFound, "no container was made")
}

// TestReplExhaustingItsPidsIsTheReplsFailure: a repl that uses up its own processes makes the
// next shell fail to start. conman says so as the repl's failure (502, repl-failed), not the
// VM's, so no proxy moves the repl to start it on a second VM.
func TestReplExhaustingItsPidsIsTheReplsFailure(t *testing.T) {
	e := newEnv(t, envOpts{spec: func(ctx context.Context, repl string) (conman.Spec, error) {
		return conman.Spec{Limits: conman.Limits{Pids: 8}}, nil
	}})
	c, _, err := e.dialAttach(t, "pidhog1", "")
	require.NoError(t, err)
	tm := readTerm(c)
	send(t, c, "i=0; while [ $i -lt 40 ]; do sleep 600 & i=$((i+1)); done\n")
	tm.waitFor(t, "fork") // the shell reports the fork that failed: the limit is reached
	_, resp, err := e.dialAttach(t, "pidhog1", "")
	require.Error(t, err, "a shell started past the repl's pids limit")
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.Equal(t, conman.ErrorRepl, resp.Header.Get(conman.HeaderError))
}

// TestStoppedReplClosesWith1012: when conman stops a repl (it moved, or a proxy fenced it),
// its shells close with 1012, which clients take as "reconnect", not 1000, "the shell ended".
func TestStoppedReplClosesWith1012(t *testing.T) {
	e := newEnv(t, envOpts{})
	c, _, err := e.dialAttach(t, "moved1", "")
	require.NoError(t, err)
	tm := readTerm(c)
	send(t, c, "printf 'MARK-%s\\n' up\n")
	tm.waitFor(t, "MARK-up")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	require.NoError(t, e.srv.Stop(ctx, "moved1"))
	require.Equal(t, websocket.StatusCode(conman.CloseDraining), tm.closeStatus(t))
}

// TestStoppedReplClosesWith1012WhileTyping: the same while the client types without pause, so
// input reaches the pty as the shell dies. Writing to the dead pty must not decide the close
// (it once said 1000, "shell input closed", and a switchyard.v2 client lost its session).
func TestStoppedReplClosesWith1012WhileTyping(t *testing.T) {
	e := newEnv(t, envOpts{})
	for i := range 3 {
		repl := fmt.Sprintf("typing%d", i)
		c, _, err := e.dialAttach(t, repl, "")
		require.NoError(t, err)
		tm := readTerm(c)
		send(t, c, "printf 'MARK-%s\\n' up\n")
		tm.waitFor(t, "MARK-up")
		stop := make(chan struct{})
		typed := make(chan struct{})
		go func() {
			defer close(typed)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c.Write(context.Background(), websocket.MessageBinary, []byte(":\n")) != nil {
					return
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		require.NoError(t, e.srv.Stop(ctx, repl))
		cancel()
		require.Equal(t, websocket.StatusCode(conman.CloseDraining), tm.closeStatus(t))
		close(stop)
		<-typed
	}
}
