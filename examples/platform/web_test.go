package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/lore"
)

// startWebPlatform runs the platform with its web server on the /16's base address.
func startWebPlatform(t *testing.T, net16 string) *Platform {
	t.Helper()
	return startPlatformWith(t, net16, func(c *Config) {
		c.WebAddr = strings.TrimSuffix(c.LoreAddr, ":0") + ":0"
		c.VMs = 1
	})
}

// webClient is a browser-like HTTP client of the web server: a cookie jar, no redirects
// followed, and a check that no response carries the admin key.
type webClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newWebClient(t *testing.T, p *Platform) *webClient {
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &webClient{t: t, base: p.web.URL(), c: &http.Client{
		Jar:           jar,
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (c *webClient) do(method, path string, form url.Values, header http.Header) (*http.Response, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+path, body)
	require.NoError(c.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.c.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	for k, vs := range resp.Header {
		for _, v := range vs {
			require.NotContains(c.t, v, "test-admin-key", "header %s of %s %s", k, method, path)
		}
	}
	require.NotContains(c.t, string(b), "test-admin-key", "body of %s %s", method, path)
	return resp, string(b)
}

var csrfRE = regexp.MustCompile(`data-csrf="([^"]+)"`)

func TestWebSignInAndOwnership(t *testing.T) {
	p := startWebPlatform(t, "127.84.0.0/16")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lc := lore.NewClient(p.LoreURL(), "test-admin-key", nil)
	blog, err := lc.CreateRepl(ctx, lore.Repl{Owner: "replbot", Slug: "blog", Cluster: "a"})
	require.NoError(t, err)
	notes, err := lc.CreateRepl(ctx, lore.Repl{Owner: "alice", Slug: "notes", Cluster: "a"})
	require.NoError(t, err)

	c := newWebClient(t, p)
	// Signed out: the workspace sends to the sign-in page, the API refuses.
	resp, _ := c.do("GET", "/replbot/blog", nil, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/signin?next=%2Freplbot%2Fblog", resp.Header.Get("Location"))
	resp, _ = c.do("POST", "/api/repls/replbot/blog/connect", nil, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// Wrong keys: another owner's, the admin key, a guess.
	for _, key := range []string{ownerKey("test-admin-key", "alice"), "test-admin-key", "aaaaaaaaaaaaaaaaaaaaaaaaaa", ""} {
		resp, _ = c.do("POST", "/signin", url.Values{"owner": {"replbot"}, "key": {key}}, nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "key %q", key)
	}
	// A sign-in from another site is refused.
	resp, _ = c.do("POST", "/signin", url.Values{"owner": {"replbot"}, "key": {ownerKey("test-admin-key", "replbot")}},
		http.Header{"Origin": {"http://evil.test"}})
	require.Equal(t, http.StatusForbidden, resp.StatusCode)

	// Sign in as replbot (the owner name in any case); an off-site next is ignored.
	resp, _ = c.do("POST", "/signin", url.Values{"owner": {"ReplBot"}, "key": {ownerKey("test-admin-key", "replbot")}, "next": {"//evil.test/"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/", resp.Header.Get("Location"))
	_, body := c.do("GET", "/", nil, nil)
	require.Contains(t, body, `href="/replbot/blog"`)
	require.NotContains(t, body, "alice")

	resp, body = c.do("GET", "/replbot/blog", nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	m := csrfRE.FindStringSubmatch(body)
	require.NotNil(t, m, body)
	csrf := http.Header{csrfHeader: {m[1]}}

	// The connect API: CSRF token required, same site only; then a token for the repl.
	resp, _ = c.do("POST", "/api/repls/replbot/blog/connect", nil, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = c.do("POST", "/api/repls/replbot/blog/connect", nil, http.Header{csrfHeader: {m[1]}, "Origin": {"http://evil.test"}})
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, body = c.do("POST", "/api/repls/replbot/blog/connect", nil, csrf)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	var info struct{ URL, Token string }
	require.NoError(t, json.Unmarshal([]byte(body), &info))
	require.Equal(t, p.Cluster("a").evalURL(), info.URL)
	claims, err := lore.NewKeySet(p.Directory().Keys()...).Verify(ctx, info.Token, "a")
	require.NoError(t, err)
	require.Equal(t, blog.ID, claims.Repl)

	// Another owner's repl: refused everywhere, and its existence not confirmed by a 404.
	for _, path := range []string{"/alice/notes", "/alice/notes/web/", "/alice/nothing"} {
		resp, _ = c.do("GET", path, nil, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, path)
	}
	resp, _ = c.do("POST", "/api/repls/alice/notes/connect", nil, csrf)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	// An unknown repl of one's own is a 404; a bad name too.
	resp, _ = c.do("GET", "/replbot/nothing", nil, nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = c.do("GET", "/replbot/-bad-", nil, nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// The repl's page through the sandboxed relay: no cookies either way.
	resp, body = c.do("GET", "/replbot/blog/web/", nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Contains(t, body, "Hello from blog.replbot")
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "sandbox")
	require.Equal(t, "https://blog.replbot.repl.test", resp.Header.Get("Switchyard-Web-View"), "over HTTPS, verified")
	require.Empty(t, resp.Header.Values("Set-Cookie"))

	// Forged and expired cookies count as signed out.
	w := p.web
	exp := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	good := w.sign("v1|owner|replbot|" + exp)
	_, sig, _ := strings.Cut(good, ".")
	forged := base64.RawURLEncoding.EncodeToString([]byte("v1|owner|alice|"+exp)) + "." + sig
	expired := w.sign("v1|owner|alice|" + strconv.FormatInt(time.Now().Add(-time.Second).Unix(), 10))
	otherKey := (&webServer{sessKey: deriveWebKey("another-admin-key", "sessions")}).sign("v1|owner|alice|" + exp)
	var req *http.Request
	for name, v := range map[string]string{"forged": forged, "expired": expired, "other key": otherKey, "admin role forged": base64.RawURLEncoding.EncodeToString([]byte("v1|admin||"+exp)) + "." + sig} {
		req = httptest.NewRequest("GET", "/alice/notes", nil)
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: v})
		_, ok := w.session(req)
		require.False(t, ok, name)
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: good})
	s, ok := w.session(req)
	require.True(t, ok)
	require.Equal(t, "replbot", s.Owner)

	// The console: admins only.
	resp, _ = c.do("GET", "/console", nil, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/console/signin", resp.Header.Get("Location"))
	resp, _ = c.do("POST", "/console/actions/move", url.Values{"repl": {notes.ID}, "cluster": {"b"}}, csrf)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = c.do("POST", "/console/signin", url.Values{"key": {"wrong"}}, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = c.do("POST", "/console/signin", url.Values{"key": {"test-admin-key"}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, body = c.do("GET", "/console", nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, "a-vm1")
	require.Contains(t, body, "alice/notes")
	require.Contains(t, body, ownerKey("test-admin-key", "alice"))
	// The admin has no workspace: repls are their owners'.
	resp, _ = c.do("GET", "/replbot/blog", nil, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)

	m = csrfRE.FindStringSubmatch(body)
	require.NotNil(t, m)
	resp, _ = c.do("POST", "/console/actions/move", url.Values{"repl": {notes.ID}, "cluster": {"b"}}, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "no CSRF token")
	resp, _ = c.do("POST", "/console/actions/move", url.Values{"repl": {notes.ID}, "cluster": {"zz"}}, http.Header{csrfHeader: {m[1]}})
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, body = c.do("POST", "/console/actions/move", url.Values{"repl": {notes.ID}, "cluster": {"b"}}, http.Header{csrfHeader: {m[1]}})
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	moved, err := lc.Repl(ctx, notes.ID)
	require.NoError(t, err)
	require.Equal(t, "b", moved.Cluster)
	_, body = c.do("GET", "/console/state", nil, nil)
	require.Regexp(t, `data-repl="alice/notes"><td>alice/notes</td><td><code>[a-z0-9]+</code></td><td class="in-cluster">b</td>.*<code>127\.84\.2\.1</code>`, body)

	// Restart Eval: a second generation serves, the first drains (it has no sessions, so it
	// may already be gone). Roll a VM that does not exist: 404.
	resp, body = c.do("POST", "/console/actions/restart-eval", url.Values{"cluster": {"a"}}, http.Header{csrfHeader: {m[1]}})
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	_, body = c.do("GET", "/console/state", nil, nil)
	require.Contains(t, body, `data-generation="2"`)
	resp, _ = c.do("POST", "/console/actions/roll", url.Values{"cluster": {"a"}, "vm": {"a-vm9"}}, http.Header{csrfHeader: {m[1]}})
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = c.do("POST", "/console/actions/nothing", url.Values{"cluster": {"a"}}, http.Header{csrfHeader: {m[1]}})
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// The console's counters are the ones the admin API exports.
	req, err = http.NewRequest("GET", p.AdminURL()+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer test-admin-key")
	mresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	mbody, err := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, mresp.StatusCode)
	require.Contains(t, string(mbody), `switchyard_proxy_sessions_active{cluster="a",generation="2"}`)
	require.Contains(t, string(mbody), `switchyard_conman_attach_sessions{cluster="a",vm="a-vm1"}`)

	// Sign out ends the session.
	resp, _ = c.do("POST", "/signout", nil, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = c.do("GET", "/console/state", nil, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

func TestOwnerKey(t *testing.T) {
	k := ownerKey("k1", "replbot")
	require.Len(t, k, 26)
	require.Equal(t, k, ownerKey("k1", "ReplBot"))
	require.NotEqual(t, k, ownerKey("k1", "replbot2"))
	require.NotEqual(t, k, ownerKey("k2", "replbot"))
	require.Equal(t, "/", safeNext("//evil.test"))
	require.Equal(t, "/", safeNext("https://evil.test"))
	require.Equal(t, "/", safeNext("/\\evil.test"))
	require.Equal(t, "/a/b", safeNext("/a/b"))
}

func TestLockfile(t *testing.T) {
	pkgs, err := lockedPackages(webLockfile)
	require.NoError(t, err)
	require.Len(t, pkgs, 2)
	u, err := pkgs["@xterm/xterm"].tarballURL("https://registry.npmjs.org/")
	require.NoError(t, err)
	require.Equal(t, "https://registry.npmjs.org/@xterm/xterm/-/xterm-"+pkgs["@xterm/xterm"].Version+".tgz", u)

	for _, bad := range []string{`{`, `{"lockfileVersion":1}`, `{"lockfileVersion":3,"packages":{}}`,
		`{"lockfileVersion":3,"packages":{"node_modules/@xterm/xterm":{"version":"1","integrity":"sha1-AAAA"}}}`} {
		_, err := lockedPackages([]byte(bad))
		require.Error(t, err, bad)
	}
	_, err = npmPackage{Name: "x", Version: "1", Resolved: "file:///etc/passwd"}.tarballURL("")
	require.Error(t, err)
}

// TestFetchTarball serves a package from a fake registry: the files come out of a tarball whose
// sha512 matches, and a tarball that does not match is refused.
func TestFetchTarball(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range map[string]string{"package/lib/xterm.js": "js", "package/css/xterm.css": "css", "package/README.md": "x"} {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(body))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, zw.Close())
	tgz := buf.Bytes()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/@xterm/xterm/-/xterm-6.0.0.tgz" {
			http.NotFound(w, r)
			return
		}
		w.Write(tgz)
	}))
	defer srv.Close()
	sum := sha512.Sum512(tgz)
	pkg := npmPackage{Name: "@xterm/xterm", Version: "6.0.0", Integrity: sum[:]}
	ctx := context.Background()
	b, err := downloadTarball(ctx, srv.Client(), pkg, srv.URL)
	require.NoError(t, err)
	files, err := extractFiles(b, map[string]string{"package/lib/xterm.js": "xterm.js", "package/css/xterm.css": "xterm.css"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"xterm.js": []byte("js"), "xterm.css": []byte("css")}, files)
	_, err = extractFiles(b, map[string]string{"package/lib/missing.js": "m"})
	require.ErrorContains(t, err, "no package/lib/missing.js")

	pkg.Integrity = make([]byte, sha512.Size)
	_, err = downloadTarball(ctx, srv.Client(), pkg, srv.URL)
	require.ErrorContains(t, err, "refused")
	pkg.Version = "0.0.1"
	_, err = downloadTarball(ctx, srv.Client(), pkg, srv.URL)
	require.ErrorContains(t, err, "404")
}
