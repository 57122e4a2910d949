//go:build linux

package sessions

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/switchyard-dev/switchyard/internal/eventloop"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/switchyard-dev/switchyard/placement"
)

// Every mode-generic test in this package also runs in Splice mode on an event loop
// (testSpliceLoop); the tests here check what only the loop does: that sessions really
// are in it, which event hands a session back (each with its counter), and that the bytes the
// loop holds when it hands a session back arrive intact and in order.

func testLoopEnv(t *testing.T) *testEnv {
	t.Helper()
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("event loops need GOMAXPROCS >= 2")
	}
	return newTestEnv(t, testSpliceLoop, nil)
}

// testWaitInLoop waits until n sessions are in the event loop (it takes them in
// asynchronously).
func testWaitInLoop(t *testing.T, e *testEnv, n float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for testValue(e.proxy.metrics.inLoop) != n {
		if time.Now().After(deadline) {
			t.Fatalf("sessions in the event loop = %v, want %v", testValue(e.proxy.metrics.inLoop), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// handbacks returns the event loop's hand-back counters that are not zero.
func (e *testEnv) handbacks() map[string]int {
	out := map[string]int{}
	for _, r := range loopReasons {
		if n := int(testValue(e.proxy.metrics.handbacks.WithLabelValues(r))); n != 0 {
			out[r] = n
		}
	}
	return out
}

func TestSessionsEventLoop(t *testing.T) {
	cases := []struct {
		name string
		// run uses the open session c; it returns the hand-back reason it expects.
		run   func(t *testing.T, e *testEnv, c *websocket.Conn) string
		stage string
	}{
		{name: "small messages stay, a normal close hands back at conman's close frame", stage: StageOK,
			run: func(t *testing.T, e *testEnv, c *websocket.Conn) string {
				for i := range 300 {
					msg := bytes.Repeat([]byte{byte(i)}, 1+i*37%8000)
					typ := websocket.MessageBinary
					if i%3 == 0 {
						typ = websocket.MessageText
						msg = []byte(fmt.Sprintf("line %d %s", i, strings.Repeat("x", i%200)))
					}
					testEcho(t, c, typ, msg)
				}
				if got := e.handbacks(); len(got) != 0 {
					t.Fatalf("handed back during small messages: %v", got)
				}
				testWaitInLoop(t, e, 1)
				c.Close(websocket.StatusNormalClosure, "")
				return "frame"
			}},
		{name: "bulk from the client goes to splice, byte-exact", stage: StageOK,
			run: func(t *testing.T, e *testEnv, c *websocket.Conn) string {
				testEcho(t, c, websocket.MessageBinary, testPattern(1<<20))
				testWaitInLoop(t, e, 0)
				testEcho(t, c, websocket.MessageText, []byte("still here"))
				c.Close(websocket.StatusNormalClosure, "")
				// coder/websocket writes the message in 4 KiB pieces: the loop hands the
				// session back at the first read that fills its buffer, or, when it kept up
				// with every piece, at the echo's 1 MiB frame.
				return "bulk|frame"
			}},
		{name: "a big frame from conman goes to the goroutines", stage: StageOK,
			run: func(t *testing.T, e *testEnv, c *websocket.Conn) string {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.Write(ctx, websocket.MessageText, []byte("big:100000")); err != nil {
					t.Fatal(err)
				}
				_, b, err := c.Read(ctx)
				if err != nil || len(b) != 100000 {
					t.Fatalf("big message: %d bytes, %v", len(b), err)
				}
				testEcho(t, c, websocket.MessageText, []byte("after"))
				c.Close(websocket.StatusNormalClosure, "")
				return "frame"
			}},
		{name: "conman drops the connection", stage: StageBackend,
			run: func(t *testing.T, e *testEnv, c *websocket.Conn) string {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.Write(ctx, websocket.MessageText, []byte("drop")); err != nil {
					t.Fatal(err)
				}
				_, _, err := c.Read(ctx)
				if websocket.CloseStatus(err) != 1014 {
					t.Fatalf("read after drop: %v, want close 1014", err)
				}
				return "eof"
			}},
		{name: "the client goes away", stage: StageOK,
			run: func(t *testing.T, e *testEnv, c *websocket.Conn) string {
				c.CloseNow()
				return "eof"
			}},
		{name: "drain closes with 1001", stage: StageOK,
			run: func(t *testing.T, e *testEnv, c *websocket.Conn) string {
				ctx, cancel := context.WithCancel(context.Background())
				cancel() // the grace period is over at once
				errc := make(chan error, 1)
				go func() { errc <- e.proxy.Shutdown(ctx) }()
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer rcancel()
				_, _, err := c.Read(rctx)
				if websocket.CloseStatus(err) != websocket.StatusGoingAway {
					t.Fatalf("read during drain: %v, want 1001", err)
				}
				if err := <-errc; err != context.Canceled {
					t.Fatalf("Shutdown = %v", err)
				}
				return "drain"
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := testLoopEnv(t)
			ctx := context.Background()
			c := testOpen(t, e, ctx)
			defer c.CloseNow()
			testWaitInLoop(t, e, 1)
			want := tc.run(t, e, c)
			e.drain2()
			got := e.handbacks()
			ok := len(got) == 1
			for r, n := range got {
				ok = ok && n == 1 && strings.Contains("|"+want+"|", "|"+r+"|")
			}
			if !ok {
				t.Errorf("hand-backs = %v, want one of %s once", got, want)
			}
			if got := e.stages(); got[tc.stage] != 1 || len(got) != 1 {
				t.Errorf("stages = %v, want %s once", got, tc.stage)
			}
			if v := testValue(e.proxy.metrics.inLoop); v != 0 {
				t.Errorf("sessions in the loop after the end = %v", v)
			}
		})
	}
}

// drain2 is drain that tolerates a Shutdown the test already ran.
func (e *testEnv) drain2() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.proxy.Shutdown(ctx); err != nil && err != ErrClosed {
		e.t.Fatalf("Shutdown: %v", err)
	}
}

func testPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// TestSessionsEventLoopManySessions: 200 sessions in one loop, each echoing its own messages
// interleaved with the others', all byte-exact, all in the loop until they close.
func TestSessionsEventLoopManySessions(t *testing.T) {
	e := testLoopEnv(t)
	const n = 200
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = testOpen(t, e, context.Background())
	}
	testWaitInLoop(t, e, n)
	// The loop keeps its P while it waits in epoll_wait; a stop-the-world must still get it
	// (the preemption signal interrupts the wait). A loop that ignored it would hang here.
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for range 20 {
			runtime.GC()
		}
	}()
	errc := make(chan error, n)
	for i, c := range conns {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for k := range 20 {
				msg := []byte(fmt.Sprintf("session %d message %d %s", i, k, strings.Repeat("y", (i+k)%300)))
				if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
					errc <- err
					return
				}
				_, got, err := c.Read(ctx)
				if err != nil || !bytes.Equal(got, msg) {
					errc <- fmt.Errorf("session %d message %d: %q, %v", i, k, got, err)
					return
				}
			}
			errc <- c.Close(websocket.StatusNormalClosure, "")
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	<-gcDone
	e.drain()
	if got := e.handbacks(); got["frame"] != n || len(got) != 1 {
		t.Errorf("hand-backs = %v, want frame (the close) %d times", got, n)
	}
	if got := e.stages(); got[StageOK] != n || len(got) != 1 {
		t.Errorf("stages = %v", got)
	}
}

// TestSessionsEventLoopPartialFrames: a conman that writes each frame in pieces (header bytes
// alone, then the payload in two parts, each after the client has seen nothing of the frame)
// keeps the session in the loop, which holds the pieces and writes each frame whole.
func TestSessionsEventLoopPartialFrames(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("event loops need GOMAXPROCS >= 2")
	}
	// The raw conman: a hand-made handshake, then for each client frame it reads, the
	// unmasked echo written in three pieces with a pause between them.
	conman := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
			acceptKey(r.Header.Get("Sec-WebSocket-Key")))
		testRawEcho(conn, brw.Reader)
	}))
	defer conman.Close()
	e := newTestEnv(t, testSpliceLoop, nil)
	e.placer.mu.Lock()
	e.placer.vms = []placement.VM{{ID: "raw-1", Addr: conman.URL, State: placement.Active}}
	e.placer.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.dial(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	testWaitInLoop(t, e, 1)
	for i := range 22 {
		msg := testPattern(200 + i*301)
		if i >= 20 {
			msg = testPattern(40<<10 + i) // frames the loop still takes whole, in pieces
		}
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("message %d: %d bytes, %v", i, len(got), err)
		}
	}
	if got := e.handbacks(); len(got) != 0 {
		t.Fatalf("hand-backs = %v, want none", got)
	}
	testWaitInLoop(t, e, 1)
	c.Close(websocket.StatusNormalClosure, "")
	e.drain()
	if got := e.stages(); got[StageOK] != 1 {
		t.Errorf("stages = %v", got)
	}
}

// testRawEcho echoes client frames (unmasked) in three writes each: the first header byte,
// then the rest of the header and half the payload, then the rest; it waits 2 ms between the
// writes so they reach the proxy as separate reads. A close frame is echoed and ends it.
func testRawEcho(conn net.Conn, br *bufio.Reader) {
	for {
		frame, opcode, err := testReadClientFrame(br)
		if err != nil {
			return
		}
		cuts := []int{1, 1 + (len(frame)-1)/2, len(frame)}
		prev := 0
		for _, cut := range cuts {
			if _, err := conn.Write(frame[prev:cut]); err != nil {
				return
			}
			prev = cut
			time.Sleep(2 * time.Millisecond) // pieces in separate reads; not a synchronisation
		}
		if opcode == 8 {
			return
		}
	}
}

// testReadClientFrame reads one masked client frame and returns it as an unmasked server
// frame.
func testReadClientFrame(br *bufio.Reader) ([]byte, byte, error) {
	var h [2]byte
	if _, err := ioReadFull(br, h[:]); err != nil {
		return nil, 0, err
	}
	n := int(h[1] & 0x7f)
	var ext []byte
	switch n {
	case 126:
		ext = make([]byte, 2)
	case 127:
		ext = make([]byte, 8)
	}
	if _, err := ioReadFull(br, ext); err != nil {
		return nil, 0, err
	}
	switch n {
	case 126:
		n = int(ext[0])<<8 | int(ext[1])
	case 127:
		n = 0
		for _, b := range ext {
			n = n<<8 | int(b)
		}
	}
	var key [4]byte
	if _, err := ioReadFull(br, key[:]); err != nil {
		return nil, 0, err
	}
	payload := make([]byte, n)
	if _, err := ioReadFull(br, payload); err != nil {
		return nil, 0, err
	}
	for i := range payload {
		payload[i] ^= key[i%4]
	}
	out := append([]byte{h[0], h[1] &^ 0x80}, ext...)
	return append(out, payload...), h[0] & 0x0f, nil
}

func ioReadFull(br *bufio.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := br.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestLoopFrames: where the loop's whole frames end, and when it must stop.
func TestLoopFrames(t *testing.T) {
	frame := func(opcode byte, n int) []byte {
		var h []byte
		switch {
		case n < 126:
			h = []byte{0x80 | opcode, byte(n)}
		case n < 1<<16:
			h = []byte{0x80 | opcode, 126, byte(n >> 8), byte(n)}
		default:
			h = []byte{0x80 | opcode, 127, 0, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
		}
		return append(h, make([]byte, n)...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	small, mid := frame(2, 10), frame(1, 300)
	cases := []struct {
		name string
		p    []byte
		end  int
		stop bool
	}{
		{"empty", nil, 0, false},
		{"one byte of a header", small[:1], 0, false},
		{"a whole frame", small, len(small), false},
		{"two frames and a partial", cat(small, mid, small[:5]), len(small) + len(mid), false},
		{"a ping passes", cat(frame(9, 4), small), 6 + len(small), false},
		{"a close frame stops", cat(small, frame(8, 2)), len(small), true},
		{"a control frame over 125 bytes stops", frame(10, 126), 0, true},
		{"a frame over 64 KiB stops before it is complete", cat(small, frame(2, 100<<10)[:100]), len(small), true},
		{"a 32 KiB pty read passes", frame(2, 32<<10), 4 + 32<<10, false},
		{"the largest frame the loop takes", frame(2, eventloop.MaxFrame-4), eventloop.MaxFrame, false},
		{"one byte more stops", frame(2, eventloop.MaxFrame-3), 0, true},
		{"a malformed length stops", []byte{0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 1}, 0, true},
	}
	for _, tc := range cases {
		end, stop := loopFrames(tc.p)
		if end != tc.end || stop != tc.stop {
			t.Errorf("%s: loopFrames = %d, %v; want %d, %v", tc.name, end, stop, tc.end, tc.stop)
		}
	}
}

// TestSessionsEventLoopBudget: the loops of proxies sharing a LoopBudget leave one P to the
// rest of the program. With GOMAXPROCS 2, one loop runs; a second proxy's session stays on goroutines
// (refused) and works, and takes a loop once the first has stopped.
func TestSessionsEventLoopBudget(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	budget := new(LoopBudget)
	share := func(c *Config) { c.LoopBudget = budget }
	a := newTestEnv(t, testSpliceLoop, share)
	b := newTestEnv(t, testSpliceLoop, share)
	ctx := context.Background()
	ca := testOpen(t, a, ctx)
	testWaitInLoop(t, a, 1)

	cb := testOpen(t, b, ctx)
	testEcho(t, cb, websocket.MessageText, []byte("on goroutines"))
	if got := b.handbacks(); got["refused"] != 1 || len(got) != 1 {
		t.Fatalf("second proxy's hand-backs = %v, want refused once", got)
	}
	if v := testValue(b.proxy.metrics.inLoop); v != 0 {
		t.Fatalf("second proxy has %v sessions in a loop", v)
	}

	ca.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(5 * time.Second)
	for budget.b.Held() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("loops still held: %d", budget.b.Held())
		}
		time.Sleep(time.Millisecond)
	}
	cb2 := testOpen(t, b, ctx)
	testWaitInLoop(t, b, 1)
	testEcho(t, cb2, websocket.MessageText, []byte("in the loop"))
	cb.Close(websocket.StatusNormalClosure, "")
	cb2.Close(websocket.StatusNormalClosure, "")
	a.drain()
	b.drain()
}

// TestSessionsEventLoopGOMAXPROCS: lowering GOMAXPROCS to the number of running loops (a
// container's CPU limit can do that at run time) makes the loop give its sessions back and
// stop, so it never holds the program's last P; the session goes on.
func TestSessionsEventLoopGOMAXPROCS(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	e := newTestEnv(t, testSpliceLoop, nil)
	c := testOpen(t, e, context.Background())
	testWaitInLoop(t, e, 1)
	runtime.GOMAXPROCS(1) // stops the world: the loop's wait is interrupted
	testWaitInLoop(t, e, 0)
	testEcho(t, c, websocket.MessageText, []byte("on goroutines now"))
	if got := e.handbacks(); got["gomaxprocs"] != 1 || len(got) != 1 {
		t.Errorf("hand-backs = %v, want gomaxprocs once", got)
	}
	runtime.GOMAXPROCS(2)
	c.Close(websocket.StatusNormalClosure, "")
	e.drain()
}
