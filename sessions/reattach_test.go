package sessions

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/httpjson"
	"github.com/switchyard-dev/switchyard/lore"
	"github.com/switchyard-dev/switchyard/placement"
)

// resumeConman implements conman's resumable attach contract (package conman's doc): the 101
// names the shell session; ?resume=<id>&offset=<n> re-attaches it and replays its output from
// byte n; an unknown session is 404. Its "shell" echoes binary messages as output; text
// commands steer it: "drop" cuts the TCP connection (the shell stays resumable), "lose:<s>"
// records <s> as output and cuts the connection before sending it (a resume must replay it),
// "close:<code>" closes with that code and ends the shell, "whoami" answers the VM's name.
type resumeConman struct {
	id  string
	srv *httptest.Server

	mu       sync.Mutex
	fail     int // non-zero: refuse attaches with this status
	sessions map[string]*fakeShell
	resumes  []string // the resume queries it was asked, "id@offset"
	attaches int
	live     map[*websocket.Conn]bool
}

// kill makes the VM's conman die: its listener closes and every attach connection is cut.
func (c *resumeConman) kill() {
	c.srv.Listener.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for ws := range c.live {
		ws.CloseNow()
	}
}

type fakeShell struct {
	repl string
	out  []byte // everything the shell has written (a ring that never forgets)
}

func newResumeConman(t testing.TB, id string) *resumeConman {
	t.Helper()
	c := &resumeConman{id: id, sessions: map[string]*fakeShell{}, live: map[*websocket.Conn]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/repls/{id}/attach", c.attach)
	mux.HandleFunc("DELETE /v1/repls/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	c.srv = httptest.NewServer(mux)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *resumeConman) vm() placement.VM {
	return placement.VM{ID: c.id, Addr: c.srv.URL, State: placement.Active}
}

func (c *resumeConman) setFail(status int) {
	c.mu.Lock()
	c.fail = status
	c.mu.Unlock()
}

func (c *resumeConman) resumeLog() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.resumes...)
}

func (c *resumeConman) attach(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Switchyard-Credential") != testCredential {
		httpjson.Error(w, http.StatusUnauthorized, "bad credential")
		return
	}
	repl := r.PathValue("id")
	c.mu.Lock()
	c.attaches++
	if c.fail != 0 {
		status := c.fail
		c.mu.Unlock()
		httpjson.Error(w, status, "repl cannot start here")
		return
	}
	var sh *fakeShell
	var sid string
	var replay []byte
	if sid = r.URL.Query().Get("resume"); sid != "" {
		off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
		c.resumes = append(c.resumes, sid+"@"+r.URL.Query().Get("offset"))
		sh = c.sessions[sid]
		if sh == nil || sh.repl != repl {
			c.mu.Unlock()
			httpjson.Error(w, http.StatusNotFound, "no such session")
			return
		}
		if err != nil || off < 0 || off > int64(len(sh.out)) {
			c.mu.Unlock()
			httpjson.Error(w, http.StatusBadRequest, "bad offset")
			return
		}
		replay = append([]byte(nil), sh.out[off:]...)
	} else {
		var b [18]byte
		_, _ = rand.Read(b[:])
		sid = base64.RawURLEncoding.EncodeToString(b[:])
		sh = &fakeShell{repl: repl}
		c.sessions[sid] = sh
	}
	c.mu.Unlock()
	w.Header().Set(conman.HeaderSession, sid)
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	c.mu.Lock()
	c.live[ws] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.live, ws)
		c.mu.Unlock()
	}()
	ctx := context.Background()
	if len(replay) > 0 {
		if err := ws.Write(ctx, websocket.MessageBinary, replay); err != nil {
			return
		}
	}
	output := func(b []byte) error {
		c.mu.Lock()
		sh.out = append(sh.out, b...)
		c.mu.Unlock()
		return ws.Write(ctx, websocket.MessageBinary, b)
	}
	for {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			return
		}
		if typ == websocket.MessageBinary {
			if output(b) != nil {
				return
			}
			continue
		}
		s := string(b)
		switch {
		case s == "drop":
			return
		case s == "handoff": // an in-place upgrade handed the shell on: resume it here
			ws.Close(conman.CloseResumeHere, "conman upgrading in place")
			return
		case strings.HasPrefix(s, "lose:"):
			c.mu.Lock()
			sh.out = append(sh.out, s[5:]...)
			c.mu.Unlock()
			return
		case strings.HasPrefix(s, "close:"):
			code, _ := strconv.Atoi(s[6:])
			c.mu.Lock()
			delete(c.sessions, sid)
			c.mu.Unlock()
			ws.Close(websocket.StatusCode(code), "asked to")
			return
		case s == "whoami":
			if output([]byte(c.id)) != nil {
				return
			}
		}
	}
}

type v2Env struct {
	*testEnv
	vms []*resumeConman
}

func newV2Env(t *testing.T, nvms int, tweak func(*Config)) *v2Env {
	e := &v2Env{}
	var vms []placement.VM
	for i := range nvms {
		v := newResumeConman(t, "vm-"+strconv.Itoa(i+1))
		e.vms = append(e.vms, v)
		vms = append(vms, v.vm())
	}
	placer := &testPlacer{vms: vms}
	e.testEnv = newTestEnv(t, Splice, func(c *Config) {
		c.Placer = placer
		c.PingInterval = -1
		if tweak != nil {
			tweak(c)
		}
	})
	e.placer = placer
	return e
}

func (e *v2Env) open(t *testing.T, protos ...string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, e.url+"?token="+e.token("r1")+"&cols=100&rows=30",
		&websocket.DialOptions{Subprotocols: protos})
	if err != nil {
		t.Fatal(err)
	}
	if want := protos[0]; resp.Header.Get("Sec-WebSocket-Protocol") != want && want == SubprotocolV2 {
		t.Fatalf("selected subprotocol %q, want %q", resp.Header.Get("Sec-WebSocket-Protocol"), want)
	}
	t.Cleanup(func() {
		c.CloseNow()
		if t.Failed() {
			t.Log(e.logs.String())
		}
	})
	return c
}

// next reads the next message, failing the test on an error.
func next(t *testing.T, c *websocket.Conn) (websocket.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(b)
}

func send(t *testing.T, c *websocket.Conn, typ websocket.MessageType, s string) {
	t.Helper()
	if err := c.Write(context.Background(), typ, []byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// output reads binary output until it has want bytes, and fails on any notice unless allowed.
func expectOutput(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	var got string
	for len(got) < len(want) {
		typ, s := next(t, c)
		if typ != websocket.MessageBinary {
			t.Fatalf("got text %q while waiting for output %q (have %q)", s, want, got)
		}
		got += s
	}
	if got != want {
		t.Fatalf("output %q, want %q", got, want)
	}
}

func expectNotice(t *testing.T, c *websocket.Conn, event string) Notice {
	t.Helper()
	for {
		typ, s := next(t, c)
		if typ != websocket.MessageText {
			t.Fatalf("output %q while waiting for notice %q", s, event)
		}
		var n Notice
		if err := json.Unmarshal([]byte(s), &n); err != nil || n.Type != "notice" {
			t.Fatalf("text %q is not a notice", s)
		}
		if n.Event == NoticeReconnecting && event != NoticeReconnecting {
			continue
		}
		if n.Event != event {
			t.Fatalf("notice %+v, want event %q", n, event)
		}
		return n
	}
}

func expectClose(t *testing.T, c *websocket.Conn, code websocket.StatusCode) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		typ, b, err := c.Read(ctx)
		if err == nil {
			if typ == websocket.MessageText && strings.Contains(string(b), `"notice"`) {
				continue
			}
			t.Fatalf("got %v %q, want close %d", typ, b, code)
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read error %v, want close %d", err, code)
		}
		if ce.Code != code {
			t.Fatalf("closed with %d %q, want %d", ce.Code, ce.Reason, code)
		}
		return ce.Reason
	}
}

func (e *v2Env) reattaches(result string) int {
	return int(testValue(e.proxy.metrics.reattach.WithLabelValues(result)))
}

func TestReattachSubprotocolSelection(t *testing.T) {
	e := newV2Env(t, 1, nil)
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{[]string{SubprotocolV2, Subprotocol}, SubprotocolV2},
		{[]string{Subprotocol, SubprotocolV2}, SubprotocolV2},
		{[]string{Subprotocol}, Subprotocol},
		{[]string{"other"}, ""},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, resp, err := websocket.Dial(ctx, e.url+"?token="+e.token("r1"), &websocket.DialOptions{Subprotocols: tc.offer})
		cancel()
		if tc.want == "" {
			// coder/websocket's client refuses a server that selected none of its offers only
			// when it selected one it did not offer; none selected is allowed.
			if err != nil {
				t.Fatalf("offer %v: %v", tc.offer, err)
			}
		} else if err != nil {
			t.Fatalf("offer %v: %v", tc.offer, err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tc.want {
			t.Errorf("offer %v: selected %q, want %q", tc.offer, got, tc.want)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// A broken conman connection resumes the same shell: nothing the shell wrote is lost (output it
// recorded but never sent is replayed), input flows on, and the client sees no close and, for a
// quick resume, no notice at all.
func TestReattachResumesTheSameShell(t *testing.T) {
	e := newV2Env(t, 1, nil)
	c := e.open(t, SubprotocolV2, Subprotocol)
	send(t, c, websocket.MessageBinary, "abc")
	expectOutput(t, c, "abc")
	send(t, c, websocket.MessageText, "lose:xyz") // conman dies before sending "xyz"
	expectOutput(t, c, "xyz")                     // replayed by the resume
	send(t, c, websocket.MessageBinary, "def")
	expectOutput(t, c, "def")
	send(t, c, websocket.MessageText, "drop")
	// Input sent once conman took the resume is held until the leg is back, then delivered.
	for deadline := time.Now().Add(5 * time.Second); len(e.vms[0].resumeLog()) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("no second resume")
		}
		time.Sleep(time.Millisecond)
	}
	send(t, c, websocket.MessageBinary, "ghi")
	expectOutput(t, c, "ghi")

	log := e.vms[0].resumeLog()
	if len(log) != 2 || !strings.HasSuffix(log[0], "@3") || !strings.HasSuffix(log[1], "@9") {
		t.Fatalf("resumes %v, want offsets 3 then 9", log)
	}
	if got := e.reattaches(reattachResumed); got != 2 {
		t.Fatalf("resumed = %d, want 2", got)
	}
	c.Close(websocket.StatusNormalClosure, "")
	e.drain()
	if st := e.stages(); st[StageOK] != 1 || len(st) != 1 {
		t.Fatalf("stages %v, want one ok", st)
	}
}

// conman's "resume here" (4001, an in-place upgrade that could not hand the connection on) is
// a resume on the same VM, invisible to the client.
func TestReattachResumeHere(t *testing.T) {
	e := newV2Env(t, 2, nil)
	c := e.open(t, SubprotocolV2)
	send(t, c, websocket.MessageBinary, "12345")
	expectOutput(t, c, "12345")
	send(t, c, websocket.MessageText, "handoff")
	for deadline := time.Now().Add(5 * time.Second); len(e.vms[0].resumeLog()) < 1; {
		if time.Now().After(deadline) {
			t.Fatal("no resume")
		}
		time.Sleep(time.Millisecond)
	}
	send(t, c, websocket.MessageText, "whoami")
	expectOutput(t, c, "vm-1")
	if log := e.vms[0].resumeLog(); !strings.HasSuffix(log[0], "@5") {
		t.Fatalf("resume %v, want offset 5", log)
	}
}

// A VM roll (conman closes with 1012 and refuses the repl from then on) moves the session to
// another VM: the client keeps its WebSocket and is told, in band, that its shell is new.
func TestReattachRestartsOnAnotherVM(t *testing.T) {
	e := newV2Env(t, 2, nil)
	c := e.open(t, SubprotocolV2)
	send(t, c, websocket.MessageText, "whoami")
	expectOutput(t, c, "vm-1")
	e.vms[0].setFail(http.StatusServiceUnavailable) // draining
	send(t, c, websocket.MessageText, "close:1012")
	n := expectNotice(t, c, NoticeRestarted)
	if n.VM != "vm-2" || !strings.Contains(n.Text, "new shell") {
		t.Fatalf("notice %+v", n)
	}
	send(t, c, websocket.MessageText, "whoami")
	expectOutput(t, c, "vm-2")
	if got := e.vms[0].resumeLog(); len(got) != 0 {
		t.Fatalf("a 1012 must not be resumed: %v", got)
	}
	if got := e.reattaches(reattachRestarted); got != 1 {
		t.Fatalf("restarted = %d", got)
	}
	c.Close(websocket.StatusNormalClosure, "")
	e.drain()
	if st := e.stages(); st[StageOK] != 1 || st[StageBackend] != 0 {
		t.Fatalf("stages %v", st)
	}
}

// conman dying (its connection breaks and nothing answers on its address) is a restart
// elsewhere once the resume fails.
func TestReattachAfterConmanDies(t *testing.T) {
	e := newV2Env(t, 2, nil)
	c := e.open(t, SubprotocolV2)
	send(t, c, websocket.MessageText, "whoami")
	expectOutput(t, c, "vm-1")
	e.vms[0].kill()
	n := expectNotice(t, c, NoticeRestarted)
	if n.VM != "vm-2" {
		t.Fatalf("notice %+v", n)
	}
	send(t, c, websocket.MessageText, "whoami")
	expectOutput(t, c, "vm-2")
}

// Input typed while the session re-attaches reaches a resumed shell in order, and is dropped
// for a new shell (it was meant for the old one).
func TestReattachHeldInput(t *testing.T) {
	e := newV2Env(t, 2, func(c *Config) { c.MaxRetryBackoff = 50 * time.Millisecond })
	c := e.open(t, SubprotocolV2)
	// Placement answers nothing for a while: the client types meanwhile.
	e.placer.mu.Lock()
	e.placer.err = placement.ErrNoCapacity
	e.placer.mu.Unlock()
	e.vms[0].setFail(http.StatusServiceUnavailable)
	calls := len(e.placer.requests())
	send(t, c, websocket.MessageText, "close:1012")
	// Once the relay asks placement again, conman's leg is gone: what the client sends now is
	// held, not written to a leg.
	for deadline := time.Now().Add(5 * time.Second); len(e.placer.requests()) == calls; {
		if time.Now().After(deadline) {
			t.Fatal("the relay never asked placement again")
		}
		time.Sleep(time.Millisecond)
	}
	send(t, c, websocket.MessageBinary, "rm -rf ~/project\r")
	e.placer.mu.Lock()
	e.placer.err = nil
	e.placer.mu.Unlock()
	expectNotice(t, c, NoticeRestarted)
	send(t, c, websocket.MessageBinary, "after")
	expectOutput(t, c, "after") // not "rm -rf ~/project\r"
}

// No VM within ReattachTimeout: the client gets 1013 with a reason, and the session counts as
// the platform's failure.
func TestReattachGivesUp(t *testing.T) {
	e := newV2Env(t, 1, func(c *Config) {
		c.ReattachTimeout = 300 * time.Millisecond
		c.MaxRetryBackoff = 20 * time.Millisecond
	})
	c := e.open(t, SubprotocolV2)
	e.vms[0].setFail(http.StatusServiceUnavailable)
	send(t, c, websocket.MessageText, "close:1012")
	reason := expectClose(t, c, CloseTryAgainLater)
	if !strings.Contains(reason, "no VM could take the repl") {
		t.Fatalf("reason %q", reason)
	}
	e.drain()
	if st := e.stages(); st[StageBackend] != 1 {
		t.Fatalf("stages %v", st)
	}
	if got := e.reattaches(reattachFailed); got != 1 {
		t.Fatalf("failed = %d", got)
	}
}

// A repl that moved to another cluster while its session re-attached is not attached here: the
// client is told to connect through lore again.
func TestReattachRefusesMovedRepl(t *testing.T) {
	dir := &switchDirectory{cluster: testCluster}
	e := newV2Env(t, 2, func(c *Config) { c.Directory = dir })
	c := e.open(t, SubprotocolV2)
	dir.set("b")
	send(t, c, websocket.MessageText, "close:1012")
	if reason := expectClose(t, c, CloseReplMoved); !strings.Contains(reason, "moved") {
		t.Fatalf("reason %q", reason)
	}
}

type switchDirectory struct {
	mu      sync.Mutex
	cluster string
}

func (d *switchDirectory) set(c string) {
	d.mu.Lock()
	d.cluster = c
	d.mu.Unlock()
}

func (d *switchDirectory) Repl(ctx context.Context, id string) (lore.Repl, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return lore.Repl{ID: id, Cluster: d.cluster}, nil
}

// The shell exiting (1000) and conman's session-level closes reach a v2 client as in v1.
func TestReattachPassesShellExit(t *testing.T) {
	e := newV2Env(t, 2, nil)
	c := e.open(t, SubprotocolV2)
	send(t, c, websocket.MessageText, "close:1000")
	expectClose(t, c, websocket.StatusNormalClosure)
	c2 := e.open(t, SubprotocolV2)
	send(t, c2, websocket.MessageText, "close:4000") // conman.CloseTakenOver
	expectClose(t, c2, conman.CloseTakenOver)
	if got := e.reattaches(reattachRestarted) + e.reattaches(reattachResumed); got != 0 {
		t.Fatalf("re-attached %d times", got)
	}
}

// A v1 client keeps today's behaviour: conman's 1012 closes its session.
func TestReattachNotForV1(t *testing.T) {
	e := newV2Env(t, 2, nil)
	c := e.open(t, Subprotocol)
	send(t, c, websocket.MessageText, "close:1012")
	expectClose(t, c, websocket.StatusServiceRestart)
}

// Drain while a session waits for a VM: the client gets 1001 and Shutdown returns.
func TestReattachDrainWhileWaiting(t *testing.T) {
	e := newV2Env(t, 1, func(c *Config) { c.MaxRetryBackoff = 20 * time.Millisecond })
	c := e.open(t, SubprotocolV2)
	e.vms[0].setFail(http.StatusServiceUnavailable)
	send(t, c, websocket.MessageText, "close:1012")
	expectNotice(t, c, NoticeReconnecting)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		done <- e.proxy.Shutdown(ctx)
	}()
	expectClose(t, c, websocket.StatusGoingAway)
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A hostile conman naming a session with bytes that would change the resume request is not
// believed: the session restarts instead of resuming.
func TestReattachIgnoresBadSessionIDs(t *testing.T) {
	for _, id := range []string{"short", "has space in it 12345", "a&offset=0&resume=b-0123456789", strings.Repeat("a", 200)} {
		if validSessionID(id) {
			t.Errorf("validSessionID(%q) = true", id)
		}
	}
	if !validSessionID("AbC-_0123456789xyz") {
		t.Error("a URL-safe id was refused")
	}
}
