package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"embed"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

// The web pages (issue #22): the workspace, where an owner opens a repl's shell in a browser
// beside its hosted page, and the operator console. The web server is the web app of the seed
// system: it signs people in, asks lore for a connect token on the server side, and hands the
// page only what one session needs. The browser then opens the session at the cluster's Eval
// itself, the token in Sec-WebSocket-Protocol.
//
//	GET  /                                   the signed-in owner's repls, or the sign-in form
//	GET  /signin, POST /signin               owner sign-in: owner name and owner key
//	POST /signout
//	GET  /{owner}/{slug}                     the workspace (the owner only)
//	POST /api/repls/{owner}/{slug}/connect   {url, token} from lore (the owner only)
//	GET  /{owner}/{slug}/web/...             the repl's hosted page, sandboxed (the owner only)
//	GET  /console, /console/state            the console and its live tables (admin only)
//	GET  /console/signin, POST /console/signin
//	POST /console/actions/{roll,restart-eval,move}
//	GET  /assets/...                         xterm.js (from npm) and the pages' own files
//
// Sign-in. An owner's key is derived from the admin key (HMAC-SHA256, 128 bits; `platform
// owner-key <owner>` prints it, the console shows it), so nothing is stored and it survives a
// restart with the same admin key. A signed-in browser holds a cookie signed with another key
// derived from the admin key: role, owner and expiry, HttpOnly and SameSite=Strict. Every POST
// after sign-in carries a CSRF token bound to the cookie, and a POST whose Origin is another
// site is refused. The admin key is typed into the console's sign-in form and never sent back:
// no page, cookie or response carries it, nor lore's connect token to anyone but its owner.
//
// Owner names api, assets, console and signin are the pages' own paths: their repls have no
// workspace here.

//go:embed web/templates/*.html
var webTemplates embed.FS

//go:embed web/static
var webStatic embed.FS

const (
	sessionCookie = "switchyard_session"
	sessionTTL    = 12 * time.Hour
	csrfHeader    = "X-CSRF-Token"
	maxFormBytes  = 8 << 10
)

// webServer serves the workspace and the console for a Platform.
type webServer struct {
	p        *Platform
	log      *slog.Logger
	lore     *lore.Client
	adminKey string
	sessKey  []byte // signs session cookies
	csrfKey  []byte // derives CSRF tokens from cookies
	tmpl     *template.Template
	static   http.Handler

	assetsReady chan struct{} // closed when the npm files are loaded or failed to
	assets      *webAssetSet  // set before assetsReady closes; nil on failure
	assetsErr   error

	history outcomeHistory

	cancel context.CancelFunc
	wg     sync.WaitGroup
	srv    *server
}

// startWeb serves the pages on addr. The npm files load in the background (a first run
// downloads them): until then /assets/xterm.js answers 503 and the workspace says why.
func startWeb(ctx context.Context, p *Platform, addr, cacheRoot string) (*webServer, error) {
	tmpl, err := template.New("").Funcs(template.FuncMap{
		"since": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return fmt.Sprintf("%.1f s ago", time.Since(t).Seconds())
		},
	}).ParseFS(webTemplates, "web/templates/*.html")
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(webStatic, "web/static")
	if err != nil {
		return nil, err
	}
	w := &webServer{
		p:           p,
		log:         p.log.With("component", "web"),
		lore:        lore.NewClient(p.LoreURL(), p.cfg.AdminKey, nil),
		adminKey:    p.cfg.AdminKey,
		sessKey:     deriveWebKey(p.cfg.AdminKey, "sessions"),
		csrfKey:     deriveWebKey(p.cfg.AdminKey, "csrf"),
		tmpl:        tmpl,
		static:      http.FileServerFS(static),
		assetsReady: make(chan struct{}),
	}
	bg, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		defer close(w.assetsReady)
		lctx, cancel := context.WithTimeout(bg, 2*time.Minute)
		defer cancel()
		w.assets, w.assetsErr = loadWebAssets(lctx, cacheRoot, npmRegistry(), nil)
		if w.assetsErr != nil {
			w.log.Warn("the terminal's npm files are unavailable; the workspace has no terminal (run `go generate ./examples/platform` where the npm registry is reachable)", "err", w.assetsErr)
		} else {
			w.log.Debug("the pages' npm files loaded", "from", w.assets.source)
		}
	}()
	go func() { defer w.wg.Done(); w.history.run(bg, w.p.outcomeCounts) }()

	w.srv, err = serve(ctx, "web", addr, w.handler(), false)
	if err != nil {
		w.cancel()
		w.wg.Wait()
		return nil, err
	}
	return w, nil
}

// URL is the web server's base URL.
func (w *webServer) URL() string { return "http://" + w.srv.Addr() }

// shutdown stops serving, then the background work.
func (w *webServer) shutdown(ctx context.Context) error {
	err := w.srv.Shutdown(ctx)
	w.cancel()
	w.wg.Wait()
	return err
}

func (w *webServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", w.home)
	mux.HandleFunc("GET /signin", w.signinForm)
	mux.HandleFunc("POST /signin", w.signin)
	mux.HandleFunc("POST /signout", w.signout)
	mux.HandleFunc("GET /{owner}/{slug}", w.workspace)
	mux.HandleFunc("POST /api/repls/{owner}/{slug}/connect", w.connect)
	mux.HandleFunc("GET /{owner}/{slug}/web/{path...}", w.replPage)
	mux.HandleFunc("GET /console", w.console)
	mux.HandleFunc("GET /console/state", w.consoleState)
	mux.HandleFunc("GET /console/signin", w.consoleSigninForm)
	mux.HandleFunc("POST /console/signin", w.consoleSignin)
	mux.HandleFunc("POST /console/actions/{action}", w.consoleAction)
	mux.HandleFunc("GET /assets/npm/{name}", w.npmAsset)
	mux.Handle("GET /assets/{name}", http.StripPrefix("/assets/", w.static))
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := rw.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		// The pages run only their own scripts; the terminal connects to Eval on another
		// origin (ws:); xterm.js sets inline styles. The repl's page proxy overrides this.
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		if r.Method == http.MethodPost && !sameOrigin(r) {
			http.Error(rw, "cross-site request refused", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(rw, r)
	})
}

// sameOrigin reports whether a request's Origin (when the browser sent one) is this server.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not a browser's cross-site POST: browsers send Origin on every POST
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host && (u.Scheme == "http" || u.Scheme == "https")
}

// Keys and sessions.

// deriveWebKey derives a key for one purpose of the web server from the admin key.
func deriveWebKey(adminKey, purpose string) []byte {
	m := hmac.New(sha256.New, []byte(adminKey))
	m.Write([]byte("switchyard web\x00" + purpose))
	return m.Sum(nil)
}

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ownerKey is the sign-in key of owner: 128 bits of an HMAC keyed by the admin key.
func ownerKey(adminKey, owner string) string {
	m := hmac.New(sha256.New, deriveWebKey(adminKey, "owner keys"))
	m.Write([]byte(strings.ToLower(owner)))
	return strings.ToLower(keyEncoding.EncodeToString(m.Sum(nil)[:16]))
}

// webSession is who a cookie says signed in.
type webSession struct {
	Admin  bool
	Owner  string // the signed-in owner; empty for the admin
	cookie string // the cookie's value, which CSRF tokens are bound to
}

func (w *webServer) sign(payload string) string {
	m := hmac.New(sha256.New, w.sessKey)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// setSession signs a session in: "v1|admin|" or "v1|owner|<name>", then the expiry.
func (w *webServer) setSession(rw http.ResponseWriter, r *http.Request, s webSession) {
	role := "owner"
	if s.Admin {
		role = "admin"
	}
	exp := time.Now().Add(sessionTTL)
	v := w.sign("v1|" + role + "|" + s.Owner + "|" + strconv.FormatInt(exp.Unix(), 10))
	http.SetCookie(rw, &http.Cookie{
		Name: sessionCookie, Value: v, Path: "/", Expires: exp,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// session verifies the request's cookie; ok is false without a valid, unexpired one.
func (w *webServer) session(r *http.Request) (webSession, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || len(c.Value) > 512 {
		return webSession{}, false
	}
	p64, sig64, ok := strings.Cut(c.Value, ".")
	if !ok {
		return webSession{}, false
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	sig, err2 := base64.RawURLEncoding.DecodeString(sig64)
	if err1 != nil || err2 != nil {
		return webSession{}, false
	}
	m := hmac.New(sha256.New, w.sessKey)
	m.Write(payload)
	if !hmac.Equal(sig, m.Sum(nil)) {
		return webSession{}, false
	}
	f := strings.Split(string(payload), "|")
	if len(f) != 4 || f[0] != "v1" {
		return webSession{}, false
	}
	exp, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil || time.Now().Unix() >= exp {
		return webSession{}, false
	}
	switch {
	case f[1] == "admin" && f[2] == "":
		return webSession{Admin: true, cookie: c.Value}, true
	case f[1] == "owner" && f[2] != "":
		return webSession{Owner: f[2], cookie: c.Value}, true
	}
	return webSession{}, false
}

// csrf is the CSRF token of a session: pages put it in forms and the X-CSRF-Token header.
func (w *webServer) csrf(s webSession) string {
	m := hmac.New(sha256.New, w.csrfKey)
	m.Write([]byte(s.cookie))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:18])
}

func (w *webServer) checkCSRF(r *http.Request, s webSession) bool {
	got := r.Header.Get(csrfHeader)
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(w.csrf(s))) == 1
}

// Pages.

type page struct {
	Title   string
	Session webSession
	CSRF    string
	Error   string
	Data    any
}

func (w *webServer) render(rw http.ResponseWriter, status int, name string, pg page) {
	if pg.Session.cookie != "" {
		pg.CSRF = w.csrf(pg.Session)
	}
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	rw.Header().Set("Cache-Control", "no-store")
	rw.WriteHeader(status)
	if err := w.tmpl.ExecuteTemplate(rw, name, pg); err != nil {
		w.log.Warn("render page", "page", name, "err", err)
	}
}

func (w *webServer) home(rw http.ResponseWriter, r *http.Request) {
	s, ok := w.session(r)
	if !ok {
		w.render(rw, http.StatusOK, "signin.html", page{Title: "Sign in"})
		return
	}
	var repls []lore.Repl
	if !s.Admin {
		pg, err := w.lore.Repls(r.Context(), lore.ReplQuery{Owner: s.Owner, Limit: lore.MaxListLimit})
		if err != nil {
			w.render(rw, http.StatusBadGateway, "home.html", page{Title: "Repls", Session: s, Error: "lore: " + err.Error()})
			return
		}
		repls = pg.Repls
	}
	w.render(rw, http.StatusOK, "home.html", page{Title: "Repls", Session: s, Data: repls})
}

func (w *webServer) signinForm(rw http.ResponseWriter, r *http.Request) {
	w.render(rw, http.StatusOK, "signin.html", page{Title: "Sign in", Data: safeNext(r.URL.Query().Get("next"))})
}

func (w *webServer) signin(rw http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	owner := strings.ToLower(strings.TrimSpace(r.PostFormValue("owner")))
	key := strings.ToLower(strings.TrimSpace(r.PostFormValue("key")))
	next := safeNext(r.PostFormValue("next"))
	if _, err := lore.NormalizeName("owner", owner); err != nil || owner == "" ||
		subtle.ConstantTimeCompare([]byte(key), []byte(ownerKey(w.adminKey, owner))) != 1 {
		w.render(rw, http.StatusUnauthorized, "signin.html", page{Title: "Sign in", Error: "Unknown owner or wrong key.", Data: next})
		return
	}
	w.setSession(rw, r, webSession{Owner: owner})
	http.Redirect(rw, r, next, http.StatusSeeOther)
}

func (w *webServer) signout(rw http.ResponseWriter, r *http.Request) {
	http.SetCookie(rw, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(rw, r, "/", http.StatusSeeOther)
}

// safeNext is a local path to go to after sign-in: anything else becomes "/".
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") || len(next) > 256 {
		return "/"
	}
	return next
}

// ownerRepl authorizes a request for /{owner}/{slug}: the signed-in owner must be the repl's.
// It answers the request itself (sign-in, 403, 404) and returns ok false when it did.
func (w *webServer) ownerRepl(rw http.ResponseWriter, r *http.Request, api bool) (webSession, lore.Repl, bool) {
	owner, slug := strings.ToLower(r.PathValue("owner")), strings.ToLower(r.PathValue("slug"))
	fail := func(status int, msg string) {
		if api {
			writeJSONError(rw, status, msg)
		} else {
			s, _ := w.session(r)
			w.render(rw, status, "error.html", page{Title: http.StatusText(status), Session: s, Error: msg})
		}
	}
	if _, err := lore.NormalizeName("owner", owner); err != nil {
		fail(http.StatusNotFound, "No such repl.")
		return webSession{}, lore.Repl{}, false
	}
	if _, err := lore.NormalizeName("slug", slug); err != nil {
		fail(http.StatusNotFound, "No such repl.")
		return webSession{}, lore.Repl{}, false
	}
	s, ok := w.session(r)
	if !ok {
		if api {
			fail(http.StatusUnauthorized, "sign in first")
		} else {
			http.Redirect(rw, r, "/signin?next="+url.QueryEscape("/"+owner+"/"+slug), http.StatusSeeOther)
		}
		return s, lore.Repl{}, false
	}
	if s.Owner != owner {
		who := "the admin"
		if !s.Admin {
			who = s.Owner
		}
		fail(http.StatusForbidden, fmt.Sprintf("You are signed in as %s; %s/%s is not yours.", who, owner, slug))
		return s, lore.Repl{}, false
	}
	repl, err := w.lore.ReplByName(r.Context(), owner, slug)
	switch {
	case errors.Is(err, lore.ErrNotFound):
		fail(http.StatusNotFound, fmt.Sprintf("You have no repl named %s.", slug))
		return s, repl, false
	case err != nil:
		fail(http.StatusBadGateway, "lore: "+err.Error())
		return s, repl, false
	}
	return s, repl, true
}

func (w *webServer) workspace(rw http.ResponseWriter, r *http.Request) {
	s, repl, ok := w.ownerRepl(rw, r, false)
	if !ok {
		return
	}
	view := "http://" + repl.Slug + "." + repl.Owner + "." + w.p.cfg.Zone
	if c := w.p.clusters[repl.Cluster]; c != nil && c.https != nil {
		view = "https://" + repl.Slug + "." + repl.Owner + "." + w.p.cfg.Zone
	}
	w.render(rw, http.StatusOK, "workspace.html", page{Title: repl.Owner + "/" + repl.Slug, Session: s,
		Data: struct {
			lore.Repl
			View string // the repl's own URL the web view relays
		}{repl, view}})
}

// connect asks lore for a connect token, on the server side with the admin key, for the
// signed-in owner's own repl.
func (w *webServer) connect(rw http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	s, ok := w.session(r)
	if ok && !w.checkCSRF(r, s) {
		writeJSONError(rw, http.StatusForbidden, "missing or bad CSRF token")
		return
	}
	_, repl, ok := w.ownerRepl(rw, r, true)
	if !ok {
		return
	}
	info, err := w.lore.Connect(r.Context(), repl.ID)
	if err != nil {
		writeJSONError(rw, http.StatusBadGateway, "lore: "+err.Error())
		return
	}
	rw.Header().Set("Cache-Control", "no-store")
	writeJSON(rw, http.StatusOK, map[string]string{"url": info.URL, "token": info.Token})
}

// replPage relays the repl's hosted page through its cluster's hosting proxy (over HTTPS to the
// repl's own name when the cluster serves HTTPS), so the workspace can show it beside the
// terminal though the browser cannot resolve the platform's zone or trust its CA.
// The repl's code is hostile: its responses are sandboxed (an opaque origin: no access to this
// site's cookies or pages), and neither the browser's cookies nor the repl's Set-Cookie pass.
func (w *webServer) replPage(rw http.ResponseWriter, r *http.Request) {
	_, repl, ok := w.ownerRepl(rw, r, false)
	if !ok {
		return
	}
	cl, err := w.lore.Cluster(r.Context(), repl.Cluster)
	if err != nil {
		writeJSONError(rw, http.StatusBadGateway, "lore: "+err.Error())
		return
	}
	target, err := url.Parse(cl.HostingURL)
	if err != nil || target.Host == "" {
		writeJSONError(rw, http.StatusBadGateway, "cluster "+cl.ID+" has no hosting URL")
		return
	}
	host := repl.Slug + "." + repl.Owner + "." + w.p.cfg.Zone
	scheme, addr := target.Scheme, target.Host
	var transport http.RoundTripper // nil: http.DefaultTransport
	if c := w.p.clusters[repl.Cluster]; c != nil && c.https != nil {
		// HTTPS hosting (#13): the hop to the repl is TLS to its own name, verified against the
		// CA that issued it (the in-process one, else the system's roots).
		var roots *x509.CertPool
		if w.p.acme != nil && w.p.acme.ca != nil {
			roots = w.p.acme.ca.Roots()
		}
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{ServerName: host, RootCAs: roots, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		scheme, addr, transport = "https", c.https.Addr(), tr
	}
	rp := &httputil.ReverseProxy{
		Transport: transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = scheme, addr
			pr.Out.URL.Path = "/" + r.PathValue("path")
			pr.Out.URL.RawPath = ""
			pr.Out.Host = host
			for _, h := range []string{"Cookie", "Authorization", csrfHeader, "Origin", "Referer"} {
				pr.Out.Header.Del(h)
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del("Set-Cookie")
			resp.Header.Set("Content-Security-Policy", "sandbox allow-scripts allow-forms allow-popups; frame-ancestors 'self'")
			resp.Header.Set("Switchyard-Web-View", scheme+"://"+host)
			return nil
		},
		ErrorHandler: func(rw http.ResponseWriter, r *http.Request, err error) {
			w.log.Debug("repl page", "repl", repl.ID, "err", err)
			http.Error(rw, "the repl's page is unreachable: "+err.Error(), http.StatusBadGateway)
		},
	}
	rw.Header().Del("Content-Security-Policy")
	rp.ServeHTTP(rw, r)
}

// npmAsset serves a file of an npm package (webAssets), once loaded.
func (w *webServer) npmAsset(rw http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var a *webAsset
	for i := range webAssets {
		if webAssets[i].name == name {
			a = &webAssets[i]
		}
	}
	if a == nil {
		http.NotFound(rw, r)
		return
	}
	select {
	case <-w.assetsReady:
	default:
		rw.Header().Set("Retry-After", "2")
		http.Error(rw, "the terminal's files are still loading from npm; reload in a moment", http.StatusServiceUnavailable)
		return
	}
	if w.assets == nil {
		http.Error(rw, "the terminal's files are unavailable: "+w.assetsErr.Error(), http.StatusServiceUnavailable)
		return
	}
	rw.Header().Set("Content-Type", a.contentType)
	rw.Header().Set("Cache-Control", "public, max-age=3600")
	rw.Write(w.assets.files[name])
}

// runOwnerKey is the owner-key command: it prints an owner's web sign-in key.
func runOwnerKey(args []string) error {
	fs := flag.NewFlagSet("owner-key", flag.ContinueOnError)
	adminKey := adminKeyFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: platform owner-key [-admin-key-file FILE] <owner>")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return flag.ErrHelp
	}
	key, err := adminKey()
	if err != nil {
		return err
	}
	if key == "" {
		return errors.New("no admin key: set $" + envAdminKey + " or pass -admin-key-file")
	}
	owner, err := lore.NormalizeName("owner", fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Println(ownerKey(key, owner))
	return nil
}
