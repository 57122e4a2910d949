package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// legoBinary finds lego (go-acme/lego v4.34.0, which .ci/run builds): $LEGO, the PATH, or
// $(go env GOPATH)/bin.
func legoBinary(t *testing.T) string {
	t.Helper()
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	for _, c := range []string{os.Getenv("LEGO"), "lego", filepath.Join(strings.TrimSpace(string(gopath)), "bin", "lego")} {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("lego is not installed; .ci/run builds it")
	}
	t.Skip("lego is not installed (see .ci/run)")
	return ""
}

// ownerCall sends a JSON body to lore with a bearer token and returns the status and answer.
func ownerCall(ctx context.Context, t *testing.T, method, url, bearer string, body any) (int, map[string]any) {
	t.Helper()
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestPlatformLego: an owner runs their own ACME client, lego with its acme-dns provider,
// against the platform's acme-dns API and CA. The first run registers an acme-dns account and
// stops, asking for a delegation; the owner publishes it through lore's API with an owner
// token; the second run obtains the certificate: a wildcard for the owner's names, and one for
// a verified custom domain.
func TestPlatformLego(t *testing.T) {
	if testing.Short() {
		t.Skip("runs lego")
	}
	bin := legoBinary(t)
	e := startHTTPSEnv(t, "127.82.0.0/16", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	repl, err := e.lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	e.verifyDomain(ctx, t, "shop.example.test", repl)

	dir := t.TempDir()
	apiRoot := filepath.Join(dir, "acme-api.pem")
	require.NoError(t, os.WriteFile(apiRoot, e.p.acme.ca.APIRootPEM(), 0o600))
	storage := filepath.Join(dir, "acme-dns.json")
	lego := func(domains ...string) (string, error) {
		args := []string{"--server", e.p.acme.caURL, "--accept-tos", "--email", "owner@example.test",
			"--path", filepath.Join(dir, "lego"), "--dns", "acme-dns", "--dns.resolvers", e.resolver,
			"--dns.propagation-disable-ans", "--dns.propagation-rns"}
		for _, d := range domains {
			args = append(args, "-d", d)
		}
		cmd := exec.CommandContext(ctx, bin, append(args, "run")...)
		cmd.Env = append(os.Environ(), "ACME_DNS_API_BASE="+e.p.ACMEAPIURL(), "ACME_DNS_STORAGE_PATH="+storage,
			"LEGO_CA_CERTIFICATES="+apiRoot)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	fulldomain := func(domain string) string {
		b, err := os.ReadFile(storage)
		require.NoError(t, err)
		var accounts map[string]struct {
			FullDomain string `json:"fulldomain"`
		}
		require.NoError(t, json.Unmarshal(b, &accounts))
		require.NotEmpty(t, accounts[domain].FullDomain, "no acme-dns account for %s in %s", domain, b)
		return accounts[domain].FullDomain
	}

	code, out := ownerCall(ctx, t, "POST", e.p.LoreURL()+"/v1/owners/replbot/token", "test-admin-key", nil)
	require.Equal(t, http.StatusOK, code, out)
	token := out["token"].(string)

	for _, tc := range []struct {
		name     string
		domains  []string
		validate string // the name lego validates, and the owner delegates
		want     []string
	}{
		{"wildcard", []string{"*.replbot.repl.test", "replbot.repl.test"}, "replbot.repl.test", []string{"*.replbot.repl.test", "replbot.repl.test"}},
		{"custom domain", []string{"shop.example.test"}, "shop.example.test", []string{"shop.example.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The first run (for the validated name alone, so no other authorization goes on
			// to wait for propagation) registers an account and stops, asking for a CNAME.
			out, err := lego(tc.validate)
			require.Error(t, err, "the first run registers and asks for a CNAME:\n%s", out)
			require.Contains(t, out, "CNAME", out)
			target := fulldomain(tc.validate)

			// Publishing for a name the owner does not own is refused.
			code, resp := ownerCall(ctx, t, "PUT", e.p.LoreURL()+"/v1/acme/other.repl.test", token, map[string]string{"target": target})
			require.Equal(t, http.StatusBadRequest, code, resp)
			code, resp = ownerCall(ctx, t, "PUT", e.p.LoreURL()+"/v1/acme/"+tc.validate, token, map[string]string{"target": target})
			require.Equal(t, http.StatusOK, code, resp)

			start := time.Now()
			out, err = lego(tc.domains...)
			require.NoError(t, err, out)
			t.Logf("lego obtained %v in %v after the delegation", tc.domains, time.Since(start).Round(time.Millisecond))
			crt, err := os.ReadFile(filepath.Join(dir, "lego", "certificates", strings.TrimPrefix(tc.domains[0], "*.")+".crt"))
			if os.IsNotExist(err) {
				crt, err = os.ReadFile(filepath.Join(dir, "lego", "certificates", "_."+strings.TrimPrefix(tc.domains[0], "*.")+".crt"))
			}
			require.NoError(t, err)
			block, _ := pem.Decode(crt)
			require.NotNil(t, block)
			cert, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			require.ElementsMatch(t, tc.want, cert.DNSNames, fmt.Sprint(cert.DNSNames))
		})
	}
}
