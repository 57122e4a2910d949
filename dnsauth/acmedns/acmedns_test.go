package acmedns_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns/acmednstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemStore(t *testing.T) {
	acmednstest.Run(t, func(t *testing.T, now func() time.Time) (w, r acmedns.Store) {
		s := acmedns.NewMemStore(acmedns.MemStoreConfig{Now: now})
		return s, s
	})
}

type api struct {
	t     *testing.T
	url   string
	store *acmedns.MemStore
}

func newAPI(t *testing.T, cfg acmedns.HandlerConfig) *api {
	t.Helper()
	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
	cfg.Store, cfg.Zone = store, "acme.repl.test."
	h, err := acmedns.NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &api{t: t, url: srv.URL, store: store}
}

func (a *api) do(method, path string, hdr map[string]string, body string) (int, map[string]any) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (a *api) register(body string) acmedns.RegisterResponse {
	a.t.Helper()
	code, out := a.do("POST", "/register", nil, body)
	if code != http.StatusCreated {
		a.t.Fatalf("register: %d %v", code, out)
	}
	b, _ := json.Marshal(out)
	var r acmedns.RegisterResponse
	_ = json.Unmarshal(b, &r)
	return r
}

const (
	txt1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1"
	txt2 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2"
	txt3 = "ccccccccccccccccccccccccccccccccccccccccc-_"
)

func TestAPI(t *testing.T) {
	a := newAPI(t, acmedns.HandlerConfig{})
	acct := a.register("")
	if len(acct.Password) != 40 || acct.FullDomain != acct.Subdomain+".acme.repl.test" || acct.Username == acct.Subdomain {
		t.Fatalf("registration: %+v", acct)
	}
	auth := map[string]string{"X-Api-User": acct.Username, "X-Api-Key": acct.Password}
	update := func(hdr map[string]string, sub, txt string) (int, map[string]any) {
		b, _ := json.Marshal(acmedns.UpdateRequest{Subdomain: sub, TXT: txt})
		return a.do("POST", "/update", hdr, string(b))
	}
	for _, v := range []string{txt1, txt2, txt3} {
		if code, out := update(auth, acct.Subdomain, v); code != http.StatusOK || out["txt"] != v {
			t.Fatalf("update %s: %d %v", v, code, out)
		}
	}
	vals, _ := a.store.TXT(context.Background(), acct.FullDomain)
	if !slices.Equal(vals, []string{txt3, txt2}) {
		t.Fatalf("served values %q, want the 2 most recent", vals)
	}
	other := a.register(`{"allowfrom": ["192.0.2.0/24", "2001:db8::1"]}`)
	if !slices.Equal(other.AllowFrom, []string{"192.0.2.0/24", "2001:db8::1/128"}) {
		t.Fatalf("allowfrom echoed as %q", other.AllowFrom)
	}
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		sub  string
		txt  string
		code int
		err  string
	}{
		{"no credentials", nil, acct.Subdomain, txt1, 401, "forbidden"},
		{"unknown user", map[string]string{"X-Api-User": "nobody", "X-Api-Key": acct.Password}, acct.Subdomain, txt1, 401, "forbidden"},
		{"wrong key", map[string]string{"X-Api-User": acct.Username, "X-Api-Key": strings.Repeat("x", 40)}, acct.Subdomain, txt1, 401, "forbidden"},
		{"another account's subdomain", auth, other.Subdomain, txt1, 401, "forbidden"},
		{"not a subdomain", auth, "../etc", txt1, 400, "bad_subdomain"},
		{"short txt", auth, acct.Subdomain, "abc", 400, "bad_txt"},
		{"txt with bad characters", auth, acct.Subdomain, strings.Repeat("!", 43), 400, "bad_txt"},
		{"address not allowed", map[string]string{"X-Api-User": other.Username, "X-Api-Key": other.Password}, other.Subdomain, txt1, 401, "forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := update(tc.hdr, tc.sub, tc.txt)
			if code != tc.code || out["error"] != tc.err {
				t.Fatalf("got %d %v, want %d %q", code, out, tc.code, tc.err)
			}
		})
	}
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      map[string]string
		code                     int
	}{
		{"malformed update", "POST", "/update", "{", auth, 400},
		{"oversized update", "POST", "/update", `{"txt":"` + strings.Repeat("a", 70000) + `"}`, auth, 413},
		{"bad allowfrom", "POST", "/register", `{"allowfrom": ["nope"]}`, nil, 400},
		{"malformed register", "POST", "/register", `[`, nil, 400},
		{"GET register", "GET", "/register", "", nil, 405},
		{"GET update", "GET", "/update", "", auth, 405},
		{"health", "GET", "/health", "", nil, 200},
		{"unknown path", "GET", "/nope", "", nil, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, out := a.do(tc.method, tc.path, tc.hdr, tc.body); code != tc.code {
				t.Fatalf("got %d %v, want %d", code, out, tc.code)
			}
		})
	}
	vals, _ = a.store.TXT(context.Background(), acct.FullDomain)
	if !slices.Equal(vals, []string{txt3, txt2}) {
		t.Fatalf("rejected updates changed the values: %q", vals)
	}
}

func TestAPIRegistrationLimits(t *testing.T) {
	off := newAPI(t, acmedns.HandlerConfig{DisableRegistration: true})
	if code, out := off.do("POST", "/register", nil, ""); code != 403 || out["error"] != "registration_disabled" {
		t.Fatalf("disabled: %d %v", code, out)
	}
	elsewhere := newAPI(t, acmedns.HandlerConfig{RegisterFrom: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if code, out := elsewhere.do("POST", "/register", nil, ""); code != 401 {
		t.Fatalf("register from outside RegisterFrom: %d %v", code, out)
	}
	here := newAPI(t, acmedns.HandlerConfig{RegisterFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	here.register("")
	proxied := newAPI(t, acmedns.HandlerConfig{ClientIPHeader: "X-Forwarded-For"})
	acct := proxied.register(`{"allowfrom":["198.51.100.7"]}`)
	b, _ := json.Marshal(acmedns.UpdateRequest{Subdomain: acct.Subdomain, TXT: txt1})
	hdr := map[string]string{"X-Api-User": acct.Username, "X-Api-Key": acct.Password, "X-Forwarded-For": "198.51.100.7, 10.0.0.1"}
	if code, out := proxied.do("POST", "/update", hdr, string(bytes.NewBuffer(b).String())); code != 200 {
		t.Fatalf("update through a proxy header: %d %v", code, out)
	}
	if _, err := acmedns.NewHandler(acmedns.HandlerConfig{Zone: "x"}); err == nil {
		t.Fatal("NewHandler without a store")
	}
	if _, err := acmedns.NewHandler(acmedns.HandlerConfig{Store: acmedns.NewMemStore(acmedns.MemStoreConfig{})}); err == nil {
		t.Fatal("NewHandler without a zone")
	}
}

func TestAPIRegistrationGate(t *testing.T) {
	keyed := newAPI(t, acmedns.HandlerConfig{RegisterKey: "platform-secret"})
	for _, hdr := range []map[string]string{nil, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic platform-secret"}} {
		if code, out := keyed.do("POST", "/register", hdr, ""); code != 401 || out["error"] != "forbidden" {
			t.Fatalf("register with %v: %d %v", hdr, code, out)
		}
	}
	if code, out := keyed.do("POST", "/register", map[string]string{"Authorization": "Bearer platform-secret"}, ""); code != 201 {
		t.Fatalf("register with the key: %d %v", code, out)
	}

	// One address: 3 a minute, then 429 with Retry-After; another address still registers.
	limited := newAPI(t, acmedns.HandlerConfig{RegisterPerMinute: 3, RegisterTotalPerMinute: 5, ClientIPHeader: "X-Forwarded-For"})
	from := func(ip string) map[string]string { return map[string]string{"X-Forwarded-For": ip} }
	for i := range 3 {
		if code, out := limited.do("POST", "/register", from("192.0.2.1"), ""); code != 201 {
			t.Fatalf("registration %d: %d %v", i, code, out)
		}
	}
	req, _ := http.NewRequest("POST", limited.url+"/register", nil)
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("4th registration from one address: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	for _, ip := range []string{"192.0.2.2", "192.0.2.3"} {
		if code, out := limited.do("POST", "/register", from(ip), ""); code != 201 {
			t.Fatalf("registration from %s: %d %v", ip, code, out)
		}
	}
	// The total cap (5) holds whatever the address.
	if code, out := limited.do("POST", "/register", from("192.0.2.4"), ""); code != 429 || out["error"] != "rate_limited" {
		t.Fatalf("over the total cap: %d %v", code, out)
	}
}
