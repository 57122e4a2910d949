package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/etcd"
	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// The secrets a component process takes from its environment, never from its command line
// (which every user of the host can read).
const (
	envAdminKey   = "SWITCHYARD_ADMIN_KEY"
	envCredential = "SWITCHYARD_CREDENTIAL" // the cluster's placement credential (controlplane, proxies)
	envHopSecret  = "SWITCHYARD_HOP_SECRET" // hex: the platform's tombstone hop key
	// envVMSecret is the controlplane's: it derives each VM agent's own credential.
	envVMSecret = "SWITCHYARD_VM_SECRET"
	// envVMCredential is one conman VM's placement credential (placement.VMCredential).
	envVMCredential = "SWITCHYARD_VM_CREDENTIAL"
	// envConmanCredential is one conman VM's own credential (conman.VMCredential).
	envConmanCredential = "SWITCHYARD_CONMAN_CREDENTIAL"
	// envConmanKey is the proxies': every VM's conman credential derives from it.
	envConmanKey = "SWITCHYARD_CONMAN_KEY"
)

// components are what `platform run <component>` runs, each as its own process.
var components = map[string]func(context.Context, *componentFlags) (*component, error){
	"lore":         runLore,
	"dns":          runDNSComponent,
	"controlplane": runControlplane,
	"conman":       runConman,
	"eval":         runEval,
	"hosting":      runHostingComponent,
}

// componentFlags are the flags of every component; each uses the ones it needs.
type componentFlags struct {
	addr         string
	zone         string
	cluster      string
	id           string
	controlplane string
	loreURL      string
	state        string
	isolation    string
	runtime      string
	endpoints    []string
	aliveTTL     time.Duration
	grace        time.Duration
	https        string                // hosting: serve HTTPS here too (acme.go)
	acmeCA       string                // hosting: the ACME directory URL
	acmeCARoot   string                // hosting: PEM trusted for the CA's API
	inherit      bool                  // conman: take over from the conman running on this VM (upgrade in place)
	metrics      string                // serve Prometheus /metrics here too ("" for none)
	reg          prometheus.Registerer // where the component's metrics go; nil without -metrics
	log          *slog.Logger
	cli          *clientv3.Client // nil until needed
}

// component is a running component: the address it serves and how it stops.
type component struct {
	addr string
	stop group
	// exit, when closed, ends the component without a signal (a conman that handed over to
	// its successor). Nil for the others.
	exit chan struct{}
}

// runComponent runs one component until SIGINT or SIGTERM, then stops it (bounded by -grace).
// It prints "ready <addr>" on stdout once it serves, for the process that started it.
func runComponent(name string, args []string) error {
	start, ok := components[name]
	if !ok {
		return fmt.Errorf("unknown component %q (dns, lore, eval, hosting, controlplane, conman)", name)
	}
	fs := flag.NewFlagSet("run "+name, flag.ContinueOnError)
	var (
		f         componentFlags
		endpoints = fs.String("etcd-endpoints", "", "etcd client URLs, comma-separated")
		verbose   = fs.Bool("v", false, "log at debug level")
	)
	fs.StringVar(&f.addr, "addr", "127.0.0.1:0", "address to serve on")
	fs.StringVar(&f.zone, "zone", "repl.test", "the platform DNS zone")
	fs.StringVar(&f.cluster, "cluster", "", "the cluster ID (controlplane, conman, eval, hosting)")
	fs.StringVar(&f.id, "id", "", "the VM ID (conman)")
	fs.StringVar(&f.controlplane, "controlplane", "", "the cluster's controlplane URL (conman, eval, hosting)")
	fs.StringVar(&f.loreURL, "lore", "", "lore's API URL (eval: connect-token keys)")
	fs.StringVar(&f.state, "state", "", "conman state and repl files directory (conman)")
	fs.StringVar(&f.isolation, "isolation", "", "conman/process isolation (conman)")
	fs.StringVar(&f.runtime, "runtime", RuntimeProcess, "the repls' runtime: process, runc or runsc (conman)")
	fs.DurationVar(&f.aliveTTL, "alive-ttl", 5*time.Second, "the VM's etcd lease TTL (conman)")
	fs.DurationVar(&f.grace, "grace", 30*time.Second, "how long stopping may take (live sessions drain)")
	fs.StringVar(&f.https, "https", "", "address to serve HTTPS on too (hosting)")
	fs.StringVar(&f.acmeCA, "acme-ca", "", "ACME directory URL (hosting, with -https)")
	fs.StringVar(&f.acmeCARoot, "acme-ca-root", "", "PEM file trusted for the ACME CA's API (hosting)")
	fs.BoolVar(&f.inherit, "inherit", false, "take over from the conman running on this VM: its listener, shells and live sessions (conman)")
	fs.StringVar(&f.metrics, "metrics", "", "address to serve Prometheus /metrics on (every component; empty: none)")
	var etls EtcdTLS
	etcdTLSFlags(fs, &etls)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	f.endpoints = splitList(*endpoints)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	f.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", name)
	if f.cluster != "" {
		f.log = f.log.With("cluster", f.cluster)
	}
	{
		if len(f.endpoints) == 0 {
			return errors.New("-etcd-endpoints is required")
		}
		cli, err := etcdClient(f.endpoints, etls)
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		defer cli.Close()
		f.cli = cli
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var reg *prometheus.Registry
	if f.metrics != "" {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		f.reg = reg
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	c, err := start(ctx, &f)
	var metricsAddr string
	if err == nil && reg != nil {
		var ms *server
		if ms, err = serve(ctx, "metrics", f.metrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), false); err == nil {
			c.stop.add(ms.Shutdown)
			metricsAddr = ms.Addr()
		}
	}
	cancel()
	if err != nil {
		if c != nil {
			sctx, cancel := context.WithTimeout(context.Background(), f.grace)
			defer cancel()
			c.stop.shutdown(sctx)
		}
		return err
	}
	if metricsAddr != "" {
		fmt.Printf("ready %s metrics %s\n", c.addr, metricsAddr)
	} else {
		fmt.Printf("ready %s\n", c.addr)
	}
	select {
	case sig := <-sigs:
		f.log.Info("stopping", "signal", sig.String())
	case <-c.exit:
		f.log.Info("handed over to the successor; exiting")
	}
	sctx, cancel := context.WithTimeout(context.Background(), f.grace)
	defer cancel()
	return c.stop.shutdown(sctx)
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func (f *componentFlags) need(names ...string) error {
	vals := map[string]string{"cluster": f.cluster, "id": f.id, "controlplane": f.controlplane, "lore": f.loreURL, "state": f.state}
	for _, n := range names {
		if vals[n] == "" {
			return fmt.Errorf("-%s is required", n)
		}
	}
	return nil
}

// credential reads the cluster's placement credential from the environment.
func credential() (string, error) {
	return secretEnv(envCredential, "the cluster's placement credential")
}

// secretEnv reads a secret the parent passed in the environment, and drops it from the
// environment so nothing this process starts inherits it.
func secretEnv(name, what string) (string, error) {
	c := os.Getenv(name)
	if c == "" {
		return "", fmt.Errorf("$%s (%s) is required", name, what)
	}
	os.Unsetenv(name)
	return c, nil
}

func runLore(ctx context.Context, f *componentFlags) (*component, error) {
	adminKey := os.Getenv(envAdminKey)
	if adminKey == "" {
		return nil, fmt.Errorf("$%s is required", envAdminKey)
	}
	c := &component{}
	store, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: f.cli})
	if err != nil {
		return nil, err
	}
	c.stop.add(func(context.Context) error { return store.Close() })
	_, api, err := newLore(loreConfig{zone: f.zone, store: store, adminKey: adminKey, onStop: c.stop.add, registerer: f.reg, log: f.log})
	if err != nil {
		return c, err
	}
	srv, err := serve(ctx, "lore", f.addr, api, false)
	if err != nil {
		return c, err
	}
	c.stop.add(srv.Shutdown)
	c.addr = srv.Addr()
	return c, nil
}

// mirror opens lore's store in etcd and a mirror of it; both stop with c.
func (f *componentFlags) mirror(ctx context.Context, c *component) (*etcd.LoreStore, *etcd.Mirror, error) {
	store, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: f.cli})
	if err != nil {
		return nil, nil, err
	}
	c.stop.add(func(context.Context) error { return store.Close() })
	m, err := etcd.NewMirror(ctx, etcd.MirrorConfig{Store: store, Logger: f.log, Registerer: f.reg})
	if err != nil {
		return nil, nil, err
	}
	c.stop.add(func(context.Context) error { return m.Close() })
	return store, m, nil
}

func runDNSComponent(ctx context.Context, f *componentFlags) (*component, error) {
	c := &component{}
	store, m, err := f.mirror(ctx, c)
	if err != nil {
		return c, err
	}
	// ACME: challenge values from etcd.ACMEStore, owners' delegations from lore's store.
	dir, err := lore.New(lore.Config{Zone: f.zone, Store: store, Logger: f.log})
	if err != nil {
		return c, err
	}
	c.stop.add(func(context.Context) error { return dir.Close() })
	// The in-process platform's DNS wiring, over the mirror.
	p := &Platform{cfg: Config{Zone: f.zone, DNSAddr: f.addr, Store: StoreEtcd}, log: f.log, reader: m, dir: dir, etcdCli: f.cli}
	c.stop.add(p.stop.shutdown)
	if err := p.startDNS(); err != nil {
		return c, err
	}
	c.addr = p.DNSAddr()
	return c, nil
}

func runControlplane(ctx context.Context, f *componentFlags) (*component, error) {
	if err := f.need("cluster"); err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	vmSecret, err := secretEnv(envVMSecret, "the secret VM credentials derive from")
	if err != nil {
		return nil, err
	}
	c := &component{}
	_, api, err := newControlplane(ctx, controlplaneConfig{
		etcd: f.cli, cluster: f.cluster, credential: cred, vmSecret: vmSecret, onStop: c.stop.add, registerer: f.reg, log: f.log,
	})
	if err != nil {
		return c, err
	}
	srv, err := serve(ctx, "controlplane", f.addr, api, false)
	if err != nil {
		return c, err
	}
	c.stop.add(srv.Shutdown)
	c.addr = srv.Addr()
	return c, nil
}

func runConman(ctx context.Context, f *componentFlags) (*component, error) {
	if err := f.need("cluster", "id", "controlplane", "state"); err != nil {
		return nil, err
	}
	// A VM gets the conman credential and its own placement credential, never the cluster's.
	cred, err := secretEnv(envConmanCredential, "the conman credential")
	if err != nil {
		return nil, err
	}
	vmCred, err := secretEnv(envVMCredential, "this VM's placement credential")
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(f.addr)
	if err != nil {
		return nil, fmt.Errorf("-addr: %w", err)
	}
	if port == "0" || port == "" {
		return nil, errors.New("-addr needs a fixed port: it is the VM's address in placement")
	}
	c := &component{}
	store, err := etcd.NewLoreStore(etcd.LoreStoreConfig{Client: f.cli}) // repl names for the page
	if err != nil {
		return nil, err
	}
	c.stop.add(func(context.Context) error { return store.Close() })
	// Stopped in reverse: conman drains (its containers stop, its repls are released), the
	// listener closes, the runtime closes, and the lease is revoked: the VM leaves placement.
	// After a handoff to a successor nothing drains and the lease is left to the successor.
	var lease *etcd.VMLease
	var handedOver atomic.Bool
	leaseCtx, leaseCancel := context.WithCancel(context.Background())
	c.stop.add(func(ctx context.Context) error {
		defer leaseCancel()
		if lease == nil || handedOver.Load() {
			return nil
		}
		return lease.Close(ctx)
	})
	vmDir := filepath.Join(f.state, "conman", f.id)
	var in *conman.Inheritance
	var inherited net.Listener
	if f.inherit {
		var err error
		if in, inherited, err = receiveConman(ctx, vmDir); err != nil {
			return c, err
		}
	}
	rt, err := newRuntime(f.runtime, f.isolation, vmDir, f.state,
		cgroupParent(f.state, f.id), f.log.With("vm", f.id))
	if err != nil {
		if in != nil {
			in.Close()
			inherited.Close()
		}
		return c, err
	}
	c.stop.add(func(context.Context) error { return rt.Close() })
	addr := f.addr
	cm, err := conman.New(ctx, conman.Config{
		Runtime:           rt,
		Credential:        cred,
		ReplHost:          host,
		Spec:              demoSpec(exe, f.state, f.cluster, f.id, store.Repl),
		StopGrace:         3 * time.Second,
		Placement:         placement.NewVMClient(f.controlplane, f.id, vmCred, nil),
		VM:                placement.VM{ID: f.id, Cluster: f.cluster, Addr: "http://" + addr, Build: "platform", Capacity: placement.Resources{Containers: 100}},
		HeartbeatInterval: time.Second,
		Inherit:           in,
		Registerer:        f.reg,
		Logger:            f.log.With("vm", f.id),
	})
	if err != nil {
		if in != nil {
			in.Close()
			inherited.Close()
		}
		return c, err
	}
	var srv *server
	if inherited != nil {
		srv = serveOn("conman", inherited, cm, nil)
	} else if srv, err = serve(ctx, "conman", addr, cm, false); err != nil {
		cm.Close()
		return c, err
	}
	c.stop.add(func(ctx context.Context) error {
		if handedOver.Load() {
			return nil // Handoff stopped it
		}
		return srv.Shutdown(ctx)
	})
	c.stop.add(cm.Shutdown) // after a handoff the Server is closed: a no-op
	select {
	case <-cm.Registered():
	case <-ctx.Done():
		return c, fmt.Errorf("did not register with placement: %w", ctx.Err())
	}
	lease, err = etcd.KeepVMAlive(leaseCtx, etcd.VMLeaseConfig{Client: f.cli, Prefix: "/switchyard/alive/" + f.cluster + "/", TTL: f.aliveTTL}, f.id)
	if err != nil {
		return c, err
	}
	// The successor of an upgrade in place connects here (root-only, in the VM's state
	// directory).
	c.exit = make(chan struct{})
	hl, err := listenHandoff(vmDir)
	if err != nil {
		return c, err
	}
	handoffDone := make(chan struct{})
	c.stop.add(func(context.Context) error {
		hl.Close()
		<-handoffDone
		return nil
	})
	go func() {
		defer close(handoffDone)
		for {
			uc, err := hl.AcceptUnix()
			if err != nil {
				return
			}
			stopped, err := handOffConman(f.log, srv, cm, uc)
			uc.Close()
			if !stopped {
				f.log.Warn("handoff socket: not a successor", "err", err)
				continue // nothing was stopped
			}
			if err != nil {
				f.log.Error("upgrade in place failed", "err", err)
			}
			handedOver.Store(true)
			close(c.exit) // one successor: this process exits after it
			return
		}
	}()
	c.addr = addr
	return c, nil
}

// handoffSocket is where a VM's conman waits for its successor.
func handoffSocket(vmDir string) string { return filepath.Join(vmDir, "handoff.sock") }

// listenHandoff listens on the VM's handoff socket, readable and writable by root only.
func listenHandoff(vmDir string) (*net.UnixListener, error) {
	path := handoffSocket(vmDir)
	if len(path) > 100 {
		return nil, fmt.Errorf("handoff socket path %q too long for a unix socket: use a shorter -state", path)
	}
	if err := os.MkdirAll(vmDir, 0o711); err != nil {
		return nil, err
	}
	_ = os.Remove(path) // the predecessor's: it has handed over
	hl, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("handoff socket: %w", err)
	}
	hl.SetUnlinkOnClose(false) // a successor may have bound the path anew
	if err := os.Chmod(path, 0o600); err != nil {
		hl.Close()
		return nil, err
	}
	return hl, nil
}

// handOffConman checks that uc is a successor, then stops serving requests and hands the
// listener, the shells and the live attach connections to it. stopped says whether it got that
// far: a stray connection stops nothing.
func handOffConman(log *slog.Logger, srv *server, cm *conman.Server, uc *net.UnixConn) (stopped bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conman.AcceptSuccessor(ctx, uc); err != nil {
		return false, err
	}
	lnFile, err := srv.listenerFile()
	if err != nil {
		return false, err
	}
	defer lnFile.Close()
	// New connections wait in the socket's queue for the successor; requests in flight here
	// are answered first (a bounded wait).
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("upgrade in place: requests still in flight were cut", "err", err)
	}
	scancel()
	return true, cm.Handoff(ctx, uc, lnFile)
}

// receiveConman takes over from the conman running on this VM: it returns the inheritance for
// conman.New and the listener to serve.
func receiveConman(ctx context.Context, vmDir string) (*conman.Inheritance, net.Listener, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", handoffSocket(vmDir))
	if err != nil {
		return nil, nil, fmt.Errorf("-inherit: the running conman: %w", err)
	}
	defer c.Close()
	in, err := conman.ReceiveHandoff(ctx, c.(*net.UnixConn))
	if err != nil {
		return nil, nil, fmt.Errorf("-inherit: %w", err)
	}
	if len(in.Files) != 1 {
		in.Close()
		for _, f := range in.Files {
			f.Close()
		}
		return nil, nil, fmt.Errorf("-inherit: the predecessor handed over %d listeners, want 1", len(in.Files))
	}
	ln, err := net.FileListener(in.Files[0])
	in.Files[0].Close()
	if err != nil {
		in.Close()
		return nil, nil, fmt.Errorf("-inherit: listener: %w", err)
	}
	return in, ln, nil
}

func runEval(ctx context.Context, f *componentFlags) (*component, error) {
	if err := f.need("cluster", "controlplane", "lore"); err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	conmanKey, err := secretEnv(envConmanKey, "the key conman credentials derive from")
	if err != nil {
		return nil, err
	}
	conmanCred := func(vm string) string { return conman.VMCredential(conmanKey, vm) }
	c := &component{}
	// Where repls live now, from an etcd mirror: a token for a repl that moved is refused.
	_, m, err := f.mirror(ctx, c)
	if err != nil {
		return c, err
	}
	eval, mux, err := newEval(evalConfig{
		cluster:    f.cluster,
		loreURL:    strings.TrimSuffix(f.loreURL, "/"),
		placer:     placement.NewClient(f.controlplane, cred, nil),
		conmanCred: conmanCred,
		directory:  m,
		registerer: f.reg,
		log:        f.log,
	})
	if err != nil {
		return nil, err
	}
	c.stop.add(eval.Shutdown)
	warnReusePort(f.log)
	srv, err := serve(ctx, "eval", f.addr, mux, true)
	if err != nil {
		return c, err
	}
	c.stop.add(srv.Shutdown)
	c.addr = srv.Addr()
	return c, nil
}

func runHostingComponent(ctx context.Context, f *componentFlags) (*component, error) {
	if err := f.need("cluster", "controlplane"); err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	conmanKey, err := secretEnv(envConmanKey, "the key conman credentials derive from")
	if err != nil {
		return nil, err
	}
	conmanCred := func(vm string) string { return conman.VMCredential(conmanKey, vm) }
	secret, err := hex.DecodeString(os.Getenv(envHopSecret))
	if err != nil || len(secret) < 32 {
		return nil, fmt.Errorf("$%s must be at least 32 hex-encoded bytes", envHopSecret)
	}
	c := &component{}
	store, m, err := f.mirror(ctx, c)
	if err != nil {
		return c, err
	}
	tombs, err := tombstoneMirror(ctx, f.cli, f.cluster, f.log, f.reg, c.stop.add)
	if err != nil {
		return c, err
	}
	var h *hosting.Proxy // shut down last, after the forwarder that feeds it
	c.stop.add(func(ctx context.Context) error {
		if h == nil {
			return nil
		}
		return h.Shutdown(ctx)
	})
	h, handler, fwd, err := newHosting(hostingConfig{
		zone:       f.zone,
		cluster:    f.cluster,
		directory:  m,
		clusters:   m,
		watcher:    store,
		placer:     placement.NewClient(f.controlplane, cred, nil),
		conmanCred: conmanCred,
		store:      tombs,
		secret:     secret,
		// The VM's conman is another process: stop the moved repl through its API.
		stopRepl: func(ctx context.Context, a placement.Assignment) error {
			err := conman.NewClient(a.Addr, conmanCred(a.VM), nil).Stop(ctx, a.Repl)
			if errors.Is(err, conman.ErrNotFound) {
				return nil // not running there: nothing to stop
			}
			return err
		},
		onStop:     c.stop.add,
		registerer: f.reg,
		log:        f.log,
	})
	if err != nil {
		return c, err
	}
	srv, err := serveHosting(ctx, f.addr, h, handler, fwd.Divert, f.reg)
	if err != nil {
		return c, err
	}
	c.stop.add(srv.Shutdown)
	c.addr = srv.Addr()
	if f.https != "" {
		if err := startComponentHTTPS(ctx, f, c, m, handler); err != nil {
			return c, err
		}
	}
	return c, nil
}

// child is a component process started by the all-in-one parent.
type child struct {
	name  string
	label string // the VM ID of a conman
	cmd   *exec.Cmd
	addr  string
	// metrics is the address of its /metrics (run with -metrics), or "".
	metrics string
	done    chan struct{}
	err     error
}

// startChild runs `<this binary> run <component> args...` with env added, and waits for its
// "ready <addr>" line ("ready <addr> metrics <addr>" with -metrics).
func startChild(ctx context.Context, name string, env []string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"run", name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	// Its own process group, so a terminal's Ctrl-C reaches only the parent, which stops the
	// children in order; SIGTERM if the parent dies without stopping them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				select {
				case ready <- a:
				default:
				}
			}
		}
		c.err = cmd.Wait()
		close(c.done)
	}()
	select {
	case a := <-ready:
		f := strings.Fields(a)
		if len(f) == 0 {
			c.kill()
			return nil, fmt.Errorf("%s: empty ready line", name)
		}
		c.addr = f[0]
		if len(f) == 3 && f[1] == "metrics" {
			c.metrics = f[2]
		}
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v", name, c.err)
	case <-ctx.Done():
		c.kill()
		return nil, fmt.Errorf("%s: not ready: %w", name, ctx.Err())
	}
}

// metricsAddr is where a component started with args serves /metrics: the host of its -addr,
// on a free port.
func metricsAddr(args []string) string {
	host := "127.0.0.1"
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-addr" {
			if h, _, err := net.SplitHostPort(args[i+1]); err == nil && h != "" {
				host = h
			}
		}
	}
	return net.JoinHostPort(host, "0")
}

// stop sends SIGTERM and waits; when ctx ends first it kills the process.
func (c *child) stop(ctx context.Context) error {
	c.cmd.Process.Signal(syscall.SIGTERM) // an error means it has exited: done tells
	select {
	case <-c.done:
	case <-ctx.Done():
		c.kill()
	}
	if c.err != nil {
		return fmt.Errorf("%s (pid %d): %w", c.name, c.cmd.Process.Pid, c.err)
	}
	return nil
}

func (c *child) kill() {
	c.cmd.Process.Kill()
	<-c.done
}

// supervised keeps one component running: when its process dies on its own, it is started
// again on the same address, with a backoff (100 ms doubling to 30 s, reset after a minute of
// life), and nothing else is stopped. A conman that comes back adopts the containers it left.
type supervised struct {
	name string
	env  []string
	args []string
	log  *slog.Logger

	mu       sync.Mutex
	cur      *child
	restarts int
	stopping bool
	upgrade  chan struct{} // non-nil while an upgrade in place runs; closed when it ends
	quit     chan struct{}
	done     chan struct{}
}

func supervise(first *child, env, args []string, log *slog.Logger) *supervised {
	s := &supervised{name: first.name, env: env, args: withAddr(args, first.addr), log: log,
		cur: first, quit: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// withAddr returns args with the value of -addr set to addr (a port 0 became a real port: a
// restarted component must come back where the others reach it).
func withAddr(args []string, addr string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "-addr" {
			out[i+1] = addr
		}
	}
	return out
}

func (s *supervised) current() *child {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *supervised) run() {
	defer close(s.done)
	backoff := 100 * time.Millisecond
	for {
		c := s.current()
		started := time.Now()
		select {
		case <-c.done:
		case <-s.quit:
			return
		}
		s.mu.Lock()
		stopping, upgrading, replaced := s.stopping, s.upgrade, s.cur != c
		s.mu.Unlock()
		if stopping {
			return
		}
		if upgrading != nil {
			// The process exited because it handed over to its successor (or the upgrade
			// failed): look again once the upgrade has ended.
			select {
			case <-upgrading:
			case <-s.quit:
				return
			}
			s.mu.Lock()
			replaced = s.cur != c
			s.mu.Unlock()
		}
		if replaced {
			continue
		}
		if time.Since(started) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		for {
			s.log.Error("component exited; starting it again", "component", s.name, "pid", c.cmd.Process.Pid, "err", c.err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.quit:
				return
			}
			backoff = min(2*backoff, 30*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			next, err := startChild(ctx, s.name, s.env, s.args...)
			cancel()
			if err == nil {
				s.mu.Lock()
				s.cur = next
				s.restarts++
				s.mu.Unlock()
				s.log.Info("component restarted", "component", s.name, "pid", next.cmd.Process.Pid, "addr", next.addr)
				break
			}
			s.log.Error("component restart failed", "component", s.name, "err", err)
		}
	}
}

// upgradeInPlace starts a successor of the component with -inherit, which takes over from the
// running process (a conman: its listener, shells and live sessions), and waits until the old
// process has exited. It returns the old and the new process IDs.
func (s *supervised) upgradeInPlace(ctx context.Context) (int, int, error) {
	s.mu.Lock()
	if s.upgrade != nil || s.stopping {
		s.mu.Unlock()
		return 0, 0, errors.New("an upgrade or a stop is already running")
	}
	done := make(chan struct{})
	s.upgrade = done
	old := s.cur
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.upgrade = nil
		s.mu.Unlock()
		close(done)
	}()
	next, err := startChild(ctx, s.name, s.env, append(s.args[:len(s.args):len(s.args)], "-inherit")...)
	if err != nil {
		return 0, 0, err
	}
	select {
	case <-old.done:
	case <-ctx.Done():
		// The successor is ready, so it holds everything: the old one must go.
		s.log.Warn("the old process did not exit after the upgrade: killing it", "component", s.name, "pid", old.cmd.Process.Pid)
		old.kill()
	}
	s.mu.Lock()
	s.cur = next
	s.mu.Unlock()
	s.log.Info("component upgraded in place", "component", s.name, "old_pid", old.cmd.Process.Pid, "pid", next.cmd.Process.Pid)
	return old.cmd.Process.Pid, next.cmd.Process.Pid, nil
}

// stop ends supervision and stops the component.
func (s *supervised) stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	close(s.quit)
	<-s.done
	return s.current().stop(ctx)
}

// runProcesses is the all-in-one parent of the multi-process mode: it starts etcd (unless
// endpoints are given) and every component as its own process, wires their addresses by
// flags, publishes the clusters in lore, and on SIGINT/SIGTERM stops the children in reverse
// order.
func runProcesses(cfg Config, sigs <-chan os.Signal) (err error) {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	log := cfg.Logger
	var children []*supervised
	var etcdServer *embeddedEtcd
	stopAll := func(ctx context.Context) error {
		var errs []error
		for i := len(children) - 1; i >= 0; i-- {
			errs = append(errs, children[i].stop(ctx))
		}
		if etcdServer != nil {
			etcdServer.Close()
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stopAll(sctx)
		}
	}()
	endpoints := cfg.EtcdEndpoints
	etls := cfg.EtcdTLS
	var ca *pki
	if len(endpoints) == 0 {
		if ca, err = openPKI(filepath.Join(cfg.StateDir, "pki")); err != nil {
			return err
		}
		if etcdServer, err = startEmbeddedEtcd(filepath.Join(cfg.StateDir, "etcd"), cfg.EtcdHost, ca); err != nil {
			return err
		}
		endpoints = etcdServer.Endpoints
		etls = EtcdTLS{CAFile: ca.CAFile()}
	}
	// Each component presents a client certificate of its own (the deployment CA's), or the
	// one the operator gave for external endpoints.
	etcdArgs := func(component string) ([]string, error) {
		t := etls
		if ca != nil {
			var err error
			if t.CertFile, t.KeyFile, err = ca.issue("component-"+component, false); err != nil {
				return nil, err
			}
		}
		args := []string{"-etcd-endpoints=" + strings.Join(endpoints, ",")}
		if t.CAFile != "" {
			args = append(args, "-etcd-ca="+t.CAFile)
		}
		if t.CertFile != "" {
			args = append(args, "-etcd-cert="+t.CertFile, "-etcd-key="+t.KeyFile)
		}
		if t.Insecure {
			args = append(args, "-etcd-insecure")
		}
		return args, nil
	}
	hop := make([]byte, 32)
	if _, err := rand.Read(hop); err != nil {
		return err
	}
	adminEnv, hopEnv := envAdminKey+"="+cfg.AdminKey, envHopSecret+"="+hex.EncodeToString(hop)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := func(name string, env []string, args ...string) (*child, error) {
		ea, err := etcdArgs(name)
		if err != nil {
			return nil, err
		}
		args = append(ea, args...)
		if cfg.ComponentMetrics {
			args = append(args, "-metrics", metricsAddr(args))
		}
		c, err := startChild(ctx, name, env, args...)
		if err != nil {
			return nil, err
		}
		children = append(children, supervise(c, env, args, log))
		log.Info("component started", "component", name, "pid", c.cmd.Process.Pid, "addr", c.addr, "metrics", c.metrics)
		return c, nil
	}
	loreC, err := start("lore", []string{adminEnv}, "-zone", cfg.Zone, "-addr", cfg.LoreAddr)
	if err != nil {
		return err
	}
	loreURL := "http://" + loreC.addr
	dnsC, err := start("dns", nil, "-zone", cfg.Zone, "-addr", cfg.DNSAddr)
	if err != nil {
		return err
	}
	var acme *processesACME
	if !cfg.ACME.Disable {
		t := etls
		if ca != nil {
			if t.CertFile, t.KeyFile, err = ca.issue("component-acme", false); err != nil {
				return err
			}
		}
		if acme, err = startProcessesACME(ctx, cfg, endpoints, t, dnsC.addr); err != nil {
			return err
		}
		defer acme.stop(context.Background())
	}
	lc := lore.NewClient(loreURL, cfg.AdminKey, nil)
	type clusterProcs struct {
		id                          string
		controlplane, eval, hosting *child
		vms                         []*child
		sup                         map[string]*supervised // the VMs' supervisors, by VM ID
	}
	var clusters []clusterProcs
	for i, id := range cfg.Clusters {
		n := i + 1
		at := func(h, port int) string { return net.JoinHostPort(cfg.clusterAddr(n, h).String(), itoa(port)) }
		// Each component gets only the secrets it needs: the proxies the placement and conman
		// credentials, the controlplane the placement credential and the VM secret, each VM
		// the conman credential and its own placement credential.
		placementCred, vmSecret, conmanKey := randomKey(), randomKey(), randomKey()
		env := []string{envCredential + "=" + placementCred, envConmanKey + "=" + conmanKey}
		cpEnv := []string{envCredential + "=" + placementCred, envVMSecret + "=" + vmSecret}
		cl := clusterProcs{id: id, sup: map[string]*supervised{}}
		if cl.controlplane, err = start("controlplane", cpEnv, "-cluster", id, "-addr", at(1, cfg.ControlplanePort)); err != nil {
			return err
		}
		cpURL := "http://" + cl.controlplane.addr
		for v := 0; v < cfg.VMs; v++ {
			vmID := fmt.Sprintf("%s-vm%d", id, v+1)
			vmEnv := []string{envConmanCredential + "=" + conman.VMCredential(conmanKey, vmID), envVMCredential + "=" + placement.VMCredential(vmSecret, vmID)}
			vm, err := start("conman", vmEnv, "-cluster", id, "-id", vmID,
				"-addr", at(11+v, cfg.ConmanPort), "-controlplane", cpURL, "-state", cfg.StateDir,
				"-isolation", cfg.Isolation, "-runtime", cfg.Runtime, "-alive-ttl", cfg.AliveTTL.String())
			if err != nil {
				return err
			}
			vm.label = vmID
			cl.vms = append(cl.vms, vm)
			cl.sup[vmID] = children[len(children)-1]
		}
		if cl.eval, err = start("eval", env, "-cluster", id, "-addr", at(1, cfg.EvalPort), "-controlplane", cpURL,
			"-lore", loreURL, "-grace", cfg.EvalGrace.String()); err != nil {
			return err
		}
		hostingArgs := []string{"-zone", cfg.Zone, "-cluster", id, "-addr", at(1, cfg.HostingPort), "-controlplane", cpURL}
		if acme != nil {
			hostingArgs = append(hostingArgs, acme.hostingArgs(at(1, cfg.ACME.HTTPSPort))...)
		}
		if cl.hosting, err = start("hosting", append(env[:len(env):len(env)], hopEnv), hostingArgs...); err != nil {
			return err
		}
		if _, err := lc.PutCluster(ctx, lore.Cluster{
			ID: id, Region: "loopback-" + id,
			EvalURL:    "ws://" + cl.eval.addr + "/v1/connect",
			HostingURL: "http://" + cl.hosting.addr,
			Hosting4:   []netip.Addr{cfg.clusterAddr(n, 1)},
			Healthy:    true,
		}); err != nil {
			return fmt.Errorf("publish cluster %s: %w", id, err)
		}
		clusters = append(clusters, cl)
	}

	// The admin API of this mode: upgrade a VM's conman in place.
	admin := http.NewServeMux()
	admin.HandleFunc("POST /v1/clusters/{cluster}/vms/{vm}/upgrade", func(w http.ResponseWriter, r *http.Request) {
		var sup *supervised
		for _, cl := range clusters {
			if cl.id == r.PathValue("cluster") {
				sup = cl.sup[r.PathValue("vm")]
			}
		}
		if sup == nil {
			writeJSONError(w, http.StatusNotFound, "no such cluster or VM")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		oldPid, pid, err := sup.upgradeInPlace(ctx)
		if err != nil {
			writeJSONError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"vm": r.PathValue("vm"), "old_pid": oldPid, "pid": pid})
	})
	adminSrv, err := serve(ctx, "admin", cfg.AdminAddr, requireKey(cfg.AdminKey, admin), false)
	if err != nil {
		return err
	}
	defer adminSrv.Shutdown(context.Background())

	w := os.Stdout
	fmt.Fprintf(w, "\nswitchyard reference platform is up, one process per component\n\n")
	fmt.Fprintf(w, "  admin API       http://%s   (upgrade a VM's conman in place)\n", adminSrv.Addr())
	fmt.Fprintf(w, "  zone            %s\n", cfg.Zone)
	fmt.Fprintf(w, "  etcd            %s\n", strings.Join(endpoints, ","))
	fmt.Fprintf(w, "  DNS (UDP+TCP)   %s   pid %d\n", dnsC.addr, dnsC.cmd.Process.Pid)
	fmt.Fprintf(w, "  lore API        %s   pid %d   (admin key: %s)\n", loreURL, loreC.cmd.Process.Pid, cfg.AdminKey)
	fmt.Fprintf(w, "  state           %s\n", cfg.StateDir)
	for _, cl := range clusters {
		fmt.Fprintf(w, "  cluster %-7s hosting http://%s (pid %d)  eval ws://%s/v1/connect (pid %d)  controlplane http://%s (pid %d)\n",
			cl.id, cl.hosting.addr, cl.hosting.cmd.Process.Pid, cl.eval.addr, cl.eval.cmd.Process.Pid,
			cl.controlplane.addr, cl.controlplane.cmd.Process.Pid)
		for _, v := range cl.vms {
			fmt.Fprintf(w, "                  vm %-10s http://%s (pid %d)\n", v.label, v.addr, v.cmd.Process.Pid)
		}
	}
	if cfg.ComponentMetrics {
		fmt.Fprintf(w, "  metrics         lore http://%s/metrics  dns http://%s/metrics\n", loreC.metrics, dnsC.metrics)
		for _, cl := range clusters {
			fmt.Fprintf(w, "  metrics %-7s hosting http://%s/metrics  eval http://%s/metrics  controlplane http://%s/metrics\n",
				cl.id, cl.hosting.metrics, cl.eval.metrics, cl.controlplane.metrics)
			for _, v := range cl.vms {
				fmt.Fprintf(w, "                  vm %-10s http://%s/metrics\n", v.label, v.metrics)
			}
		}
	}
	if acme != nil {
		acme.print(w)
	}
	fmt.Fprintf(w, "\nStop with Ctrl-C: every component process gets SIGTERM, in reverse order.\n")

	// Components that die on their own are started again (supervised); a signal stops all.
	sig := <-sigs
	log.Info("stopping every component", "signal", sig.String())
	// Eval keeps live sessions for -eval-grace; a second signal kills what is still running.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.EvalGrace+time.Minute)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			log.Info("second signal: killing the components still running")
			cancel()
		case <-sctx.Done():
		}
	}()
	return errors.Join(err, stopAll(sctx))
}
