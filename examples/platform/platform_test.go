package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/switchyard-dev/switchyard/conman/process"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/sessions"
)

func TestMain(m *testing.M) {
	process.Init() // this test binary is each repl's init too
	// The test binary also plays the platform binary's roles: a repl's demo app, and the
	// platform itself for the signal test.
	if len(os.Args) > 1 && (os.Args[1] == demoAppCommand || os.Args[1] == "run") {
		var err error
		if os.Args[1] == "run" {
			err = runRun(os.Args[2:])
		} else {
			err = runDemoApp()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m, httpsLeaks...)
}

// startPlatform runs the platform in-process on its own /16 of loopback, every listener of its
// own on port 0 or on that /16, and stops it when the test ends.
func startPlatform(t *testing.T, net16 string) *Platform {
	t.Helper()
	return startPlatformWith(t, net16, nil)
}

// startPlatformWith is startPlatform with the config changed by edit first.
func startPlatformWith(t *testing.T, net16 string, edit func(*Config)) *Platform {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pfx := netip.MustParsePrefix(net16)
	base := pfx.Addr().Next().String() // x.y.0.1
	cfg := Config{
		DNSAddr:    base + ":0",
		LoreAddr:   base + ":0",
		AdminAddr:  base + ":0",
		ACME:       ACMEConfig{APIAddr: base + ":0"},
		AdminKey:   "test-admin-key",
		ClusterNet: pfx,
		StateDir:   t.TempDir(),
		EvalGrace:  time.Minute,
		Logger:     testLogger(t),
	}
	if edit != nil {
		edit(&cfg)
	}
	p, err := Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, p.Shutdown(ctx))
	})
	return p
}

func TestPlatformEndToEnd(t *testing.T) {
	p := startPlatform(t, "127.77.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)

	// Create blog for replbot in cluster a.
	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	host := "blog.replbot.repl.test"

	// DNS over UDP and TCP answers cluster a's hosting address, for the name and the id name.
	for _, name := range []string{host, repl.ID + ".id.repl.test"} {
		for _, proto := range []string{"udp", "tcp"} {
			require.Equal(t, []string{"127.77.1.1"}, lookupA(t, p.DNSAddr(), proto, name), "%s over %s", name, proto)
		}
	}

	// The page comes back through cluster a's hosting proxy.
	page := getPage(t, "127.77.1.1:8080", host)
	require.Contains(t, page, "cluster <b>a</b>")

	// A session through Eval runs echo in the repl's shell.
	s := openSession(ctx, t, lc, "replbot/blog")
	vm1 := s.run(ctx, t, "echo MARK-$SWITCHYARD_VM")
	require.True(t, strings.HasPrefix(vm1, "a-vm"), vm1)
	require.Equal(t, "hi-there", s.run(ctx, t, "echo MARK-hi-there"))

	// A bad token is refused before any upgrade.
	info, err := lc.Connect(ctx, repl.ID)
	require.NoError(t, err)
	for _, tok := range []string{"", "not-a-token", info.Token[:len(info.Token)-4] + "AAAA"} {
		status := dialStatus(ctx, t, info.URL, tok)
		require.Equal(t, http.StatusUnauthorized, status, "token %q", tok)
	}
	// A token for cluster a is refused by cluster b's Eval.
	require.Equal(t, http.StatusUnauthorized, dialStatus(ctx, t, p.Cluster("b").evalURL(), info.Token))

	// A switchyard.v2 session on the same VM, with some shell state.
	sv2 := openSessionV2(ctx, t, lc, "replbot/blog")
	require.Equal(t, vm1, sv2.run(ctx, t, "X=kept; cd /tmp; echo MARK-$SWITCHYARD_VM"))

	// Roll the VM the sessions are on: the v1 session closes with 1012 and the reconnect lands
	// on another VM. The v2 session stays open: Eval re-attaches it on another VM and says so.
	old, replacement, err := p.Cluster("a").rollVM(ctx, vm1)
	require.NoError(t, err)
	require.Equal(t, vm1, old)
	require.Equal(t, websocket.StatusServiceRestart, s.waitClose(ctx, t))
	n := sv2.waitNotice(ctx, t, sessions.NoticeRestarted)
	require.NotEqual(t, vm1, n.VM)
	require.Equal(t, n.VM, sv2.run(ctx, t, "echo MARK-$SWITCHYARD_VM"))
	require.Equal(t, "unset", sv2.run(ctx, t, "echo MARK-${X:-unset}"), "a restarted shell is a new one")
	sv2.close()
	s = openSession(ctx, t, lc, "replbot/blog")
	vm2 := s.run(ctx, t, "echo MARK-$SWITCHYARD_VM")
	require.NotEqual(t, vm1, vm2)
	t.Logf("rolled %s (replacement %s); reconnected on %s", old, replacement, vm2)
	s.close()

	// Move the repl to b: DNS answers b, and cluster a still serves the page, from b, by its
	// tombstone.
	_, err = lc.MoveRepl(ctx, repl.ID, "b")
	require.NoError(t, err)
	require.Equal(t, []string{"127.77.2.1"}, lookupA(t, p.DNSAddr(), "udp", host))
	require.Contains(t, getPage(t, "127.77.2.1:8080", host), "cluster <b>b</b>")
	require.Contains(t, getPage(t, "127.77.1.1:8080", host), "cluster <b>b</b>")
	// The hosting proxies' metrics are on the admin API's /metrics, labelled by cluster.
	metrics := scrapeMetrics(t, p)
	require.Regexp(t, `switchyard_hosting_requests_total\{cluster="b",outcome="ok"\} [1-9]`, metrics)
	require.Regexp(t, `switchyard_tombstone_requests_total\{cluster="a",outcome="forwarded"\} [1-9]`, metrics)
	require.Contains(t, metrics, `switchyard_hosting_client_connections{cluster="a",state="loop"}`)
	// A token issued for cluster a before the move opens nothing there now: Eval checks where
	// the repl lives and sends the client back to lore (421).
	require.Equal(t, http.StatusMisdirectedRequest, dialStatus(ctx, t, info.URL, info.Token))

	// Eval drains with a session open: the session keeps working until it closes, new sessions
	// reach the new Eval generation, and the drain then completes.
	cb := p.Cluster("b")
	s = openSession(ctx, t, lc, "replbot/blog")
	require.True(t, strings.HasPrefix(s.run(ctx, t, "echo MARK-$SWITCHYARD_VM"), "b-vm"))
	cb.mu.Lock()
	oldEval := cb.eval
	cb.mu.Unlock()
	draining, err := cb.restartEval(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, draining)
	s2 := openSession(ctx, t, lc, "replbot/blog") // the new generation takes new sessions
	require.Equal(t, "two", s2.run(ctx, t, "echo MARK-two"))
	s2.close()
	require.Equal(t, "still-here", s.run(ctx, t, "echo MARK-still-here"))
	select {
	case <-oldEval.drained:
		t.Fatal("the old Eval finished draining with a session open")
	default:
	}
	s.close()
	select {
	case <-oldEval.drained:
	case <-ctx.Done():
		t.Fatal("the old Eval did not finish draining after its last session closed")
	}
}

// TestPlatformEtcd runs the platform on an embedded etcd: lore, placement and tombstones in
// etcd, DNS and hosting reading etcd mirrors, VM liveness by leases.
func TestPlatformEtcd(t *testing.T) {
	const ttl = 2 * time.Second
	p := startPlatformWith(t, "127.79.0.0/16", func(c *Config) {
		c.Store = StoreEtcd
		c.EtcdHost = "127.79.0.1"
		c.AliveTTL = ttl
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.Len(t, p.EtcdEndpoints(), 1)
	require.True(t, strings.HasPrefix(p.EtcdEndpoints()[0], "https://127.79.0.1:"), p.EtcdEndpoints())
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)

	// The state is in etcd: a second client of it (with a certificate of the deployment's CA)
	// sees lore's clusters.
	cli, err := etcdClient(p.EtcdEndpoints(), p.etcdTLS)
	require.NoError(t, err)
	defer cli.Close()
	resp, err := cli.Get(ctx, "/switchyard/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Positive(t, resp.Count)

	// Nobody else gets in: not without TLS, not with TLS but no client certificate, and the
	// platform's own client refuses a plain endpoint unless told.
	plain := "http://" + strings.TrimPrefix(p.EtcdEndpoints()[0], "https://")
	_, err = etcdClient([]string{plain}, EtcdTLS{})
	require.ErrorContains(t, err, "has no TLS")
	for name, c := range map[string]clientv3.Config{
		"plain":                 {Endpoints: []string{plain}},
		"no client certificate": {Endpoints: p.EtcdEndpoints(), TLS: mustTLS(t, p.etcdTLS.CAFile, "", "")},
	} {
		c.DialTimeout, c.Logger = 2*time.Second, zap.NewNop()
		anon, err := clientv3.New(c)
		if err == nil {
			actx, acancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = anon.Put(actx, "/switchyard/clusters/a", "{\"hosting_url\":\"http://169.254.169.254\"}")
			acancel()
			anon.Close()
		}
		require.Error(t, err, "%s: an anonymous client wrote to etcd", name)
	}

	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	host := "blog.replbot.repl.test"
	waitMirror(ctx, t, p, func() bool { r, err := p.mirror.Repl(ctx, repl.ID); return err == nil && r.Cluster == "a" })
	require.Equal(t, []string{"127.79.1.1"}, lookupA(t, p.DNSAddr(), "udp", host))
	require.Contains(t, getPage(t, "127.79.1.1:8080", host), "cluster <b>a</b>")

	// The assignment is in cluster a's etcd placement prefix.
	a, err := p.Cluster("a").cp.Lookup(ctx, repl.ID)
	require.NoError(t, err)
	resp, err = cli.Get(ctx, "/switchyard/placement/a/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Positive(t, resp.Count)

	// Move to b: DNS answers b; cluster a forwards by the tombstone it keeps in etcd.
	_, err = lc.MoveRepl(ctx, repl.ID, "b")
	require.NoError(t, err)
	waitMirror(ctx, t, p, func() bool { r, err := p.mirror.Repl(ctx, repl.ID); return err == nil && r.Cluster == "b" })
	require.Equal(t, []string{"127.79.2.1"}, lookupA(t, p.DNSAddr(), "udp", host))
	require.Contains(t, getPage(t, "127.79.2.1:8080", host), "cluster <b>b</b>")
	require.Contains(t, getPage(t, "127.79.1.1:8080", host), "cluster <b>b</b>")
	resp, err = cli.Get(ctx, "/switchyard/tombstone/a/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Positive(t, resp.Count, "cluster a's tombstone is in etcd")
	// Cluster a reads its tombstones from memory (etcd.TombstoneMirror), so its hosting
	// Server's event loops forward: a keep-alive connection goes to a loop after its first
	// answer, and the loop forwards its next request to b.
	if runtime.GOOS == "linux" {
		conn, err := net.Dial("tcp", "127.79.1.1:8080")
		require.NoError(t, err)
		defer conn.Close()
		br := bufio.NewReader(conn)
		get := func() string {
			_, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			require.NoError(t, err)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			return string(body)
		}
		require.Contains(t, get(), "cluster <b>b</b>")
		fast := p.Cluster("a").hosting.fast
		require.Eventually(t, func() bool { return fast.Looped() > 0 }, 10*time.Second, 5*time.Millisecond,
			"cluster a's keep-alive connection never went to an event loop")
		require.Contains(t, get(), "cluster <b>b</b>")
	}
	metrics := scrapeMetrics(t, p)
	require.Contains(t, metrics, `switchyard_etcd_tombstone_mirror_stale{cluster="a"} 0`)
	require.Contains(t, metrics, "switchyard_etcd_mirror_stale 0")

	// Crash a VM of cluster a (not the one the repl ran on, whose container a crash would
	// leave running): its lease expires and placement drops it within TTL + 1 s, long before
	// the 30 s heartbeat timeout would.
	ca := p.Cluster("a")
	var victim *vm
	for _, v := range ca.liveVMs() {
		if v.id != a.VM {
			victim = v
		}
	}
	require.NotNil(t, victim)
	crashed := time.Now()
	require.NoError(t, victim.crash())
	for {
		vms, err := ca.cp.VMs(ctx)
		require.NoError(t, err)
		gone := true
		for _, v := range vms {
			gone = gone && v.ID != victim.id
		}
		if gone {
			break
		}
		require.Less(t, time.Since(crashed), ttl+time.Second, "vm %s still in placement", victim.id)
		select {
		case <-time.After(50 * time.Millisecond): // polling etcd-driven state; no event to wait on
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	t.Logf("crashed vm %s left placement after %v", victim.id, time.Since(crashed).Round(time.Millisecond))
	// New repls in cluster a all land on the surviving VM.
	for i := range 3 {
		r, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: fmt.Sprintf("after%d", i), Cluster: "a"})
		require.NoError(t, err)
		waitMirror(ctx, t, p, func() bool { _, err := p.mirror.Repl(ctx, r.ID); return err == nil })
		require.Contains(t, getPage(t, "127.79.1.1:8080", r.Slug+".replbot.repl.test"), "cluster <b>a</b>")
		got, err := ca.cp.Lookup(ctx, r.ID)
		require.NoError(t, err)
		require.NotEqual(t, victim.id, got.VM)
	}
}

// waitMirror waits until the platform's etcd mirror satisfies ok.
func waitMirror(ctx context.Context, t *testing.T, p *Platform, ok func() bool) {
	t.Helper()
	for {
		changed := p.mirror.Changed()
		if ok() {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("the etcd mirror did not catch up:", ctx.Err())
		}
	}
}

func lookupA(t *testing.T, server, proto, name string) []string {
	t.Helper()
	c := &dns.Client{Net: proto, Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := c.Exchange(m, server)
	require.NoError(t, err)
	require.Equal(t, dns.RcodeSuccess, r.Rcode, "%s %s", proto, name)
	require.True(t, r.Authoritative)
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func getPage(t *testing.T, addr, host string) string {
	t.Helper()
	status, body := fetchPage(t, context.Background(), addr, host)
	require.Equal(t, http.StatusOK, status, body)
	return body
}

// scrapeMetrics returns the admin API's /metrics.
func scrapeMetrics(t *testing.T, p *Platform) string {
	t.Helper()
	req, err := http.NewRequest("GET", p.AdminURL()+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer test-admin-key")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	return string(body)
}

// fetchPage GETs / from addr with the given Host and returns the status and body.
func fetchPage(t *testing.T, ctx context.Context, addr, host string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	require.NoError(t, err)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// dialStatus opens a WebSocket to an Eval URL with a token and returns the HTTP status it was
// refused with (101 if it was accepted).
func dialStatus(ctx context.Context, t *testing.T, url, token string) int {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		c.CloseNow()
		return http.StatusSwitchingProtocols
	}
	require.NotNil(t, resp, "dial %s: %v", url, err)
	return resp.StatusCode
}

// session is a shell session through Eval, read by one goroutine into channels: the terminal's
// output, and Eval's notices (switchyard.v2).
type session struct {
	conn    *websocket.Conn
	out     chan string
	notices chan sessions.Notice
	closed  chan websocket.StatusCode
}

var markRE = regexp.MustCompile(`MARK-([a-z0-9-]+)\r?\n`)

// openSession opens a switchyard.v1 session: conman's closes reach it.
func openSession(ctx context.Context, t *testing.T, lc *lore.Client, target string) *session {
	t.Helper()
	return openSessionWith(ctx, t, lc, target, sessions.Subprotocol)
}

// openSessionV2 opens a switchyard.v2 session: it survives VM rolls, told by notices.
func openSessionV2(ctx context.Context, t *testing.T, lc *lore.Client, target string) *session {
	t.Helper()
	return openSessionWith(ctx, t, lc, target, sessions.SubprotocolV2, sessions.Subprotocol)
}

func openSessionWith(ctx context.Context, t *testing.T, lc *lore.Client, target string, protos ...string) *session {
	t.Helper()
	conn, err := dialRepl(ctx, lc, target, protos...)
	require.NoError(t, err)
	s := &session{conn: conn, out: make(chan string, 64), notices: make(chan sessions.Notice, 16),
		closed: make(chan websocket.StatusCode, 1)}
	go func() {
		for {
			typ, data, err := conn.Read(context.Background())
			if err != nil {
				s.closed <- websocket.CloseStatus(err)
				close(s.out)
				return
			}
			var n sessions.Notice
			if typ == websocket.MessageText && json.Unmarshal(data, &n) == nil && n.Type == "notice" {
				select {
				case s.notices <- n:
				default: // nobody is watching: tests that care read them
				}
				continue
			}
			s.out <- string(data)
		}
	}()
	t.Cleanup(s.close)
	return s
}

// run sends a command line and returns the first MARK-<word> the shell prints.
func (s *session) run(ctx context.Context, t *testing.T, cmd string) string {
	t.Helper()
	require.NoError(t, s.conn.Write(ctx, websocket.MessageBinary, []byte(cmd+"\n")))
	var buf strings.Builder
	for {
		select {
		case chunk, ok := <-s.out:
			require.True(t, ok, "session ended while waiting for %q; got %q", cmd, buf.String())
			buf.WriteString(chunk)
			if m := markRE.FindStringSubmatch(buf.String()); m != nil {
				return m[1]
			}
		case <-ctx.Done():
			t.Fatalf("no answer to %q; got %q", cmd, buf.String())
		}
	}
}

// waitNotice returns the next notice of event (others are skipped).
func (s *session) waitNotice(ctx context.Context, t *testing.T, event string) sessions.Notice {
	t.Helper()
	for {
		select {
		case n := <-s.notices:
			if n.Event == event {
				return n
			}
		case code := <-s.closed:
			t.Fatalf("the session closed with %d while waiting for a %q notice", code, event)
		case <-ctx.Done():
			t.Fatalf("no %q notice", event)
		}
	}
}

func (s *session) waitClose(ctx context.Context, t *testing.T) websocket.StatusCode {
	t.Helper()
	for {
		select {
		case _, ok := <-s.out:
			if !ok {
				return <-s.closed
			}
		case <-ctx.Done():
			t.Fatal("the session did not close")
		}
	}
}

func (s *session) close() {
	s.conn.Close(websocket.StatusNormalClosure, "")
	for range s.out {
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// TestPlatformProcessStopsOnSignal runs the platform as its own process, as a person does, with
// a repl serving, and checks SIGTERM stops every component and container within seconds and
// removes the temporary state directory.
func TestPlatformProcessStopsOnSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole platform process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pp := startPlatformProcess(ctx, t, "-cluster-net", "127.78.0.0/16", "-clusters", "a",
		"-dns", "127.78.0.1:0", "-lore", "127.78.0.1:0", "-admin", "127.78.0.1:0", "-acme-dns", "127.78.0.1:0", "-web", "127.78.0.1:0")
	loreURL, stateDir := pp.field("  lore API", 2), pp.field("  state", 1)
	require.NotEmpty(t, loreURL)
	require.DirExists(t, stateDir)

	// A repl serving its page, so there is a container to stop.
	lc := lore.NewClient(loreURL, "k", nil)
	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	require.NoError(t, err)
	require.Contains(t, getPage(t, "127.78.1.1:8080", "blog.replbot.repl.test"), repl.ID)
	require.NotEmpty(t, demoApps(t), "no demo app process found while the repl serves")

	start := time.Now()
	pp.stop(t, 15*time.Second)
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	require.NoDirExists(t, stateDir)
	require.Empty(t, demoApps(t), "repl processes outlived the platform")
}

// platformProcess is the platform run by a test as its own process, as a person runs it.
type platformProcess struct {
	cmd    *exec.Cmd
	stderr lockedBuffer
	exited chan error
	banner []string // stdout up to the banner's last line ("Stop with ...")
}

// startPlatformProcess runs this test binary as "platform run args..." and returns once its
// banner says it is up (bounded by ctx). The process is killed when the test ends; if the test
// binary dies first (a timeout's panic), the platform gets SIGTERM and stops its components
// instead of holding the test's ports.
func startPlatformProcess(ctx context.Context, t *testing.T, args ...string) *platformProcess {
	t.Helper()
	pp := &platformProcess{cmd: exec.Command(os.Args[0], append([]string{"run"}, args...)...), exited: make(chan error, 1)}
	pp.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	pp.cmd.Env = append(os.Environ(), envAdminKey+"=k") // never in argv
	stdout, err := pp.cmd.StdoutPipe()
	require.NoError(t, err)
	pp.cmd.Stderr = &pp.stderr
	require.NoError(t, pp.cmd.Start())
	go func() { pp.exited <- pp.cmd.Wait() }()
	t.Cleanup(func() {
		// SIGTERM first, so the platform stops its containers (a killed one leaves them for the
		// next run to adopt); SIGKILL if it does not stop in time.
		_ = pp.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-pp.exited:
			pp.exited <- err
			return
		case <-time.After(20 * time.Second):
		}
		pp.cmd.Process.Kill()
		err := <-pp.exited
		pp.exited <- err
	})
	lines := make(chan string, 128)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "the platform exited before it was up: %s", pp.stderr.String())
			pp.banner = append(pp.banner, line)
			if strings.HasPrefix(line, "Stop with") {
				return pp
			}
		case <-ctx.Done():
			t.Fatalf("the platform did not come up: %s", pp.stderr.String())
		}
	}
}

// field returns the nth whitespace-separated field of the first banner line starting with
// prefix, or "".
func (pp *platformProcess) field(prefix string, n int) string {
	for _, line := range pp.banner {
		if f := strings.Fields(line); strings.HasPrefix(line, prefix) && len(f) > n {
			return f[n]
		}
	}
	return ""
}

// stop sends SIGTERM and requires a clean exit within limit.
func (pp *platformProcess) stop(t *testing.T, limit time.Duration) {
	t.Helper()
	require.NoError(t, pp.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-pp.exited:
		pp.exited <- err // for the cleanup
		require.NoError(t, err, "exit status; stderr: %s", pp.stderr.String())
	case <-time.After(limit):
		t.Fatalf("still running %v after SIGTERM: %s", limit, pp.stderr.String())
	}
}

// demoApps lists the PIDs of demo apps started from this test binary (bound into the repls'
// sandboxes at demoAppPath: the same file, under another name).
func demoApps(t *testing.T) []string {
	t.Helper()
	want := demoAppPath + "\x00" + demoAppCommand + "\x00"
	self, err := os.Stat(os.Args[0])
	require.NoError(t, err)
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	var pids []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || string(b) != want {
			continue
		}
		if exe, err := os.Stat(filepath.Join(filepath.Dir(p), "exe")); err == nil && os.SameFile(exe, self) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPlatformProcesses runs the multi-process mode as a person does: the parent starts etcd
// and every component as its own OS process. A repl created through lore is answered by the
// DNS process and served through the hosting process from a conman process; SIGTERM stops them
// all.
func TestPlatformProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole platform of processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pp := startPlatformProcess(ctx, t, "-processes", "-cluster-net", "127.80.0.0/16",
		"-dns", "127.80.0.1:0", "-lore", "127.80.0.1:0", "-admin", "127.80.0.1:0", "-acme-dns", "127.80.0.1:0",
		"-component-metrics")
	stderr := &pp.stderr
	loreURL, dnsAddr := pp.field("  lore API", 2), pp.field("  DNS (UDP+TCP)", 2)
	pids := map[string]bool{}
	pidRE := regexp.MustCompile(`pid (\d+)`)
	for _, line := range pp.banner {
		for _, m := range pidRE.FindAllStringSubmatch(line, -1) {
			pids[m[1]] = true
		}
	}
	require.NotEmpty(t, loreURL)
	require.NotEmpty(t, dnsAddr)
	// lore, dns, and per cluster (2) a controlplane, 2 VMs, Eval and hosting: 12 processes.
	require.Len(t, pids, 12, "component pids")
	require.NotContains(t, pids, fmt.Sprint(pp.cmd.Process.Pid))

	lc := lore.NewClient(loreURL, "k", nil)
	repl, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "b"})
	require.NoError(t, err)
	host := "blog.replbot.repl.test"
	// DNS and hosting follow etcd in their own processes: poll until their mirrors have it
	// (bounded by ctx; there is no event to wait on across processes).
	for {
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(host), dns.TypeA)
		r, _, err := c.Exchange(m, dnsAddr)
		require.NoError(t, err)
		if r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			break
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("DNS never answered %s: %s", host, stderr.String())
		}
	}
	require.Equal(t, []string{"127.80.2.1"}, lookupA(t, dnsAddr, "udp", host))
	require.Equal(t, []string{"127.80.2.1"}, lookupA(t, dnsAddr, "tcp", host))
	var page string
	for {
		status, body := fetchPage(t, ctx, "127.80.2.1:8080", host)
		if status == http.StatusOK {
			page = body
			break
		}
		require.Equal(t, http.StatusNotFound, status, "only a mirror not caught up yet may fail: %s", body)
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("hosting never served %s: %s", host, stderr.String())
		}
	}
	require.Contains(t, page, repl.ID)
	require.Contains(t, page, "cluster <b>b</b>")
	require.Len(t, demoApps(t), 1, "one demo app process while the repl serves from b")
	checkProcessesHTTPS(ctx, t, pp, "127.80.2.1:4443", host, repl.ID)

	// Move the repl to a. b's hosting process (its tombstone follower) stops the container
	// through b's conman process and releases it; b's hosting address then forwards to a.
	_, err = lc.MoveRepl(ctx, repl.ID, "a")
	require.NoError(t, err)
	for {
		status, body := fetchPage(t, ctx, "127.80.2.1:8080", host)
		// Until b's follower has written the tombstone, b may still serve the page itself or
		// answer 404; then the page comes from a, forwarded.
		if status == http.StatusOK && strings.Contains(body, "cluster <b>a</b>") {
			break
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("cluster b never forwarded to a (last %d %s): %s", status, body, stderr.String())
		}
	}
	// Every component serves its own /metrics (-component-metrics): b's hosting process counts
	// the forward and its mirrors are current; a's served the page; b's VMs and Eval report.
	scrape := func(url string) string {
		t.Helper()
		require.True(t, strings.HasPrefix(url, "http://127.80."), "metrics address %q", url)
		resp, err := http.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		return string(body)
	}
	mb := scrape(pp.field("  metrics b", 3))
	require.Regexp(t, `switchyard_tombstone_requests_total\{outcome="forwarded"\} [1-9]`, mb)
	require.Contains(t, mb, "switchyard_etcd_tombstone_mirror_stale 0")
	require.Contains(t, mb, "switchyard_etcd_mirror_stale 0")
	require.Contains(t, mb, `switchyard_hosting_client_connections{state="loop"}`)
	require.Regexp(t, `switchyard_hosting_requests_total\{outcome="ok"\} [1-9]`, scrape(pp.field("  metrics a", 3)))
	require.Contains(t, scrape(pp.field("  metrics b", 5)), "switchyard_proxy_sessions_active")
	require.Contains(t, scrape(pp.field("  metrics b", 7)), "switchyard_placement_")
	require.Contains(t, scrape(pp.field("  metrics         lore", 2)), "go_goroutines")

	// The container in b stops: exactly one demo app remains, a's.
	for len(demoApps(t)) != 1 {
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("b's container was not stopped after the move (demo apps %v): %s", demoApps(t), stderr.String())
		}
	}

	// A conman VM process dies (kill -9): it is started again, on its address, and adopts the
	// container it left; nothing else stops, and the repl keeps serving from one container. A
	// switchyard.v2 session on that VM stays open: Eval re-attaches it (the shell died with
	// conman, so it is a new one) and says so.
	sv2 := openSessionV2(ctx, t, lc, "replbot/blog")
	vmName := sv2.run(ctx, t, "echo MARK-$SWITCHYARD_VM")
	vmPid := pidRE.FindStringSubmatch(strings.Join(slices.DeleteFunc(slices.Clone(pp.banner), func(l string) bool {
		return !strings.Contains(l, "vm "+vmName+" ")
	}), "\n"))
	require.Len(t, vmPid, 2, "%s's pid in the banner", vmName)
	pid, err := strconv.Atoi(vmPid[1])
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	for !strings.Contains(stderr.String(), "component restarted") {
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("the killed conman was not restarted: %s", stderr.String())
		}
	}
	n := sv2.waitNotice(ctx, t, sessions.NoticeRestarted)
	require.Equal(t, n.VM, sv2.run(ctx, t, "echo MARK-$SWITCHYARD_VM"))
	t.Logf("the v2 session on %s restarted on %s after its conman was killed", vmName, n.VM)
	sv2.close()
	require.Contains(t, getPage(t, "127.80.1.1:8080", host), "cluster <b>a</b>")
	// The restarted conman adopted the container it left. If Eval moved the session to the
	// other VM meanwhile, the repl runs there now, and the adopted one is an orphan its conman
	// stops (conman.Config.OrphanGrace, 5 s here): one container remains either way.
	for len(demoApps(t)) != 1 {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("the repl runs twice (demo apps %v): %s", demoApps(t), stderr.String())
		}
	}
	for p := range pids {
		if p != vmPid[1] {
			_, err := os.Stat("/proc/" + p)
			require.NoError(t, err, "component %s stopped when a VM died", p)
		}
	}

	pp.stop(t, time.Minute)
	for pid := range pids {
		_, err := os.Stat("/proc/" + pid)
		require.True(t, os.IsNotExist(err), "component pid %s outlived the platform", pid)
	}
	require.Empty(t, demoApps(t), "repl processes outlived the platform")
}

func mustTLS(t *testing.T, ca, cert, key string) *tls.Config {
	t.Helper()
	c, err := clientTLS(ca, cert, key)
	require.NoError(t, err)
	return c
}
