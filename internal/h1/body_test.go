package h1

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// relay runs a response (head and body, as a backend sent it) through ParseResponse and the
// body copiers the way the hosting fast path does, and returns what the client receives.
func relay(t *testing.T, in []byte) ([]byte, error) {
	t.Helper()
	src, feed := net.Pipe()
	dst, sink := net.Pipe()
	go func() { _, _ = feed.Write(in); feed.Close() }()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(sink); got <- b }()
	defer src.Close()

	rd := NewReader(src, 64, 4096)
	var resp Response
	var n int
	var err error
	for {
		if n, err = ParseResponse(rd.Buffered(), &resp); err != nil || n > 0 {
			break
		}
		if err = rd.Fill(); err != nil {
			break
		}
	}
	if err == nil {
		out := AppendStatusLine(nil, resp.Status)
		for _, f := range resp.Fields {
			if f.Kind != KindDrop {
				out = append(out, f.Name...)
				out = append(out, ": "...)
				out = append(out, f.Value...)
				out = append(out, "\r\n"...)
			}
		}
		rd.Discard(n)
		switch {
		case resp.Status < 200:
			err = io.EOF // the fast path passes 1xx on and reads the next head; not relayed here
		case !BodyAllowed([]byte("GET"), resp.Status):
			if resp.ContentLength >= 0 && resp.Status != 204 {
				out = append(out, "Content-Length: "...)
				out = append(out, []byte(itoa(resp.ContentLength))...)
				out = append(out, "\r\n"...)
			}
			out = append(out, "\r\n"...)
		case resp.ContentLength >= 0:
			out = append(out, "Content-Length: "...)
			out = append(out, []byte(itoa(resp.ContentLength))...)
			out = append(out, "\r\n\r\n"...)
			err = CopyLength(dst, &out, rd, resp.ContentLength)
		case resp.Chunked:
			out = append(out, "Transfer-Encoding: chunked\r\n\r\n"...)
			err = CopyChunked(dst, &out, rd, nil)
		default:
			out = append(out, "Transfer-Encoding: chunked\r\n\r\n"...)
			err = CopyUntilEOF(dst, &out, rd)
		}
		if err == nil {
			err = WriteOut(dst, &out)
		}
	}
	dst.Close()
	return <-got, err
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func TestRelayChunked(t *testing.T) {
	in := "HTTP/1.1 200 OK\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n"
	out, err := relay(t, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "hello world" || resp.Trailer.Get("X-T") != "1" {
		t.Fatalf("body %q trailer %v err %v\n%q", body, resp.Trailer, err, out)
	}
}

// FuzzRelayResponse: whatever answer a backend sends, what the fast path relays to the client
// is one well-formed response (net/http's client reads it whole, with the body the backend
// framed), or the relay fails and the client sees a broken answer — never two answers.
func FuzzRelayResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX: y\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil eof",
		"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokHTTP/1.1 200 OK\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := relay(t, in)
		if err != nil {
			return // the client sees a broken answer
		}
		br := bufio.NewReader(bytes.NewReader(out))
		resp, rerr := http.ReadResponse(br, nil)
		if rerr != nil {
			t.Fatalf("relayed an answer net/http cannot read: %v\n%q\n%q", rerr, in, out)
		}
		if _, rerr = io.ReadAll(resp.Body); rerr != nil {
			t.Fatalf("relayed a body net/http cannot read: %v\n%q\n%q", rerr, in, out)
		}
		for k := range resp.Header {
			if strings.ContainsAny(k, "\r\n") {
				t.Fatalf("field name with a line break: %q", k)
			}
		}
		if rest, _ := io.ReadAll(br); len(rest) > 0 {
			t.Fatalf("bytes after the relayed answer (a second response?): %q\nin %q", rest, in)
		}
	})
}

func TestTCPOf(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	if tcpOf(c) != tc || tcpOf(wrapped{c}) != tc {
		t.Fatal("a TCP connection, bare or wrapped, is found")
	}
	if tcpOf(tls.Client(c, &tls.Config{})) != nil || tcpOf(wrapped{tls.Client(c, &tls.Config{})}) != nil {
		t.Fatal("a TLS connection must never be spliced around")
	}
}

// wrapped is a connection wrapper with a NetConn method, like connlimit's.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }
