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
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/internal/chaos"
)

func main() {
	var c chaos.Config
	flag.StringVar(&c.Lore, "lore", "http://127.0.0.1:8400", "lore API base URL")
	flag.StringVar(&c.Admin, "admin", "http://127.0.0.1:8401", "platform admin API base URL")
	flag.StringVar(&c.Key, "key", os.Getenv("SWITCHYARD_ADMIN_KEY"), "admin key (default $SWITCHYARD_ADMIN_KEY)")
	flag.StringVar(&c.Cluster, "cluster", "a", "the cluster whose repls, VMs and Eval are used")
	flag.IntVar(&c.Clients, "clients", 12, "concurrent clients, each on a repl of its own")
	flag.IntVar(&c.Commands, "commands", 3, "commands per session before the client closes it and opens the next")
	flag.DurationVar(&c.Duration, "duration", 30*time.Second, "how long clients open sessions")
	flag.DurationVar(&c.Hold, "hold", 1500*time.Millisecond, "pause after each answer")
	flag.DurationVar(&c.RollEvery, "roll-every", 0, "roll a VM of the cluster this often (0: never)")
	flag.DurationVar(&c.UpgradeEvery, "upgrade-every", 0, "upgrade a VM's conman in place this often (0: never)")
	flag.StringVar(&c.UpgradePath, "upgrade-path", "/v1/clusters/{cluster}/vms/{vm}/upgrade", "admin API path of the in-place upgrade")
	flag.DurationVar(&c.EvalEvery, "eval-every", 0, "restart the cluster's Eval this often (0: never)")
	flag.BoolVar(&c.V1, "v1", false, "speak switchyard.v1 (conman's closes reach the client) instead of v2")
	flag.DurationVar(&c.Timeout, "timeout", 90*time.Second, "longest wait for one answer (a re-attach may take up to Eval's ReattachTimeout)")
	vms := flag.String("vms", "", "VMs to upgrade in turn, comma-separated (default: those the admin API lists; give them with -processes, whose admin API serves the upgrade alone)")
	platform := flag.String("platform", "", "start this examples/platform binary on loopback addresses of its own (127.66.0.0/16) and drive it")
	flag.StringVar(&platformArgs, "platform-args", "", "extra flags for -platform, space-separated (e.g. -processes)")
	flag.Parse()
	if *vms != "" {
		c.VMs = strings.Split(*vms, ",")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(harness(ctx, c, *platform))
}

// harness runs the clients (starting the platform first when bin is set) and returns the exit
// code: 0 when every setup succeeded and no session dropped, 3 otherwise, 1 on an error.
func harness(ctx context.Context, c chaos.Config, bin string) int {
	if bin != "" {
		p, err := startPlatform(ctx, bin, &c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		defer p.stop()
	}
	if c.Key == "" {
		fmt.Fprintln(os.Stderr, "chaos: no admin key: -key or $SWITCHYARD_ADMIN_KEY")
		return 1
	}
	r, err := chaos.Run(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	r.Print(os.Stdout, c)
	if r.Drops.Load() > 0 || r.SetupFails.Load() > 0 {
		return 3
	}
	return 0
}

var platformArgs string

// platformProc is an examples/platform the harness started.
type platformProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startPlatform(ctx context.Context, bin string, c *chaos.Config) (*platformProc, error) {
	if c.Key == "" {
		c.Key = "chaos-admin-key"
	}
	c.Lore, c.Admin = "http://127.66.0.1:8400", "http://127.66.0.1:8401"
	cmd := exec.Command(bin, "-cluster-net", "127.66.0.0/16", "-dns", "127.66.0.1:5353",
		"-lore", "127.66.0.1:8400", "-admin", "127.66.0.1:8401", "-web", "", "-no-https", "-clusters", "a")
	cmd.Args = append(cmd.Args, strings.Fields(platformArgs)...)
	cmd.Env = append(os.Environ(), "SWITCHYARD_ADMIN_KEY="+c.Key)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &platformProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(90 * time.Second)
	// Ready when lore lists the cluster's Eval (the platform registers clusters once they serve).
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.Lore+"/v1/clusters/"+c.Cluster, nil)
		req.Header.Set("Authorization", "Bearer "+c.Key)
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
