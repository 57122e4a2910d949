package autotls_test

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/autotls"
)

func TestRedirect(t *testing.T) {
	for _, tc := range []struct {
		port       int
		host, uri  string
		want       string
		wantStatus int
	}{
		{443, "blog.replbot.repl.test", "/a/b?c=d", "https://blog.replbot.repl.test/a/b?c=d", 308},
		{0, "blog.replbot.repl.test:8080", "/", "https://blog.replbot.repl.test/", 308},
		{4443, "blog.replbot.repl.test:8080", "/x", "https://blog.replbot.repl.test:4443/x", 308},
		{443, "[::1]:8080", "/", "https://[::1]/", 308},
		{4443, "", "/", "", 400},
	} {
		r := httptest.NewRequest("POST", "http://x"+tc.uri, nil)
		r.Host = tc.host
		w := httptest.NewRecorder()
		autotls.Redirect(tc.port).ServeHTTP(w, r)
		if w.Code != tc.wantStatus || w.Header().Get("Location") != tc.want {
			t.Errorf("port %d host %q: %d %q, want %d %q", tc.port, tc.host, w.Code, w.Header().Get("Location"), tc.wantStatus, tc.want)
		}
	}
}

func TestHSTS(t *testing.T) {
	h := autotls.HSTS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), time.Hour)
	for _, overTLS := range []bool{false, true} {
		r := httptest.NewRequest("GET", "/", nil)
		if overTLS {
			r.TLS = &tls.ConnectionState{}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		got := w.Header().Get("Strict-Transport-Security")
		if overTLS && got != "max-age=3600" || !overTLS && got != "" {
			t.Errorf("over TLS %v: %q", overTLS, got)
		}
	}
}
