package switchyard_test

import (
	"context"
	"fmt"
	"io"
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

	// Metrics on a free port, and a cookie secret.
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ml.Addr().String()
	ml.Close()
	secretFile := filepath.Join(dir, "cookie-secret")
	if err := os.WriteFile(secretFile, []byte("000102030405060708090a0b0c0d0e0f\n"), 0o600); err != nil {
		t.Fatal(err)
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
    prometheus %s
    switchyard {
        lore http://%s
        read_key_file %s
        ns ns1.repl.test 127.0.0.53
        ttl 30s
        rrl 10
        rrl_slip 2
        rrl_prefix_len 32 128
        rrl_prefix 127.0.0.1/32 0
        cookies %s
    }
}
`, port, metricsAddr, ln.Addr(), keyFile, secretFile)), 0o644); err != nil {
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
	rrlAndCookies(t, addr, metricsAddr)

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

// rrlAndCookies checks the Corefile's rrl and cookies: a client (127.0.0.2; 127.0.0.1 is
// exempt) that floods gets at most a burst of full answers and slipped truncated ones, except
// when it returns the valid server cookie it was given; prometheus shows what was limited.
func rrlAndCookies(t *testing.T, addr, metricsAddr string) {
	t.Helper()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange := func(m *dns.Msg) *dns.Msg {
		t.Helper()
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteToUDP(b, to); err != nil {
			t.Fatal(err)
		}
		rb := make([]byte, 2048)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			k, err := c.Read(rb)
			if err != nil {
				t.Fatalf("no answer to %v: %v", m.Question, err)
			}
			var r dns.Msg
			if r.Unpack(rb[:k]) == nil && r.Id == m.Id {
				return &r
			}
		}
	}
	withCookie := func(cookie string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("blog.replbot.repl.test.", dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: cookie}}
		return m
	}
	// A client cookie alone: the answer brings a server cookie (8 + 16 bytes, in hex).
	r := exchange(withCookie("0102030405060708"))
	cookie := ""
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if ck, ok := o.(*dns.EDNS0_COOKIE); ok {
				cookie = ck.Cookie
			}
		}
	}
	if len(cookie) != 48 || !strings.HasPrefix(cookie, "0102030405060708") {
		t.Fatalf("no server cookie in the answer: %v", r)
	}

	// A flood of 300 from 127.0.0.2, at 10 answers a second with slip 2.
	q := new(dns.Msg)
	q.SetQuestion("blog.replbot.repl.test.", dns.TypeA)
	buf, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	full, tc := 0, 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		rb := make([]byte, 2048)
		for {
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			k, err := c.Read(rb)
			if err != nil {
				return // the replies stopped
			}
			var m dns.Msg
			if m.Unpack(rb[:k]) != nil {
				continue
			}
			if m.Truncated && len(m.Answer) == 0 {
				tc++
			} else {
				full++
			}
		}
	}()
	for i := range 300 {
		if _, err := c.WriteToUDP(buf, to); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // stay within the socket buffers
		}
	}
	<-done
	t.Logf("flood of 300 through CoreDNS: %d full answers, %d truncated", full, tc)
	if full < 5 || full > 40 || tc < 100 || tc > 160 {
		t.Errorf("rrl 10, slip 2: %d full answers and %d truncated of 300", full, tc)
	}
	// Limited as it is, the client with a valid server cookie gets full answers.
	for i := range 3 {
		if r := exchange(withCookie(cookie)); r.Truncated || len(r.Answer) != 1 {
			t.Fatalf("answer %d with a valid cookie during the limit: %v", i, r)
		}
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`switchyard_dnsauth_rrl_total{action="dropped"}`, `switchyard_dnsauth_rrl_total{action="slipped"}`,
		`switchyard_dnsauth_cookies_total{server_cookie="valid"}`, `coredns_dns_requests_total`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}
