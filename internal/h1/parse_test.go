package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

func TestParseRequestSubset(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Verdict
	}{
		{"plain GET", "GET /a?b=1 HTTP/1.1\r\nHost: x.repl.test\r\nAccept: */*\r\n\r\n", OK},
		{"POST with length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", OK},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", OK},
		{"incomplete line", "GET / HTTP/1.1\r\nHost: x", NeedMore},
		{"incomplete head", "GET / HTTP/1.1\r\nHost: x\r\n", NeedMore},
		{"incomplete method", "GE", NeedMore},
		{"incomplete version", "GET / HTTP/1.", NeedMore},

		// Smuggling: net/http decides (it refuses or resolves each of these).
		{"length and chunked", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Handoff},
		{"two lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Handoff},
		{"same length twice", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Handoff},
		{"signed length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", Handoff},
		{"length with comma", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", Handoff},
		{"empty length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", Handoff},
		{"huge length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", Handoff},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", Handoff},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n", Handoff},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", Handoff},
		{"bare LF line", "GET / HTTP/1.1\nHost: x\n\n", Handoff},
		{"bare LF in field", "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", Handoff},
		{"bare CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", Handoff},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", Handoff},
		{"non-ASCII value", "GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n", Handoff},
		{"bad name byte", "GET / HTTP/1.1\r\nHost: x\r\nX(: y\r\n\r\n", Handoff},
		{"no host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", Handoff},
		{"two hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", Handoff},
		{"bad host", "GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", Handoff},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\n\r\n", Handoff},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Handoff},
		{"absolute form", "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", Handoff},
		{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", Handoff},
		{"connect", "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", Handoff},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", Handoff},
		{"bad escape", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", Handoff},
		{"fragment", "GET /#x HTTP/1.1\r\nHost: x\r\n\r\n", Handoff},
		{"upgrade", "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", Handoff},
		{"expect", "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", Handoff},
		{"connection names a field", "GET / HTTP/1.1\r\nHost: x\r\nConnection: X-Secret\r\n\r\n", Handoff},
		{"switchyard field", "GET / HTTP/1.1\r\nHost: x\r\nSwitchyard-Credential: forged\r\n\r\n", Handoff},
		{"switchyard any case", "GET / HTTP/1.1\r\nHost: x\r\nsWiTcHyArD-rEpL: r2\r\n\r\n", Handoff},
		{"te", "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n", Handoff},
		{"leading space line", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", Handoff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			n, v := ParseRequest([]byte(tt.in), &req)
			if v != tt.want {
				t.Fatalf("verdict %d, want %d", v, tt.want)
			}
			if v == OK {
				agree(t, []byte(tt.in), n, &req)
			}
		})
	}
}

func TestParseRequestFields(t *testing.T) {
	in := "POST /p?q=%20 HTTP/1.1\r\nHost: Blog.alice.repl.test:8080\r\nX-Forwarded-For: 1.2.3.4\r\n" +
		"Content-Length: 3\r\nProxy-Authorization: x\r\nAccept: text/html \r\nConnection: keep-alive, close\r\n\r\nabc"
	var req Request
	n, v := ParseRequest([]byte(in), &req)
	if v != OK || n != len(in)-3 {
		t.Fatalf("verdict %d, n %d", v, n)
	}
	if string(req.Host) != "Blog.alice.repl.test:8080" || req.ContentLength != 3 || !req.Close || !req.Forwarding ||
		string(req.Accept) != "text/html" || string(req.Target) != "/p?q=%20" {
		t.Fatalf("parsed %+v", req)
	}
	kinds := map[string]int{}
	for _, f := range req.Fields {
		kinds[string(f.Name)] = f.Kind
	}
	want := map[string]int{"X-Forwarded-For": KindForwarding, "Content-Length": KindDrop, "Proxy-Authorization": KindDrop,
		"Accept": KindKeep, "Connection": KindDrop}
	for k, w := range want {
		if kinds[k] != w {
			t.Errorf("%s: kind %d, want %d", k, kinds[k], w)
		}
	}
}

// agree checks that net/http reads the head the same way ParseRequest did, and accepts it the
// way its server does (Host checks included).
func agree(t *testing.T, in []byte, n int, req *Request) {
	t.Helper()
	hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in[:n])))
	if err != nil {
		t.Fatalf("fast path took a request net/http refuses: %v\n%q", err, in[:n])
	}
	if hosts := hr.Header.Values("Host"); len(hosts) > 0 {
		t.Fatalf("net/http left Host fields: %q", hosts)
	}
	if !httpguts.ValidHostHeader(hr.Host) {
		t.Fatalf("net/http's server refuses host %q", hr.Host)
	}
	for k, vs := range hr.Header {
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
				t.Fatalf("net/http's server refuses field %q: %q", k, v)
			}
		}
	}
	if hr.Method != string(req.Method) || hr.RequestURI != string(req.Target) || hr.Host != string(req.Host) {
		t.Fatalf("net/http read %s %s host %q; fast path %s %s host %q", hr.Method, hr.RequestURI, hr.Host, req.Method, req.Target, req.Host)
	}
	if hr.ProtoMajor != 1 || hr.ProtoMinor != 1 {
		t.Fatalf("net/http read %s", hr.Proto)
	}
	wantLen := hr.ContentLength
	if len(hr.TransferEncoding) > 0 {
		t.Fatalf("net/http saw a transfer encoding %q", hr.TransferEncoding)
	}
	gotLen := req.ContentLength
	if gotLen < 0 {
		gotLen = 0
	}
	if wantLen != gotLen {
		t.Fatalf("net/http read length %d, fast path %d", wantLen, req.ContentLength)
	}
	if hr.Close != req.Close {
		t.Fatalf("net/http close %v, fast path %v", hr.Close, req.Close)
	}
	// Every field the fast path forwards is one net/http read, with the same value, in order.
	seen := map[string]int{}
	for _, f := range req.Fields {
		k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
		vs := hr.Header[k]
		i := seen[k]
		if k == "Content-Length" || k == "Connection" {
			continue
		}
		if i >= len(vs) || vs[i] != string(f.Value) {
			t.Fatalf("field %s #%d: fast path %q, net/http %q", k, i, f.Value, vs)
		}
		seen[k] = i + 1
	}
	for k, vs := range hr.Header {
		if k == "Content-Length" || k == "Connection" {
			continue
		}
		if seen[k] != len(vs) {
			t.Fatalf("field %s: net/http read %d values, fast path %d", k, len(vs), seen[k])
		}
	}
}

// FuzzParseRequest checks that whatever the fast path takes, net/http takes and reads the same
// way: a request the fast path serves is one net/http would have served identically.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: x.y:80\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
		"GET /%41 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
		"DELETE /x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var req Request
		n, v := ParseRequest(in, &req)
		if v != OK {
			return
		}
		if n <= 0 || n > len(in) || string(in[n-4:n]) != "\r\n\r\n" {
			t.Fatalf("head length %d of %d", n, len(in))
		}
		agree(t, in, n, &req)
	})
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		ok      bool
		status  int
		length  int64
		chunked bool
		close   bool
		visible string // the fields a client may see, "name=value;" each
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\n", true, 200, 3, false, false, "X-A=b;"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, 200, -1, true, false, ""},
		{"chunked wins over length", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true, 200, -1, true, false, ""},
		{"close", "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n", true, 200, -1, false, true, "X-End=2;"},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\n\r\n", true, 200, -1, false, true, ""},
		{"no reason", "HTTP/1.1 204\r\n\r\n", true, 204, -1, false, false, ""},
		{"hop fields", "HTTP/1.1 200 OK\r\nKeep-Alive: 5\r\nUpgrade: x\r\nProxy-Authenticate: y\r\nContent-Length: 0\r\n\r\n", true, 200, 0, false, false, ""},
		{"switchyard fields", "HTTP/1.1 200 OK\r\nSwitchyard-Error: x\r\nContent-Length: 0\r\n\r\n", true, 200, 0, false, false, ""},
		{"splitting: bare CR", "HTTP/1.1 200 OK\r\nX: a\rSet-Cookie: b\r\n\r\n", false, 0, 0, false, false, ""},
		{"splitting: bare LF", "HTTP/1.1 200 OK\r\nX: a\nSet-Cookie: b\r\n\r\n", false, 0, 0, false, false, ""},
		{"NUL", "HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", false, 0, 0, false, false, ""},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", false, 0, 0, false, false, ""},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, 0, 0, false, false, ""},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, 0, 0, false, false, ""},
		{"gzip encoding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, 0, 0, false, false, ""},
		{"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", false, 0, 0, false, false, ""},
		{"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", false, 0, 0, false, false, ""},
		{"status 099", "HTTP/1.1 099 x\r\n\r\n", false, 0, 0, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp Response
			n, err := ParseResponse([]byte(tt.in), &resp)
			if !tt.ok {
				if err == nil {
					t.Fatalf("accepted: n %d %+v", n, resp)
				}
				return
			}
			if err != nil || n != len(tt.in) {
				t.Fatalf("n %d err %v", n, err)
			}
			var vis strings.Builder
			for _, f := range resp.Fields {
				if f.Kind == KindDrop || IsSwitchyard(f.Name) {
					continue
				}
				vis.WriteString(string(f.Name) + "=" + string(f.Value) + ";")
			}
			if resp.Status != tt.status || resp.ContentLength != tt.length || resp.Chunked != tt.chunked || resp.Close != tt.close || vis.String() != tt.visible {
				t.Fatalf("got %d len %d chunked %v close %v visible %q", resp.Status, resp.ContentLength, resp.Chunked, resp.Close, vis.String())
			}
		})
	}
	// Every prefix of a valid head is incomplete, never malformed.
	full := "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\n"
	for i := range len(full) {
		var resp Response
		if n, err := ParseResponse([]byte(full[:i]), &resp); n != 0 || err != nil {
			t.Fatalf("prefix %q: n %d err %v", full[:i], n, err)
		}
	}
}

func TestParseChunkSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "a": 10, "FF": 255, "10;ext=1": 16, "1 ;x": 1} {
		if got, ok := parseChunkSize([]byte(in)); !ok || got != want {
			t.Errorf("%q: %d %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "x", "-1", "1x", strings.Repeat("f", 16), "1\x00"} {
		if _, ok := parseChunkSize([]byte(in)); ok {
			t.Errorf("%q accepted", in)
		}
	}
}
