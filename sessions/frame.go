package sessions

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// batchMin is the message size above which Frame mode coalesces its writes to conman.
const batchMin = 4 << 10

// Frame mode reads each message into a 32 KiB buffer; a message that fills it streams on in
// fragments of 256 KiB, so big messages cost few frames and syscalls.
var (
	copyPool = sync.Pool{New: func() any {
		b := make([]byte, 32<<10)
		return &b
	}}
	bigPool = sync.Pool{New: func() any {
		b := make([]byte, 256<<10)
		return &b
	}}
)

// serveFrame accepts the client with coder/websocket and relays messages.
// It reports whether the session was established (and its relay started).
func (s *Proxy) serveFrame(ctx context.Context, w http.ResponseWriter, r *http.Request, a *setupAttempt, leg backendLeg) bool {
	fb := leg.(*frameBackend)
	client, rawClient, established, ok := s.acceptClient(w, r, a, fb)
	if !ok {
		return false
	}
	fr := &frameRelay{client: client, back: fb.c, rawClient: rawClient, rawBack: fb.raw, backBody: fb.body, cfg: &s.cfg}
	fr.ctx, fr.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.log.Debug("session established", a.attrs(StageOK)...)
	s.relay(a, fr.goAway, func() {
		defer fr.cancel()
		fr.run()
		s.end(a, fr.stage, established, fr.reason, fr.c2b.Load(), fr.b2c.Load())
	})
	return true
}

// acceptClient upgrades the client with coder/websocket, selecting the subprotocol it offered,
// once conman's leg fb is attached. On failure it closes fb, counts the attempt and returns false.
func (s *Proxy) acceptClient(w http.ResponseWriter, r *http.Request, a *setupAttempt, fb *frameBackend) (*websocket.Conn, net.Conn, time.Time, bool) {
	opts := &websocket.AcceptOptions{
		// The connect token, not the Origin, authenticates a session: a token is never ambient
		// (cookies are not used), so a cross-origin page cannot ride on a user's credentials.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	}
	if p := selectSubprotocol(r); p != "" {
		opts.Subprotocols = []string{p}
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = fb.c.CloseNow()
		s.fail(w, a, StageClient, http.StatusHTTPVersionNotSupported, "connection cannot be upgraded",
			errors.New("ResponseWriter is not an http.Hijacker (HTTP/2?)"))
		return nil, nil, time.Time{}, false
	}
	sh := &smallHijack{ResponseWriter: w, hj: hj}
	client, err := websocket.Accept(sh, r, opts)
	if err != nil {
		_ = fb.c.CloseNow()
		s.fail(nil, a, StageClient, 0, "", fmt.Errorf("accept: %w", err))
		return nil, nil, time.Time{}, false
	}
	client.SetReadLimit(s.cfg.MaxMessageBytes)
	established := time.Now()
	s.metrics.setup.Observe(established.Sub(a.start).Seconds())
	return client, sh.conn, established, true
}

// smallHijack hands coder/websocket 512-byte buffers instead of the HTTP server's 4 KiB
// ones: headers are small, and payloads bigger than the buffer bypass it anyway. It saves 7 KiB
// per idle Frame-mode session.
type smallHijack struct {
	http.ResponseWriter
	hj   http.Hijacker
	conn net.Conn
}

func (w *smallHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := w.hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = c
	n := brw.Reader.Buffered()
	if n == 0 {
		return c, bufio.NewReadWriter(bufio.NewReaderSize(c, 512), bufio.NewWriterSize(c, 512)), nil
	}
	// Bytes the client sent right behind its request must sit in the new reader's buffer:
	// coder/websocket keeps what is buffered and re-points the reader at the connection.
	p, _ := brw.Reader.Peek(n)
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(p)), c), max(512, n))
	if _, err := br.Peek(n); err != nil {
		_ = c.Close()
		return nil, nil, err
	}
	return c, bufio.NewReadWriter(br, bufio.NewWriterSize(c, 512)), nil
}

// frameRelay relays one Frame-mode session: a goroutine per direction, keepalive and
// idle timers that run only when they fire, and exactly one decision about how it ended.
type frameRelay struct {
	client, back       *websocket.Conn
	rawClient, rawBack net.Conn      // the connections under them (either may be nil)
	backBody           *upgradedBody // conman's leg as coder/websocket writes to it (may be nil)
	cfg                *Config
	ctx                context.Context
	cancel             context.CancelFunc

	c2b, b2c atomic.Int64
	activity atomic.Int64 // unix nanoseconds of the last message either way

	timerGroup

	once          sync.Once
	stage, reason string
}

// timerGroup runs a relay's helper goroutines and timer callbacks, so that the relay can stop
// them all and wait for them: after stop, none starts.
type timerGroup struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	stopped bool // no more timer callbacks may start
	timers  []*time.Timer
}

// stop keeps new callbacks from starting and stops the timers; wg.Wait then waits for the rest.
func (g *timerGroup) stop() {
	g.mu.Lock()
	g.stopped = true
	for _, t := range g.timers {
		t.Stop()
	}
	g.timers = nil
	g.mu.Unlock()
}

func (fr *frameRelay) run() {
	fr.activity.Store(time.Now().UnixNano())
	if fr.cfg.PingInterval > 0 {
		fr.startPinger(fr.client, true)
		fr.startPinger(fr.back, false)
	}
	if fr.cfg.IdleTimeout > 0 {
		fr.startIdle()
	}
	fr.wg.Add(1)
	go func() {
		defer fr.wg.Done()
		fr.pump(fr.client, fr.back, true)
	}()
	fr.pump(fr.back, fr.client, false)

	fr.stop()
	fr.wg.Wait()
	_ = fr.client.CloseNow()
	_ = fr.back.CloseNow()
}

// goAway closes both legs with 1001 without blocking the caller.
func (fr *frameRelay) goAway() {
	fr.spawn(func() {
		fr.finish(StageOK, "drain: closed with 1001", websocket.StatusGoingAway, "proxy shutting down",
			websocket.StatusGoingAway, "proxy shutting down")
	})
}

// spawn runs f in a goroutine run waits for, unless the relay already stopped.
func (g *timerGroup) spawn(f func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	g.wg.Go(f)
}

// afterFunc runs f after d in a goroutine run waits for, unless the relay stopped by then.
func (g *timerGroup) afterFunc(d time.Duration, f func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		g.mu.Lock()
		if g.stopped {
			g.mu.Unlock()
			return
		}
		g.wg.Add(1)
		// A fired timer is not kept: a relay that pings for days must not collect them.
		for i, x := range g.timers {
			if x == t {
				g.timers = append(g.timers[:i], g.timers[i+1:]...)
				break
			}
		}
		g.mu.Unlock()
		defer g.wg.Done()
		f()
	})
	g.timers = append(g.timers, t)
}

func (fr *frameRelay) startPinger(c *websocket.Conn, isClient bool) {
	var ping func()
	ping = func() {
		ctx, cancel := context.WithTimeout(fr.ctx, fr.cfg.PingTimeout)
		err := c.Ping(ctx)
		cancel()
		if err == nil {
			fr.afterFunc(fr.cfg.PingInterval, ping)
			return
		}
		if fr.ctx.Err() != nil {
			return
		}
		if isClient {
			fr.finish(StageOK, "client did not answer ping", 0, "",
				websocket.StatusGoingAway, "client went away")
		} else {
			fr.finish(StageBackend, "conman did not answer ping", websocket.StatusBadGateway, "backend unresponsive", 0, "")
		}
	}
	fr.afterFunc(fr.cfg.PingInterval, ping)
}

func (fr *frameRelay) startIdle() {
	var check func()
	check = func() {
		idle := time.Since(time.Unix(0, fr.activity.Load()))
		if idle < fr.cfg.IdleTimeout {
			fr.afterFunc(fr.cfg.IdleTimeout-idle, check)
			return
		}
		fr.finish(StageOK, "idle timeout", websocket.StatusGoingAway, "idle timeout",
			websocket.StatusGoingAway, "idle timeout")
	}
	fr.afterFunc(fr.cfg.IdleTimeout, check)
}

// finish decides how the session ended (first caller wins) and closes both legs: a code of 0
// means that leg is cut without a close handshake.
func (fr *frameRelay) finish(stage, reason string, clientCode websocket.StatusCode, clientReason string,
	backCode websocket.StatusCode, backReason string) {
	fr.once.Do(func() {
		fr.stage, fr.reason = stage, reason
		// coder/websocket waits up to 5 s for each close handshake; a peer that does not
		// answer within goAwayWait is cut instead.
		cut := time.AfterFunc(goAwayWait, func() {
			for _, c := range []net.Conn{fr.rawClient, fr.rawBack} {
				if c != nil {
					_ = c.Close()
				}
			}
		})
		defer cut.Stop()
		var wg sync.WaitGroup
		wg.Go(func() { closeLeg(fr.client, clientCode, clientReason) })
		closeLeg(fr.back, backCode, backReason)
		wg.Wait()
		fr.cancel()
	})
}

func closeLeg(c *websocket.Conn, code websocket.StatusCode, reason string) {
	if code == 0 {
		_ = c.CloseNow()
		return
	}
	_ = c.Close(code, reason)
}

// wireCode maps a received close status to one that may be sent: 1005 (none), 1006
// (abnormal) and 1015 (TLS) are reserved for local use and never appear on the wire.
func wireCode(c websocket.StatusCode) websocket.StatusCode {
	switch c {
	case websocket.StatusNoStatusRcvd:
		return websocket.StatusNormalClosure
	case websocket.StatusAbnormalClosure, websocket.StatusTLSHandshake, -1:
		return websocket.StatusGoingAway
	}
	if c < 1000 || c >= 5000 || (c >= 1016 && c < 3000) {
		return websocket.StatusGoingAway
	}
	return c
}

type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// pump relays messages from src to dst until either fails, then decides the ending.
func (fr *frameRelay) pump(src, dst *websocket.Conn, fromClient bool) {
	counter := &fr.b2c
	if fromClient {
		counter = &fr.c2b
	}
	// Reads and writes run under a context that is never done: coder/websocket would otherwise
	// register (and allocate) a context.AfterFunc for every frame read or written. The relay
	// ends them by closing the connections instead (finish), which unblocks both.
	ioCtx := context.WithoutCancel(fr.ctx)
	er := &errReader{}
	for {
		typ, rd, err := src.Reader(ioCtx)
		if err != nil {
			fr.srcFailed(err, fromClient)
			return
		}
		fr.activity.Store(time.Now().UnixNano())
		bp := copyPool.Get().(*[]byte)
		buf := *bp
		er.r, er.err = rd, nil
		n, rerr := io.ReadFull(er, buf)
		if er.err != nil {
			copyPool.Put(bp)
			fr.srcFailed(er.err, fromClient)
			return
		}
		// A message bigger than coder/websocket's write buffer reaches conman in one write per
		// 64 KiB instead of one per 4 KiB (see upgradedBody). Each batch covers bytes
		// already in memory, never a wait for the client.
		var body *upgradedBody
		if fromClient && n > batchMin {
			body = fr.backBody
		}
		if rerr != nil {
			// The whole message fit in the buffer: one frame out, like it came in.
			err = writeBatched(body, func() error { return dst.Write(ioCtx, typ, buf[:n]) })
			copyPool.Put(bp)
			counter.Add(int64(n))
		} else {
			// A big message: stream it through in fragments of the buffer's size.
			var wr io.WriteCloser
			wr, err = dst.Writer(ioCtx, typ)
			if err == nil {
				var m int64
				bw := &batchWriter{w: wr, body: body}
				_, err = bw.Write(buf[:n])
				if err == nil {
					big := bigPool.Get().(*[]byte)
					m, err = io.CopyBuffer(bw, er, *big)
					bigPool.Put(big)
				}
				counter.Add(int64(n) + m)
				if er.err != nil {
					copyPool.Put(bp)
					fr.srcFailed(er.err, fromClient)
					return
				}
				if err == nil {
					err = writeBatched(body, wr.Close)
				}
			}
			copyPool.Put(bp)
		}
		if err != nil {
			fr.dstFailed(err, fromClient)
			return
		}
		fr.activity.Store(time.Now().UnixNano())
	}
}

// writeBatched runs write with body's writes coalesced (body nil: as they come).
func writeBatched(body *upgradedBody, write func() error) error {
	if body == nil {
		return write()
	}
	body.beginBatch()
	err := write()
	if berr := body.endBatch(); err == nil {
		err = berr
	}
	return err
}

// batchWriter coalesces the writes under each Write it is given (see writeBatched).
type batchWriter struct {
	w    io.Writer
	body *upgradedBody
}

func (b *batchWriter) Write(p []byte) (n int, err error) {
	err = writeBatched(b.body, func() (err error) {
		n, err = b.w.Write(p)
		return err
	})
	return n, err
}

// srcFailed handles a read error on the leg messages came from.
func (fr *frameRelay) srcFailed(err error, fromClient bool) {
	if fr.ctx.Err() != nil {
		return // finish already ran
	}
	var ce websocket.CloseError
	switch {
	case errors.Is(err, websocket.ErrMessageTooBig):
		// coder/websocket already closed src with 1009.
		if fromClient {
			fr.finish(StageOK, "client message too big", 0, "", websocket.StatusGoingAway, "client went away")
		} else {
			fr.finish(StageBackend, "conman message too big", websocket.StatusMessageTooBig, "backend message too big", 0, "")
		}
	case errors.As(err, &ce):
		code := wireCode(ce.Code)
		if fromClient {
			fr.finish(StageOK, fmt.Sprintf("client closed with %d", int(ce.Code)), 0, "", code, ce.Reason)
		} else {
			stage := StageOK
			if !normalClose(int(ce.Code)) && ce.Code != websocket.StatusNoStatusRcvd {
				stage = StageBackend
			}
			fr.finish(stage, fmt.Sprintf("conman closed with %d", int(ce.Code)), code, ce.Reason, 0, "")
		}
	default:
		if fromClient {
			fr.finish(StageOK, "client went away", 0, "", websocket.StatusGoingAway, "client went away")
		} else {
			fr.finish(StageBackend, "conman connection broke: "+err.Error(), websocket.StatusBadGateway, "backend went away", 0, "")
		}
	}
}

// dstFailed handles a write error on the leg messages went to.
func (fr *frameRelay) dstFailed(err error, fromClient bool) {
	if fr.ctx.Err() != nil {
		return
	}
	if fromClient {
		fr.finish(StageBackend, "writing to conman: "+err.Error(), websocket.StatusBadGateway, "backend went away", 0, "")
	} else {
		fr.finish(StageOK, "client went away", 0, "", websocket.StatusGoingAway, "client went away")
	}
}
