// Command sessions is the load program for sessions.Proxy. It runs, side by side in one run and
// only on loopback: a WebSocket echo backend (standing in for conman's attach endpoint), a
// direct baseline, sessions.Proxy in splice and in frame mode (each in its own process, so its
// memory and descriptors are its own), and, when installed, nginx and HAProxy configured as
// WebSocket proxies from generated configs in a temp dir, run in the foreground and killed at
// the end. It measures relay throughput with 1 MiB messages, added round-trip latency for
// 64-byte messages at many sessions, memory per idle session, and session setup latency, and
// prints a Markdown report.
//
// Every load is bounded in count and time and aimed at 127.0.0.1.
//
//	go run ./bench/sessions                       # everything, defaults below
//	go run ./bench/sessions -sessions 1000 -idle 3000 -rounds 3
package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/sessions"
	"golang.org/x/sys/unix"
)

var (
	role        = flag.String("role", "driver", "driver (runs everything) or proxy (internal: one sessions.Proxy process)")
	mode        = flag.String("mode", "splice", "proxy role: splice or frame")
	backendURL  = flag.String("backend", "", "proxy role: the echo backend's base URL")
	rounds      = flag.Int("rounds", 3, "throughput rounds per target (the median is reported)")
	msgs        = flag.Int("messages", 150, "1 MiB messages per throughput round")
	nSessions   = flag.Int("sessions", 1000, "concurrent sessions for the latency test")
	rate        = flag.Float64("rate", 10, "messages per second per session in the latency test")
	latDur      = flag.Duration("latency-duration", 5*time.Second, "duration of each latency run")
	latDriver   = flag.String("latency-driver", "loop", "latency load generator: loop (one epoll thread sending on a precise schedule, and the echo backend) or goroutines (one per session, timed by Go's millisecond netpoller; the earlier runs' driver)")
	idle        = flag.Int("idle", 3000, "idle sessions for the memory test")
	setups      = flag.Int("setups", 2000, "sessions opened for each part of the setup test")
	setupRate   = flag.Float64("setup-rate", 200, "sessions opened per second in the paced part of the setup test")
	only        = flag.String("only", "", "comma-separated tests to run: throughput,latency,memory,setup (empty = all)")
	skipExt     = flag.Bool("no-external", false, "do not run nginx and HAProxy")
	backendImpl = flag.String("backend-impl", "raw", "echo backend: raw (frames echoed by hand, least CPU) or coder (coder/websocket, as conman is built)")
	targetList  = flag.String("targets", "", "comma-separated proxies to run besides direct: splice,splice-loop,frame,nginx,haproxy (empty = all of these), and gorelay (a bare Go TCP relay, only when named)")
	driverCPUs  = flag.String("driver-cpus", "", "pin the driver (load generator and echo backend) to these CPUs, e.g. 0 (empty: no pinning)")
	proxyCPUs   = flag.String("proxy-cpus", "", "pin every proxy to these CPUs, e.g. 1, and size it to them: GOMAXPROCS, nginx workers, HAProxy threads (empty: no pinning, 2 of each)")
)

const cluster = "bench"

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *role == "proxy" {
		if err := runProxy(); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *driverCPUs != "" {
		if err := pinSelf(*driverCPUs); err != nil {
			log.Fatal(err)
		}
	}
	if err := drive(); err != nil {
		log.Fatal(err)
	}
}

// ---- the proxy process ----

func runProxy() error {
	if *mode == "tcp" {
		return runTCPRelay()
	}
	seed, err := hex.DecodeString(os.Getenv("BENCH_KEY_SEED"))
	if err != nil {
		return err
	}
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	m, loops := sessions.Splice, 0
	switch *mode {
	case "frame":
		m = sessions.Frame
	case "splice-loop":
		loops = 1
	}
	backend := *backendURL
	s, err := sessions.New(sessions.Config{
		Cluster: cluster,
		Tokens:  lore.NewKeySet(lore.PublicKey{KeyID: lore.KeyID(pub), Key: pub}),
		Placer: placerFunc(func(_ context.Context, r placement.Request) (placement.Assignment, error) {
			return placement.Assignment{Repl: r.Repl, VM: "vm-1", Addr: backend}, nil
		}),
		Mode:        m,
		EventLoops:  loops,
		MaxSessions: 5000,
		// The load opens every session with one token, to one repl, from one address: the
		// per-token, per-repl and per-IP caps (8, 64, 256) would refuse all but the first few.
		MaxSessionsPerRepl: -1, MaxSessionsPerToken: -1, MaxSessionsPerIP: -1,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()})),
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/connect", s)
	mux.HandleFunc("GET /debug/mem", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		json.NewEncoder(w).Encode(map[string]any{
			"heap_inuse": ms.HeapInuse, "stack_inuse": ms.StackInuse,
			"goroutines": runtime.NumGoroutine(), "active": s.Active(), "rss": procRSS(os.Getpid()),
		})
	})
	mux.HandleFunc("GET /debug/pprof/heap", pprof.Handler("heap").ServeHTTP)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	if os.Getenv("BENCH_HOLD") != "" {
		fmt.Fprintln(os.Stderr, "proxy pid", os.Getpid())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Println(ln.Addr().String())
	io.Copy(io.Discard, os.Stdin) // the driver closes stdin to stop us
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	s.Shutdown(ctx)
	return nil
}

// runTCPRelay is the "go relay" reference target: a bare Go TCP relay (io.Copy both ways, so
// splice(2)) with no HTTP, token, placement or WebSocket code; the handshake passes through.
// It shows what the Go runtime alone costs on this machine.
func runTCPRelay() error {
	u, err := url.Parse(*backendURL)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer b.Close()
				go func() {
					io.Copy(b, c)
					b.(*net.TCPConn).CloseWrite()
				}()
				io.Copy(c, b)
			}()
		}
	}()
	fmt.Println(ln.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	return ln.Close()
}

type placerFunc func(context.Context, placement.Request) (placement.Assignment, error)

func (f placerFunc) Place(ctx context.Context, r placement.Request) (placement.Assignment, error) {
	return f(ctx, r)
}

// ---- the driver ----

type target struct {
	name string
	url  string // ws:// URL sessions open (token appended for ours)
	mem  string // /debug/mem URL for our proxies
	pid  int
	stop func()
}

func drive() error {
	tmp, err := os.MkdirTemp("", "bench-sessions-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	be, err := startBackend()
	if err != nil {
		return err
	}
	defer be.Close()
	beAddr := be.Addr().String()

	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(rand.Uint32())
	}
	iss, err := lore.NewIssuer(lore.IssuerConfig{Key: ed25519.NewKeyFromSeed(seed), TTL: time.Hour})
	if err != nil {
		return err
	}
	tok, _, err := iss.Issue(cluster, "r1")
	if err != nil {
		return err
	}

	targets := []*target{{name: "direct", url: "ws://" + beAddr + "/v1/repls/r1/attach"}}
	want := func(name string) bool {
		return *targetList == "" || slices.Contains(strings.Split(*targetList, ","), name)
	}
	for _, m := range []string{"splice", "splice-loop", "frame"} {
		if !want(m) {
			continue
		}
		t, err := startOurs(m, "http://"+beAddr, seed)
		if err != nil {
			return err
		}
		t.url += "?token=" + tok
		defer t.stop()
		targets = append(targets, t)
	}
	if slices.Contains(strings.Split(*targetList, ","), "gorelay") {
		t, err := startOurs("tcp", "http://"+beAddr, seed)
		if err != nil {
			return err
		}
		t.name, t.url, t.mem = "go relay", strings.TrimSuffix(t.url, "/v1/connect")+"/v1/repls/r1/attach", ""
		defer t.stop()
		targets = append(targets, t)
	}
	if !*skipExt {
		for _, ext := range []struct {
			name  string
			start func(tmp, backend string) (*target, error)
		}{{"nginx", startNginx}, {"haproxy", startHAProxy}} {
			if !want(ext.name) {
				continue
			}
			t, err := ext.start(tmp, beAddr)
			if err != nil {
				log.Printf("%s: %v (skipped)", ext.name, err)
				continue
			}
			defer t.stop()
			targets = append(targets, t)
		}
	}
	run := func(name string) bool { return *only == "" || slices.Contains(strings.Split(*only, ","), name) }

	fmt.Printf("# sessions.Proxy load run, %s, driver GOMAXPROCS=%d, %s\n\n", time.Now().UTC().Format(time.RFC3339), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Printf("Flags: %s\n\n", strings.Join(os.Args[1:], " "))
	if run("throughput") {
		if err := benchThroughput(targets); err != nil {
			return err
		}
	}
	if run("latency") {
		if err := benchLatency(targets); err != nil {
			return err
		}
	}
	if run("setup") {
		if err := benchSetup(targets); err != nil {
			return err
		}
	}
	if run("memory") {
		if err := benchMemory(targets); err != nil {
			return err
		}
	}
	return nil
}

// startBackend runs the echo backend: every frame comes back as it came, unmasked (so every
// message comes back whole, with the same framing). It speaks the protocol by hand, reading
// and writing each frame with as few syscalls as it can, so the driver process that hosts it
// spends its CPU on the load, not on the backend.
func startBackend() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sink := loopSink.Load()
		if *backendImpl == "coder" && sink == nil {
			coderEcho(w, r)
			return
		}
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "websocket only", http.StatusUpgradeRequired)
			return
		}
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
			base64.StdEncoding.EncodeToString(sum[:]))
		if sink != nil && brw.Reader.Buffered() == 0 {
			*sink <- conn // the latency test's loop driver echoes it
			return
		}
		defer conn.Close()
		echoFrames(conn, brw.Reader)
	})
	go (&http.Server{Handler: h}).Serve(ln)
	return ln, nil
}

// coderEcho is the echo backend built like conman: coder/websocket, each message read whole
// and written back as one frame.
func coderEcho(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(8 << 20)
	ctx := context.Background()
	var buf []byte
	for {
		typ, rd, err := c.Reader(ctx)
		if err != nil {
			return
		}
		if buf, err = readAll(rd, buf); err != nil {
			return
		}
		if err := c.Write(ctx, typ, buf); err != nil {
			return
		}
	}
}

// echoFrames echoes every frame read from br to conn, unmasked, until EOF, an error or a
// close frame (which it echoes, then returns). A ping comes back as a pong.
func echoFrames(conn net.Conn, br *bufio.Reader) {
	buf := make([]byte, 64<<10)
	var hdr [14]byte
	for {
		if _, err := io.ReadFull(br, hdr[:2]); err != nil {
			return
		}
		b0, b1 := hdr[0], hdr[1]
		ext := map[byte]int{126: 2, 127: 8}[b1&0x7f]
		if _, err := io.ReadFull(br, hdr[2:2+ext]); err != nil {
			return
		}
		n := uint64(b1 & 0x7f)
		switch ext {
		case 2:
			n = uint64(binary.BigEndian.Uint16(hdr[2:4]))
		case 8:
			n = binary.BigEndian.Uint64(hdr[2:10])
		}
		var key [4]byte
		if b1&0x80 != 0 {
			if _, err := io.ReadFull(br, key[:]); err != nil {
				return
			}
		}
		opcode := b0 & 0x0f
		if opcode == 9 {
			b0 = b0&0xf0 | 10
		}
		// The header goes out in the same write as the payload's first chunk.
		h := copy(buf, []byte{b0, b1 &^ 0x80})
		h += copy(buf[h:], hdr[2:2+ext])
		var off uint64
		for first := true; first || off < n; first = false {
			k := min(n-off, uint64(len(buf)-h))
			if _, err := io.ReadFull(br, buf[h:h+int(k)]); err != nil {
				return
			}
			unmask(buf[h:h+int(k)], key, off)
			if _, err := conn.Write(buf[:h+int(k)]); err != nil {
				return
			}
			off += k
			h = 0
		}
		if opcode == 8 {
			return
		}
	}
}

// unmask XORs p, which starts at offset off of a frame's payload, with the frame's masking key.
func unmask(p []byte, key [4]byte, off uint64) {
	if key == [4]byte{} {
		return
	}
	var k [8]byte
	for i := range k {
		k[i] = key[(off+uint64(i))%4]
	}
	k64 := binary.LittleEndian.Uint64(k[:])
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k64)
	}
	for ; i < len(p); i++ {
		p[i] ^= k[i%8]
	}
}

// readAll reads a message into buf's storage.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func startOurs(m, backend string, seed []byte) (*target, error) {
	cmd := exec.Command(os.Args[0], "-role=proxy", "-mode="+m, "-backend="+backend)
	cmd.Env = append(os.Environ(), "BENCH_KEY_SEED="+hex.EncodeToString(seed))
	if *proxyCPUs != "" {
		cmd = exec.Command("taskset", append([]string{"-c", *proxyCPUs}, cmd.Args...)...)
		procs := proxyGoMaxProcs()
		if m == "splice-loop" {
			procs++ // the event loop holds a P of its own; the CPUs are the same
		}
		cmd.Env = append(os.Environ(), "BENCH_KEY_SEED="+hex.EncodeToString(seed), fmt.Sprintf("GOMAXPROCS=%d", procs))
	}
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		cmd.Process.Kill()
		return nil, fmt.Errorf("proxy %s did not start", m)
	}
	addr := sc.Text()
	return &target{
		name: "switchyard " + m, url: "ws://" + addr + "/v1/connect", mem: "http://" + addr + "/debug/mem",
		pid: cmd.Process.Pid,
		stop: func() {
			stdin.Close()
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		},
	}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startExternal(name string, args []string, port int) (*target, error) {
	path, err := exec.LookPath(args[0])
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args[1:]...)
	if *proxyCPUs != "" {
		cmd = exec.Command("taskset", append([]string{"-c", *proxyCPUs, path}, args[1:]...)...)
	}
	cmd.Stderr = os.Stderr
	cmd.Stdout = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 200 {
			stop()
			return nil, fmt.Errorf("%s did not listen on %s", name, addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &target{name: name, url: "ws://" + addr + "/v1/repls/r1/attach", pid: cmd.Process.Pid, stop: stop}, nil
}

func startNginx(tmp, backend string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "nginx")
	os.MkdirAll(dir, 0o755)
	conf := fmt.Sprintf(`daemon off;
worker_processes %[4]d;
worker_rlimit_nofile 20000;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 16000; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream be { server %[2]s; }
  server {
    listen 127.0.0.1:%[3]d;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_buffering off;
    }
  }
}
`, dir, backend, port, proxyThreads())
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startExternal("nginx", []string{"nginx", "-e", "stderr", "-p", dir, "-c", cfg}, port)
}

func startHAProxy(tmp, backend string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "haproxy")
	os.MkdirAll(dir, 0o755)
	conf := fmt.Sprintf(`global
  maxconn 9000
  nbthread %d
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  server s1 %s
`, proxyThreads(), port, backend)
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startExternal("haproxy", []string{"haproxy", "-db", "-f", cfg}, port)
}

func dial(ctx context.Context, url string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(8 << 20)
	return c, nil
}

// ---- throughput ----

func benchThroughput(targets []*target) error {
	fmt.Printf("## Throughput: one session, %d × 1 MiB messages echoed (MiB/s each way, median of %d rounds)\n\n", *msgs, *rounds)
	res := map[string][]float64{}
	cpu := map[string]int64{} // proxy CPU nanoseconds over all rounds
	for r := 0; r < *rounds; r++ {
		for _, t := range targets {
			c0 := procTreeCPU(t.pid)
			v, err := throughput(t.url)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			cpu[t.name] += procTreeCPU(t.pid) - c0
			res[t.name] = append(res[t.name], v)
		}
	}
	direct := median(res["direct"])
	fmt.Println("| target | MiB/s (median) | rounds | × direct | proxy CPU ms per MiB relayed (both ways) |")
	fmt.Println("|---|---|---|---|---|")
	for _, t := range targets {
		m := median(res[t.name])
		c := "–"
		if t.pid != 0 {
			c = fmt.Sprintf("%.2f", float64(cpu[t.name])/1e6/float64(2*(*msgs+1)*(*rounds)))
		}
		fmt.Printf("| %s | %.0f | %s | %.2f | %s |\n", t.name, m, fmtList(res[t.name]), m/direct, c)
	}
	fmt.Println()
	return nil
}

func throughput(url string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dial(ctx, url)
	if err != nil {
		return 0, err
	}
	defer c.CloseNow()
	msg := make([]byte, 1<<20)
	for i := range msg {
		msg[i] = byte(i)
	}
	// Warm up.
	if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
		return 0, err
	}
	if _, _, err := c.Read(ctx); err != nil {
		return 0, err
	}
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		for range *msgs {
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	var buf []byte
	for range *msgs {
		_, rd, err := c.Reader(ctx)
		if err != nil {
			return 0, err
		}
		if buf, err = readAll(rd, buf); err != nil {
			return 0, err
		}
		if len(buf) != len(msg) {
			return 0, fmt.Errorf("echo of %d bytes", len(buf))
		}
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	el := time.Since(start).Seconds()
	c.Close(websocket.StatusNormalClosure, "")
	return float64(*msgs) / el, nil
}

// ---- latency ----

func benchLatency(targets []*target) error {
	fmt.Printf("## Round trips: %d sessions × %.0f msg/s × 64 bytes for %v (µs)\n\n", *nSessions, *rate, *latDur)
	fmt.Printf("Driver: %s.\n\n", *latDriver)
	fmt.Println("| target | p50 | p90 | p99 | p99.9 | added p50 | added p99 | samples | proxy CPU µs per round trip | host steal ms | sends late p99 µs | skipped | sends < 10 µs after another, % |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	var direct []time.Duration
	for _, t := range targets {
		var c0, s0 int64
		ready := func() { c0, s0 = procTreeCPU(t.pid), stealTime() }
		var lat []time.Duration
		var ls loopStats
		var err error
		if *latDriver == "loop" {
			lat, ls, err = latencyLoop(t.url, ready)
		} else {
			lat, ls, err = latency(t.url, ready)
		}
		steal := float64(stealTime()-s0) / 1e6
		cpu := "–"
		if t.pid != 0 && len(lat) > 0 {
			cpu = fmt.Sprintf("%.1f", float64(procTreeCPU(t.pid)-c0)/1e3/float64(len(lat)))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		slices.Sort(lat)
		if t.name == "direct" {
			direct = lat
		}
		us := func(d time.Duration) float64 { return float64(d) / 1e3 }
		lateCol, skipCol := "–", "–"
		if *latDriver == "loop" {
			lateCol, skipCol = fmt.Sprintf("%.0f", us(ls.sendLateP99)), strconv.Itoa(ls.skipped)
		}
		fmt.Printf("| %s | %.0f | %.0f | %.0f | %.0f | %+.0f | %+.0f | %d | %s | %.0f | %s | %s | %.1f |\n", t.name,
			us(pct(lat, 50)), us(pct(lat, 90)), us(pct(lat, 99)), us(pct(lat, 99.9)),
			us(pct(lat, 50)-pct(direct, 50)), us(pct(lat, 99)-pct(direct, 99)), len(lat), cpu, steal, lateCol, skipCol,
			100*ls.bunched)
	}
	fmt.Println()
	return nil
}

// latency opens the sessions, calls ready, and drives raw WebSocket connections (a precomputed masked frame out, a 66-byte frame
// back) so the load generator spends as little CPU as possible on its side of the measurement.
func latency(url string, ready func()) ([]time.Duration, loopStats, error) {
	conns, err := dialAll(url, *nSessions)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.conn.Close()
			}
		}
	}()
	if err != nil {
		return nil, loopStats{}, err
	}
	var g errGroup
	ready()
	if p := os.Getenv("BENCH_PROFILE"); p != "" && strings.Contains(url, "token=") {
		// Profile one of our proxies under the latency load, once its sessions are open:
		// BENCH_PROFILE=/tmp/prefix writes /tmp/prefix<mode>.pprof.
		go func() {
			mem := strings.Replace(strings.SplitN(url, "?", 2)[0], "/v1/connect", "/debug/pprof/profile?seconds=3", 1)
			resp, err := http.Get(strings.Replace(mem, "ws://", "http://", 1))
			if err == nil {
				f, _ := os.Create(p + profileName(url) + ".pprof")
				io.Copy(f, resp.Body)
				f.Close()
				resp.Body.Close()
			}
		}()
	}
	var mu sync.Mutex
	var all, sends []time.Duration
	base := time.Now()
	interval := time.Duration(float64(time.Second) / *rate)
	end := time.Now().Add(*latDur)
	frame := append([]byte{0x82, 0x80 | 64, 1, 2, 3, 4}, make([]byte, 64)...)
	for _, c := range conns {
		g.Go(func() error {
			local := make([]time.Duration, 0, int(latDur.Seconds()**rate)+1)
			localSends := make([]time.Duration, 0, cap(local))
			time.Sleep(time.Duration(rand.Int64N(int64(interval))))
			next := time.Now()
			var in [66]byte
			for time.Now().Before(end) {
				t0 := time.Now()
				localSends = append(localSends, t0.Sub(base))
				if _, err := c.conn.Write(frame); err != nil {
					return err
				}
				if _, err := io.ReadFull(c.br, in[:]); err != nil {
					return err
				}
				if in[0] != 0x82 || in[1] != 64 {
					return fmt.Errorf("unexpected frame header %x", in[:2])
				}
				local = append(local, time.Since(t0))
				next = next.Add(interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
			mu.Lock()
			all = append(all, local...)
			sends = append(sends, localSends...)
			mu.Unlock()
			return nil
		})
	}
	err = g.Wait()
	return all, loopStats{bunched: bunched(sends)}, err
}

// bunched is the share of sends that went out less than 10 µs after the one before (the
// sends of all sessions together). Sessions sending independently at 10,000 msg/s in all
// would have about 1 − e^(−0.1) ≈ 9.5 % of their gaps that short.
func bunched(sends []time.Duration) float64 {
	if len(sends) < 2 {
		return 0
	}
	slices.Sort(sends)
	short := 0
	for i := 1; i < len(sends); i++ {
		if sends[i]-sends[i-1] < 10*time.Microsecond {
			short++
		}
	}
	return float64(short) / float64(len(sends)-1)
}

func closeAll(conns []*websocket.Conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		if c != nil {
			wg.Go(func() { c.CloseNow() })
		}
	}
	wg.Wait()
}

// dialAll opens n raw sessions to url, 16 at a time. On an error the connections opened are
// returned with it.
func dialAll(url string, n int) ([]*rawWS, error) {
	return openN(n, func() (*rawWS, error) { return dialRaw(url) })
}

// openN calls open n times, 16 at a time, and returns what it opened (with the first error,
// the ones that succeeded too).
func openN[T any](n int, open func() (T, error)) ([]T, error) {
	conns := make([]T, n)
	var g errGroup
	sem := make(chan struct{}, 16)
	for i := range conns {
		sem <- struct{}{}
		g.Go(func() error {
			defer func() { <-sem }()
			c, err := open()
			conns[i] = c
			return err
		})
	}
	return conns, g.Wait()
}

// rawWS is a client connection after a hand-made opening handshake.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(wsURL string) (*rawWS, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", u.RequestURI(), u.Host)
	br := bufio.NewReaderSize(conn, 256)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	// The echo backend says nothing first; the proxies add nothing.
	conn.SetDeadline(time.Time{})
	return &rawWS{conn: conn, br: br}, nil
}

// ---- setup ----

func benchSetup(targets []*target) error {
	fmt.Printf("## Session setup, request sent to 101 received (µs): %d sessions opened at %.0f/s (open loop, each at its own time), then as fast as 4 at a time go\n\n", *setups, *setupRate)
	fmt.Println("| target | p50 | p90 | p99 | max | added p50 | added p99 | 4 at a time: setups/s | p99 | proxy CPU µs/setup |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	var direct []time.Duration
	for _, t := range targets {
		paced, err := setupPaced(t.url)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if t.name == "direct" {
			direct = paced
		}
		cpu0 := procTreeCPU(t.pid)
		rate, closed, err := setupClosed(t.url)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		cpu := "–"
		if t.pid != 0 {
			cpu = fmt.Sprintf("%.0f", float64(procTreeCPU(t.pid)-cpu0)/1e3/float64(len(closed)))
		}
		us := func(d time.Duration) float64 { return float64(d) / 1e3 }
		fmt.Printf("| %s | %.0f | %.0f | %.0f | %.0f | %+.0f | %+.0f | %.0f | %.0f | %s |\n", t.name,
			us(pct(paced, 50)), us(pct(paced, 90)), us(pct(paced, 99)), us(paced[len(paced)-1]),
			us(pct(paced, 50)-pct(direct, 50)), us(pct(paced, 99)-pct(direct, 99)), rate, us(pct(closed, 99)), cpu)
	}
	fmt.Println()
	return nil
}

// setupOnce opens one session and closes it, and returns how long the opening handshake took.
func setupOnce(url string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	c, err := dial(ctx, url)
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	c.CloseNow()
	return d, nil
}

// setupPaced opens *setups sessions at *setupRate per second, each started at its scheduled
// time whether or not earlier ones finished (an open loop, as users arrive), and returns the
// sorted setup latencies.
func setupPaced(url string) ([]time.Duration, error) {
	lat := make([]time.Duration, *setups)
	var g errGroup
	interval := time.Duration(float64(time.Second) / *setupRate)
	start := time.Now()
	for i := range lat {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		g.Go(func() (err error) {
			lat[i], err = setupOnce(url)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.Sort(lat)
	return lat, nil
}

// setupClosed opens *setups sessions 4 at a time, each as soon as the last of its worker
// finished: the rate the target sustains, and the latency at that rate.
func setupClosed(url string) (float64, []time.Duration, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var g errGroup
	var next atomic.Int64
	start := time.Now()
	for range 4 {
		g.Go(func() error {
			for next.Add(1) <= int64(*setups) {
				d, err := setupOnce(url)
				if err != nil {
					return err
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, nil, err
	}
	rate := float64(len(lat)) / time.Since(start).Seconds()
	slices.Sort(lat)
	return rate, lat, nil
}

// ---- memory ----

type memStats struct {
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
	Goroutines int   `json:"goroutines"`
	Active     int   `json:"active"`
	RSS        int64 `json:"rss"`
}

func getMem(url string) (memStats, error) {
	var m memStats
	resp, err := http.Get(url)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

func procRSS(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

// procCPU is the CPU time (user + system, in nanoseconds) a process has used.
func procCPU(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command (which may hold spaces) start at state: utime and stime are
	// the 12th and 13th of them, in clock ticks (100 a second on Linux).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) <= 12 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return (u + st) * int64(10*time.Millisecond)
}

// procTreeCPU is the CPU time of a process and its children (nginx and HAProxy workers); 0
// for pid 0 (direct, which has no process of its own).
func procTreeCPU(pid int) int64 { return procTreeSum(pid, procCPU) }

// procTreeRSS sums the RSS of a process and its children.
func procTreeRSS(pid int) int64 { return procTreeSum(pid, procRSS) }

// procTreeSum sums f over a process and, recursively, its children.
func procTreeSum(pid int, f func(int) int64) int64 {
	if pid == 0 {
		return 0
	}
	total := f(pid)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(b)) {
		if child, err := strconv.Atoi(c); err == nil {
			total += procTreeSum(child, f)
		}
	}
	return total
}

// stealTime is the CPU time (nanoseconds, all CPUs) the hypervisor ran something else while
// this VM wanted to run: the "steal" column of /proc/stat. It separates a run that the host
// disturbed from one that measured the proxies.
func stealTime() int64 {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 {
		return 0
	}
	n, _ := strconv.ParseInt(f[8], 10, 64)
	return n * int64(10*time.Millisecond)
}

func benchMemory(targets []*target) error {
	fmt.Printf("## Memory per idle session at %d sessions (proxy process only; bytes per session)\n\n", *idle)
	fmt.Println("| target | heap+stacks | heap | stacks | RSS | goroutines/session |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, t := range targets {
		if t.name == "direct" {
			continue
		}
		var before memStats
		var err error
		if t.mem != "" {
			if before, err = getMem(t.mem); err != nil {
				return err
			}
		}
		rss0 := procTreeRSS(t.pid)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		conns, err := openN(*idle, func() (*websocket.Conn, error) {
			c, err := dial(ctx, t.url)
			if err != nil {
				return nil, err
			}
			// One round trip so every session is fully established end to end.
			if err := c.Write(ctx, websocket.MessageBinary, []byte("x")); err != nil {
				return c, err
			}
			_, _, err = c.Read(ctx)
			return c, err
		})
		cancel()
		if err != nil {
			closeAll(conns)
			return fmt.Errorf("%s: %w", t.name, err)
		}
		time.Sleep(500 * time.Millisecond)
		n := float64(*idle)
		rss1 := procTreeRSS(t.pid)
		if t.mem != "" {
			after, err := getMem(t.mem)
			if err != nil {
				closeAll(conns)
				return err
			}
			heap := float64(after.HeapInuse-before.HeapInuse) / n
			stack := float64(after.StackInuse-before.StackInuse) / n
			if os.Getenv("BENCH_HOLD") != "" {
				resp, err := http.Get(strings.Replace(t.mem, "/debug/mem", "/debug/pprof/heap", 1))
				if err == nil {
					f, _ := os.Create("/tmp/bench-heap-" + strings.ReplaceAll(t.name, " ", "-") + ".pprof")
					io.Copy(f, resp.Body)
					f.Close()
					resp.Body.Close()
				}
			}
			fmt.Printf("| %s | %.1f KiB | %.1f KiB | %.1f KiB | %.1f KiB | %.2f |\n", t.name, (heap+stack)/1024, heap/1024, stack/1024,
				float64(rss1-rss0)/n/1024, float64(after.Goroutines-before.Goroutines)/n)
		} else {
			fmt.Printf("| %s | – | – | – | %.1f KiB | – |\n", t.name, float64(rss1-rss0)/n/1024)
		}
		closeAll(conns)
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Println()
	return nil
}

// ---- helpers ----

// profileName names a proxy's profile file by the proxy process's port (each mode has its own).
func profileName(wsURL string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return "proxy"
	}
	return "proxy-" + u.Port()
}

// proxyThreads is how many threads (Go Ps, nginx workers, HAProxy threads) each proxy gets:
// the CPUs of -proxy-cpus, or 2 when unpinned.
func proxyThreads() int {
	if *proxyCPUs == "" {
		return 2
	}
	set, err := parseCPUs(*proxyCPUs)
	if err != nil {
		log.Fatal(err)
	}
	return set.Count()
}

// parseCPUs parses a CPU list like "1" or "0,1" or "2-3".
func parseCPUs(list string) (unix.CPUSet, error) {
	var set unix.CPUSet
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b >= 1024 {
			return set, fmt.Errorf("bad CPU list %q", list)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	return set, nil
}

// pinSelf restricts every thread of this process, and so every thread it creates later, to
// the CPUs in list, and sizes GOMAXPROCS to them.
func pinSelf(list string) error {
	set, err := parseCPUs(list)
	if err != nil {
		return err
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pinning thread %d: %w", tid, err)
		}
	}
	runtime.GOMAXPROCS(set.Count())
	return nil
}

type errGroup struct {
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

func (g *errGroup) Go(f func() error) {
	g.wg.Go(func() {
		if err := f(); err != nil {
			g.once.Do(func() { g.err = err })
		}
	})
}

func (g *errGroup) Wait() error {
	g.wg.Wait()
	err := g.err
	g.err, g.once = nil, sync.Once{}
	return err
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func fmtList(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(parts, ", ")
}

// logLevel is the proxy processes' log level: BENCH_LOG=info or debug, else warnings only.
func logLevel() slog.Level {
	switch os.Getenv("BENCH_LOG") {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// proxyGoMaxProcs is our pinned proxies' GOMAXPROCS: BENCH_PROXY_GOMAXPROCS, else one per CPU.
func proxyGoMaxProcs() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_PROXY_GOMAXPROCS")); err == nil && n > 0 {
		return n
	}
	return proxyThreads()
}
