// Package chaos is the session chaos harness's engine (bench/chaos, and the short end-to-end run
// in examples/platform's tests): shell clients open sessions without pause through lore and
// Eval while VMs roll, conman upgrades in place and Eval restarts, and it reports what the
// clients saw and what Eval counted.
package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/sessions"
)

// Config says what to run against which platform.
type Config struct {
	Lore, Admin                        string // lore's and the platform admin API's base URLs
	Key                                string // the admin key (lore and admin API)
	Cluster                            string // whose repls, VMs and Eval are used
	Clients                            int    // concurrent clients, each on a repl of its own (chaos/chaos<i>)
	Commands                           int    // commands per session before the client closes it and opens the next
	Duration                           time.Duration
	Hold                               time.Duration // pause after each answer
	RollEvery, UpgradeEvery, EvalEvery time.Duration // 0: never
	UpgradePath                        string        // admin API path of the in-place upgrade ({cluster}, {vm})
	V1                                 bool          // speak switchyard.v1 instead of v2
	Timeout                            time.Duration // longest wait for one answer
	// VMs are the VMs to upgrade in turn; empty means those the admin API lists.
	VMs []string
}

// Defaults fills the zero fields of c.
func (c *Config) Defaults() {
	if c.Cluster == "" {
		c.Cluster = "a"
	}
	if c.Clients == 0 {
		c.Clients = 12
	}
	if c.Commands == 0 {
		c.Commands = 3
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Second
	}
	if c.Hold == 0 {
		c.Hold = 1500 * time.Millisecond
	}
	if c.UpgradePath == "" {
		c.UpgradePath = "/v1/clusters/{cluster}/vms/{vm}/upgrade"
	}
	if c.Timeout == 0 {
		c.Timeout = 90 * time.Second
	}
}

// Report is what the clients saw, and Eval's own account from the platform's /metrics.
type Report struct {
	Setups, SetupFails, Drops, Commands atomic.Int64
	Restarted, Resumed, Reconnecting    atomic.Int64
	mu                                  sync.Mutex
	rtts                                []time.Duration
	dropCodes                           map[string]int
	setupErrs                           map[string]int
	disturbances                        map[string]int
	disturbErrs                         map[string]int
	evalStages, reattach                map[string]float64
	pauses                              map[string]float64 // Eval's re-attach pauses: le → count
	metricsErr                          error              // why Eval's account is missing
}

// longestPause reads Eval's re-attach histogram: the smallest bucket bound that holds every
// re-attach, and their number.
func (r *Report) longestPause() (string, float64) {
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

// Done returns how many disturbances of a kind ("roll", "upgrade", "eval-restart") succeeded,
// and how many failed.
func (r *Report) Done(kind string) (ok, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ok = r.disturbances[kind]
	for k, n := range r.disturbErrs {
		if strings.HasPrefix(k, kind+": ") {
			failed += n
		}
	}
	return ok, failed
}

func (r *Report) addRTT(d time.Duration) {
	r.mu.Lock()
	r.rtts = append(r.rtts, d)
	r.mu.Unlock()
}

func (r *Report) count(m map[string]int, k string) {
	r.mu.Lock()
	m[k]++
	r.mu.Unlock()
}

// Run runs the clients and the disturbances for c.Duration and returns what they saw.
func Run(ctx context.Context, c Config) (*Report, error) {
	c.Defaults()
	r := &Report{dropCodes: map[string]int{}, setupErrs: map[string]int{}, disturbances: map[string]int{},
		disturbErrs: map[string]int{}}
	lc := lore.NewClient(c.Lore, c.Key, nil)
	repls := make([]string, c.Clients)
	for i := range repls {
		slug := "chaos" + strconv.Itoa(i)
		rp, err := lc.ReplByName(ctx, "chaos", slug)
		if errors.Is(err, lore.ErrNotFound) {
			rp, err = lc.CreateRepl(ctx, lore.Repl{Owner: "chaos", Slug: slug, Cluster: c.Cluster})
		}
		if err != nil {
			return nil, fmt.Errorf("repl chaos/%s: %w", slug, err)
		}
		repls[i] = rp.ID
	}
	// Eval's account comes from the platform admin API's /metrics; without it (a platform run
	// with -processes serves none) the report has the clients' side alone.
	before, scrapeErr := scrape(ctx, c)

	end := time.Now().Add(c.Duration)
	dctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var wg sync.WaitGroup
	for _, d := range []struct {
		name  string
		every time.Duration
		do    func(context.Context) error
	}{
		{"roll", c.RollEvery, func(ctx context.Context) error { return adminPost(ctx, c, "/v1/clusters/"+c.Cluster+"/roll") }},
		{"upgrade", c.UpgradeEvery, func(ctx context.Context) error { return upgradeOne(ctx, c) }},
		{"eval-restart", c.EvalEvery, func(ctx context.Context) error {
			return adminPost(ctx, c, "/v1/clusters/"+c.Cluster+"/eval/restart")
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
				// An operation started runs to its end, as an operator's would: the clients may
				// still be in its wake when the run ends.
				octx, ocancel := context.WithTimeout(context.WithoutCancel(dctx), 2*time.Minute)
				err := d.do(octx)
				ocancel()
				if err != nil {
					r.count(r.disturbErrs, d.name+": "+err.Error())
				} else {
					r.count(r.disturbances, d.name)
				}
			}
		})
	}
	for i := range c.Clients {
		wg.Go(func() { client(ctx, c, lc, repls[i], end, r) })
	}
	wg.Wait()
	after, err := scrape(ctx, c)
	if scrapeErr != nil || err != nil {
		r.metricsErr = errors.Join(scrapeErr, err)
		return r, nil
	}
	r.evalStages = diff(after, before, "switchyard_proxy_sessions_total")
	r.reattach = diff(after, before, "switchyard_proxy_session_reattaches_total")
	r.pauses = diff(after, before, "switchyard_proxy_session_reattach_seconds_bucket")
	return r, nil
}

var markRE = regexp.MustCompile(`MARK-(\d+)-(\d+)`)

// labelRE finds the value of each label scrape reads.
var labelRE = map[string]*regexp.Regexp{
	"stage":  regexp.MustCompile(`stage="([^"]*)"`),
	"result": regexp.MustCompile(`result="([^"]*)"`),
	"le":     regexp.MustCompile(`le="([^"]*)"`),
}

// client opens sessions on repl until end.
func client(ctx context.Context, c Config, lc *lore.Client, repl string, end time.Time, r *Report) {
	seq := 0
	for time.Now().Before(end) && ctx.Err() == nil {
		r.Setups.Add(1)
		s, err := openSession(ctx, c, lc, repl, r)
		if err != nil {
			r.SetupFails.Add(1)
			r.count(r.setupErrs, err.Error())
			time.Sleep(100 * time.Millisecond)
			continue
		}
		dropped := false
		for k := 0; k < c.Commands; k++ {
			seq++
			start := time.Now()
			err := s.command(ctx, c.Timeout, seq)
			if err != nil {
				dropped = true
				r.Drops.Add(1)
				r.count(r.dropCodes, err.Error())
				break
			}
			r.Commands.Add(1)
			r.addRTT(time.Since(start))
			if err := s.idle(ctx, c.Hold); err != nil {
				dropped = true
				r.Drops.Add(1)
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
	// restarts gets a value for each restarted notice: the shell is new, and input typed while
	// Eval re-attached was dropped, so a command still unanswered is typed again.
	restarts chan struct{}
	done     chan struct{}
	err      error // why reading ended, once done is closed
	id       int
}

var sessionIDs atomic.Int64

func openSession(ctx context.Context, c Config, lc *lore.Client, repl string, r *Report) (*chaosSession, error) {
	info, err := lc.Connect(ctx, repl)
	if err != nil {
		return nil, fmt.Errorf("lore connect: %w", err)
	}
	protos := []string{sessions.SubprotocolV2, sessions.Subprotocol}
	if c.V1 {
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
	s := &chaosSession{conn: conn, marks: make(chan int, 16), restarts: make(chan struct{}, 16), done: make(chan struct{}), id: int(sessionIDs.Add(1))}
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
						r.Restarted.Add(1)
						select {
						case s.restarts <- struct{}{}:
						default:
						}
					case sessions.NoticeResumed:
						r.Resumed.Add(1)
					case sessions.NoticeReconnecting:
						r.Reconnecting.Add(1)
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
		case <-s.restarts:
			// A new shell: what was typed for the old one may be gone. Type it again.
			if err := s.conn.Write(ctx, websocket.MessageBinary, []byte(line)); err != nil {
				return s.closed(err)
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

func adminPost(ctx context.Context, c Config, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.Admin, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
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

func upgradeOne(ctx context.Context, c Config) error {
	// A roll may replace the VM between the listing and the upgrade (404): list again.
	var err error
	for range 3 {
		if err = upgradeOnce(ctx, c); err == nil || !strings.Contains(err.Error(), "404 Not Found") {
			return err
		}
	}
	return err
}

func upgradeOnce(ctx context.Context, c Config) error {
	if len(c.VMs) > 0 {
		vm := c.VMs[int(upgradeTurn.Add(1))%len(c.VMs)]
		return adminPost(ctx, c, strings.NewReplacer("{cluster}", c.Cluster, "{vm}", vm).Replace(c.UpgradePath))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.Admin, "/")+"/v1/clusters", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
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
		if cl.ID != c.Cluster || len(cl.VMs) == 0 {
			continue
		}
		vm := cl.VMs[int(upgradeTurn.Add(1))%len(cl.VMs)].ID
		path := strings.NewReplacer("{cluster}", c.Cluster, "{vm}", vm).Replace(c.UpgradePath)
		return adminPost(ctx, c, path)
	}
	return fmt.Errorf("cluster %s has no VMs", c.Cluster)
}

// scrape reads the platform's Prometheus metrics (every Eval generation's) as name{labels} →
// value sums.
func scrape(ctx context.Context, c Config) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.Admin, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
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
			m := labelRE[label].FindStringSubmatch(line)
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

func diff(after, before map[string]float64, name string) map[string]float64 {
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

// Print writes the report for people.
func (r *Report) Print(w io.Writer, c Config) {
	proto := sessions.SubprotocolV2
	if c.V1 {
		proto = sessions.Subprotocol
	}
	fmt.Fprintf(w, "chaos: %d clients, %s, %s, hold %s, %d commands a session; roll every %s, upgrade every %s, Eval restart every %s\n",
		c.Clients, c.Duration, proto, c.Hold, c.Commands, c.RollEvery, c.UpgradeEvery, c.EvalEvery)
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "disturbances done: %v; failed: %v\n", r.disturbances, r.disturbErrs)
	ok := r.Setups.Load() - r.SetupFails.Load()
	pct := 0.0
	if r.Setups.Load() > 0 {
		pct = 100 * float64(ok) / float64(r.Setups.Load())
	}
	fmt.Fprintf(w, "setups: %d/%d (%.1f%%)", ok, r.Setups.Load(), pct)
	if len(r.setupErrs) > 0 {
		fmt.Fprintf(w, " failures: %v", r.setupErrs)
	}
	fmt.Fprintln(w)
	dpct := 0.0
	if ok > 0 {
		dpct = 100 * float64(r.Drops.Load()) / float64(ok)
	}
	fmt.Fprintf(w, "sessions dropped mid-way: %d (%.1f%%)", r.Drops.Load(), dpct)
	if len(r.dropCodes) > 0 {
		fmt.Fprintf(w, " %v", r.dropCodes)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "in-band notices: restarted %d, resumed %d, reconnecting %d\n",
		r.Restarted.Load(), r.Resumed.Load(), r.Reconnecting.Load())
	if len(r.rtts) > 0 {
		slices.Sort(r.rtts)
		q := func(p float64) time.Duration { return r.rtts[min(len(r.rtts)-1, int(p*float64(len(r.rtts))))] }
		fmt.Fprintf(w, "commands: %d; round trip p50 %s p99 %s; longest pause %s\n",
			len(r.rtts), q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond), r.rtts[len(r.rtts)-1].Round(time.Millisecond))
	}
	if r.metricsErr != nil {
		fmt.Fprintf(w, "Eval: no metrics (%v)\n", r.metricsErr)
		return
	}
	fmt.Fprintf(w, "Eval: sessions by stage %v; re-attaches %v\n", r.evalStages, r.reattach)
	if le, n := r.longestPause(); n > 0 {
		fmt.Fprintf(w, "Eval: longest re-attach pause <= %s s (%.0f re-attaches; switchyard_proxy_session_reattach_seconds)\n", le, n)
	}
}
