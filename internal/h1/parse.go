package h1

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// Verdict is what ParseRequest made of the bytes it was given.
type Verdict int

const (
	// OK: a complete request head of the fast path's subset was parsed.
	OK Verdict = iota
	// NeedMore: the head is not complete yet (nothing outside the subset so far).
	NeedMore
	// Handoff: the bytes are not (or not only) of the fast path's subset; net/http must decide.
	Handoff
)

// Field kinds: what a proxy does with a header field.
const (
	KindKeep       = iota // forwarded as it is
	KindDrop              // hop-by-hop or rewritten by the proxy: not forwarded
	KindForwarding        // X-Forwarded-For/-Host/-Proto or Forwarded: rewritten under a trust policy
)

// Field is one header field; Name and Value point into the buffer that was parsed.
type Field struct {
	Name, Value []byte
	Kind        int
}

// MaxFields bounds the header fields of a request the fast path takes (more: Handoff) and of a
// response (more: an error).
const MaxFields = 128

// Request is a parsed request head. Its slices point into the parsed buffer.
type Request struct {
	Method []byte
	Target []byte // origin-form: an absolute path and an optional query
	Host   []byte
	// Fields holds every header field but Host, in order, each with its Kind.
	Fields []Field
	// ContentLength is the body's length; -1 when the request has no Content-Length (no body).
	ContentLength int64
	// Close: the client sent Connection: close.
	Close bool
	// Forwarding: the request carries X-Forwarded-* or Forwarded fields.
	Forwarding bool
	// Accept is the value of the (first) Accept field, for error pages.
	Accept []byte
}

// Reset empties r, keeping its Fields' storage.
func (r *Request) Reset() {
	*r = Request{Fields: r.Fields[:0], ContentLength: -1}
}

// ParseRequest parses the request head at the start of b into req. With OK it returns the length
// of the head (through its empty line). The subset: an HTTP/1.1 request line with a token method
// other than CONNECT and PRI, an origin-form target of RFC 3986 path and query characters (valid
// %-escapes); header fields of token names, no obs-fold, values of visible ASCII, SP and HTAB;
// exactly one Host of host characters; at most one Content-Length of 1–18 digits; Connection
// only close or keep-alive; none of Transfer-Encoding, Upgrade, Expect, TE, Trailer, Keep-Alive,
// Proxy-Connection, HTTP2-Settings or Switchyard-*; CRLF line ends; at most MaxFields fields.
func ParseRequest(b []byte, req *Request) (int, Verdict) {
	req.Reset()
	i := 0
	// Method.
	for i < len(b) && isTchar(b[i]) {
		i++
	}
	if i == len(b) {
		return 0, NeedMore
	}
	if i == 0 || b[i] != ' ' {
		return 0, Handoff
	}
	req.Method = b[:i]
	if string(req.Method) == "CONNECT" || string(req.Method) == "PRI" {
		return 0, Handoff
	}
	i++
	// Target.
	start := i
	if i == len(b) {
		return 0, NeedMore
	}
	if b[i] != '/' {
		return 0, Handoff
	}
	for i < len(b) && b[i] != ' ' {
		c := b[i]
		switch {
		case c == '%':
			if i+2 >= len(b) {
				return 0, NeedMore
			}
			if !isHex(b[i+1]) || !isHex(b[i+2]) {
				return 0, Handoff
			}
			i += 2
		case isPathChar(c):
		default:
			return 0, Handoff
		}
		i++
	}
	if i == len(b) {
		return 0, NeedMore
	}
	req.Target = b[start:i]
	i++
	// Version.
	const version = "HTTP/1.1\r\n"
	if len(b)-i < len(version) {
		if string(b[i:]) != version[:len(b)-i] {
			return 0, Handoff
		}
		return 0, NeedMore
	}
	if string(b[i:i+len(version)]) != version {
		return 0, Handoff
	}
	i += len(version)

	hosts, lengths := 0, 0
	for {
		if i == len(b) {
			return 0, NeedMore
		}
		if b[i] == '\r' {
			if i+1 == len(b) {
				return 0, NeedMore
			}
			if b[i+1] != '\n' {
				return 0, Handoff
			}
			i += 2
			break
		}
		// Name.
		ns := i
		for i < len(b) && isTchar(b[i]) {
			i++
		}
		if i == len(b) {
			return 0, NeedMore
		}
		if i == ns || b[i] != ':' { // obs-fold, a space before the colon, a bare LF, a bad byte
			return 0, Handoff
		}
		name := b[ns:i]
		i++
		for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
			i++
		}
		vs := i
		for i < len(b) && (b[i] >= 0x20 && b[i] < 0x7f || b[i] == '\t') {
			i++
		}
		if i == len(b) {
			return 0, NeedMore
		}
		if b[i] != '\r' {
			return 0, Handoff
		}
		if i+1 == len(b) {
			return 0, NeedMore
		}
		if b[i+1] != '\n' {
			return 0, Handoff
		}
		ve := i
		for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
			ve--
		}
		value := b[vs:ve]
		i += 2

		kind := KindKeep
		switch classify(name) {
		case nameHost:
			hosts++
			if hosts > 1 || len(value) == 0 || !validHost(value) {
				return 0, Handoff
			}
			req.Host = value
			continue
		case nameContentLength:
			lengths++
			n, ok := parseLength(value)
			if lengths > 1 || !ok {
				return 0, Handoff
			}
			req.ContentLength = n
			kind = KindDrop
		case nameConnection:
			close, ok := connectionTokens(value)
			if !ok {
				return 0, Handoff
			}
			req.Close = req.Close || close
			kind = KindDrop
		case nameForwarding:
			req.Forwarding = true
			kind = KindForwarding
		case nameHopDrop:
			kind = KindDrop
		case nameAccept:
			if req.Accept == nil {
				req.Accept = value
			}
		case nameRefuse:
			return 0, Handoff
		}
		if len(req.Fields) == MaxFields {
			return 0, Handoff
		}
		req.Fields = append(req.Fields, Field{Name: name, Value: value, Kind: kind})
	}
	if hosts != 1 {
		return 0, Handoff
	}
	return i, OK
}

// Response is a parsed response head. Its slices point into the parsed buffer.
type Response struct {
	Status int
	// Fields holds the header fields, each with its Kind (KindDrop for hop-by-hop fields,
	// framing fields and the fields Connection names).
	Fields []Field
	// ContentLength is the body's length; -1 when the response has none.
	ContentLength int64
	// Chunked: Transfer-Encoding: chunked (then ContentLength is -1).
	Chunked bool
	// Close: the server will close the connection after this response (Connection: close, or
	// HTTP/1.0).
	Close bool
}

// ErrMalformed is returned for a response head (or chunked body) a proxy must not pass on.
var ErrMalformed = errors.New("h1: malformed response from the backend")

// ParseResponse parses the response head at the start of b into resp. It returns the head's
// length, 0 and nil when the head is incomplete, or ErrMalformed. It is strict the way net/http's
// transport is (and stricter): what it accepts can be written to a client as it is.
func ParseResponse(b []byte, resp *Response) (int, error) {
	*resp = Response{Fields: resp.Fields[:0], ContentLength: -1}
	const pfx = "HTTP/1."
	if len(b) < len(pfx)+5 {
		if len(b) > len(pfx) {
			b = b[:len(pfx)]
		}
		if string(b) != pfx[:len(b)] {
			return 0, ErrMalformed
		}
		return 0, nil
	}
	if string(b[:len(pfx)]) != pfx || (b[7] != '0' && b[7] != '1') || b[8] != ' ' ||
		!isDigit(b[9]) || !isDigit(b[10]) || !isDigit(b[11]) {
		return 0, ErrMalformed
	}
	resp.Close = b[7] == '0'
	resp.Status = int(b[9]-'0')*100 + int(b[10]-'0')*10 + int(b[11]-'0')
	if resp.Status < 100 {
		return 0, ErrMalformed
	}
	i := 12
	// Reason phrase: ignored, but it must be a single clean line.
	for i < len(b) && (b[i] >= 0x20 && b[i] != 0x7f || b[i] == '\t') {
		i++
	}
	if i == len(b) || i+1 == len(b) && b[i] == '\r' {
		return 0, nil
	}
	if b[i] != '\r' || b[i+1] != '\n' || (i > 12 && b[12] != ' ') {
		return 0, ErrMalformed
	}
	i += 2

	var conn [][]byte // names the Connection field lists
	lengths := 0
	for {
		if i == len(b) {
			return 0, nil
		}
		if b[i] == '\r' {
			if i+1 == len(b) {
				return 0, nil
			}
			if b[i+1] != '\n' {
				return 0, ErrMalformed
			}
			i += 2
			break
		}
		ns := i
		for i < len(b) && isTchar(b[i]) {
			i++
		}
		if i == len(b) {
			return 0, nil
		}
		if i == ns || b[i] != ':' {
			return 0, ErrMalformed
		}
		name := b[ns:i]
		i++
		for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
			i++
		}
		vs := i
		for i < len(b) && (b[i] >= 0x20 && b[i] != 0x7f || b[i] == '\t') {
			i++
		}
		if i == len(b) || i+1 == len(b) && b[i] == '\r' {
			return 0, nil
		}
		if b[i] != '\r' || b[i+1] != '\n' {
			return 0, ErrMalformed
		}
		ve := i
		for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
			ve--
		}
		value := b[vs:ve]
		i += 2

		kind := KindKeep
		switch classifyResponse(name) {
		case nameContentLength:
			n, ok := parseLength(value)
			lengths++
			if !ok || lengths > 1 {
				return 0, ErrMalformed
			}
			resp.ContentLength = n
			kind = KindDrop
		case nameTransferEncoding:
			if !equalFold(value, "chunked") || resp.Chunked {
				return 0, ErrMalformed
			}
			resp.Chunked = true
			kind = KindDrop
		case nameConnection:
			for _, tok := range splitTokens(value) {
				switch {
				case equalFold(tok, "close"):
					resp.Close = true
				case equalFold(tok, "keep-alive"):
				default:
					conn = append(conn, tok)
				}
			}
			kind = KindDrop
		case nameHopDrop:
			kind = KindDrop
		}
		if len(resp.Fields) == MaxFields {
			return 0, ErrMalformed
		}
		resp.Fields = append(resp.Fields, Field{Name: name, Value: value, Kind: kind})
	}
	if resp.Chunked {
		resp.ContentLength = -1
	}
	for _, tok := range conn {
		for j := range resp.Fields {
			if equalFold(resp.Fields[j].Name, strings.ToLower(string(tok))) {
				resp.Fields[j].Kind = KindDrop
			}
		}
	}
	return i, nil
}

// BodyAllowed reports whether a response of status to a request of method has a body.
func BodyAllowed(method []byte, status int) bool {
	return !(status < 200 || status == 204 || status == 304 || string(method) == "HEAD")
}

const (
	nameOther = iota
	nameHost
	nameContentLength
	nameTransferEncoding
	nameConnection
	nameForwarding
	nameHopDrop
	nameAccept
	nameRefuse
)

// classify sorts a request field name for ParseRequest.
func classify(name []byte) int {
	if len(name) >= 11 && equalFold(name[:11], "switchyard-") {
		return nameRefuse
	}
	switch len(name) {
	case 2:
		if equalFold(name, "te") {
			return nameRefuse
		}
	case 4:
		if equalFold(name, "host") {
			return nameHost
		}
	case 6:
		if equalFold(name, "expect") {
			return nameRefuse
		}
		if equalFold(name, "accept") {
			return nameAccept
		}
	case 7:
		if equalFold(name, "upgrade") || equalFold(name, "trailer") {
			return nameRefuse
		}
	case 9:
		if equalFold(name, "forwarded") {
			return nameForwarding
		}
	case 10:
		if equalFold(name, "connection") {
			return nameConnection
		}
		if equalFold(name, "keep-alive") {
			return nameRefuse
		}
	case 14:
		if equalFold(name, "content-length") {
			return nameContentLength
		}
		if equalFold(name, "http2-settings") {
			return nameRefuse
		}
	case 15:
		if equalFold(name, "x-forwarded-for") {
			return nameForwarding
		}
	case 16:
		if equalFold(name, "x-forwarded-host") {
			return nameForwarding
		}
		if equalFold(name, "proxy-connection") {
			return nameRefuse
		}
	case 17:
		if equalFold(name, "x-forwarded-proto") {
			return nameForwarding
		}
		if equalFold(name, "transfer-encoding") {
			return nameRefuse
		}
	case 19:
		if equalFold(name, "proxy-authorization") {
			return nameHopDrop
		}
	}
	return nameOther
}

// classifyResponse sorts a response field name for ParseResponse.
func classifyResponse(name []byte) int {
	if len(name) >= 11 && equalFold(name[:11], "switchyard-") {
		return nameOther // the caller reads and strips them
	}
	switch len(name) {
	case 2:
		if equalFold(name, "te") {
			return nameHopDrop
		}
	case 7:
		if equalFold(name, "upgrade") {
			return nameHopDrop
		}
	case 10:
		if equalFold(name, "connection") {
			return nameConnection
		}
		if equalFold(name, "keep-alive") {
			return nameHopDrop
		}
	case 14:
		if equalFold(name, "content-length") {
			return nameContentLength
		}
	case 16:
		if equalFold(name, "proxy-connection") {
			return nameHopDrop
		}
	case 17:
		if equalFold(name, "transfer-encoding") {
			return nameTransferEncoding
		}
	case 18:
		if equalFold(name, "proxy-authenticate") {
			return nameHopDrop
		}
	case 19:
		if equalFold(name, "proxy-authorization") {
			return nameHopDrop
		}
	}
	return nameOther
}

// IsSwitchyard reports whether a field name is Switchyard-*.
func IsSwitchyard(name []byte) bool {
	return len(name) >= 11 && equalFold(name[:11], "switchyard-")
}

// connectionTokens checks a request's Connection value: only close and keep-alive are taken.
func connectionTokens(v []byte) (close, ok bool) {
	toks := splitTokens(v)
	if len(toks) == 0 {
		return false, false
	}
	for _, t := range toks {
		switch {
		case equalFold(t, "close"):
			close = true
		case equalFold(t, "keep-alive"):
		default:
			return false, false
		}
	}
	return close, true
}

// splitTokens splits a comma-separated list, trimming OWS and skipping empty elements.
func splitTokens(v []byte) [][]byte {
	var out [][]byte
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != ',' {
			i++
		}
		t := v[:i]
		for len(t) > 0 && (t[0] == ' ' || t[0] == '\t') {
			t = t[1:]
		}
		for len(t) > 0 && (t[len(t)-1] == ' ' || t[len(t)-1] == '\t') {
			t = t[:len(t)-1]
		}
		if len(t) > 0 {
			out = append(out, t)
		}
		if i == len(v) {
			break
		}
		v = v[i+1:]
	}
	return out
}

// parseLength parses a Content-Length value: 1–18 decimal digits.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// validHost accepts a reg-name or IPv4 (letters, digits, '-', '.'), an IPv6 literal in brackets,
// and an optional :port: a subset of what net/http's httpguts.ValidHostHeader accepts.
func validHost(v []byte) bool {
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) || c == '-' || c == '.' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// equalFold compares ASCII b with lower-case s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// EqualFold reports whether b equals lower-case s, ignoring ASCII case.
func EqualFold(b []byte, s string) bool { return equalFold(b, s) }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// isTchar: RFC 9110 token characters.
func isTchar(c byte) bool { return tchar[c] }

// isPathChar: unreserved, sub-delims, ':', '@', '/' and '?' (RFC 3986 pchar and query, without
// '%', which the caller checks).
func isPathChar(c byte) bool { return pathChar[c] }

var tchar, pathChar [256]bool

func init() {
	for c := 0; c < 256; c++ {
		b := byte(c)
		alnum := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || isDigit(b)
		tchar[c] = alnum || b != 0 && stringsIndexByte("!#$%&'*+-.^_`|~", b)
		pathChar[c] = alnum || b != 0 && stringsIndexByte("-._~!$&'()*+,;=:@/?", b)
	}
}

func stringsIndexByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

// AppendStatusLine appends "HTTP/1.1 <code> <text>\r\n" the way net/http writes it.
func AppendStatusLine(dst []byte, code int) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	if t := http.StatusText(code); t != "" {
		dst = append(dst, t...)
	} else {
		dst = append(dst, "status code "...)
		dst = strconv.AppendInt(dst, int64(code), 10)
	}
	return append(dst, "\r\n"...)
}
