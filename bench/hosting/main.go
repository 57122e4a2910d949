// Command hosting is the load program for hosting.Proxy and the tombstone forwarder. In one
// process, on loopback, it serves a small page (the repl's web port) and measures, in
// alternating rounds so the machine's noise hits every mode alike:
//
//	direct     client → the page's server
//	hosting    client → hosting.Proxy (real lore.Directory + placement.Controlplane) → the page
//	           (the page's server plays the VM's conman: it accepts the Switchyard-* headers)
//	plain      client → a plain httputil.ReverseProxy hop → the page
//	pooled     the same hop with a BufferPool (revproxy.NewBufferPool), as Hosting and the
//	           forwarder use: the like-for-like baseline
//	forwarded  client → tombstone.Forwarder (repl has a tombstone) → the page (playing the new
//	           cluster's hosting proxy)
//
// and prints requests/s and latency percentiles per mode (medians over rounds) and the ratios
// hosting/direct and forwarded/plain.
//
//	go run ./bench/hosting -rounds 5 -duration 3s -conns 16
//
// With -external it runs direct, hosting, forwarded, nginx and HAProxy side by side instead, each
// server in its own process pinned to one core and loaded by wrk on the other (external.go):
//
//	go build -o /tmp/bench-hosting ./bench/hosting && /tmp/bench-hosting -external -rounds 5 -duration 3s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/hosting"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/tombstone"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each runs every mode once")
	duration := flag.Duration("duration", 3*time.Second, "duration of one mode in one round")
	conns := flag.Int("conns", 16, "concurrent keep-alive connections")
	size := flag.Int("size", 1024, "page size in bytes")
	modesFlag := flag.String("modes", "direct,hosting,plain,pooled,forwarded", "modes to run")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here (-external: of each Go server, to this path plus .<target>)")
	external := flag.Bool("external", false, "servers in their own processes pinned to -server-cpu, loaded by wrk on -load-cpu (see external.go)")
	targets := flag.String("targets", "direct,hosting,forwarded,nginx,haproxy", "-external: targets to run (also hosting-handler: the Proxy on a plain http.Server)")
	path := flag.String("path", "/", "-external: the request target; /bytes/N answers N bytes")
	upload := flag.Int("upload", 0, "-external: POST a body of this many bytes (the page answers its length)")
	idle := flag.Int("idle", 0, "-external: instead of load, open this many idle keep-alive connections to each target and report memory per connection")
	flag.DurationVar(&idleSettle, "idle-settle", 2*time.Second, "-external -idle: how long the connections stay idle before the server's memory is read (past 2 minutes, Go's periodic garbage collection has run)")
	flag.DurationVar(&parkIdleAfter, "park-idle-after", 0, "-external: hosting.ServerConfig.ParkIdleAfter of the hosting and forwarded targets (0: its default)")
	flag.IntVar(&eventLoops, "event-loops", 0, "-external: hosting.ServerConfig.EventLoops of the hosting and forwarded targets (0: one per GOMAXPROCS; -1: none)")
	flag.DurationVar(&parkColdAfter, "park-cold-after", 0, "-external: hosting.ServerConfig.ParkColdAfter of the hosting and forwarded targets (0: its default)")
	serverCPU := flag.String("server-cpu", "0", "-external: the CPU the servers are pinned to")
	loadCPU := flag.String("load-cpu", "1", "-external: the CPU wrk and the page are pinned to")
	pageImpl := flag.String("page-impl", "go", "-external: the page: go (a Go net/http server, as issue 20 specifies) or nginx (a static nginx answer, GET only: the proxies' own cost weighs more)")
	role := flag.String("role", "", "internal: serve one -external target (page, hosting, forwarded)")
	page := flag.String("page", "", "internal: the page's URL, for -role hosting and forwarded")
	flag.Parse()
	if *role != "" {
		if err := serveRole(*role, *page, *size, *cpuprofile); err != nil {
			fmt.Fprintln(os.Stderr, "hosting:", err)
			os.Exit(1)
		}
		return
	}
	if *external {
		w := &workload{path: *path, upload: *upload, pageImpl: *pageImpl}
		if err := runExternal(*rounds, *duration, *conns, *size, strings.Split(*targets, ","), *serverCPU, *loadCPU, *cpuprofile, w, *idle); err != nil {
			fmt.Fprintln(os.Stderr, "hosting:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hosting:", err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(*rounds, *duration, *conns, *size, strings.Split(*modesFlag, ",")); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "hosting:", err)
		os.Exit(1)
	}
}

type result struct {
	cpu                time.Duration // process CPU time (user+sys) per request: stable under load
	rps                float64
	p50, p90, p99, max time.Duration
	p999               time.Duration
	errors             int64
}

func run(rounds int, duration time.Duration, conns, size int, modes []string) error {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	page := []byte(strings.Repeat("x", size))

	// The page: the repl's web port (and, for hosting, the VM's conman).
	app, err := serve("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(page)
	}))
	if err != nil {
		return err
	}
	defer app.Close()
	appURL, _ := url.Parse("http://" + app.Addr)

	st, err := newStack(ctx, appURL, quiet)
	if err != nil {
		return err
	}
	hp, fwd := st.hosting, st.fwd
	hostingSrv, err := serve("127.0.0.1:0", hp)
	if err != nil {
		return err
	}
	defer hostingSrv.Close()

	// A plain reverse proxy hop.
	plain := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(appURL); pr.Out.Host = pr.In.Host; pr.SetXForwarded() },
		Transport: revproxy.NewTransport(),
		ErrorLog:  slog.NewLogLogger(quiet.Handler(), slog.LevelError),
	}
	plainSrv, err := serve("127.0.0.1:0", plain)
	if err != nil {
		return err
	}
	defer plainSrv.Close()
	// The same hop with pooled copy buffers, as Hosting and the forwarder use.
	pooled := &httputil.ReverseProxy{Rewrite: plain.Rewrite, Transport: revproxy.NewTransport(), BufferPool: revproxy.NewBufferPool(),
		ErrorLog: plain.ErrorLog}
	pooledSrv, err := serve("127.0.0.1:0", pooled)
	if err != nil {
		return err
	}
	defer pooledSrv.Close()

	fwdSrv, err := serve("127.0.0.1:0", fwd.Wrap(hp))
	if err != nil {
		return err
	}
	defer fwdSrv.Close()

	targets := map[string]string{"direct": app.Addr, "hosting": hostingSrv.Addr, "plain": plainSrv.Addr, "pooled": pooledSrv.Addr, "forwarded": fwdSrv.Addr}
	results := map[string][]result{}
	fmt.Printf("# %d rounds × %s per mode, %d connections, %d-byte page, GOMAXPROCS=%d\n", rounds, duration, conns, size, runtimeProcs())
	for r := 1; r <= rounds; r++ {
		for _, m := range modes {
			addr, ok := targets[m]
			if !ok {
				return fmt.Errorf("unknown mode %q", m)
			}
			res := load(addr, "blog.alice.repl.test", conns, duration)
			results[m] = append(results[m], res)
			fmt.Printf("round %d %-10s cpu/req %6s %8.0f req/s  p50 %7s  p90 %7s  p99 %7s  max %7s  errors %d\n",
				r, m, us(res.cpu), res.rps, us(res.p50), us(res.p90), us(res.p99), us(res.max), res.errors)
		}
	}
	fmt.Println()
	fmt.Println("| mode | CPU µs/request (median) | req/s (median) | p50 | p99 (median) |")
	fmt.Println("|---|---|---|---|---|")
	med := map[string]result{}
	for _, m := range modes {
		med[m] = median(results[m])
		fmt.Printf("| %s | %s | %.0f | %s | %s |\n", m, us(med[m].cpu), med[m].rps, us(med[m].p50), us(med[m].p99))
	}
	if d, h := med["direct"], med["hosting"]; d.rps > 0 && h.rps > 0 {
		fmt.Printf("\nhosting/direct: CPU per request %.2f×, throughput %.2f×, p99 %.2f×\n", float64(h.cpu)/float64(d.cpu), h.rps/d.rps, float64(h.p99)/float64(d.p99))
	}
	if p, f := med["pooled"], med["forwarded"]; p.rps > 0 && f.rps > 0 {
		fmt.Printf("forwarded/pooled: CPU per request %.3f×, wall-clock cost per request %.3f× (throughput %.3f×), p99 %.2f×\n",
			float64(f.cpu)/float64(p.cpu), p.rps/f.rps, f.rps/p.rps, float64(f.p99)/float64(p.p99))
	}
	if p, f := med["plain"], med["forwarded"]; p.rps > 0 && f.rps > 0 {
		fmt.Printf("forwarded/plain: CPU per request %.3f×, wall-clock cost per request %.3f× (throughput %.3f×), p99 %.2f×\n",
			float64(f.cpu)/float64(p.cpu), p.rps/f.rps, f.rps/p.rps, float64(f.p99)/float64(p.p99))
	}
	shut, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return errorsJoin(fwd.Shutdown(shut), hp.Shutdown(shut))
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

type server struct {
	Addr string
	srv  *http.Server
}

func (s *server) Close() { _ = s.srv.Close() }

func serve(addr string, h http.Handler) (*server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &server{Addr: l.Addr().String(), srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// load runs conns keep-alive clients against addr for d and measures every request.
func load(addr, host string, conns int, d time.Duration) result {
	tr := revproxy.NewTransport()
	tr.MaxIdleConnsPerHost = conns
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		all    []time.Duration
		errors atomic.Int64
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	cpu0 := cpuTime()
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 1<<14)
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			req.Host = host
			for time.Now().Before(deadline) {
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					errors.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errors.Add(1)
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(float64(len(all))*p))]
	}
	res := result{rps: float64(len(all)) / elapsed.Seconds(), p50: pct(0.50), p90: pct(0.90), p99: pct(0.99), errors: errors.Load()}
	if len(all) > 0 {
		res.max = all[len(all)-1]
		res.cpu = cpu / time.Duration(len(all))
	}
	return res
}

func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return result{
		cpu:  time.Duration(pick(func(r result) float64 { return float64(r.cpu) })),
		rps:  pick(func(r result) float64 { return r.rps }),
		p50:  time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:  time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		p999: time.Duration(pick(func(r result) float64 { return float64(r.p999) })),
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// stack is what the hosting and forwarded modes serve: Hosting over a real in-process lore
// directory and placement controlplane, whose only VM is the page (standing in for its conman),
// and a tombstone forwarder for which r1 moved to cluster b, whose hosting proxy is the page.
type stack struct {
	hosting *hosting.Proxy
	fwd     *tombstone.Forwarder
}

func newStack(ctx context.Context, appURL *url.URL, quiet *slog.Logger) (*stack, error) {
	// Hosting over the real in-process directory and controlplane.
	dir, err := lore.New(lore.Config{Zone: "repl.test", Logger: quiet})
	if err != nil {
		return nil, err
	}
	if _, err := dir.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.0.1:1/v1/connect", Healthy: true}); err != nil {
		return nil, err
	}
	if _, err := dir.CreateRepl(ctx, lore.Repl{ID: "r1", Owner: "alice", Slug: "blog", Cluster: "a"}); err != nil {
		return nil, err
	}
	// Nobody heartbeats the stand-in VM: keep it alive for the whole run.
	cp, err := placement.New(placement.Config{Logger: quiet, HeartbeatTimeout: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	if _, err := cp.Register(ctx, placement.VM{ID: "vm1", Addr: appURL.String(), Capacity: placement.Resources{Containers: 100}}); err != nil {
		return nil, err
	}
	hp, err := hosting.New(hosting.Config{Zone: "repl.test", Cluster: "a", Directory: dir, Placer: cp,
		Credential: "c", Logger: quiet})
	if err != nil {
		return nil, err
	}
	// The tombstone forwarder: r1 moved to cluster b, whose hosting proxy is the page.
	store, err := tombstone.NewMemStore(tombstone.MemStoreConfig{})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if err := store.Put(ctx, tombstone.Tombstone{Repl: "r1", Owner: "alice", Slug: "blog", Cluster: "b", Created: now, Expires: now.Add(time.Hour)}); err != nil {
		return nil, err
	}
	if _, err := dir.PutCluster(ctx, lore.Cluster{ID: "b", EvalURL: "ws://127.0.0.1:1/v1/connect", HostingURL: appURL.String(), Healthy: true}); err != nil {
		return nil, err
	}
	fwd, err := tombstone.New(tombstone.Config{Cluster: "a", Zone: "repl.test", Store: store, Clusters: dir,
		Secret: []byte(strings.Repeat("k", 32)), Logger: quiet})
	if err != nil {
		return nil, err
	}
	return &stack{hosting: hp, fwd: fwd}, nil
}
