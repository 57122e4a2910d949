package dnsauth_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
)

// TestThroughUnbound resolves through a real recursive resolver (Debian's unbound) whose
// stub-zones point at a miekg server on loopback that mounts dnsauth next to a customer's zone:
// A and AAAA of a repl, a custom domain's CNAME chain into <id>.id.<zone>, an NXDOMAIN, and an
// _acme-challenge TXT with two values set through the acme-dns API.
func TestThroughUnbound(t *testing.T) {
	bin, err := exec.LookPath("unbound")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("unbound is not installed; CI must install it (apt-get install unbound)")
		}
		t.Skip("unbound is not installed")
	}
	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
	api, err := acmedns.NewHandler(acmedns.HandlerConfig{Store: store, Zone: "acme.repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	httpSrv := httptest.NewServer(api)
	t.Cleanup(httpSrv.Close)
	acct := registerAndUpdate(t, httpSrv.URL, "first-value-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "secondvalue-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")

	zones := testZones()
	zones[0].ACMETarget = acct.FullDomain
	zones = append(zones, dnsauth.Zone{Name: "acme.repl.test", ChallengeZone: true})
	h := newHandler(t, dnsauth.Config{Zones: zones, Directory: loreFixture(t), Challenges: store})
	mux := dns.NewServeMux()
	mux.Handle("repl.test.", h)
	mux.Handle("acme.repl.test.", h)
	mux.HandleFunc("customer.example.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if q := r.Question[0]; strings.EqualFold(q.Name, "www.customer.example.") {
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300},
				Target: "r1abc.id.repl.test."})
		}
		_ = w.WriteMsg(m)
	})
	s := serve(t, mux)
	_, authPort, _ := net.SplitHostPort(s.udp)
	if _, tcpPort, _ := net.SplitHostPort(s.tcp); tcpPort != authPort {
		// unbound's stub-addr names one port for UDP and TCP; serve TCP on the UDP port too.
		s = serveSamePort(t, mux)
		_, authPort, _ = net.SplitHostPort(s.udp)
	}

	resolver := startUnbound(t, bin, authPort, "repl.test", "customer.example")
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  []string
	}{
		{"blog.replbot.repl.test.", dns.TypeA, dns.RcodeSuccess, []string{"blog.replbot.repl.test. A 127.0.1.1"}},
		{"blog.replbot.repl.test.", dns.TypeAAAA, dns.RcodeSuccess, []string{"blog.replbot.repl.test. AAAA fd00::1:1"}},
		{"www.customer.example.", dns.TypeA, dns.RcodeSuccess, []string{"www.customer.example. CNAME r1abc.id.repl.test.", "r1abc.id.repl.test. A 127.0.1.1"}},
		{"nope.replbot.repl.test.", dns.TypeA, dns.RcodeNameError, nil},
		{"_acme-challenge.blog.replbot.repl.test.", dns.TypeTXT, dns.RcodeSuccess, []string{
			"_acme-challenge.blog.replbot.repl.test. CNAME " + acct.FullDomain + ".",
			acct.FullDomain + `. TXT "first-value-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`,
			acct.FullDomain + `. TXT "secondvalue-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"`,
		}},
	} {
		t.Run(dns.TypeToString[tc.qtype]+" "+tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion(tc.name, tc.qtype)
			r := exchange(t, "udp", resolver, m)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			}
			var got []string
			for _, rr := range r.Answer {
				f := strings.Fields(rr.String()) // name ttl class type data...
				got = append(got, strings.Join(append([]string{f[0]}, f[3:]...), " "))
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Fatalf("answer\n got  %q\n want %q", got, want)
			}
		})
	}
}

func registerAndUpdate(t *testing.T, base string, values ...string) acmedns.RegisterResponse {
	t.Helper()
	resp, err := http.Post(base+"/register", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var acct acmedns.RegisterResponse
	err = json.NewDecoder(resp.Body).Decode(&acct)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("register: %d %v", resp.StatusCode, err)
	}
	for _, v := range values {
		body, _ := json.Marshal(acmedns.UpdateRequest{Subdomain: acct.Subdomain, TXT: v})
		req, _ := http.NewRequest("POST", base+"/update", bytes.NewReader(body))
		req.Header.Set("X-Api-User", acct.Username)
		req.Header.Set("X-Api-Key", acct.Password)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("update: %d", resp.StatusCode)
		}
	}
	return acct
}

// serveSamePort serves h on UDP and TCP on one port number.
func serveSamePort(t *testing.T, h dns.Handler) server {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		return serveOn(t, h, pc, ln)
	}
	t.Fatal("no port free for both UDP and TCP")
	return server{}
}

// startUnbound runs unbound on a free loopback port with stub zones pointing at port authPort
// and returns its address once it answers a real query. A port taken between choosing it and
// unbound binding it is retried with another.
func startUnbound(t *testing.T, bin, authPort string, zones ...string) string {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr, out, err := tryUnbound(t, bin, authPort, zones)
		if err == nil {
			return addr
		}
		if attempt == 5 || !strings.Contains(out, "could not open ports") {
			t.Fatalf("%v; unbound's output:\n%s", err, out)
		}
	}
}

func tryUnbound(t *testing.T, bin, authPort string, zones []string) (addr, output string, err error) {
	dir := t.TempDir()
	port := freePort(t)
	var stubs strings.Builder
	for _, z := range zones {
		fmt.Fprintf(&stubs, "stub-zone:\n  name: %q\n  stub-addr: 127.0.0.1@%s\n", z+".", authPort)
	}
	conf := fmt.Sprintf(`server:
  interface: 127.0.0.1
  port: %s
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  directory: %q
  logfile: ""
  use-syslog: no
  verbosity: %d
  num-threads: 1
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  cache-max-negative-ttl: 1
  # unbound answers the RFC 6761 name "test." itself (static NXDOMAIN) unless told not to.
  local-zone: "test." nodefault
remote-control:
  control-enable: no
%s`, port, dir, verbosity(), stubs.String())
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "-d", "-c", path)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	addr = net.JoinHostPort("127.0.0.1", port)
	// Ready when it resolves the zone's SOA through the stub: bounded polling, no fixed sleep.
	deadline := time.Now().Add(15 * time.Second)
	c := &dns.Client{Net: "udp", Timeout: 250 * time.Millisecond}
	for {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(zones[0]), dns.TypeSOA)
		if r, _, err := c.Exchange(m, addr); err == nil && r.Rcode == dns.RcodeSuccess {
			t.Cleanup(stop)
			return addr, "", nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", out.String(), fmt.Errorf("unbound not ready after 15s")
		}
		select {
		case err := <-exited:
			exited <- err
			return "", out.String(), fmt.Errorf("unbound exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePort returns a loopback port that was free for both UDP and TCP a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		pc.Close()
		if err == nil {
			ln.Close()
			_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return ""
}

// verbosity is unbound's log level: 1, or UNBOUND_VERBOSITY to debug a failing run.
func verbosity() int {
	if v, err := strconv.Atoi(os.Getenv("UNBOUND_VERBOSITY")); err == nil {
		return v
	}
	return 1
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
