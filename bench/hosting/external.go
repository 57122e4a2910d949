package main

// The -external run: every server in its own process pinned to one core (GOMAXPROCS=1, one
// nginx worker), loaded by wrk pinned to the other core, side by side in one run:
//
//	direct     wrk → the page
//	hosting    wrk → hosting.Server (its fast path) → hosting.Proxy (real lore directory and
//	           placement) → the page
//	hosting-handler  the same Proxy served by a plain http.Server (no fast path)
//	forwarded  wrk → hosting.Server → tombstone.Forwarder (Divert) → the page (standing in for
//	           the new cluster)
//	nginx      wrk → nginx proxy_pass with upstream keep-alive → the page
//	nginx-headers  the same nginx also sending what Hosting sends the VM: X-Forwarded-*,
//	           Forwarded, a credential and a repl field, and answering with a request id
//	haproxy    wrk → HAProxy (one thread, http-reuse always) → the page
//
// The page (a Go server answering -size bytes) runs on the load core, for every target alike.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-dev/switchyard/hosting"
)

// serveRole is a child process of the -external run: it serves one target and prints its
// address, then serves until its stdin closes.
func serveRole(role, page string, size int, cpuprofile string) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var (
		h    http.Handler
		fast *hosting.Server
	)
	switch role {
	case "page":
		body := []byte(strings.Repeat("x", size))
		chunk := []byte(strings.Repeat("y", 64<<10))
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			if r.Method == "POST" || r.Method == "PUT" { // an upload: read it, answer briefly
				n, _ := io.Copy(io.Discard, r.Body)
				_, _ = fmt.Fprintf(w, "%d\n", n)
				return
			}
			if n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/")); err == nil && n >= 0 {
				// A large answer: n bytes with a Content-Length.
				w.Header().Set("Content-Length", strconv.Itoa(n))
				for n > 0 {
					k := min(n, len(chunk))
					if _, err := w.Write(chunk[:k]); err != nil {
						return
					}
					n -= k
				}
				return
			}
			_, _ = w.Write(body)
		})
	case "hosting", "hosting-handler", "forwarded":
		u, err := url.Parse(page)
		if err != nil || u.Host == "" {
			return fmt.Errorf("-page %q: want the page's URL", page)
		}
		st, err := newStack(context.Background(), u, quiet)
		if err != nil {
			return err
		}
		h = st.hosting
		if role == "forwarded" {
			h = st.fwd.Wrap(st.hosting)
		}
		switch role {
		case "hosting":
			fast, err = hosting.NewServer(hosting.ServerConfig{Proxy: st.hosting, IdleTimeout: idleTimeout,
				ParkIdleAfter: parkIdleAfter, ParkColdAfter: parkColdAfter, EventLoops: eventLoops})
		case "forwarded":
			fast, err = hosting.NewServer(hosting.ServerConfig{Proxy: st.hosting, Handler: h, Divert: st.fwd.Divert,
				DivertInLoop: true, // a MemStore and an in-process directory
				IdleTimeout:  idleTimeout, ParkIdleAfter: parkIdleAfter, ParkColdAfter: parkColdAfter, EventLoops: eventLoops})
		}
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown -role %q", role)
	}
	var addr string
	if fast != nil {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addr = l.Addr().String()
		go func() { _ = fast.Serve(l) }()
		defer fast.Close()
	} else {
		srv, err := serve("127.0.0.1:0", h)
		if err != nil {
			return err
		}
		addr = srv.Addr
		defer srv.Close()
	}
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("addr %s\n", addr)
	_, _ = io.Copy(io.Discard, os.Stdin) // the driver closes it to stop us
	return nil
}

// proc is a server process of the run.
type proc struct {
	name  string
	addr  string
	cmd   *exec.Cmd
	stdin io.Closer
}

func (p *proc) stop() {
	if p.stdin != nil {
		_ = p.stdin.Close()
	}
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// startChild starts this program with args on cpu and reads the address it prints.
func startChild(name, cpu string, args ...string) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", append([]string{"-c", cpu, exe}, args...)...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, stdin: in}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	if err != nil || !ok {
		p.stop()
		return nil, fmt.Errorf("%s did not start: %q, %v", name, line, err)
	}
	p.addr = addr
	return p, nil
}

// startNginx runs one nginx worker on cpu in front of page.
func startNginx(tmp, cpu, page string, conns int, headers bool) (*proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "nginx")
	extra := ""
	if headers {
		dir = filepath.Join(tmp, "nginx-headers")
		extra = `
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Forwarded "for=$remote_addr;host=$host;proto=$scheme";
      proxy_set_header Switchyard-Credential "bench-vm-credential-0123456789abcdef";
      proxy_set_header Switchyard-Repl "r1";
      add_header X-Request-Id $request_id;`
	}
	return runNginx(dir, cpu, addr, fmt.Sprintf(`
  upstream page { server %[1]s; keepalive %[3]d; }
  server {
    listen %[2]s;
    location / {
      proxy_pass http://page;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      # Stream large bodies both ways, as the Go targets do, instead of spooling them to disk.
      proxy_request_buffering off;
      proxy_max_temp_file_size 0;
      client_max_body_size 0;%[4]s
    }
  }`, page, addr, 2*conns, extra))
}

// startStaticNginx runs one nginx worker on cpu answering every request with size bytes: a
// page whose own cost is small, so the proxies' weighs more.
func startStaticNginx(tmp, cpu string, size int) (*proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	return runNginx(filepath.Join(tmp, "nginx-page"), cpu, addr, fmt.Sprintf(`
  keepalive_requests 100000000;
  server {
    listen %s;
    default_type text/plain;
    location / { return 200 "%s"; }
  }`, addr, strings.Repeat("x", size)))
}

// runNginx runs one nginx worker on cpu in dir, listening on addr, with http (server blocks)
// in its http block.
func runNginx(dir, cpu, addr, http string) (*proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid %[1]s/nginx.pid;
error_log stderr error;
events { worker_connections 16000; }
http {
  access_log off;
  keepalive_timeout 10m; # as the other targets: idle connections stay for -idle-settle
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;%[2]s
}
`, dir, http)
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startPinned("nginx (apt-get install nginx-light)", cpu, addr, "nginx", "-e", "stderr", "-p", dir, "-c", cfg)
}

// startHAProxy runs HAProxy with one thread on cpu in front of page, reusing server connections.
func startHAProxy(tmp, cpu, page string) (*proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "haproxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`global
  maxconn 9990
  nbthread 1
defaults
  mode http
  http-reuse always
  timeout connect 5s
  timeout client 10m
  timeout server 1m
frontend fe
  bind %s
  default_backend be
backend be
  server s1 %s
`, addr, page)
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startPinned("haproxy (apt-get install haproxy)", cpu, addr, "haproxy", "-db", "-f", cfg)
}

// freeAddr returns a loopback address nothing listens on at the moment.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startPinned runs argv on cpu (one process: the server itself) and waits until addr accepts.
func startPinned(name, cpu, addr string, argv ...string) (*proc, error) {
	cmd := exec.Command("taskset", append([]string{"-c", cpu}, argv...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, addr: addr, cmd: cmd}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			p.stop()
			return nil, fmt.Errorf("%s is not listening on %s: %w", name, addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procCPU returns the user+system CPU time pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which ends with the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// pidOf returns the server's process: taskset execs the program, so it is the command's own.
func (p *proc) pid() int { return p.cmd.Process.Pid }

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|90|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\b`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkTotal   = regexp.MustCompile(`(\d+) requests in`)
)

// workload is what each wrk request does.
type workload struct {
	path     string // the request target
	upload   int    // bytes of a POST body; 0: GET
	pageImpl string // go or nginx
	script   string // the wrk Lua script (written by writeScript)
}

// writeScript writes the wrk script of w: the method and body, and p99.9 in the output.
func (w *workload) writeScript(dir string) error {
	lua := `done = function(summary, latency, requests) io.write(string.format("P999 %d\n", latency:percentile(99.9))) end` + "\n"
	if w.upload > 0 {
		lua = fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = string.rep(\"u\", %d)\n", w.upload) + lua
	}
	w.script = filepath.Join(dir, "wrk.lua")
	return os.WriteFile(w.script, []byte(lua), 0o644)
}

var wrkP999 = regexp.MustCompile(`P999 (\d+)`)

// wrk loads addr from cpu and returns what it measured; cpu is the server's CPU time meanwhile.
func wrk(cpu, addr string, conns int, d time.Duration, server *proc, w *workload) (result, error) {
	before, err := procCPU(server.pid())
	if err != nil {
		return result{}, err
	}
	out, err := exec.Command("taskset", "-c", cpu, "wrk", "-t1", "-c"+strconv.Itoa(conns),
		"-d"+strconv.Itoa(int(d/time.Second))+"s", "--latency", "--timeout", "60s", "-s", w.script, "-H", "Host: blog.alice.repl.test",
		"http://"+addr+w.path).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk (apt-get install wrk): %v\n%s", err, out)
	}
	after, err := procCPU(server.pid())
	if err != nil {
		return result{}, err
	}
	s := string(out)
	var r result
	if m := wrkRPS.FindStringSubmatch(s); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range wrkPct.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]
		dur := time.Duration(v * float64(unit))
		switch m[1] {
		case "50":
			r.p50 = dur
		case "90":
			r.p90 = dur
		case "99":
			r.p99 = dur
		}
	}
	if m := wrkP999.FindStringSubmatch(s); m != nil {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		r.p999 = time.Duration(v) * time.Microsecond
	}
	if m := wrkNon2xx.FindStringSubmatch(s); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.errors += n
	}
	if m := wrkSockErr.FindStringSubmatch(s); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.ParseInt(x, 10, 64)
			r.errors += n
		}
	}
	if m := wrkTotal.FindStringSubmatch(s); m != nil {
		if n, _ := strconv.ParseInt(m[1], 10, 64); n > 0 {
			r.cpu = (after - before) / time.Duration(n)
		}
	}
	if r.rps == 0 || r.p99 == 0 {
		return r, fmt.Errorf("could not read wrk's output:\n%s", s)
	}
	return r, nil
}

func runExternal(rounds int, duration time.Duration, conns, size int, targets []string, serverCPU, loadCPU, cpuprofile string, w *workload, idle int) error {
	if duration < time.Second {
		return errors.New("-duration: wrk needs at least 1s")
	}
	tmp, err := os.MkdirTemp("", "bench-hosting-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := w.writeScript(tmp); err != nil {
		return err
	}
	var page *proc
	switch w.pageImpl {
	case "go":
		page, err = startChild("page", loadCPU, "-role", "page", "-size", strconv.Itoa(size))
	case "nginx":
		if w.upload > 0 || w.path != "/" {
			return errors.New("-page-impl nginx answers GET / only")
		}
		page, err = startStaticNginx(tmp, loadCPU, size)
	default:
		err = fmt.Errorf("unknown -page-impl %q", w.pageImpl)
	}
	if err != nil {
		return err
	}
	defer page.stop()
	pageURL := "http://" + page.addr
	servers := map[string]*proc{"direct": page}
	for _, t := range targets {
		var p *proc
		switch t {
		case "direct":
			continue
		case "hosting", "hosting-handler", "forwarded":
			args := []string{"-role", t, "-page", pageURL, "-park-idle-after", parkIdleAfter.String(), "-park-cold-after", parkColdAfter.String(),
				"-event-loops", strconv.Itoa(eventLoops)}
			if cpuprofile != "" {
				args = append(args, "-cpuprofile", cpuprofile+"."+t)
			}
			p, err = startChild(t, serverCPU, args...)
		case "nginx", "nginx-headers":
			p, err = startNginx(tmp, serverCPU, page.addr, conns, t == "nginx-headers")
		case "haproxy":
			p, err = startHAProxy(tmp, serverCPU, page.addr)
		default:
			err = fmt.Errorf("unknown target %q", t)
		}
		if err != nil {
			return err
		}
		defer p.stop()
		servers[t] = p
	}
	if idle > 0 {
		return idleMemory(targets, servers, idle, idleSettle)
	}
	// Bytes moved per request, for MiB/s.
	perReq := size
	if w.upload > 0 {
		perReq = w.upload
	} else if n, err := strconv.Atoi(strings.TrimPrefix(w.path, "/bytes/")); err == nil {
		perReq = n
	}
	fmt.Printf("# -external: %d rounds × %s per target, wrk -t1 -c%d on CPU %s, servers on CPU %s (GOMAXPROCS=1, one nginx worker, one HAProxy thread), %s %s (%d bytes per request)\n",
		rounds, duration, conns, loadCPU, serverCPU, map[bool]string{true: "POST", false: "GET"}[w.upload > 0], w.path, perReq)
	results := map[string][]result{}
	for r := 1; r <= rounds; r++ {
		for _, t := range targets {
			res, err := wrk(loadCPU, servers[t].addr, conns, duration, servers[t], w)
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			results[t] = append(results[t], res)
			fmt.Printf("round %d %-15s cpu/req %7s %8.0f req/s %8.1f MiB/s  p50 %7s  p90 %7s  p99 %7s  p99.9 %7s  errors %d\n",
				r, t, us(res.cpu), res.rps, res.rps*float64(perReq)/(1<<20), us(res.p50), us(res.p90), us(res.p99), us(res.p999), res.errors)
		}
	}
	fmt.Println()
	fmt.Println("| target | req/s | MiB/s | p50 | p99 | p99.9 | server CPU µs/request | errors (all rounds) |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	med := map[string]result{}
	for _, t := range targets {
		med[t] = median(results[t])
		var errs int64
		for _, r := range results[t] {
			errs += r.errors
		}
		fmt.Printf("| %s | %.0f | %.1f | %s | %s | %s | %s | %d |\n", t, med[t].rps, med[t].rps*float64(perReq)/(1<<20), us(med[t].p50), us(med[t].p99), us(med[t].p999), us(med[t].cpu), errs)
	}
	names := append([]string(nil), targets...)
	sort.Strings(names)
	if n, ok := med["nginx"]; ok && n.rps > 0 {
		for _, t := range names {
			if t == "nginx" || t == "direct" || t == "haproxy" || med[t].rps == 0 {
				continue
			}
			fmt.Printf("\n%s/nginx: throughput %.2f×, p99 %.2f×, p99.9 %.2f×, CPU per request %.2f×", t, med[t].rps/n.rps,
				float64(med[t].p99)/float64(n.p99), float64(med[t].p999)/float64(n.p999), float64(med[t].cpu)/float64(n.cpu))
		}
		fmt.Println()
	}
	return nil
}

// idleMemory opens n keep-alive connections to each target in turn, sends one request on each
// and keeps them open, and prints the server's resident memory per connection.
func idleMemory(targets []string, servers map[string]*proc, n int, settle time.Duration) error {
	fmt.Printf("# idle keep-alive connections: %d per target, one request each, then idle\n", n)
	fmt.Println("| target | RSS before | RSS with the connections | per connection |")
	fmt.Println("|---|---|---|---|")
	for _, t := range targets {
		p := servers[t]
		before, err := procRSS(p.pid())
		if err != nil {
			return err
		}
		conns := make([]net.Conn, 0, n)
		closeAll := func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}
		for len(conns) < n {
			c, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
			if err != nil {
				closeAll()
				return fmt.Errorf("%s: connection %d: %w", t, len(conns), err)
			}
			conns = append(conns, c)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n"); err != nil {
				closeAll()
				return fmt.Errorf("%s: %w", t, err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				closeAll()
				return fmt.Errorf("%s: connection %d: %w", t, len(conns), err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			_ = c.SetDeadline(time.Time{})
		}
		time.Sleep(settle) // let the servers settle (and Go's GC and scavenger run)
		after, err := procRSS(p.pid())
		closeAll()
		if err != nil {
			return err
		}
		fmt.Printf("| %s | %.1f MiB | %.1f MiB | %.1f KiB |\n", t, float64(before)/(1<<20), float64(after)/(1<<20), float64(after-before)/float64(n)/1024)
		time.Sleep(time.Second)
	}
	return nil
}

// procRSS returns the resident memory of pid in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// Flags of -idle and of the hosting targets.
var (
	idleSettle, parkIdleAfter, parkColdAfter time.Duration
	eventLoops                               int
)

// idleTimeout closes idle keep-alive connections in every target (nginx's keepalive_timeout,
// HAProxy's timeout client): long enough for -idle-settle.
const idleTimeout = 10 * time.Minute
