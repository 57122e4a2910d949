// Package etcdtest starts real etcd servers in the current process, on loopback ports, for
// tests, benchmarks and single-host demos of the etcd backends.
//
// It runs go.etcd.io/etcd/server/v3/embed: a full etcd member (raft, MVCC, leases, watches),
// not a fake. A Cluster of one member is ready in well under a second; a Cluster of three
// elects a leader in about ElectionTimeout. Data lives in the directory the caller gives (a
// t.TempDir() in tests); fsync is off by default because test data is disposable.
//
//	c := etcdtest.New(t, 3)             // stopped by t.Cleanup
//	cli := c.Client(t)                  // *clientv3.Client on every member
//	c.Stop(0)                           // kill one member (fault tests)
//
// Start is the same without a testing.TB, for programs (examples/platform) that want a private
// etcd on one host; they Close it themselves.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config says what cluster Start runs.
type Config struct {
	// Members is the number of etcd members. Zero means 1.
	Members int
	// Dir holds each member's data (Dir/m0, Dir/m1, ...). Required.
	Dir string
	// Host is the loopback address members listen on. Empty means 127.0.0.1.
	Host string
	// Fsync turns fsync on. False (the default) is fast and loses data on a machine crash,
	// which is right for tests and wrong for anything kept.
	Fsync bool
	// TickMs and ElectionMs are raft's heartbeat interval and election timeout. Zero means
	// 25 ms and 250 ms, short so fault tests re-elect quickly on loopback.
	TickMs, ElectionMs uint
	// StartTimeout bounds how long Start waits for every member to be ready. Zero means 20 s.
	StartTimeout time.Duration
}

// Cluster is a running set of embedded etcd members.
type Cluster struct {
	// Endpoints are the client URLs of every member, in member order.
	Endpoints []string

	mu      sync.Mutex
	members []*embed.Etcd // nil once stopped
}

// New starts an n-member cluster with data under t.TempDir() and stops it in t.Cleanup. It
// fails the test if the cluster does not start.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(Config{Members: n, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Start runs a cluster and returns once every member serves clients. Ports are picked free on
// Host; if another process takes one in between, Start tries again with new ports (3 times).
func Start(cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("etcdtest: Config.Dir is required")
	}
	if cfg.Members <= 0 {
		cfg.Members = 1
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.TickMs == 0 {
		cfg.TickMs = 25
	}
	if cfg.ElectionMs == 0 {
		cfg.ElectionMs = 10 * cfg.TickMs
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 20 * time.Second
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var c *Cluster
		if c, err = start(cfg, attempt); err == nil {
			return c, nil
		}
	}
	return nil, err
}

func freePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("etcdtest: pick a port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func start(cfg Config, attempt int) (*Cluster, error) {
	ports, err := freePorts(cfg.Host, 2*cfg.Members)
	if err != nil {
		return nil, err
	}
	u := func(port int) url.URL {
		return url.URL{Scheme: "http", Host: net.JoinHostPort(cfg.Host, fmt.Sprint(port))}
	}
	var initial []string
	for i := 0; i < cfg.Members; i++ {
		p := u(ports[2*i+1])
		initial = append(initial, fmt.Sprintf("m%d=%s", i, p.String()))
	}
	c := &Cluster{}
	// Members of a multi-member cluster wait for each other inside StartEtcd (the first raft
	// round), so they start concurrently.
	type result struct {
		i   int
		e   *embed.Etcd
		err error
	}
	results := make(chan result, cfg.Members)
	for i := 0; i < cfg.Members; i++ {
		ec := embed.NewConfig()
		ec.Name = fmt.Sprintf("m%d", i)
		ec.Dir = filepath.Join(cfg.Dir, fmt.Sprintf("a%d-m%d", attempt, i))
		if err := os.MkdirAll(ec.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("etcdtest: %w", err)
		}
		cu, pu := u(ports[2*i]), u(ports[2*i+1])
		ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		ec.InitialCluster = strings.Join(initial, ",")
		ec.InitialClusterToken = fmt.Sprintf("etcdtest-%d", ports[0])
		ec.ClusterState = embed.ClusterStateFlagNew
		ec.UnsafeNoFsync = !cfg.Fsync
		ec.TickMs, ec.ElectionMs = cfg.TickMs, cfg.ElectionMs
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		ec.LogLevel = "error"
		c.Endpoints = append(c.Endpoints, cu.String())
		go func(i int) {
			e, err := embed.StartEtcd(ec)
			results <- result{i, e, err}
		}(i)
	}
	c.members = make([]*embed.Etcd, cfg.Members)
	var firstErr error
	for i := 0; i < cfg.Members; i++ {
		r := <-results
		if r.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("etcdtest: start member %d: %w", r.i, r.err)
		}
		c.members[r.i] = r.e
	}
	if firstErr != nil {
		c.Close()
		return nil, firstErr
	}
	timeout := time.NewTimer(cfg.StartTimeout)
	defer timeout.Stop()
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			c.Close()
			return nil, fmt.Errorf("etcdtest: member %d: %w", i, err)
		case <-timeout.C:
			c.Close()
			return nil, fmt.Errorf("etcdtest: cluster not ready after %v", cfg.StartTimeout)
		}
	}
	return c, nil
}

// Stop kills member i (closes its listeners and raft); the others keep serving if they are a
// majority. Stopping a stopped member does nothing.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	e := c.members[i]
	c.members[i] = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Close stops every member and waits for them.
func (c *Cluster) Close() {
	for i := range c.members {
		c.Stop(i)
	}
}

// Server returns member i's embed.Etcd, nil once stopped (for compaction, leader checks).
func (c *Cluster) Server(i int) *embed.Etcd {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i]
}

// NewClient returns a client of every member (the caller closes it).
func (c *Cluster) NewClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Client returns a client of every member, closed in t.Cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := c.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Compact compacts the cluster's history up to the current revision (physically), so watches
// from older revisions fail with ErrCompacted: for tests of watch recovery.
func (c *Cluster) Compact(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, "\x00")
	if err != nil {
		return 0, fmt.Errorf("etcdtest: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, fmt.Errorf("etcdtest: compact: %w", err)
	}
	return rev, nil
}
