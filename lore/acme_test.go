package lore_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
)

// call makes one request to the server with a bearer token and decodes a JSON answer.
func call(t *testing.T, s server, method, path, bearer, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestACMEDelegations(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	blog, err := s.dir.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog"})
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := s.dir.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "www2"})
	for _, d := range []struct{ name, repl string }{{"shop.example.test", blog.ID}, {"alice.example.test", alice.ID}, {"pending.example.test", blog.ID}} {
		dom, err := s.dir.AddDomain(ctx, d.name, d.repl)
		if err != nil {
			t.Fatal(err)
		}
		if d.name != "pending.example.test" {
			s.txt.set(lore.ChallengeName(d.name), dom.Challenge)
			if _, err := s.dir.VerifyDomain(ctx, d.name); err != nil {
				t.Fatal(err)
			}
		}
	}
	code, out := call(t, s, "POST", "/v1/owners/replbot/token", adminKey, "")
	tok, _ := out["token"].(string)
	if code != 200 || tok == "" || out["owner"] != "replbot" {
		t.Fatalf("owner token: %d %v", code, out)
	}
	const target = `{"target":"0b2c4c2e-6a53-4b5e-9d7e-1f2a3b4c5d6e._acme.repl.test."}`
	for _, tc := range []struct {
		name, method, path, bearer, body string
		code                             int
	}{
		{"owner's wildcard name", "PUT", "/v1/acme/replbot.repl.test", tok, target, 200},
		{"owner's repl", "PUT", "/v1/acme/Blog.ReplBot.repl.test.", tok, target, 200},
		{"owner's verified domain", "PUT", "/v1/acme/shop.example.test", tok, target, 200},
		{"read back", "GET", "/v1/acme/shop.example.test", tok, "", 200},
		{"admin, any name", "PUT", "/v1/acme/repl.test", adminKey, target, 200},
		{"another owner's name", "PUT", "/v1/acme/alice.repl.test", tok, target, 400},
		{"another owner's repl", "PUT", "/v1/acme/www2.alice.repl.test", tok, target, 400},
		{"another owner's domain", "PUT", "/v1/acme/alice.example.test", tok, target, 404},
		{"unverified domain", "PUT", "/v1/acme/pending.example.test", tok, target, 400},
		{"unknown domain", "PUT", "/v1/acme/nope.example.test", tok, target, 404},
		{"no such repl", "PUT", "/v1/acme/nope.replbot.repl.test", tok, target, 404},
		{"too deep", "PUT", "/v1/acme/a.b.replbot.repl.test", tok, target, 400},
		{"apex as owner", "PUT", "/v1/acme/repl.test", tok, target, 400},
		{"bad target", "PUT", "/v1/acme/replbot.repl.test", tok, `{"target":"x y.example"}`, 400},
		{"one-label target", "PUT", "/v1/acme/replbot.repl.test", tok, `{"target":"localhost"}`, 400},
		{"unknown field", "PUT", "/v1/acme/replbot.repl.test", tok, `{"target":"a.b","x":1}`, 400},
		{"no token", "PUT", "/v1/acme/replbot.repl.test", "", target, 401},
		{"read key is not an owner", "PUT", "/v1/acme/replbot.repl.test", readKey, target, 401},
		{"forged token", "PUT", "/v1/acme/replbot.repl.test", tok[:len(tok)-4] + "AAAA", target, 401},
		{"owner may not mint tokens", "POST", "/v1/owners/replbot/token", tok, "", 401},
		{"reserved owner", "POST", "/v1/owners/_acme/token", adminKey, "", 400},
		{"POST not allowed", "POST", "/v1/acme/replbot.repl.test", tok, target, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, out := call(t, s, tc.method, tc.path, tc.bearer, tc.body); code != tc.code {
				t.Fatalf("got %d %v, want %d", code, out, tc.code)
			}
		})
	}
	code, out = call(t, s, "GET", "/v1/acme/shop.example.test", tok, "")
	rec, _ := out["record"].(map[string]any)
	if code != 200 || out["owner"] != "replbot" || rec["name"] != "_acme-challenge.shop.example.test" || rec["target"] != "_acme-challenge.shop.example.test._domains.repl.test" {
		t.Fatalf("domain delegation: %v", out)
	}

	// What dnsauth serves (Zone.ACMEDelegate).
	want := "0b2c4c2e-6a53-4b5e-9d7e-1f2a3b4c5d6e._acme.repl.test"
	for name, tgt := range map[string]string{
		"replbot.repl.test":                     want,
		"blog.replbot.repl.test":                want,
		"repl.test":                             want,
		"shop.example.test._domains.repl.test":  want,
		"alice.example.test._domains.repl.test": "",
		"other.replbot.repl.test":               "",
		"shop.example.test":                     "", // outside the zone: never asked
	} {
		if got, err := s.dir.ACMETarget(ctx, name); err != nil || got != tgt {
			t.Errorf("ACMETarget(%s) = %q %v, want %q", name, got, err, tgt)
		}
	}
	// The domain changes hands: the old owner's delegation stops being served.
	if err := s.dir.DeleteDomain(ctx, "shop.example.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.dir.AddDomain(ctx, "shop.example.test", alice.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.dir.ACMETarget(ctx, "shop.example.test._domains.repl.test"); got != "" {
		t.Fatalf("a deleted domain's delegation is still served: %q", got)
	}
	if code, _ := call(t, s, "DELETE", "/v1/acme/blog.replbot.repl.test", tok, ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code, _ := call(t, s, "GET", "/v1/acme/blog.replbot.repl.test", tok, ""); code != 404 {
		t.Fatalf("after delete: %d", code)
	}
	// The Go client, with the admin key (minting) and with the owner token.
	ot, err := s.admin.OwnerToken(ctx, "ReplBot")
	if err != nil || ot.Owner != "replbot" || ot.Token == "" {
		t.Fatalf("client OwnerToken: %+v %v", ot, err)
	}
	owner := lore.NewClient(s.url, ot.Token, nil)
	if d, err := owner.PutACMEDelegation(ctx, "blog.replbot.repl.test", "x.example.test"); err != nil || d.Target != "x.example.test" || d.Record != nil {
		t.Fatalf("client put: %+v %v", d, err)
	}
	if d, err := owner.ACMEDelegation(ctx, "blog.replbot.repl.test"); err != nil || d.Owner != "replbot" {
		t.Fatalf("client get: %+v %v", d, err)
	}
	if _, err := owner.PutACMEDelegation(ctx, "www2.alice.repl.test", "x.example.test"); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("client put for another owner: %v", err)
	}
	if err := owner.DeleteACMEDelegation(ctx, "blog.replbot.repl.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.ACMEDelegation(ctx, "blog.replbot.repl.test"); !errors.Is(err, lore.ErrNotFound) {
		t.Fatalf("client get after delete: %v", err)
	}
	// A connect token is not an owner token.
	info, err := s.dir.Connect(ctx, blog.ID)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := call(t, s, "GET", "/v1/acme/replbot.repl.test", info.Token, ""); code != 401 {
		t.Fatalf("connect token accepted as an owner token: %d", code)
	}
}
