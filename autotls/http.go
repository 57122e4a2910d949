package autotls

import (
	"net"
	"net/http"
	"strconv"
	"time"
)

// Redirect answers every request with 308 Permanent Redirect to the same host, path and query
// over HTTPS on httpsPort (443, or zero, leaves the port out).
func Redirect(httpsPort int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host == "" {
			http.Error(w, "autotls: a request without a Host cannot be redirected to HTTPS", http.StatusBadRequest)
			return
		}
		if httpsPort != 0 && httpsPort != 443 {
			host = net.JoinHostPort(host, strconv.Itoa(httpsPort))
		} else if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
			host = "[" + host + "]"
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}

// HSTS adds Strict-Transport-Security: max-age=<maxAge> to every answer of next that goes out
// over TLS (browsers ignore it over HTTP). Zero maxAge: one year.
func HSTS(next http.Handler, maxAge time.Duration) http.Handler {
	if maxAge <= 0 {
		maxAge = 365 * 24 * time.Hour
	}
	v := "max-age=" + strconv.FormatInt(int64(maxAge/time.Second), 10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			w.Header().Set("Strict-Transport-Security", v)
		}
		next.ServeHTTP(w, r)
	})
}
