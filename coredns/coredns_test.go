package switchyard_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/lore"
)

// TestCoreDNSServesAReplName builds CoreDNS with the plugin (cmd/coredns, CoreDNS's documented
// way), runs it with a Corefile against lore's HTTP API on loopback, and asks it with dig (or
// a miekg/dns client where dig is missing) over UDP and TCP.
func TestCoreDNSServesAReplName(t *testing.T) {
	if testing.Short() {
		t.Skip("builds CoreDNS")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// lore, with a cluster and a repl, behind its HTTP API with a read key.
	d, err := lore.New(lore.Config{Zone: "repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.PutCluster(ctx, lore.Cluster{ID: "a", EvalURL: "ws://127.0.1.1:8443/v1/connect", HostingURL: "http://127.0.1.1:8080", Hosting4: []netip.Addr{netip.MustParseAddr("127.0.1.1")}, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: lore.NewHandler(lore.HandlerConfig{Directory: d, AdminKey: "admin", ReadKey: "reader"}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	keyFile := filepath.Join(dir, "read-key")
	if err := os.WriteFile(keyFile, []byte("reader\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Build CoreDNS with the plugin.
	bin := filepath.Join(dir, "coredns")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/coredns")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build CoreDNS: %v\n%s", err, out)
	}

	// A port free for both UDP and TCP.
	port := 0
	for i := 0; i < 20 && port == 0; i++ {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := tl.Addr().(*net.TCPAddr).Port
		if pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			pc.Close()
			port = p
		}
		tl.Close()
	}
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`repl.test:%d {
    bind 127.0.0.1
    errors
    switchyard {
        lore http://%s
        read_key_file %s
        ns ns1.repl.test 127.0.0.53
        ttl 30s
    }
}
`, port, ln.Addr(), keyFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "-conf", corefile)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill(); <-exited }()
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	ask := func(network, name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Net: network, Timeout: time.Second}
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			return nil
		}
		return r
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if r := ask("udp", "blog.replbot.repl.test."); r != nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("CoreDNS exited: %v: %s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("CoreDNS did not answer: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond) // a process starting has no readiness signal to wait on
	}
	for _, network := range []string{"udp", "tcp"} {
		r := ask(network, "blog.replbot.repl.test.")
		if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.1.1" || !r.Authoritative {
			t.Fatalf("%s: %v", network, r)
		}
		if r := ask(network, "nope.replbot.repl.test."); r == nil || r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s NXDOMAIN: %v", network, r)
		}
	}
	// dig, as a person would.
	if dig, err := exec.LookPath("dig"); err == nil {
		got, err := exec.CommandContext(ctx, dig, "+short", "-p", fmt.Sprint(port), "@127.0.0.1", "blog.replbot.repl.test", "A").Output()
		if err != nil || strings.TrimSpace(string(got)) != "127.0.1.1" {
			t.Fatalf("dig: %q %v", got, err)
		}
	} else {
		t.Log("dig not installed: asked with miekg/dns only")
	}
}
