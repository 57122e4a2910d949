// Command chaos is the session chaos harness (issue #18): shell sessions open without pause
// through lore and Eval while VMs roll, conman upgrades in place and Eval restarts, for a bounded
// time, and it reports what clients saw:
//
//   - setups: sessions opened / attempted;
//   - drops: sessions the platform closed (or broke) while the client still used them;
//   - in-band notices: restarted (a new shell, maybe on another VM) and resumed (the same shell);
//   - the longest pause: the slowest command's round trip, which spans any re-attach under it;
//
// and, from the platform's /metrics, Eval's own account: sessions by outcome stage and
// re-attaches by result (the session SLO: docs/operations.md).
//
// It drives a running examples/platform over its lore and admin APIs, or starts one itself
// with -platform (a built binary, run on loopback addresses of its own):
//
//	go build -o /tmp/platform ./examples/platform
//	go run ./bench/chaos -platform /tmp/platform -duration 60s -clients 12 \
//	    -roll-every 15s -upgrade-every 10s -eval-every 9s
//
// Each client loops: connect through lore, open the session (switchyard.v2 unless -v1), then
// -commands times type a command, wait for its answer and hold -hold; then close and start over.
// Everything stays on loopback and ends by -duration (plus the last commands' answers).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/sessions"
)

type config struct {
	lore, admin, key, cluster string
	clients, commands         int
	duration, hold            time.Duration
	rollEvery, evalEvery      time.Duration
	upgradeEvery              time.Duration
	upgradePath               string
	v1                        bool
	timeout                   time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.lore, "lore", "http://127.0.0.1:8400", "lore API base URL")
	flag.StringVar(&c.admin, "admin", "http://127.0.0.1:8401", "platform admin API base URL")
	flag.StringVar(&c.key, "key", os.Getenv("SWITCHYARD_ADMIN_KEY"), "admin key (default $SWITCHYARD_ADMIN_KEY)")
	flag.StringVar(&c.cluster, "cluster", "a", "the cluster whose repls, VMs and Eval are used")
	flag.IntVar(&c.clients, "clients", 12, "concurrent clients, each on a repl of its own")
	flag.IntVar(&c.commands, "commands", 3, "commands per session before the client closes it and opens the next")
	flag.DurationVar(&c.duration, "duration", 30*time.Second, "how long clients open sessions")
	flag.DurationVar(&c.hold, "hold", 1500*time.Millisecond, "pause after each answer")
	flag.DurationVar(&c.rollEvery, "roll-every", 0, "roll a VM of the cluster this often (0: never)")
	flag.DurationVar(&c.upgradeEvery, "upgrade-every", 0, "upgrade a VM's conman in place this often (0: never)")
	flag.StringVar(&c.upgradePath, "upgrade-path", "/v1/clusters/{cluster}/vms/{vm}/upgrade", "admin API path of the in-place upgrade")
	flag.DurationVar(&c.evalEvery, "eval-every", 0, "restart the cluster's Eval this often (0: never)")
	flag.BoolVar(&c.v1, "v1", false, "speak switchyard.v1 (conman's closes reach the client) instead of v2")
	flag.DurationVar(&c.timeout, "timeout", 90*time.Second, "longest wait for one answer (a re-attach may take up to Eval's ReattachTimeout)")
	platform := flag.String("platform", "", "start this examples/platform binary on loopback addresses of its own (127.66.0.0/16) and drive it")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(harness(ctx, c, *platform))
}

// harness runs the clients (starting the platform first when bin is set) and returns the exit
// code: 0 when every setup succeeded and no session dropped, 3 otherwise, 1 on an error.
func harness(ctx context.Context, c config, bin string) int {
	if bin != "" {
		p, err := startPlatform(ctx, bin, &c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		defer p.stop()
	}
	if c.key == "" {
		fmt.Fprintln(os.Stderr, "chaos: no admin key: -key or $SWITCHYARD_ADMIN_KEY")
		return 1
	}
	r, err := run(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	r.print(os.Stdout, c)
	if r.drops.Load() > 0 || r.setupFails.Load() > 0 {
		return 3
	}
	return 0
}

// report is what the clients saw.
type report struct {
	setups, setupFails, drops, commands atomic.Int64
	restarted, resumed, reconnecting    atomic.Int64
	mu                                  sync.Mutex
	rtts                                []time.Duration
	dropCodes                           map[string]int
	setupErrs                           map[string]int
	disturbances                        map[string]int
	disturbErrs                         map[string]int
	evalStages, reattach                map[string]float64
	pauses                              map[string]float64 // Eval's re-attach pauses: le → count
}

// longestPause reads Eval's re-attach histogram: the smallest bucket bound that holds every
// re-attach, and their number.
func (r *report) longestPause() (string, float64) {
	total := r.pauses["+Inf"]
	if total == 0 {
		return "", 0
	}
	best, bestLE := "+Inf", 0.0
	for le, n := range r.pauses {
		v, err := strconv.ParseFloat(le, 64)
		if err != nil || n < total {
			continue
		}
		if best == "+Inf" || v < bestLE {
			best, bestLE = le, v
		}
	}
	return best, total
}

func (r *report) addRTT(d time.Duration) {
	r.mu.Lock()
	r.rtts = append(r.rtts, d)
	r.mu.Unlock()
}

func (r *report) count(m map[string]int, k string) {
	r.mu.Lock()
	m[k]++
	r.mu.Unlock()
}

func run(ctx context.Context, c config) (*report, error) {
	r := &report{dropCodes: map[string]int{}, setupErrs: map[string]int{}, disturbances: map[string]int{},
		disturbErrs: map[string]int{}}
	lc := lore.NewClient(c.lore, c.key, nil)
	repls := make([]string, c.clients)
	for i := range repls {
		slug := "chaos" + strconv.Itoa(i)
		rp, err := lc.ReplByName(ctx, "chaos", slug)
		if errors.Is(err, lore.ErrNotFound) {
			rp, err = lc.CreateRepl(ctx, lore.Repl{Owner: "chaos", Slug: slug, Cluster: c.cluster})
		}
		if err != nil {
			return nil, fmt.Errorf("repl chaos/%s: %w", slug, err)
		}
		repls[i] = rp.ID
	}
	before, err := scrape(ctx, c)
	if err != nil {
		return nil, err
	}

	end := time.Now().Add(c.duration)
	dctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var wg sync.WaitGroup
	for _, d := range []struct {
		name  string
		every time.Duration
		do    func(context.Context) error
	}{
		{"roll", c.rollEvery, func(ctx context.Context) error { return adminPost(ctx, c, "/v1/clusters/"+c.cluster+"/roll") }},
		{"upgrade", c.upgradeEvery, func(ctx context.Context) error { return upgradeOne(ctx, c) }},
		{"eval-restart", c.evalEvery, func(ctx context.Context) error {
			return adminPost(ctx, c, "/v1/clusters/"+c.cluster+"/eval/restart")
		}},
	} {
		if d.every <= 0 {
			continue
		}
		wg.Go(func() {
			t := time.NewTicker(d.every)
			defer t.Stop()
			for {
				select {
				case <-dctx.Done():
					return
				case <-t.C:
				}
				if err := d.do(dctx); err != nil && dctx.Err() == nil {
					r.count(r.disturbErrs, d.name+": "+err.Error())
				} else if err == nil {
					r.count(r.disturbances, d.name)
				}
			}
		})
	}
	for i := range c.clients {
		wg.Go(func() { client(ctx, c, lc, repls[i], end, r) })
	}
	wg.Wait()
	after, err := scrape(ctx, c)
	if err != nil {
		return nil, err
	}
	r.evalStages = diff(after, before, "switchyard_proxy_sessions_total", "stage")
	r.reattach = diff(after, before, "switchyard_proxy_session_reattaches_total", "result")
	r.pauses = diff(after, before, "switchyard_proxy_session_reattach_seconds_bucket", "le")
	return r, nil
}

var markRE = regexp.MustCompile(`MARK-(\d+)-(\d+)`)

// client opens sessions on repl until end.
func client(ctx context.Context, c config, lc *lore.Client, repl string, end time.Time, r *report) {
	seq := 0
	for time.Now().Before(end) && ctx.Err() == nil {
		r.setups.Add(1)
		s, err := openSession(ctx, c, lc, repl, r)
		if err != nil {
			r.setupFails.Add(1)
			r.count(r.setupErrs, err.Error())
			time.Sleep(100 * time.Millisecond)
			continue
		}
		dropped := false
		for k := 0; k < c.commands; k++ {
			seq++
			start := time.Now()
			err := s.command(ctx, c.timeout, seq)
			if err != nil {
				dropped = true
				r.drops.Add(1)
				r.count(r.dropCodes, err.Error())
				break
			}
			r.commands.Add(1)
			r.addRTT(time.Since(start))
			if err := s.idle(ctx, c.hold); err != nil {
				dropped = true
				r.drops.Add(1)
				r.count(r.dropCodes, err.Error())
				break
			}
		}
		if !dropped {
			s.conn.Close(websocket.StatusNormalClosure, "")
		}
		s.conn.CloseNow()
		<-s.done
	}
}

// chaosSession reads one session into marks and notices.
type chaosSession struct {
	conn  *websocket.Conn
	marks chan int
	done  chan struct{}
	err   error // why reading ended, once done is closed
	id    int
}

var sessionIDs atomic.Int64

func openSession(ctx context.Context, c config, lc *lore.Client, repl string, r *report) (*chaosSession, error) {
	info, err := lc.Connect(ctx, repl)
	if err != nil {
		return nil, fmt.Errorf("lore connect: %w", err)
	}
	protos := []string{sessions.SubprotocolV2, sessions.Subprotocol}
	if c.v1 {
		protos = protos[1:]
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, info.URL, &websocket.DialOptions{
		HTTPHeader:   http.Header{"Authorization": {"Bearer " + info.Token}},
		Subprotocols: protos,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("open: %s", resp.Status)
		}
		return nil, fmt.Errorf("open: %w", err)
	}
	conn.SetReadLimit(1 << 20)
	s := &chaosSession{conn: conn, marks: make(chan int, 16), done: make(chan struct{}), id: int(sessionIDs.Add(1))}
	go func() {
		defer close(s.done)
		var buf []byte
		for {
			typ, data, err := conn.Read(context.Background())
			if err != nil {
				s.err = err
				return
			}
			if typ == websocket.MessageText {
				var n sessions.Notice
				if json.Unmarshal(data, &n) == nil && n.Type == "notice" {
					switch n.Event {
					case sessions.NoticeRestarted:
						r.restarted.Add(1)
					case sessions.NoticeResumed:
						r.resumed.Add(1)
					case sessions.NoticeReconnecting:
						r.reconnecting.Add(1)
					}
				}
				continue
			}
			buf = append(buf, data...)
			for {
				m := markRE.FindSubmatchIndex(buf)
				if m == nil {
					break
				}
				if id, _ := strconv.Atoi(string(buf[m[2]:m[3]])); id == s.id {
					n, _ := strconv.Atoi(string(buf[m[4]:m[5]]))
					select {
					case s.marks <- n:
					default:
					}
				}
				buf = buf[m[1]:]
			}
			if len(buf) > 4096 {
				buf = buf[len(buf)-64:]
			}
		}
	}()
	return s, nil
}

// command types a command whose answer names the session and seq, and waits for it. The mark is
// printed by printf so the echoed command line never matches.
func (s *chaosSession) command(ctx context.Context, timeout time.Duration, seq int) error {
	line := fmt.Sprintf("printf 'MARK-%%s-%%s\\n' %d %d\n", s.id, seq)
	if err := s.conn.Write(ctx, websocket.MessageBinary, []byte(line)); err != nil {
		return s.closed(err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case n := <-s.marks:
			if n == seq {
				return nil
			}
		case <-s.done:
			return s.closed(s.err)
		case <-t.C:
			return fmt.Errorf("no answer within %s", timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *chaosSession) idle(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-s.done:
		return s.closed(s.err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *chaosSession) closed(err error) error {
	if code := websocket.CloseStatus(err); code != -1 {
		var ce websocket.CloseError
		errors.As(err, &ce)
		return fmt.Errorf("closed %d %s", int(code), ce.Reason)
	}
	if err == nil {
		return errors.New("ended")
	}
	return fmt.Errorf("broken: %v", err)
}

func adminPost(ctx context.Context, c config, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.admin, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// upgradeOne upgrades the conman of the cluster's VM that has been upgraded least recently,
// round robin over the VMs the admin API lists.
var upgradeTurn atomic.Int64

func upgradeOne(ctx context.Context, c config) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.admin, "/")+"/v1/clusters", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var clusters []struct {
		ID  string `json:"id"`
		VMs []struct {
			ID string `json:"id"`
		} `json:"vms"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&clusters); err != nil {
		return err
	}
	for _, cl := range clusters {
		if cl.ID != c.cluster || len(cl.VMs) == 0 {
			continue
		}
		vm := cl.VMs[int(upgradeTurn.Add(1))%len(cl.VMs)].ID
		path := strings.NewReplacer("{cluster}", c.cluster, "{vm}", vm).Replace(c.upgradePath)
		return adminPost(ctx, c, path)
	}
	return fmt.Errorf("cluster %s has no VMs", c.cluster)
}

// scrape reads the platform's Prometheus metrics (every Eval generation's) as name{labels} →
// value sums.
func scrape(ctx context.Context, c config) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.admin, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, name := range []string{"switchyard_proxy_sessions_total", "switchyard_proxy_session_reattaches_total",
			"switchyard_proxy_session_reattach_seconds_bucket"} {
			if !strings.HasPrefix(line, name+"{") {
				continue
			}
			label := "stage"
			switch {
			case strings.HasSuffix(name, "_bucket"):
				label = "le"
			case strings.Contains(name, "reattach"):
				label = "result"
			}
			m := regexp.MustCompile(label + `="([^"]*)"`).FindStringSubmatch(line)
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if m == nil || err != nil {
				continue
			}
			out[name+"/"+m[1]] += v
		}
	}
	return out, sc.Err()
}

func diff(after, before map[string]float64, name, _ string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if rest, ok := strings.CutPrefix(k, name+"/"); ok {
			if d := v - before[k]; d != 0 {
				out[rest] = d
			}
		}
	}
	return out
}

func (r *report) print(w io.Writer, c config) {
	proto := sessions.SubprotocolV2
	if c.v1 {
		proto = sessions.Subprotocol
	}
	fmt.Fprintf(w, "chaos: %d clients, %s, %s, hold %s, %d commands a session; roll every %s, upgrade every %s, Eval restart every %s\n",
		c.clients, c.duration, proto, c.hold, c.commands, c.rollEvery, c.upgradeEvery, c.evalEvery)
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "disturbances done: %v; failed: %v\n", r.disturbances, r.disturbErrs)
	ok := r.setups.Load() - r.setupFails.Load()
	pct := 0.0
	if r.setups.Load() > 0 {
		pct = 100 * float64(ok) / float64(r.setups.Load())
	}
	fmt.Fprintf(w, "setups: %d/%d (%.1f%%)", ok, r.setups.Load(), pct)
	if len(r.setupErrs) > 0 {
		fmt.Fprintf(w, " failures: %v", r.setupErrs)
	}
	fmt.Fprintln(w)
	dpct := 0.0
	if ok > 0 {
		dpct = 100 * float64(r.drops.Load()) / float64(ok)
	}
	fmt.Fprintf(w, "sessions dropped mid-way: %d (%.1f%%)", r.drops.Load(), dpct)
	if len(r.dropCodes) > 0 {
		fmt.Fprintf(w, " %v", r.dropCodes)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "in-band notices: restarted %d, resumed %d, reconnecting %d\n",
		r.restarted.Load(), r.resumed.Load(), r.reconnecting.Load())
	if len(r.rtts) > 0 {
		slices.Sort(r.rtts)
		q := func(p float64) time.Duration { return r.rtts[min(len(r.rtts)-1, int(p*float64(len(r.rtts))))] }
		fmt.Fprintf(w, "commands: %d; round trip p50 %s p99 %s; longest pause %s\n",
			len(r.rtts), q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond), r.rtts[len(r.rtts)-1].Round(time.Millisecond))
	}
	fmt.Fprintf(w, "Eval: sessions by stage %v; re-attaches %v\n", r.evalStages, r.reattach)
	if le, n := r.longestPause(); n > 0 {
		fmt.Fprintf(w, "Eval: longest re-attach pause <= %s s (%.0f re-attaches; switchyard_proxy_session_reattach_seconds)\n", le, n)
	}
}

// platformProc is an examples/platform the harness started.
type platformProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startPlatform(ctx context.Context, bin string, c *config) (*platformProc, error) {
	if c.key == "" {
		c.key = "chaos-admin-key"
	}
	c.lore, c.admin = "http://127.66.0.1:8400", "http://127.66.0.1:8401"
	cmd := exec.Command(bin, "-cluster-net", "127.66.0.0/16", "-dns", "127.66.0.1:5353",
		"-lore", "127.66.0.1:8400", "-admin", "127.66.0.1:8401", "-web", "", "-no-https", "-clusters", "a")
	cmd.Env = append(os.Environ(), "SWITCHYARD_ADMIN_KEY="+c.key)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &platformProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.admin+"/v1/clusters", nil)
		req.Header.Set("Authorization", "Bearer "+c.key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case <-p.done:
			return nil, errors.New("the platform exited during start-up")
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, errors.New("the platform did not start within 90 s")
		}
	}
}

func (p *platformProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}
