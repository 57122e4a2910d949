package revproxy

import (
	"encoding/json"
	"html"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
)

// HeaderRequestID carries the id of a request Hosting or the tombstone forwarder answered
// with an error; the same id is in their logs.
const HeaderRequestID = "Switchyard-Request-Id"

// StripSwitchyardHeaders deletes every Switchyard-* header from h. Hosting applies it to
// requests from clients (nobody outside the platform may speak conman's headers) and to
// conman's responses.
func StripSwitchyardHeaders(h http.Header) {
	for k := range h {
		if len(k) >= 11 && strings.EqualFold(k[:11], "Switchyard-") {
			delete(h, k)
		}
	}
}

// PeerIn reports whether the peer address of r (its RemoteAddr) is in one of prefixes.
func PeerIn(r *http.Request, prefixes []netip.Prefix) bool {
	if len(prefixes) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	return AddrIn(ap.Addr(), prefixes)
}

// AddrIn reports whether a (unmapped from IPv4-in-IPv6) is in one of prefixes.
func AddrIn(a netip.Addr, prefixes []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// SetForwarded writes the forwarding headers of an outgoing proxy request: X-Forwarded-For,
// X-Forwarded-Host, X-Forwarded-Proto and the RFC 7239 Forwarded header.
//
// httputil.ReverseProxy (with Rewrite) has already removed all of them from pr.Out. When trusted
// is false the chain starts here: the client is the peer, the host is the request's Host and
// the protocol is that of the inbound connection. When trusted is true (the peer is a proxy of
// ours, or another cluster's tombstone forwarder), the inbound values are kept and the peer is
// appended to X-Forwarded-For and Forwarded, the way a chain of proxies records its path.
func SetForwarded(pr *httputil.ProxyRequest, trusted bool) {
	in, out := pr.In, pr.Out
	peer := ""
	if host, _, err := net.SplitHostPort(in.RemoteAddr); err == nil {
		peer = host
	}
	connProto := "http"
	if in.TLS != nil {
		connProto = "https"
	}
	proto, host := connProto, in.Host

	var xff, fwd []string
	if trusted {
		xff = in.Header.Values("X-Forwarded-For")
		fwd = in.Header.Values("Forwarded")
		if v := in.Header.Get("X-Forwarded-Host"); v != "" {
			host = v
		}
		if v := in.Header.Get("X-Forwarded-Proto"); v == "http" || v == "https" {
			proto = v
		}
	}
	if peer != "" {
		xff = append(xff, peer)
	}
	if len(xff) > 0 {
		out.Header.Set("X-Forwarded-For", strings.Join(xff, ", "))
	}
	out.Header.Set("X-Forwarded-Host", host)
	out.Header.Set("X-Forwarded-Proto", proto)

	if !trusted {
		// The first element describes what the client asked for.
		fwd = nil
	}
	fwd = append(fwd, ForwardedElement(peer, in.Host, connProto))
	out.Header.Set("Forwarded", strings.Join(fwd, ", "))
}

// ForwardedElement is this hop's element of an RFC 7239 Forwarded header:
// for=<peer>;host=<host>;proto=<proto> (no for= when peer is empty).
func ForwardedElement(peer, host, proto string) string {
	return string(AppendForwardedElement(nil, peer, host, proto))
}

// AppendForwardedElement appends ForwardedElement's element to dst, without allocating.
func AppendForwardedElement[S ~string | ~[]byte](dst []byte, peer string, host S, proto string) []byte {
	if peer != "" {
		dst = append(dst, "for="...)
		if strings.Contains(peer, ":") { // IPv6: quoted and bracketed
			dst = append(dst, `"[`...)
			dst = append(dst, peer...)
			dst = append(dst, `]"`...)
		} else {
			dst = append(dst, peer...)
		}
		dst = append(dst, ';')
	}
	dst = append(dst, "host="...)
	dst = appendForwardedValue(dst, host)
	dst = append(dst, ";proto="...)
	return append(dst, proto...)
}

// appendForwardedValue appends v, quoted unless it is an RFC 7230 token.
func appendForwardedValue[S ~string | ~[]byte](dst []byte, v S) []byte {
	token := true
	for i := 0; i < len(v); i++ {
		if !isTokenChar(v[i]) {
			token = false
			break
		}
	}
	if token {
		return append(dst, v...)
	}
	dst = append(dst, '"')
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '\\' || c == '"' {
			dst = append(dst, '\\')
		}
		dst = append(dst, v[i])
	}
	return append(dst, '"')
}

func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// WriteError answers r with status and msg: a JSON body {"error": msg, "request_id": id}, or a
// small HTML page when the client prefers text/html (a browser). requestID may be empty.
func WriteError(w http.ResponseWriter, r *http.Request, status int, msg, requestID string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if requestID != "" {
		h.Set(HeaderRequestID, requestID)
	}
	if r != nil && strings.Contains(r.Header.Get("Accept"), "text/html") {
		h.Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		title := html.EscapeString(http.StatusText(status))
		page := "<!doctype html><html><head><meta charset=utf-8><title>" + title + "</title></head><body><h1>" +
			title + "</h1><p>" + html.EscapeString(msg) + "</p>"
		if requestID != "" {
			page += "<p><small>request id " + html.EscapeString(requestID) + "</small></p>"
		}
		_, _ = w.Write([]byte(page + "</body></html>\n"))
		return
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := struct {
		Error     string `json:"error"`
		RequestID string `json:"request_id,omitempty"`
	}{msg, requestID}
	_ = json.NewEncoder(w).Encode(body)
}

// bufferPool recycles the 32 KiB copy buffers httputil.ReverseProxy would otherwise allocate
// for every response.
type bufferPool struct{ p sync.Pool }

// NewBufferPool returns an httputil.BufferPool of 32 KiB buffers, shared by Hosting and the
// tombstone forwarder.
func NewBufferPool() httputil.BufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(p []byte) { b.p.Put(&p) }

// NewTransport returns the transport Proxy (and tombstone forwarding) use when none is
// configured: http.DefaultTransport's dialer and timeouts, no proxy from the environment, HTTP/1.1
// only (WebSocket upgrades need it), and a pool of 256 idle connections per backend.
func NewTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.ForceAttemptHTTP2 = false
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	t.ResponseHeaderTimeout = 0 // a repl may take its time; the client decides how long to wait
	return t
}
