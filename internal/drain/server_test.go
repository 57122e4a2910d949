package drain

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// closeSignal closes closed when the listener is closed.
type closeSignal struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *closeSignal) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.closed) })
	return err
}

// TestServerAnswersAcceptedConnection is the deploy race made deterministic: a connection is
// accepted, the server begins to stop, and only then does the client send its request. The
// process that accepted the connection is the only one that can answer it.
func TestServerAnswersAcceptedConnection(t *testing.T) {
	for _, tc := range []struct {
		name     string
		handover bool
		wantOK   bool
	}{
		// The reason Server exists; if net/http ever answers here, Server can go.
		{"net/http Shutdown drops it", false, false},
		{"drain.Server answers it", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := &closeSignal{Listener: raw, closed: make(chan struct{})}
			accepted := make(chan struct{}, 1)
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "hello")
				}),
				ConnState: func(_ net.Conn, st http.ConnState) {
					if st == http.StateNew {
						accepted <- struct{}{}
					}
				},
			}
			var serve, stop func() error
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if tc.handover {
				s := NewServer(srv, ln)
				serve = s.Serve
				stop = func() error { return s.Shutdown(ctx) }
			} else {
				serve = func() error { return srv.Serve(ln) }
				stop = func() error { return srv.Shutdown(ctx) }
			}
			served := make(chan error, 1)
			go func() { served <- serve() }()

			c, err := net.Dial("tcp", raw.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			<-accepted
			stopped := make(chan error, 1)
			go func() { stopped <- stop() }()
			<-ln.closed // the server no longer accepts: the request comes after

			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			switch {
			case tc.wantOK && (err != nil || string(body) != "hello"):
				t.Errorf("got %q, %v; want hello", body, err)
			case tc.wantOK && !resp.Close:
				t.Error("answer during shutdown without Connection: close")
			case !tc.wantOK && err == nil:
				t.Errorf("got an answer (%q): net/http no longer drops it", body)
			}
			if err := <-stopped; err != nil {
				t.Errorf("stop: %v", err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		})
	}
}

// TestServerShutdown: a request in its handler is answered and waited for; an idle keep-alive
// connection is closed; a hijacked connection is left to its handler; the context bounds the wait.
func TestServerShutdown(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inSlow := make(chan struct{})
	release := make(chan struct{})
	hijacked := make(chan net.Conn, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(inSlow)
		<-release
		io.WriteString(w, "slow")
	})
	mux.HandleFunc("/hijack", func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
		brw.Flush()
		hijacked <- c
	})
	srv := &http.Server{Handler: mux}
	s := NewServer(srv, raw)
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	addr := raw.Addr().String()

	request := func(c net.Conn, br *bufio.Reader, path string) (*http.Response, string, error) {
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, "", err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, "", err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), err
	}
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}

	idle, idleR := dial()
	if _, body, err := request(idle, idleR, "/fast"); err != nil || body != "fast" {
		t.Fatalf("keep-alive request: %q %v", body, err)
	}
	hj, hjR := dial()
	if _, err := io.WriteString(hj, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(hjR, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("hijack: %v %v", resp, err)
	}
	hjServer := <-hijacked
	defer hjServer.Close()
	slow, slowR := dial()
	slowDone := make(chan string, 1)
	go func() {
		resp, body, err := request(slow, slowR, "/slow")
		if err != nil {
			slowDone <- err.Error()
			return
		}
		slowDone <- body + " close=" + map[bool]string{true: "yes", false: "no"}[resp.Close]
	}()
	<-inSlow

	// A context that ends while /slow is held: ctx.Err(), the request still running.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a short context: %v", err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still accepting after Shutdown")
	}
	// The idle keep-alive connection was closed.
	if _, err := idleR.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection: %v, want EOF", err)
	}

	close(release)
	if got := <-slowDone; got != "slow close=yes" {
		t.Errorf("slow request: %s", got)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := s.Pending(); n != 0 {
		t.Errorf("Pending = %d after Shutdown", n)
	}
	// The hijacked connection is untouched.
	if _, err := hjServer.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(hjR, buf); err != nil || string(buf) != "still here" {
		t.Errorf("hijacked connection: %q %v", buf, err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}
