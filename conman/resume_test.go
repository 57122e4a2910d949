package conman_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
)

// wire is an attach connection whose TCP connection the test can break (no close frame).
type wire struct {
	c    *websocket.Conn
	raw  net.Conn
	tm   *term
	sid  string
	resp *http.Response
}

// dialWire attaches to repl with query, keeping the raw connection.
func (e *env) dialWire(t *testing.T, repl, query string) (*wire, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	w := &wire{}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		w.raw = c
		return c, err
	}}
	u := "ws" + strings.TrimPrefix(e.ts.URL, "http") + "/v1/repls/" + repl + "/attach" + query
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
		HTTPHeader: http.Header{conman.HeaderCredential: {testCredential}},
	})
	w.resp = resp
	if err != nil {
		return w, err
	}
	w.c, w.sid = c, resp.Header.Get(conman.HeaderSession)
	w.tm = readTerm(c)
	t.Cleanup(func() { c.CloseNow() })
	return w, nil
}

// breakConn cuts the TCP connection without a close frame and returns what the client had
// received by then.
func (w *wire) breakConn(t *testing.T) string {
	t.Helper()
	require.NoError(t, w.raw.Close())
	select {
	case <-w.tm.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not stop")
	}
	return w.tm.String()
}

// waitMetric polls a metric until it equals want (readiness of the server's own bookkeeping).
func (e *env) waitMetric(t *testing.T, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, e.reg, name, "") != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, metricValue(t, e.reg, name, ""), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func resumeQuery(sid string, off int) string {
	return "?resume=" + sid + "&offset=" + strconv.Itoa(off)
}

func TestResumeAfterBrokenConnection(t *testing.T) {
	e := newEnv(t, envOpts{})
	w, err := e.dialWire(t, "res1", "")
	require.NoError(t, err)
	require.Len(t, w.sid, 22, "a session id of 128 bits, URL-safe base64")
	send(t, w.c, "cd /tmp; X=42; echo READY-$X\n")
	w.tm.waitFor(t, "READY-42\r\n")
	// Output the client will miss: it comes after the connection broke.
	send(t, w.c, "sleep 0.3; echo MISSED-$X\n")
	got := w.breakConn(t)
	e.waitMetric(t, "switchyard_conman_shells_detached", 1)

	w2, err := e.dialWire(t, "res1", resumeQuery(w.sid, len(got)))
	require.NoError(t, err)
	require.Equal(t, w.sid, w2.sid)
	require.Empty(t, w2.resp.Header.Get(conman.HeaderResumeGap))
	w2.tm.waitFor(t, "MISSED-42")
	send(t, w2.c, "echo $X; pwd\n")
	w2.tm.waitFor(t, "42\r\n/tmp\r\n")

	// The whole stream, replayed from 0, is what the first connection got followed by exactly
	// what the second one got: no byte lost, none repeated.
	w3, err := e.dialWire(t, "res1", resumeQuery(w.sid, 0))
	require.NoError(t, err)
	require.Equal(t, websocket.StatusCode(conman.CloseTakenOver), w2.tm.closeStatus(t), "the resume took the shell")
	whole := got + w2.tm.String()
	w3.tm.waitFor(t, whole)
	require.True(t, strings.HasPrefix(w3.tm.String(), whole), "replay %q\nwant prefix %q", w3.tm.String(), whole)

	// A close frame ends the shell: no resume after it.
	require.NoError(t, w3.c.Close(websocket.StatusNormalClosure, "bye"))
	e.waitMetric(t, "switchyard_conman_attach_sessions", 0)
	w4, err := e.dialWire(t, "res1", resumeQuery(w.sid, 0))
	require.Error(t, err)
	require.Equal(t, http.StatusNotFound, w4.resp.StatusCode)
	require.Equal(t, conman.ErrorSessionGone, w4.resp.Header.Get(conman.HeaderError))
	require.Equal(t, 2.0, metricValue(t, e.reg, "switchyard_conman_shells_resumed_total", ""))
	require.Equal(t, 1.0, metricValue(t, e.reg, "switchyard_conman_shells_detached_total", ""))
}

func TestResumeGap(t *testing.T) {
	e := newEnv(t, envOpts{tune: func(c *conman.Config) { c.OutputBuffer = 1024 }})
	w, err := e.dialWire(t, "gap1", "")
	require.NoError(t, err)
	send(t, w.c, "echo READY\n")
	w.tm.waitFor(t, "READY\r\n")
	send(t, w.c, "sleep 0.3; i=0; while [ $i -lt 100 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo END\n")
	got := w.breakConn(t)
	e.waitMetric(t, "switchyard_conman_shells_detached", 1)
	// Wait for the output to be produced: a resume at its current end is accepted, one past
	// it is refused. Poll with offsets the server must refuse until END has been written.
	w2 := func() *wire {
		deadline := time.Now().Add(10 * time.Second)
		for {
			w2, err := e.dialWire(t, "gap1", resumeQuery(w.sid, len(got)))
			require.NoError(t, err)
			if gap := w2.resp.Header.Get(conman.HeaderResumeGap); gap != "" {
				return w2
			}
			w2.breakConn(t)
			require.False(t, time.Now().After(deadline), "no gap reported")
			e.waitMetric(t, "switchyard_conman_shells_detached", 1)
		}
	}()
	gap, err := strconv.Atoi(w2.resp.Header.Get(conman.HeaderResumeGap))
	require.NoError(t, err)
	require.Positive(t, gap)
	w2.tm.waitFor(t, "END\r\n")
	require.NotContains(t, w2.tm.String(), "line-0-", "the oldest lines are lost")
}

func TestResumeRefusals(t *testing.T) {
	e := newEnv(t, envOpts{})
	w, err := e.dialWire(t, "mine1", "")
	require.NoError(t, err)
	send(t, w.c, "echo READY\n")
	w.tm.waitFor(t, "READY\r\n")
	other, err := e.dialWire(t, "other1", "")
	require.NoError(t, err)
	other.tm.waitFor(t, "# ")

	tests := []struct {
		name, repl, query string
		status            int
		reason            string
	}{
		{"unknown session", "mine1", resumeQuery("AAAAAAAAAAAAAAAAAAAAAA", 0), 404, conman.ErrorSessionGone},
		{"malformed session", "mine1", resumeQuery("../../etc", 0), 404, conman.ErrorSessionGone},
		{"another repl's session", "mine1", resumeQuery(other.sid, 0), 404, conman.ErrorSessionGone},
		{"my session from another repl's URL", "other1", resumeQuery(w.sid, 0), 404, conman.ErrorSessionGone},
		{"offset past the output", "mine1", resumeQuery(w.sid, 1<<20), 400, conman.ErrorInvalid},
		{"negative offset", "mine1", resumeQuery(w.sid, -1), 400, conman.ErrorInvalid},
		{"no offset", "mine1", "?resume=" + w.sid, 400, conman.ErrorInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := e.dialWire(t, tt.repl, tt.query)
			require.Error(t, err)
			require.Equal(t, tt.status, r.resp.StatusCode)
			require.Equal(t, tt.reason, r.resp.Header.Get(conman.HeaderError))
		})
	}
	// Refused resumes disturbed nothing: both sessions still run.
	send(t, w.c, "echo STILL\n")
	w.tm.waitFor(t, "STILL\r\n")
	send(t, other.c, "echo OTHER\n")
	other.tm.waitFor(t, "OTHER\r\n")
	resp, body := e.request(t, "GET", "/v1/repls/mine1/attach?resume="+w.sid+"&offset=0", nil, nil)
	require.Equal(t, 401, resp.StatusCode, string(body), "a resume needs the credential like any attach")
}

func TestResumeWindowExpires(t *testing.T) {
	e := newEnv(t, envOpts{tune: func(c *conman.Config) { c.ResumeWindow = 100 * time.Millisecond }})
	w, err := e.dialWire(t, "exp1", "")
	require.NoError(t, err)
	send(t, w.c, "echo $$\n")
	w.tm.waitFor(t, "# ")
	got := w.breakConn(t)
	e.waitMetric(t, "switchyard_conman_shells_expired_total", 1)
	e.waitMetric(t, "switchyard_conman_shells_detached", 0)
	r, err := e.dialWire(t, "exp1", resumeQuery(w.sid, len(got)))
	require.Error(t, err)
	require.Equal(t, http.StatusNotFound, r.resp.StatusCode)
}

func TestResumeDisabled(t *testing.T) {
	e := newEnv(t, envOpts{tune: func(c *conman.Config) { c.ResumeWindow = -1 }})
	w, err := e.dialWire(t, "nores1", "")
	require.NoError(t, err)
	w.tm.waitFor(t, "# ")
	got := w.breakConn(t)
	e.waitMetric(t, "switchyard_conman_attach_sessions", 0)
	r, err := e.dialWire(t, "nores1", resumeQuery(w.sid, len(got)))
	require.Error(t, err)
	require.Equal(t, http.StatusNotFound, r.resp.StatusCode)
}

func TestDetachedShellsAreCapped(t *testing.T) {
	e := newEnv(t, envOpts{tune: func(c *conman.Config) { c.MaxDetachedPerRepl = 2 }})
	var ws []*wire
	var gots []string
	for i := range 3 {
		w, err := e.dialWire(t, "cap1", "")
		require.NoError(t, err)
		send(t, w.c, fmt.Sprintf("echo SHELL-%d\n", i))
		w.tm.waitFor(t, fmt.Sprintf("SHELL-%d\r\n", i))
		gots = append(gots, w.breakConn(t))
		e.waitMetric(t, "switchyard_conman_shells_detached_total", float64(i+1))
		ws = append(ws, w)
	}
	e.waitMetric(t, "switchyard_conman_shells_expired_total", 1)
	e.waitMetric(t, "switchyard_conman_shells_detached", 2)
	r, err := e.dialWire(t, "cap1", resumeQuery(ws[0].sid, len(gots[0])))
	require.Error(t, err, "the oldest detached shell was killed")
	require.Equal(t, http.StatusNotFound, r.resp.StatusCode)
	for i := 1; i < 3; i++ {
		r, err := e.dialWire(t, "cap1", resumeQuery(ws[i].sid, len(gots[i])))
		require.NoError(t, err)
		send(t, r.c, "echo BACK\n")
		r.tm.waitFor(t, "BACK\r\n")
	}
}

func TestDrainClosesDetachedAndAttachedShells(t *testing.T) {
	e := newEnv(t, envOpts{})
	a, err := e.dialWire(t, "drain1", "")
	require.NoError(t, err)
	a.tm.waitFor(t, "# ")
	d, err := e.dialWire(t, "drain1", "")
	require.NoError(t, err)
	d.tm.waitFor(t, "# ")
	got := d.breakConn(t)
	e.waitMetric(t, "switchyard_conman_shells_detached", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, e.srv.Shutdown(ctx))
	require.Equal(t, websocket.StatusServiceRestart, a.tm.closeStatus(t))
	e.waitMetric(t, "switchyard_conman_shells_detached", 0)
	r, err := e.dialWire(t, "drain1", resumeQuery(d.sid, len(got)))
	require.Error(t, err)
	require.Equal(t, http.StatusServiceUnavailable, r.resp.StatusCode)
}

func TestResumeErrorIsJSON(t *testing.T) {
	// A resume's error body is JSON like every conman error.
	e := newEnv(t, envOpts{})
	resp, body := e.request(t, "GET", "/v1/repls/x1/attach?resume=AAAAAAAAAAAAAAAAAAAAAA&offset=0",
		map[string]string{conman.HeaderCredential: testCredential}, nil)
	require.Equal(t, 404, resp.StatusCode)
	var m map[string]string
	require.NoError(t, json.Unmarshal(body, &m))
	require.NotEmpty(t, m["error"])
}
