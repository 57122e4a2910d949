package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/placement"
)

// Notice is the in-band control message the proxy sends a SubprotocolV2 client, as a WebSocket
// text message holding this JSON. Clients show Text and ignore events (and types) they do not
// know; conman sends no text messages of type "notice".
type Notice struct {
	Type  string `json:"type"`  // always "notice"
	Event string `json:"event"` // NoticeReconnecting, NoticeResumed or NoticeRestarted
	Text  string `json:"text"`  // for people
	// VM is the VM the session runs on now (resumed, restarted).
	VM string `json:"vm,omitempty"`
	// Lost is, when resumed, how many bytes of the shell's output could not be replayed. (Input
	// is never sent twice: a message whose write failed as the leg broke may be lost, since it
	// may also have arrived.)
	Lost int64 `json:"lost,omitempty"`
}

// Notice events.
const (
	// NoticeReconnecting: conman's side was lost and the proxy is re-attaching; sent once the
	// pause has lasted a second (a quick resume sends nothing at all).
	NoticeReconnecting = "reconnecting"
	// NoticeResumed: the same shell again, with the output the client missed replayed (Lost
	// says how much could not be). Sent when a reconnecting notice was, or output was lost.
	NoticeResumed = "resumed"
	// NoticeRestarted: the repl runs again, maybe on another VM (VM), with a new shell: the old
	// shell's processes and state are gone. Input typed while reconnecting was dropped, since it
	// was meant for the old shell.
	NoticeRestarted = "restarted"
)

const (
	// reconnectingNoticeAfter is how long a re-attach runs before the client is told.
	reconnectingNoticeAfter = time.Second
	// maxQueuedInput caps the client's input the proxy holds while re-attaching; past it the
	// client's reads stop (TCP back-pressure) until conman's leg is back.
	maxQueuedInput = 256 << 10
)

// serveResilient accepts a SubprotocolV2 client and relays its session, re-attaching conman's
// leg when it is lost. It reports whether the session was established.
func (s *Proxy) serveResilient(ctx context.Context, w http.ResponseWriter, r *http.Request, a *setupAttempt, fb *frameBackend) bool {
	client, rawClient, established, ok := s.acceptClient(w, r, a, fb)
	if !ok {
		return false
	}
	rr := &resilientRelay{s: s, a: a, client: client, rawClient: rawClient, back: fb, query: url.Values{}}
	for _, k := range []string{"cols", "rows"} {
		if v := r.URL.Query().Get(k); v != "" {
			rr.query.Set(k, v)
		}
	}
	rr.changed = make(chan struct{})
	rr.ctx, rr.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.log.Debug("session established", append(a.attrs(StageOK), "subprotocol", SubprotocolV2)...)
	s.relay(a, rr.goAway, func() {
		defer rr.cancel()
		rr.run()
		s.end(a, rr.stage, established, rr.reason, rr.c2b.Load(), rr.b2c.Load())
	})
	return true
}

// resilientRelay relays a SubprotocolV2 session: the client's WebSocket stays while conman's
// legs come and go. The goroutine running run owns conman's side: it relays conman → client and
// re-attaches; a second goroutine relays client → conman, holding input while there is no leg.
type resilientRelay struct {
	s         *Proxy
	a         *setupAttempt
	client    *websocket.Conn
	rawClient net.Conn
	ctx       context.Context // ends when the session ends
	cancel    context.CancelFunc

	mu      sync.Mutex
	back    *frameBackend // nil while re-attaching
	changed chan struct{} // closed and replaced whenever back is set, and when the session ends
	queue   []queuedMsg   // client input held while back is nil
	queued  int
	query   url.Values // cols and rows for the next attach: the client's latest size
	ended   bool

	// out counts the bytes of terminal output of the current conman shell session that the
	// client has been sent: where a resume starts. Only run's goroutine touches it.
	out int64

	c2b, b2c atomic.Int64
	activity atomic.Int64

	timerGroup

	once          sync.Once
	stage, reason string
}

type queuedMsg struct {
	typ  websocket.MessageType
	data []byte
}

func (rr *resilientRelay) run() {
	rr.activity.Store(time.Now().UnixNano())
	cfg := &rr.s.cfg
	if cfg.PingInterval > 0 {
		rr.pingClient()
		rr.pingBack(rr.back)
	}
	if cfg.IdleTimeout > 0 {
		rr.startIdle()
	}
	rr.wg.Add(1)
	go func() {
		defer rr.wg.Done()
		rr.clientPump()
	}()
	b := rr.back
	for b != nil {
		err, clientErr := rr.backPump(b)
		if rr.ctx.Err() != nil {
			break
		}
		if clientErr {
			rr.finish(StageOK, "client went away", 0, "", websocket.StatusGoingAway, "client went away")
			break
		}
		b = rr.backLost(b, err)
	}
	rr.stop()
	rr.wg.Wait()
	_ = rr.client.CloseNow()
	rr.mu.Lock()
	back := rr.back
	rr.mu.Unlock()
	if back != nil {
		_ = back.c.CloseNow()
	}
}

// backPump relays conman → client until a read from b fails (err) or a write to the client
// does (clientErr).
func (rr *resilientRelay) backPump(b *frameBackend) (err error, clientErr bool) {
	ioCtx := context.WithoutCancel(rr.ctx)
	var buf bytes.Buffer
	for {
		typ, rd, err := b.c.Reader(ioCtx)
		if err != nil {
			return err, false
		}
		buf.Reset()
		if _, err := buf.ReadFrom(rd); err != nil {
			return err, false
		}
		rr.activity.Store(time.Now().UnixNano())
		if err := rr.client.Write(ioCtx, typ, buf.Bytes()); err != nil {
			return err, true
		}
		n := int64(buf.Len())
		rr.b2c.Add(n)
		if typ == websocket.MessageBinary {
			rr.out += n
		}
		if buf.Cap() > 64<<10 {
			buf = bytes.Buffer{} // a big message does not pin its buffer for the session's life
		}
	}
}

// clientPump relays client → conman until the client's side ends.
func (rr *resilientRelay) clientPump() {
	ioCtx := context.WithoutCancel(rr.ctx)
	for {
		typ, data, err := rr.client.Read(ioCtx)
		if err != nil {
			rr.clientFailed(err)
			return
		}
		rr.activity.Store(time.Now().UnixNano())
		rr.c2b.Add(int64(len(data)))
		if typ == websocket.MessageText {
			if size, ok, _ := conman.ParseControl(data); ok {
				rr.mu.Lock()
				rr.query.Set("cols", strconv.Itoa(int(size.Cols)))
				rr.query.Set("rows", strconv.Itoa(int(size.Rows)))
				rr.mu.Unlock()
			}
		}
		if !rr.toBackend(ioCtx, typ, data) {
			return
		}
	}
}

// toBackend writes a client message to conman's current leg, or holds it while there is none.
// It returns false once the session has ended.
func (rr *resilientRelay) toBackend(ctx context.Context, typ websocket.MessageType, data []byte) bool {
	for {
		rr.mu.Lock()
		if rr.ended {
			rr.mu.Unlock()
			return false
		}
		b := rr.back
		if b == nil {
			if rr.queued+len(data) <= maxQueuedInput || len(rr.queue) == 0 {
				rr.queue = append(rr.queue, queuedMsg{typ, data})
				rr.queued += len(data)
				rr.mu.Unlock()
				return true
			}
			ch := rr.changed
			rr.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-rr.ctx.Done():
				return false
			}
		}
		rr.mu.Unlock()
		if err := b.c.Write(ctx, typ, data); err != nil {
			// conman's leg broke under the write. The message may have reached conman or not;
			// sending it again could run a command twice, so it is dropped. Cut the leg, so the
			// conman side (run) sees it and re-attaches.
			rr.mu.Lock()
			if rr.back == b {
				rr.back = nil
			}
			rr.mu.Unlock()
			_ = b.c.CloseNow()
		}
		return true
	}
}

// clientFailed ends the session when the client's side ended.
func (rr *resilientRelay) clientFailed(err error) {
	if rr.ctx.Err() != nil {
		return
	}
	var ce websocket.CloseError
	switch {
	case errors.Is(err, websocket.ErrMessageTooBig):
		rr.finish(StageOK, "client message too big", 0, "", websocket.StatusGoingAway, "client went away")
	case errors.As(err, &ce):
		rr.finish(StageOK, fmt.Sprintf("client closed with %d", int(ce.Code)), 0, "", wireCode(ce.Code), ce.Reason)
	default:
		rr.finish(StageOK, "client went away", 0, "", websocket.StatusGoingAway, "client went away")
	}
}

// backLost decides what a read error on conman's leg b means: the end of the session (nil), or
// a re-attach, which returns the new leg.
func (rr *resilientRelay) backLost(b *frameBackend, err error) *frameBackend {
	rr.mu.Lock()
	if rr.back == b {
		rr.back = nil
	}
	rr.mu.Unlock()
	_ = b.c.CloseNow()

	var ce websocket.CloseError
	isClose := errors.As(err, &ce)
	if errors.Is(err, websocket.ErrMessageTooBig) {
		rr.finish(StageBackend, "conman message too big", websocket.StatusMessageTooBig, "backend message too big", 0, "")
		return nil
	}
	if isClose && !reattachCode(ce.Code) {
		// The shell exited (1000), or conman closed for a reason of the session's own (a protocol
		// error, another connection took the shell over): the client gets it as in v1.
		stage := StageOK
		if !normalClose(int(ce.Code)) && ce.Code != websocket.StatusNoStatusRcvd {
			stage = StageBackend
		}
		rr.finish(stage, fmt.Sprintf("conman closed with %d", int(ce.Code)), wireCode(ce.Code), ce.Reason, 0, "")
		return nil
	}
	cause := "conman connection broke: " + err.Error()
	if isClose {
		cause = fmt.Sprintf("conman closed with %d %s", int(ce.Code), ce.Reason)
	}
	if rr.s.cfg.ReattachTimeout < 0 {
		if isClose {
			rr.finish(StageBackend, cause, wireCode(ce.Code), ce.Reason, 0, "")
		} else {
			rr.finish(StageBackend, cause, websocket.StatusBadGateway, "backend went away", 0, "")
		}
		return nil
	}
	// 1012: conman stopped the shell (its VM drains, or the repl was stopped there); a resume
	// cannot find it. Anything else may have left the shell running.
	resume := b.session != "" && !(isClose && ce.Code == websocket.StatusServiceRestart)
	return rr.reattach(b, cause, resume)
}

// reattachCode reports whether a close code from conman leaves the session to re-attach: the
// service is restarting, upgrading in place or going away, or failed on its side.
func reattachCode(c websocket.StatusCode) bool {
	switch c {
	case websocket.StatusGoingAway, websocket.StatusAbnormalClosure, websocket.StatusInternalError,
		websocket.StatusServiceRestart, websocket.StatusTryAgainLater, websocket.StatusBadGateway,
		conman.CloseResumeHere:
		return true
	}
	return false
}

// reattach brings conman's side back within ReattachTimeout: the same shell where conman still
// has it, else the repl placed again with a new shell. It returns the new leg, or nil after
// ending the session.
func (rr *resilientRelay) reattach(old *frameBackend, cause string, resume bool) *frameBackend {
	s := rr.s
	start := time.Now()
	ctx, cancel := context.WithTimeout(rr.ctx, s.cfg.ReattachTimeout)
	defer cancel()
	n := &noticer{rr: rr}
	rr.afterFunc(reconnectingNoticeAfter, func() {
		n.send(NoticeReconnecting, Notice{Text: "connection to the repl lost: reconnecting"}, true)
	})
	log := s.log.With(rr.a.attrs(StageOK)...)
	log.Info("conman leg lost: re-attaching", "cause", cause, "resume", resume)

	rr.mu.Lock()
	q := cloneValues(rr.query)
	rr.mu.Unlock()

	if resume {
		leg, err := s.attach(ctx, q, asgOf(rr.a.repl, old), attachOpts{frame: true, resume: old.session, offset: rr.out})
		if err == nil {
			fb := leg.(*frameBackend)
			if fb.session == "" {
				fb.session = old.session
			}
			s.metrics.reattach.WithLabelValues(reattachResumed).Inc()
			s.metrics.pause.Observe(time.Since(start).Seconds())
			log.Info("session resumed", "pause", time.Since(start), "lost", fb.lost)
			// The leg goes in before the notice (held input first), and its output is relayed
			// only once this returns: the notice comes before anything of the resumed shell.
			if !rr.install(fb, true) {
				return nil
			}
			if fb.lost > 0 {
				n.send(NoticeResumed, Notice{VM: fb.vm, Lost: fb.lost,
					Text: fmt.Sprintf("reconnected to the same shell; %d bytes of its output were lost", fb.lost)}, false)
			} else {
				n.send(NoticeResumed, Notice{VM: fb.vm, Text: "reconnected to the same shell"}, false)
			}
			return fb
		}
		log.Info("resume failed: attaching a new shell", "err", err)
	}

	for {
		if s.cfg.Directory != nil {
			if status, msg, err := s.checkCluster(ctx, rr.a.repl); err != nil {
				switch status {
				case http.StatusMisdirectedRequest:
					s.metrics.reattach.WithLabelValues(reattachMoved).Inc()
					rr.finish(StageOK, "repl moved to another cluster", CloseReplMoved, msg, 0, "")
					return nil
				case http.StatusNotFound:
					s.metrics.reattach.WithLabelValues(reattachMoved).Inc()
					rr.finish(StageOK, "repl deleted", CloseReplNotFound, msg, 0, "")
					return nil
				}
				log.Info("cannot check where the repl lives", "err", err)
				if !rr.pause(ctx) {
					return rr.reattachFailed(ctx, start)
				}
				continue
			}
		}
		leg, _, _, _, err := s.connectBackend(ctx, q, rr.a, connectOpts{frame: true, budget: time.Until(deadlineOf(ctx))})
		if err == nil {
			fb := leg.(*frameBackend)
			s.metrics.reattach.WithLabelValues(reattachRestarted).Inc()
			s.metrics.pause.Observe(time.Since(start).Seconds())
			log.Info("session restarted", "vm", fb.vm, "pause", time.Since(start))
			rr.out = 0
			// Input held until now was typed for the old shell and is dropped; what the client
			// sends once told goes to the new one.
			if !rr.install(fb, false) {
				return nil
			}
			n.send(NoticeRestarted, Notice{VM: fb.vm,
				Text: "the repl restarted on VM " + fb.vm + ": this is a new shell"}, false)
			return fb
		}
		log.Info("re-attach attempt failed", "err", err)
		if !rr.pause(ctx) {
			return rr.reattachFailed(ctx, start)
		}
	}
}

// pause waits a retry backoff before the next re-attach attempt; false when ctx ended.
func (rr *resilientRelay) pause(ctx context.Context) bool {
	t := time.NewTimer(withJitter(rr.s.cfg.MaxRetryBackoff))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (rr *resilientRelay) reattachFailed(ctx context.Context, start time.Time) *frameBackend {
	if rr.ctx.Err() != nil {
		return nil // the session ended (drain, the client left) while re-attaching
	}
	rr.s.metrics.reattach.WithLabelValues(reattachFailed).Inc()
	d := rr.s.cfg.ReattachTimeout.Round(time.Second)
	rr.finish(StageBackend, fmt.Sprintf("no VM took the repl within %s", time.Since(start).Round(time.Millisecond)),
		CloseTryAgainLater, fmt.Sprintf("no VM could take the repl within %s: connect again later", d), 0, "")
	return nil
}

// install makes fb conman's leg: held input goes first when the shell is the same (resumed),
// and is dropped when it is a new one. False when the session ended meanwhile.
func (rr *resilientRelay) install(fb *frameBackend, resumed bool) bool {
	ioCtx := context.WithoutCancel(rr.ctx)
	for {
		rr.mu.Lock()
		if rr.ended {
			rr.mu.Unlock()
			_ = fb.c.CloseNow()
			return false
		}
		q := rr.queue
		rr.queue, rr.queued = nil, 0
		if len(q) == 0 || !resumed {
			if !resumed && len(q) > 0 {
				rr.s.log.Info("dropped input typed for the old shell", append(rr.a.attrs(StageOK), "messages", len(q))...)
			}
			rr.back = fb
			close(rr.changed)
			rr.changed = make(chan struct{})
			rr.mu.Unlock()
			if rr.s.cfg.PingInterval > 0 {
				rr.pingBack(fb)
			}
			return true
		}
		rr.mu.Unlock()
		for _, m := range q {
			if err := fb.c.Write(ioCtx, m.typ, m.data); err != nil {
				// Lost again at once: let the read side find out and re-attach once more.
				rr.mu.Lock()
				rr.back = fb
				rr.mu.Unlock()
				_ = fb.c.CloseNow()
				return true
			}
		}
	}
}

// finish decides how the session ended (first caller wins) and closes both legs; a code of 0
// cuts that leg without a close handshake.
func (rr *resilientRelay) finish(stage, reason string, clientCode websocket.StatusCode, clientReason string,
	backCode websocket.StatusCode, backReason string) {
	rr.once.Do(func() {
		rr.mu.Lock()
		rr.stage, rr.reason = stage, reason
		rr.ended = true
		back := rr.back
		close(rr.changed)
		rr.mu.Unlock()
		var rawBack net.Conn
		if back != nil {
			rawBack = back.raw
		}
		cut := time.AfterFunc(goAwayWait, func() {
			for _, c := range []net.Conn{rr.rawClient, rawBack} {
				if c != nil {
					_ = c.Close()
				}
			}
		})
		defer cut.Stop()
		var wg sync.WaitGroup
		wg.Go(func() { closeLeg(rr.client, clientCode, clientReason) })
		if back != nil {
			closeLeg(back.c, backCode, backReason)
		}
		wg.Wait()
		rr.cancel()
	})
}

// goAway closes the session with 1001 (drain) without blocking the caller.
func (rr *resilientRelay) goAway() {
	rr.spawn(func() {
		rr.finish(StageOK, "drain: closed with 1001", websocket.StatusGoingAway, "proxy shutting down",
			websocket.StatusGoingAway, "proxy shutting down")
	})
}

func (rr *resilientRelay) pingClient() {
	var ping func()
	ping = func() {
		ctx, cancel := context.WithTimeout(rr.ctx, rr.s.cfg.PingTimeout)
		err := rr.client.Ping(ctx)
		cancel()
		if err == nil {
			rr.afterFunc(rr.s.cfg.PingInterval, ping)
			return
		}
		if rr.ctx.Err() == nil {
			rr.finish(StageOK, "client did not answer ping", 0, "", websocket.StatusGoingAway, "client went away")
		}
	}
	rr.afterFunc(rr.s.cfg.PingInterval, ping)
}

// pingBack pings conman's leg b while it is the session's; a leg that does not answer is cut,
// and the session re-attaches.
func (rr *resilientRelay) pingBack(b *frameBackend) {
	var ping func()
	ping = func() {
		rr.mu.Lock()
		current := rr.back == b
		rr.mu.Unlock()
		if !current {
			return
		}
		ctx, cancel := context.WithTimeout(rr.ctx, rr.s.cfg.PingTimeout)
		err := b.c.Ping(ctx)
		cancel()
		if err == nil {
			rr.afterFunc(rr.s.cfg.PingInterval, ping)
			return
		}
		if rr.ctx.Err() == nil {
			_ = b.c.CloseNow()
		}
	}
	rr.afterFunc(rr.s.cfg.PingInterval, ping)
}

func (rr *resilientRelay) startIdle() {
	var check func()
	check = func() {
		idle := time.Since(time.Unix(0, rr.activity.Load()))
		if idle < rr.s.cfg.IdleTimeout {
			rr.afterFunc(rr.s.cfg.IdleTimeout-idle, check)
			return
		}
		rr.finish(StageOK, "idle timeout", websocket.StatusGoingAway, "idle timeout",
			websocket.StatusGoingAway, "idle timeout")
	}
	rr.afterFunc(rr.s.cfg.IdleTimeout, check)
}

// noticer sends a re-attach's notices in order: the reconnecting notice (from a timer) and the
// final one never cross, and the final one goes only when it says something new.
type noticer struct {
	rr         *resilientRelay
	mu         sync.Mutex
	done, told bool
}

// send sends event unless a final notice went already. interim marks the reconnecting notice;
// a final resumed notice without loss is sent only if the client was told of the pause.
func (n *noticer) send(event string, msg Notice, interim bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done {
		return
	}
	if !interim {
		n.done = true
		if event == NoticeResumed && msg.Lost == 0 && !n.told {
			return
		}
	}
	n.told = true
	msg.Type, msg.Event = "notice", event
	b, _ := json.Marshal(msg)
	ctx, cancel := context.WithTimeout(n.rr.ctx, n.rr.s.cfg.PingTimeout)
	defer cancel()
	_ = n.rr.client.Write(ctx, websocket.MessageText, b) // a failed write ends the session elsewhere
}

func asgOf(repl string, b *frameBackend) placement.Assignment {
	return placement.Assignment{Repl: repl, VM: b.vm, Addr: b.addr}
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Minute)
}
