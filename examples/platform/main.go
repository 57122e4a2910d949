// Command platform runs the whole switchyard system on loopback: dnsauth, lore, and N clusters,
// each with a controlplane (placement), an Eval (sessions.Proxy), a hosting proxy
// (tombstone.Forwarder wrapping hosting.Proxy) and M conman VMs running repls with conman/process.
//
// Usage:
//
//	go run ./examples/platform [flags]                 run the platform (see -h)
//	go run ./examples/platform connect owner/slug      open a shell in a repl through Eval
//	go run ./examples/platform owner-key replbot       an owner's sign-in key for the web pages
//	go run ./examples/platform roll -cluster a         drain a conman VM and replace it
//	go run ./examples/platform restart-eval -cluster a start a new Eval; the old one drains
//	go run ./examples/platform upgrade -vm a-vm1       upgrade a VM's conman in place: shells and sessions stay
//	go run ./examples/platform -processes              one OS process per component, on etcd
//	go run ./examples/platform run <component> [flags] one component: dns, lore, eval, hosting,
//	                                                   controlplane or conman (see processes.go)
//
// With -store etcd, lore, placement and tombstones live in etcd (-etcd-endpoints, or an etcd
// started in process when none are given), DNS and hosting read through etcd mirrors, and each
// VM's liveness is an etcd lease.
//
// Defaults: zone repl.test, DNS 127.0.0.1:5353, lore http://127.0.0.1:8400, the web pages
// (workspace and console, web.go) http://127.0.0.1:8402, clusters a and b on
// 127.0.1.0/24 and 127.0.2.0/24 (hosting .1:8080, Eval .1:8443, controlplane .1:8500, VMs
// .11, .12, … :8600).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/conman/process"
)

func main() {
	// conman/process starts each repl's init by running this binary again; Init takes over
	// such a run and never returns. It must come first.
	process.Init()

	args := os.Args[1:]
	cmd := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "", "run":
		err = runRun(args)
	case "connect":
		err = runConnect(args)
	case "roll":
		err = runAdmin("roll", args)
	case "restart-eval":
		err = runAdmin("restart-eval", args)
	case "upgrade":
		err = runAdmin("upgrade", args)
	case "owner-key":
		err = runOwnerKey(args)
	case "web-assets":
		err = runWebAssets(args)
	case demoAppCommand:
		err = runDemoApp()
	case "help", "-h", "--help":
		fmt.Fprintln(os.Stderr, "usage: platform [run [component]|connect|roll|restart-eval|upgrade|owner-key|web-assets] [flags]; platform <command> -h for flags")
		return
	default:
		err = fmt.Errorf("unknown command %q (run, connect, roll, restart-eval, upgrade, owner-key, web-assets)", cmd)
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "platform:", err)
		os.Exit(1)
	}
}

// runRun is the run command: `run <component> [flags]` runs one component as its own process,
// `run [flags]` the whole platform.
func runRun(args []string) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return runComponent(args[0], args[1:])
	}
	return runPlatform(args)
}

func runPlatform(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var (
		cfg        Config
		clusters   = fs.String("clusters", "a,b", "cluster IDs, comma-separated")
		clusterNet = fs.String("cluster-net", "127.0.0.0/16", "IPv4 prefix holding one /24 per cluster (cluster N in the Nth /24)")
		state      = fs.String("state", "", "directory for repl files and conman state (default: a temporary directory removed on exit)")
		verbose    = fs.Bool("v", false, "log at debug level")
		processes  = fs.Bool("processes", false, "run each component as its own OS process (implies -store etcd): lore, dns, and per cluster a controlplane, conman VMs, Eval and hosting, sharing one etcd")
		endpoints  = fs.String("etcd-endpoints", "", "etcd client URLs, comma-separated, with -store etcd (default: start an etcd in this process, data under the state directory)")
	)
	fs.StringVar(&cfg.Store, "store", "", `where state lives: "memory" (in this process; the default without -state) or "etcd" (the default with -state: an etcd in process, its data under the state directory, unless -etcd-endpoints)`)
	fs.DurationVar(&cfg.AliveTTL, "alive-ttl", 5*time.Second, "with -store etcd: how long a VM whose agent stopped stays placeable (its etcd lease TTL)")
	fs.StringVar(&cfg.Zone, "zone", "repl.test", "the platform DNS zone")
	fs.StringVar(&cfg.DNSAddr, "dns", "127.0.0.1:5353", "dnsauth address (UDP and TCP)")
	fs.StringVar(&cfg.LoreAddr, "lore", "127.0.0.1:8400", "lore HTTP API address")
	fs.StringVar(&cfg.AdminAddr, "admin", "127.0.0.1:8401", "platform admin API address (roll VMs, restart Eval, upgrade a VM's conman in place; with -processes only the upgrade)")
	adminKey := adminKeyFlag(fs)
	fs.StringVar(&cfg.WebAddr, "web", "127.0.0.1:8402", `web pages address: the workspace (/<owner>/<slug>) and the console (/console); "" for none (not with -processes)`)
	fs.IntVar(&cfg.VMs, "vms", 2, "conman VMs per cluster")
	fs.IntVar(&cfg.HostingPort, "hosting-port", 8080, "hosting proxy port on each cluster's .1 address")
	fs.IntVar(&cfg.EvalPort, "eval-port", 8443, "Eval (sessions proxy) port on each cluster's .1 address")
	fs.IntVar(&cfg.ControlplanePort, "controlplane-port", 8500, "controlplane port on each cluster's .1 address")
	fs.IntVar(&cfg.ConmanPort, "conman-port", 8600, "conman port on each VM address")
	fs.DurationVar(&cfg.EvalGrace, "eval-grace", 30*time.Hour, "how long a draining Eval keeps live sessions")
	fs.StringVar(&cfg.Runtime, "runtime", RuntimeProcess, `the repls' container runtime: "process" (conman/process, our own sandbox), "runc" or "runsc" (conman/oci, on a busybox image the platform builds)`)
	fs.BoolVar(&cfg.ACME.Disable, "no-https", false, "serve hosting over HTTP only: no acme-dns API, no ACME CA, no HTTPS listeners")
	fs.IntVar(&cfg.ACME.HTTPSPort, "https-port", 4443, "hosting HTTPS port on each cluster's .1 address")
	fs.StringVar(&cfg.ACME.APIAddr, "acme-dns", "127.0.0.1:8403", "acme-dns compatible API address (registration key: $SWITCHYARD_ACMEDNS_KEY, else open within rate limits)")
	fs.StringVar(&cfg.ACME.CA, "acme-ca", "", "ACME directory URL of the CA to use (default: Pebble, Let's Encrypt's test CA, in this process)")
	fs.StringVar(&cfg.ACME.CARoot, "acme-ca-root", "", "PEM file trusted for the -acme-ca server's HTTPS (default: the system roots)")
	fs.StringVar(&cfg.ACME.CAAddr, "acme-ca-addr", "127.0.0.1:0", "address of the in-process CA's ACME API")
	fs.StringVar(&cfg.ACME.Resolver, "resolver", "", "DNS server (host:port) the in-process CA validates through and lore verifies custom domains through (default: the platform's DNS for the CA, the system resolver for lore)")
	fs.BoolVar(&cfg.ACME.Redirect, "https-redirect", false, "answer plain-HTTP hosting requests with a redirect to HTTPS")
	fs.BoolVar(&cfg.ACME.HSTS, "hsts", false, "send Strict-Transport-Security on HTTPS hosting answers")
	cfg.ACME.RegisterKey = os.Getenv("SWITCHYARD_ACMEDNS_KEY")
	fs.StringVar(&cfg.Isolation, "isolation", "", `conman/process isolation: "" (the sandbox) or "none" (unsandboxed plain processes: trusted code only)`)
	fs.BoolVar(&cfg.ComponentMetrics, "component-metrics", false, "with -processes: every component serves Prometheus /metrics on its own address (a free port; the banner lists them)")
	etcdTLSFlags(fs, &cfg.EtcdTLS)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if cfg.AdminKey, err = adminKey(); err != nil {
		return err
	}
	pfx, err := netip.ParsePrefix(*clusterNet)
	if err != nil {
		return fmt.Errorf("-cluster-net: %w", err)
	}
	cfg.ClusterNet = pfx.Masked()
	for _, c := range strings.Split(*clusters, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Clusters = append(cfg.Clusters, c)
		}
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			cfg.EtcdEndpoints = append(cfg.EtcdEndpoints, e)
		}
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *state == "" {
		dir, err := os.MkdirTemp("", "switchyard-platform-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		*state = dir
	} else {
		// A state directory is kept: so is the state, in etcd, unless told otherwise.
		if cfg.Store == "" {
			cfg.Store = StoreEtcd
		}
		if err := os.MkdirAll(*state, 0o700); err != nil {
			return err
		}
		if cfg.AdminKey, err = keepAdminKey(*state, cfg.AdminKey); err != nil {
			return err
		}
	}
	if !*processes && (cfg.Store == "" || cfg.Store == StoreMemory) {
		cfg.Logger.Warn("the platform's state (repls, domains, tombstones, placement) lives only in this process's memory: a restart loses it; give -state DIR to keep it")
	}
	cfg.StateDir = *state

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	if *processes {
		cfg.Store = StoreEtcd
		return runProcesses(cfg, sigs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	p, err := Start(ctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	p.printEndpoints(os.Stdout)

	sig := <-sigs
	cfg.Logger.Info("stopping: live sessions drain; signal again to close them at once", "signal", sig.String())
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-sctx.Done():
		}
	}()
	err = p.Shutdown(sctx)
	if errors.Is(err, context.Canceled) {
		err = nil // the second signal asked for it
	}
	return err
}

// readAll reads a small response body for an error message.
func readAll(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 4<<10))
	return strings.TrimSpace(string(b))
}
