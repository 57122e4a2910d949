package tombstone_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/tombstone"
	"github.com/switchyard-dev/switchyard/tombstone/tombstonetest"
)

const e2eCredential = "internal-credential-e2e"

// e2eCluster is one cluster on 127.0.N.0/24 built from the real packages: a placement
// controlplane, one conman VM (conman/process runtime) at 127.0.N.11, and the hosting proxy
// (tombstone.Forwarder around hosting.Proxy, served by hosting.Server) at 127.0.N.1, with a
// Follower on lore.
type e2eCluster struct {
	id      string
	cp      *placement.Controlplane
	conman  *conman.Server
	store   *tombstone.MemStore
	hosting *hosting.Proxy
	fwd     *tombstone.Forwarder
	addr    string // hosting proxy host:port
}

func startE2ECluster(t *testing.T, dir *lore.Directory, id string, n int, clock *tombstonetest.Clock) *e2eCluster {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("cluster", id)
	}
	c := &e2eCluster{id: id}
	var err error
	c.cp, err = placement.New(placement.Config{Logger: log})
	require.NoError(t, err)

	// The conman VM.
	vmHost := "127.0." + itoa(n) + ".11"
	vmLn, err := net.Listen("tcp", vmHost+":0")
	require.NoError(t, err)
	rt, err := process.New(process.Config{StateDir: t.TempDir()})
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	c.conman, err = conman.New(ctx, conman.Config{
		Runtime: rt, Credential: e2eCredential, ReplHost: vmHost,
		Spec: func(context.Context, string) (conman.Spec, error) {
			// The sandbox shows nothing of the VM's files: bind the app (this binary) in.
			const app = "/opt/switchyard-test/app"
			return conman.Spec{Command: []string{app}, Env: []string{"TOMBSTONE_TEST_WEBAPP=1", "TOMBSTONE_TEST_VM=" + vmHost},
				Mounts: []conman.Mount{{Source: exe, Target: app, ReadOnly: true}}}, nil
		},
		Placement: c.cp,
		VM:        placement.VM{ID: "vm-" + id, Cluster: id, Addr: "http://" + vmLn.Addr().String(), Capacity: placement.Resources{Containers: 10}},
		StopGrace: time.Second, Logger: log,
	})
	require.NoError(t, err)
	vmSrv := &http.Server{Handler: c.conman}
	go func() { _ = vmSrv.Serve(vmLn) }()
	select { // placement must know the VM before the first request
	case <-c.conman.Registered():
	case <-time.After(10 * time.Second):
		t.Fatal("the conman VM did not register with placement")
	}

	// The hosting proxy behind the tombstone forwarder.
	c.store, err = tombstone.NewMemStore(tombstone.MemStoreConfig{Now: clock.Now})
	require.NoError(t, err)
	c.hosting, err = hosting.New(hosting.Config{
		Zone: "repl.test", Cluster: id, Directory: dir, Placer: c.cp, Credential: e2eCredential,
		TrustForwarded: tombstone.Internal, Logger: log,
	})
	require.NoError(t, err)
	c.fwd, err = tombstone.New(tombstone.Config{
		Cluster: id, Zone: "repl.test", Store: c.store, Clusters: dir, Resolver: c.hosting,
		Secret: testSecret, Logger: log,
	})
	require.NoError(t, err)
	hostLn, err := net.Listen("tcp", "127.0."+itoa(n)+".1:0")
	require.NoError(t, err)
	c.addr = hostLn.Addr().String()
	// hosting.Server: the fast path for what the forwarder passes, net/http (and the forwarder)
	// for the rest.
	hostSrv, err := hosting.NewServer(hosting.ServerConfig{Proxy: c.hosting, Handler: c.fwd.Wrap(c.hosting), Divert: c.fwd.Divert})
	require.NoError(t, err)
	go func() { _ = hostSrv.Serve(hostLn) }()

	follower, err := tombstone.NewFollower(tombstone.FollowerConfig{
		Cluster: id, Store: c.store, Watcher: dir, Placement: c.cp, Now: clock.Now, Logger: log,
		Stop: func(ctx context.Context, a placement.Assignment) error { return c.conman.Stop(ctx, a.Repl) },
	})
	require.NoError(t, err)
	require.NoError(t, follower.Start())

	_, err = dir.PutCluster(ctx, lore.Cluster{
		ID: id, EvalURL: "ws://127.0." + itoa(n) + ".1:8443/v1/connect", HostingURL: "http://" + c.addr,
		Hosting4: []netip.Addr{netip.MustParseAddr("127.0." + itoa(n) + ".1")}, Healthy: true,
	})
	require.NoError(t, err)

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		assert.NoError(t, follower.Close())
		assert.NoError(t, hostSrv.Shutdown(ctx))
		assert.NoError(t, c.fwd.Shutdown(ctx))
		assert.NoError(t, c.hosting.Shutdown(ctx))
		_ = vmSrv.Shutdown(ctx)
		_ = c.conman.Shutdown(ctx)
		_ = c.conman.Close()
		_ = rt.Close()
	})
	return c
}

func (c *e2eCluster) get(t *testing.T, host string, hdr http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+c.addr+"/", nil)
	require.NoError(t, err)
	req.Host = host
	for k, v := range hdr {
		req.Header[k] = v
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// dnsA asks the authoritative server for host's A records.
func dnsA(t *testing.T, server, host string) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(host), dns.TypeA)
	r, _, err := new(dns.Client).Exchange(m, server)
	require.NoError(t, err)
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// TestMoveEndToEnd: a repl serving a page in cluster a moves to b; DNS answers b; a request sent
// to a (a resolver still caching the old answer) gets the page, served from b; a forged hop
// header gets 508; after the tombstone expires, a answers 404.
func TestMoveEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two clusters with real containers")
	}
	ctx := context.Background()
	clock := tombstonetest.NewClock(time.Now())
	dir, err := lore.New(lore.Config{Zone: "repl.test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	a := startE2ECluster(t, dir, "a", 1, clock)
	b := startE2ECluster(t, dir, "b", 2, clock)

	// DNS: dnsauth over the same directory.
	auth, err := dnsauth.New(dnsauth.Config{Zones: []dnsauth.Zone{{Name: "repl.test"}}, Directory: dir})
	require.NoError(t, err)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	started := make(chan struct{})
	dnsSrv := &dns.Server{PacketConn: pc, Handler: auth, NotifyStartedFunc: func() { close(started) }}
	dnsDone := make(chan error, 1)
	go func() { dnsDone <- dnsSrv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = dnsSrv.ShutdownContext(ctx); <-dnsDone })
	dnsAddr := pc.LocalAddr().String()

	repl, err := dir.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	const host = "blog.alice.repl.test"

	// In a: DNS answers a, a serves the page from its VM.
	assert.Equal(t, []string{"127.0.1.1"}, dnsA(t, dnsAddr, host))
	status, body := a.get(t, host, nil)
	require.Equal(t, 200, status, body)
	assert.Contains(t, body, "hello from 127.0.1.11")
	assert.Contains(t, a.conman.Running(), repl.ID)
	_, err = a.cp.Lookup(ctx, repl.ID)
	require.NoError(t, err, "a placed the repl")

	// Move to b.
	_, err = dir.MoveRepl(ctx, repl.ID, "b")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := a.store.Get(ctx, repl.ID); return err == nil }, 10*time.Second, 5*time.Millisecond,
		"a wrote the tombstone")
	require.Eventually(t, func() bool {
		_, err := a.cp.Lookup(ctx, repl.ID)
		return errors.Is(err, placement.ErrNotFound)
	}, 10*time.Second, 5*time.Millisecond, "a released the repl's VM")
	require.Eventually(t, func() bool { return !slices.Contains(a.conman.Running(), repl.ID) },
		10*time.Second, 5*time.Millisecond, "a's container stopped")

	// DNS now answers b.
	assert.Equal(t, []string{"127.0.2.1"}, dnsA(t, dnsAddr, host))

	// A client still using a's address gets the page, now served from b's VM (started on first use).
	status, body = a.get(t, host, nil)
	require.Equal(t, 200, status, body)
	assert.Contains(t, body, "hello from 127.0.2.11")
	assert.Contains(t, body, "forwarded for 127.0.0.1, ", "the app sees the client first, then cluster a's proxy")
	_, err = b.cp.Lookup(ctx, repl.ID)
	require.NoError(t, err, "b placed the repl")
	// Also by ID name, and directly at b.
	status, body = a.get(t, repl.ID+".id.repl.test", nil)
	require.Equal(t, 200, status, body)
	assert.Contains(t, body, "hello from 127.0.2.11")
	status, body = b.get(t, host, nil)
	require.Equal(t, 200, status, body)

	// A WebSocket through a reaches the repl in b.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(wctx, "ws://"+a.addr+"/ws", &websocket.DialOptions{Host: host})
	require.NoError(t, err)
	if resp.Body != nil {
		resp.Body.Close()
	}
	require.NoError(t, ws.Write(wctx, websocket.MessageText, []byte("through a")))
	_, msg, err := ws.Read(wctx)
	require.NoError(t, err)
	assert.Equal(t, "through a", string(msg))
	require.NoError(t, ws.Close(websocket.StatusNormalClosure, ""))

	// Forged loop headers get 508, at a and at b.
	for _, hop := range []string{
		"v1; via=b; t=" + itoa(1) + "; sig=AAAA",
		tombstone.SignHop([]byte("not-the-platform-secret-not-it!!"), []string{"b"}, time.Now(), host, "GET", "/"),
	} {
		for _, c := range []*e2eCluster{a, b} {
			status, body = c.get(t, host, http.Header{tombstone.HopHeader: {hop}})
			assert.Equal(t, http.StatusLoopDetected, status, body)
		}
	}
	// A real loop (a stale tombstone in b pointing back to a) is cut at 508 too.
	now := clock.Now()
	require.NoError(t, b.store.Put(ctx, tombstone.Tombstone{Repl: repl.ID, Owner: "alice", Slug: "blog", Cluster: "a", Created: now, Expires: now.Add(time.Minute)}))
	status, body = a.get(t, host, nil)
	assert.Equal(t, http.StatusLoopDetected, status, body)
	require.NoError(t, b.store.Delete(ctx, repl.ID))

	// After the tombstone expires, a answers 404: the repl is not hosted there.
	clock.Advance(tombstone.DefaultTTL + time.Second)
	status, body = a.get(t, host, nil)
	assert.Equal(t, 404, status, body)
	assert.Contains(t, body, "no repl is served at blog.alice.repl.test")
	status, _ = b.get(t, host, nil)
	assert.Equal(t, 200, status, "b still serves it")
}
