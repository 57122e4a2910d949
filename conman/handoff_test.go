package conman_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/conmantest"
	"github.com/switchyard-dev/switchyard/conman/process"
)

// generation is one conman "process" of an upgrade chain: a runtime, a Server and its HTTP
// server, over a shared state directory and listening socket.
type generation struct {
	rt  *process.Runtime
	srv *conman.Server
	hs  *http.Server
	ln  net.Listener
	err chan error
}

func startGeneration(t testing.TB, stateDir string, ln net.Listener, in *conman.Inheritance) *generation {
	t.Helper()
	rt, err := process.New(process.Config{StateDir: stateDir, CgroupParent: "switchyard-test-conman"})
	require.NoError(t, err)
	srv, err := conman.New(context.Background(), conman.Config{Runtime: rt, Credential: testCredential, Inherit: in, StopGrace: time.Second})
	require.NoError(t, err)
	g := &generation{rt: rt, srv: srv, hs: &http.Server{Handler: srv}, ln: ln, err: make(chan error, 1)}
	go func() { g.err <- g.hs.Serve(ln) }()
	return g
}

// socketPair returns the two ends of a unix stream socket pair.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		require.NoError(t, err)
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// upgrade hands g over to a new generation, as a new conman binary would take over.
func (g *generation) upgrade(t testing.TB, stateDir string) *generation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lnFile, err := g.ln.(*net.TCPListener).File()
	require.NoError(t, err)
	defer lnFile.Close()
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	handed := make(chan error, 1)
	go func() {
		if err := conman.AcceptSuccessor(ctx, a); err != nil {
			handed <- err
			return
		}
		// Stop serving requests (hijacked attach connections are not the http.Server's).
		if err := g.hs.Shutdown(ctx); err != nil {
			handed <- err
			return
		}
		handed <- g.srv.Handoff(ctx, a, lnFile)
	}()
	in, err := conman.ReceiveHandoff(ctx, b)
	require.NoError(t, err)
	require.NoError(t, <-handed)
	require.ErrorIs(t, <-g.err, http.ErrServerClosed)
	require.NoError(t, g.rt.Close())
	require.Len(t, in.Files, 1)
	ln, err := net.FileListener(in.Files[0])
	require.NoError(t, err)
	in.Files[0].Close()
	return startGeneration(t, stateDir, ln, in)
}

func (g *generation) stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, g.srv.Shutdown(ctx))
	require.NoError(t, g.hs.Shutdown(ctx))
	sts, _ := g.rt.List(ctx)
	for _, st := range sts {
		_ = g.rt.Stop(ctx, st.ID, 0)
		_ = g.rt.Remove(ctx, st.ID)
	}
	require.NoError(t, g.rt.Close())
}

func TestHandoffKeepsLiveConnectionsAndShells(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	stateDir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g := startGeneration(t, stateDir, ln, nil)
	base := "ws://" + ln.Addr().String()
	dial := func(query string) (*websocket.Conn, *http.Response, *term) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, base+"/v1/repls/up1/attach"+query, &websocket.DialOptions{
			HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}},
		})
		require.NoError(t, err)
		t.Cleanup(func() { c.CloseNow() })
		return c, resp, readTerm(c)
	}
	live, _, tm := dial("")
	send(t, live, "cd /tmp; X=42; sleep 1000 & echo STARTED-$X\n")
	tm.waitFor(t, "STARTED-42\r\n")

	// A second shell whose connection broke: it is handed over detached and resumes later.
	wctx, wcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer wcancel()
	var raw net.Conn
	detached, resp, err := websocket.Dial(wctx, base+"/v1/repls/up1/attach", &websocket.DialOptions{
		HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}},
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, n, a)
			raw = c
			return c, err
		}}},
	})
	require.NoError(t, err)
	dsid := resp.Header.Get(conman.HeaderSession)
	dtm := readTerm(detached)
	send(t, detached, "Y=7; echo SECOND-$Y\n")
	dtm.waitFor(t, "SECOND-7\r\n")
	require.NoError(t, raw.Close())
	<-dtm.closed
	got := dtm.String()

	for i := range 2 {
		g = g.upgrade(t, stateDir)
		send(t, live, "echo $X; pwd; jobs\n")
		tm.waitFor(t, "42\r\n/tmp\r\n")
		tm.waitFor(t, "sleep 1000")
		select {
		case <-tm.closed:
			t.Fatalf("upgrade %d closed the live connection: %v", i, tm.err)
		default:
		}
	}
	// The detached shell resumes at the second successor, with its variable.
	c, resp, rtm := dial("?resume=" + dsid + "&offset=" + strconv.Itoa(len(got)))
	require.Equal(t, dsid, resp.Header.Get(conman.HeaderSession))
	send(t, c, "echo AGAIN-$Y\n")
	rtm.waitFor(t, "AGAIN-7\r\n")

	// A clean close still ends the shell and its job: no predecessor kept a copy of its
	// descriptors that would keep the container's init from seeing the hang-up.
	send(t, live, "echo PID-$$-PID\n")
	tm.waitFor(t, "-PID\r\n")
	pid := strings.TrimSuffix(strings.Split(tm.String()[strings.LastIndex(tm.String(), "PID-")+4:], "-PID")[0], "")
	require.NoError(t, live.Close(websocket.StatusNormalClosure, ""))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, code := conmantest.Exec(t, g.rt, "up1", "", "/bin/sh", "-c", "kill -0 "+pid+" 2>/dev/null")
		if code != 0 {
			break
		}
		require.False(t, time.Now().After(deadline), "shell %s still runs after its session closed", pid)
		time.Sleep(10 * time.Millisecond)
	}
	g.stop(t)
	require.Equal(t, websocket.StatusServiceRestart, rtm.closeStatus(t))
}

func TestReceiveHandoffRefusesGarbage(t *testing.T) {
	tests := []struct {
		name  string
		bytes string
	}{
		{"not a record", "hello world, this is not a header"},
		{"record too large", "\xff\xff\xff\xff\x00"},
		{"header claims descriptors", "\x00\x00\x00\x02\x03{}"},
		{"wrong first record", "\x00\x00\x00\x0f\x00{\"kind\":\"end\"}"},
		{"wrong version", "\x00\x00\x00\x1c\x00{\"kind\":\"hello\",\"version\":9}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := socketPair(t)
			defer a.Close()
			defer b.Close()
			_, err := a.Write([]byte(tt.bytes))
			require.NoError(t, err)
			a.CloseWrite()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err = conman.ReceiveHandoff(ctx, b)
			require.Error(t, err)
			require.False(t, errors.Is(err, context.DeadlineExceeded), "refused at once, not timed out: %v", err)
		})
	}
}

// TestHandoffToAFailingSuccessor: a successor that hangs up before it answers costs the
// sessions (1012, as a restart), never a hang.
func TestHandoffToAFailingSuccessor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	stateDir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g := startGeneration(t, stateDir, ln, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/v1/repls/fail1/attach", &websocket.DialOptions{
		HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}},
	})
	require.NoError(t, err)
	defer c.CloseNow()
	tm := readTerm(c)
	tm.waitFor(t, "# ")
	// A stray connection that is no successor changes nothing.
	a, b := socketPair(t)
	_, err = b.Write([]byte("\x00\x00\x00\x02\x00{}"))
	require.NoError(t, err)
	require.ErrorIs(t, conman.AcceptSuccessor(ctx, a), conman.ErrInvalid)
	a.Close()
	b.Close()
	send(t, c, "echo STILL\n")
	tm.waitFor(t, "STILL\r\n")

	// A successor that asks, then hangs up before it answers.
	a, b = socketPair(t)
	defer a.Close()
	handed := make(chan error, 1)
	go func() {
		if err := conman.AcceptSuccessor(ctx, a); err != nil {
			handed <- err
			return
		}
		handed <- g.srv.Handoff(ctx, a)
	}()
	_, err = b.Write([]byte("\x00\x00\x00\x1f\x00{\"kind\":\"takeover\",\"version\":1}"))
	require.NoError(t, err)
	buf := make([]byte, 16)
	_, err = b.Read(buf) // the hello
	require.NoError(t, err)
	b.Close()
	require.Error(t, <-handed)
	require.Equal(t, websocket.StatusServiceRestart, tm.closeStatus(t))
	require.NoError(t, g.hs.Shutdown(ctx))
	sts, _ := g.rt.List(ctx)
	for _, st := range sts {
		_ = g.rt.Stop(ctx, st.ID, 0)
		_ = g.rt.Remove(ctx, st.ID)
	}
	require.NoError(t, g.rt.Close())
}

// TestHandoffMidStream upgrades three times while a shell streams output as fast as the
// connection takes it: the client gets every byte once, in order.
func TestHandoffMidStream(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	stateDir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g := startGeneration(t, stateDir, ln, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/v1/repls/stream1/attach", &websocket.DialOptions{
		HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}},
	})
	require.NoError(t, err)
	defer c.CloseNow()
	tm := readTerm(c)
	tm.waitFor(t, "# ")
	const n = 150000
	send(t, c, "stty -echo; seq 1 "+strconv.Itoa(n)+"; echo DO''NE\n") // DONE, unlike its echo
	for i := range 3 {
		// Upgrade once the stream is well under way (and not yet over).
		want := strconv.Itoa((i+1)*n/5) + "\r\n"
		tm.waitFor(t, want)
		g = g.upgrade(t, stateDir)
		t.Logf("upgrade %d with %d bytes received", i, len(tm.String()))
	}
	tm.waitFor(t, "DONE\r\n")
	out := tm.String()
	start := strings.Index(out, "\r\n1\r\n")
	require.GreaterOrEqual(t, start, 0, "output: %.200q", out)
	lines := strings.Split(out[start+2:strings.Index(out, "DONE")], "\r\n")
	for i := range min(n, len(lines)) {
		if lines[i] != strconv.Itoa(i+1) {
			t.Fatalf("line %d is %q, want %d (%d lines)", i, lines[i], i+1, len(lines))
		}
	}
	require.Equal(t, n+1, len(lines), "every line once") // the last is empty
	g.stop(t)
}
