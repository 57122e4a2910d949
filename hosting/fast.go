package hosting

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/fence"
	"github.com/switchyard-dev/switchyard/internal/h1"
	"github.com/switchyard-dev/switchyard/internal/idlepark"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
	"github.com/switchyard-dev/switchyard/lore"
)

// fastConn is a client connection on the fast path.
type fastConn struct {
	s     *Server
	nc    net.Conn
	rd    *h1.Reader
	peer  string     // the client's IP
	peerA netip.Addr // the same, parsed
	req   h1.Request
	resp  h1.Response
	out   []byte

	mu      sync.Mutex
	waiting bool // blocked reading the next request: Shutdown may close it
	fresh   bool // no request read yet: Shutdown lets it send one

	parkable bool          // the Server parks it when it idles (see ServerConfig.ParkIdleAfter)
	parkFor  time.Duration // with errPark: how long it may stay parked

	loopable bool // an event loop may take it between requests (see ServerConfig.EventLoops)
	inLoop   bool // an event loop has it (guarded by mu): its goroutine is gone
	// loopSkip: requests its goroutine serves before a loop may take it again; loopMisses:
	// hand-backs in a row (a client or app whose requests the loops do not serve, such as
	// chunked answers or uploads, stays on its goroutine longer each time: a hand-back costs
	// more than the loop saves).
	loopSkip   int
	loopMisses int
	div        *Diversion // Divert's answer for the next request, asked already by an event loop
	ls         loopState  // the event loop's state of it
}

// errPark is readHead's answer when the connection has idled for ParkIdleAfter: serve parks it.
var errPark = errors.New("hosting: park the idle connection")

// shutdownGrace is how long Shutdown waits for the first request of a connection accepted
// before it (a connection the kernel handed over during a SO_REUSEPORT handover is ours to
// answer).
const shutdownGrace = time.Second

// wake makes an idle connection notice Shutdown. Called with s.mu held.
func (c *fastConn) wake() {
	c.mu.Lock()
	switch {
	case c.inLoop: // the loop closes it (Server.Shutdown tells it)
	case c.waiting && !c.fresh:
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	case c.waiting:
		_ = c.nc.SetReadDeadline(time.Now().Add(shutdownGrace))
	}
	c.mu.Unlock()
}

func (c *fastConn) closing() bool { return c.s.closingFlag.Load() }

// action is what the connection does after a request.
type action int

const (
	actKeep action = iota
	actClose
	actHandoff
)

func (c *fastConn) serve() {
	if ap, err := netip.ParseAddrPort(c.nc.RemoteAddr().String()); err == nil {
		c.peerA = ap.Addr().Unmap()
		c.peer = c.peerA.String()
	}
	c.rd = h1.NewReader(c.nc, 2048, c.maxHead())
	parkable := idlepark.Parkable(c.nc)
	c.parkable = c.s.park != nil && parkable
	c.loopable = c.s.loops != nil && parkable
	c.run(nil)
}

// maxHead is the largest request head (and bytes after it) the fast path buffers.
func (c *fastConn) maxHead() int { return min(64<<10, c.s.cfg.MaxHeaderBytes+4096) }

// run serves requests, starting with in (a request an event loop began) when it is not nil,
// until the connection closes or leaves for the park set, an event loop or net/http.
func (c *fastConn) run(in *inflight) {
	for {
		if in == nil && c.loopable && !c.fresh && len(c.rd.Buffered()) == 0 && !c.closing() && c.loopSkip == 0 {
			// Between requests: an event loop waits for the next one (see loop_linux.go).
			c.rd.Release()
			if c.s.loops.adopt(c) {
				return
			}
			c.loopable = false
		}
		var (
			n       int
			verdict h1.Verdict
			err     error
		)
		if in != nil {
			n, verdict = h1.ParseRequest(c.rd.Buffered(), &c.req)
		} else {
			n, verdict, err = c.readHead()
		}
		if err == errPark {
			// The connection leaves its goroutine, buffers and net.Conn behind; Server.unpark
			// serves it again when the client sends (or closes).
			c.rd.Release()
			if c.s.park.Park(c.nc, c.parkFor, c.fresh) == nil {
				c.s.forget(c)
				return
			}
			c.parkable = false
			continue
		}
		if err != nil {
			c.close()
			return
		}
		if verdict == h1.OK {
			if c.loopSkip > 0 && in == nil {
				c.loopSkip--
			}
			c.out = getOut()
			act := c.serveRequest(n, in)
			in = nil
			putOut(c.out) // an idle connection holds no output buffer
			c.out = nil
			switch act {
			case actKeep:
				if !c.closing() {
					continue
				}
				c.close()
				return
			case actClose:
				c.close()
				return
			}
		} else if in != nil {
			// Cannot happen (the loop parsed the same bytes); answer nothing rather than guess.
			in.abandon(c.s)
			c.close()
			return
		}
		// Handoff: net/http reads this request again from the start.
		_ = c.nc.SetReadDeadline(time.Time{})
		c.s.forget(c)
		c.s.handoff.push(c.rd.Detach())
		return
	}
}

// maxLoopSkip bounds fastConn.loopSkip.
const maxLoopSkip = 64

// missedLoop counts a hand-back from a loop: the goroutine keeps the connection for the next
// 1, 2, 4, … (at most maxLoopSkip) requests.
func (c *fastConn) missedLoop() {
	c.loopSkip = min(1<<min(c.loopMisses, 6), maxLoopSkip)
	c.loopMisses++
}

// close closes the connection and gives its read buffer to the next.
func (c *fastConn) close() {
	c.s.forget(c)
	_ = c.nc.Close()
	c.rd.Release()
}

// readHead reads until the buffer holds a request head the parser decides on.
func (c *fastConn) readHead() (int, h1.Verdict, error) {
	if len(c.rd.Buffered()) > 0 {
		if n, v := h1.ParseRequest(c.rd.Buffered(), &c.req); v != h1.NeedMore {
			return n, v, nil
		}
	}
	c.mu.Lock()
	c.waiting = true
	fresh := c.fresh
	c.mu.Unlock()
	closing := c.closing()
	if !fresh && closing {
		return 0, 0, http.ErrServerClosed
	}
	deadline := c.s.cfg.IdleTimeout
	if fresh || len(c.rd.Buffered()) > 0 {
		deadline = c.s.cfg.ReadHeaderTimeout
	}
	if closing {
		deadline = min(deadline, shutdownGrace)
	}
	// An idle connection waits ParkIdleAfter here, then is parked for the rest of its deadline.
	wait := deadline
	park := c.parkable && !closing && len(c.rd.Buffered()) == 0 && c.s.cfg.ParkIdleAfter < deadline
	if park {
		wait = c.s.cfg.ParkIdleAfter
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(wait))
	headerDeadline := deadline != c.s.cfg.IdleTimeout && !park
	for {
		err := c.rd.Fill()
		if errors.Is(err, h1.ErrFull) {
			return 0, h1.Handoff, nil // net/http answers 431, or takes the big head
		}
		if err != nil {
			if park && errors.Is(err, os.ErrDeadlineExceeded) && !c.closing() {
				c.parkFor = deadline - wait
				return 0, 0, errPark
			}
			return 0, 0, err
		}
		park = false
		c.mu.Lock()
		c.waiting, c.fresh = false, false
		c.mu.Unlock()
		n, v := h1.ParseRequest(c.rd.Buffered(), &c.req)
		if v != h1.NeedMore {
			return n, v, nil
		}
		if !headerDeadline {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.ReadHeaderTimeout))
			headerDeadline = true
		}
	}
}

// inflight is a request an event loop began and handed back: its head went to conman (or to
// another cluster, with a Diversion) on be, or the first attempt failed with err.
type inflight struct {
	st    fastState // the request's id, start, host, repl, VM
	rt    *route
	be    *h1.Backend // nil with err
	err   error
	retry bool       // with err: the request never reached conman
	div   *Diversion // a forward
}

// abandon gives up a request the loop handed back, as a client error.
func (in *inflight) abandon(s *Server) {
	if in.be != nil {
		_ = in.be.Close()
	}
	if in.div != nil {
		in.div.Done(h1.ErrClient, true)
	} else {
		s.h.observe(outcomeClient, in.st.start)
	}
	s.h.drain.Exit()
}

// serveRequest serves the parsed request whose head is the first n buffered bytes; in, when
// not nil, is the request's first attempt, which an event loop made.
func (c *fastConn) serveRequest(n int, in *inflight) action {
	h, req := c.s.h, &c.req
	host := string(req.Host)
	if in != nil && in.div != nil {
		return c.forward(n, host, in.div, in)
	}
	if c.s.cfg.Divert != nil && in == nil {
		var d Diversion
		if c.div != nil {
			d, c.div = *c.div, nil // the loop asked already
		} else {
			d = c.s.cfg.Divert(c.peerA, host, string(req.Method), string(req.Target))
		}
		switch {
		case d.Handoff:
			return actHandoff
		case d.URL != nil:
			if req.Forwarding || d.URL.Scheme != "http" {
				if d.Done != nil {
					d.Done(ErrHandedOff, false)
				}
				return actHandoff
			}
			return c.forward(n, host, &d, nil)
		}
	}
	trusted := false
	if req.Forwarding {
		if h.trustCustom {
			return actHandoff // Config.TrustForwarded needs the *http.Request
		}
		trusted = revproxy.AddrIn(c.peerA, h.cfg.TrustedProxies)
	}
	var (
		st     *fastState
		rt     *route
		cached bool
		rf     *routeFailure
	)
	if in != nil {
		st, rt, cached = &in.st, in.rt, true
		st.c = c
	} else {
		start := time.Now()
		rt, cached, rf = h.route(context.Background(), host, start)
		if rf == nil && rt.target.backend.Scheme != "http" {
			return actHandoff // conman over TLS: net/http's transport speaks it
		}
		st = &fastState{c: c, id: newRequestIDBytes(), start: start, host: host}
	}
	start := st.start
	hasBody := req.ContentLength > 0
	c.rd.Discard(n)
	if hasBody {
		_ = c.nc.SetReadDeadline(time.Time{}) // a body is read without a deadline, as by net/http
	}
	if in == nil && !h.drain.Enter() {
		return st.fail(outcomeDraining, http.StatusServiceUnavailable, "the hosting proxy is shutting down; retry", ErrClosed, true)
	}
	defer h.drain.Exit() // the loop entered for in
	if rf != nil {
		st.repl = rf.repl
		return st.fail(rf.outcome, rf.status, rf.msg, rf.cause, hasBody)
	}
	st.repl = rt.repl

	// A body that may have to be sent twice is read once, up front (bounded by MaxReplayBody).
	var body []byte
	replayable := !hasBody
	if hasBody && h.cfg.MaxReplayBody > 0 && req.ContentLength <= h.cfg.MaxReplayBody {
		body = make([]byte, req.ContentLength)
		if _, err := io.ReadFull(c.rd, body); err != nil {
			return st.fail(outcomeClient, http.StatusBadRequest, "the request body ended early", err, true)
		}
		replayable = true
	}
	// The head to conman (without the per-VM credential), built once.
	head := c.appendHead(getOut(), trusted, rt.repl.ID)
	defer putOut(head)

	var avoid []string
	for attempt := 1; ; attempt++ {
		t := rt.target
		if attempt > 1 {
			var rf *routeFailure
			if t, rf = h.place(context.Background(), rt.repl, avoid); rf != nil {
				return st.fail(rf.outcome, rf.status, rf.msg, rf.cause, !replayable)
			}
		}
		st.vm = t.vm
		if t.backend.Scheme != "http" {
			return st.fail(outcomeBackend, http.StatusBadGateway, "the repl could not be reached",
				fmt.Errorf("vm %s: the fast path speaks plain HTTP to conman, not %s", t.vm, t.backend.Scheme), !replayable)
		}
		st.observeOK = true
		var (
			res action
			err error
		)
		switch {
		case in == nil || attempt > 1:
			res, err = st.exchange(t, head, body, replayable)
		case in.be != nil:
			res, err = st.resume(t, in.be, head, body)
		default:
			res, err, st.retry = actClose, in.err, in.retry
		}
		in = nil // a retry (even on the same attempt number, after a stale route) starts anew
		if err == nil {
			if res == actClose || req.Close || c.closing() {
				return actClose
			}
			return actKeep
		}
		if st.doneCalled {
			return actClose // the last write failed after the request was counted
		}
		h.routes.forget(host)
		if st.started {
			if !errors.Is(err, h1.ErrClient) {
				h.log.Warn("hosting: response interrupted", "request_id", st.idString(), "host", host, "repl", rt.repl.ID, "vm", t.vm, "err", err)
			}
			h.observe(outcomeClient, start)
			return actClose
		}
		if cached && replayable && !st.retry {
			// The cached route may be stale (placement moved the repl, and conman refuses to
			// start it a second time): ask again, once, before answering.
			cached = false
			if fresh, rf := h.resolveRoute(context.Background(), host, time.Now()); rf == nil && fresh.target.vm != t.vm &&
				fresh.target.backend.Scheme == "http" {
				rt = fresh
				attempt--
				continue
			}
		}
		if st.retry && replayable && attempt < h.cfg.Attempts {
			h.metrics.retries.Inc()
			h.log.Info("hosting: retrying on another VM", "request_id", st.idString(), "repl", rt.repl.ID, "vm", t.vm, "err", err)
			var ce *errConman
			if errors.As(err, &ce) {
				base := t.backend.Scheme + "://" + t.backend.Host
				if err := fence.Repl(context.Background(), &http.Client{Transport: h.cfg.Transport}, base, rt.repl.ID, t.cred); err != nil {
					h.log.Warn("hosting: could not fence the repl on the VM it leaves", "request_id", st.idString(), "repl", rt.repl.ID, "vm", t.vm, "err", err)
				}
			}
			avoid = append(avoid, t.vm)
			continue
		}
		return st.fail(outcomeBackend, http.StatusBadGateway, "the repl could not be started or did not answer",
			fmt.Errorf("repl %s on vm %s: %w", rt.repl.ID, t.vm, err), !replayable)
	}
}

// appendHead appends the request head for conman, up to (not including) the credential field
// and the empty line.
func (c *fastConn) appendHead(dst []byte, trusted bool, repl string) []byte {
	return appendRequestHead(dst, &c.req, c.peer, trusted, repl)
}

// appendRequestHead appends req's head for conman (or another cluster) as the fast path sends
// it, up to (not including) the credential field and the empty line; peer is the client's IP.
func appendRequestHead(dst []byte, req *h1.Request, peer string, trusted bool, repl string) []byte {
	dst = append(dst, req.Method...)
	dst = append(dst, ' ')
	dst = append(dst, req.Target...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, req.Host...)
	dst = append(dst, "\r\n"...)
	for _, f := range req.Fields {
		if f.Kind != h1.KindKeep {
			continue
		}
		dst = append(dst, f.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, f.Value...)
		dst = append(dst, "\r\n"...)
	}
	// Forwarding fields, as revproxy.SetForwarded writes them.
	proto, xfh := "http", req.Host
	var xff, fwd [][]byte
	if trusted {
		sawHost, sawProto := false, false
		for _, f := range req.Fields {
			if f.Kind != h1.KindForwarding {
				continue
			}
			switch {
			case h1.EqualFold(f.Name, "x-forwarded-for"):
				xff = append(xff, f.Value)
			case h1.EqualFold(f.Name, "forwarded"):
				fwd = append(fwd, f.Value)
			case h1.EqualFold(f.Name, "x-forwarded-host"):
				// Like Header.Get: the first field counts, an empty one changes nothing.
				if !sawHost && len(f.Value) > 0 {
					xfh = f.Value
				}
				sawHost = true
			case h1.EqualFold(f.Name, "x-forwarded-proto"):
				if !sawProto && (string(f.Value) == "http" || string(f.Value) == "https") {
					proto = string(f.Value)
				}
				sawProto = true
			}
		}
	}
	if len(xff) > 0 || peer != "" {
		dst = append(dst, "X-Forwarded-For: "...)
		for _, v := range xff {
			dst = append(dst, v...)
			dst = append(dst, ", "...)
		}
		if peer != "" {
			dst = append(dst, peer...)
		} else {
			dst = dst[:len(dst)-2]
		}
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "X-Forwarded-Host: "...)
	dst = append(dst, xfh...)
	dst = append(dst, "\r\nX-Forwarded-Proto: "...)
	dst = append(dst, proto...)
	dst = append(dst, "\r\nForwarded: "...)
	for _, v := range fwd {
		dst = append(dst, v...)
		dst = append(dst, ", "...)
	}
	dst = revproxy.AppendForwardedElement(dst, peer, req.Host, "http")
	dst = append(dst, "\r\n"...)
	if req.ContentLength > 0 || req.ContentLength == 0 && methodWantsBody(req.Method) {
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, req.ContentLength, 10)
		dst = append(dst, "\r\n"...)
	}
	if repl != "" {
		dst = append(dst, conman.HeaderRepl...)
		dst = append(dst, ": "...)
		dst = append(dst, repl...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// forward sends the request whose head is the first n buffered bytes to another cluster, as
// d says (see Diversion).
func (c *fastConn) forward(n int, host string, d *Diversion, in *inflight) action {
	req := &c.req
	var st *fastState
	if in != nil {
		st = &in.st
		st.c = c
	} else {
		st = &fastState{c: c, id: newRequestIDBytes(), start: time.Now(), host: host, forward: true}
	}
	c.rd.Discard(n)
	hasBody := req.ContentLength > 0
	if hasBody {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
	var body []byte
	replayable := !hasBody
	if hasBody && c.s.h.cfg.MaxReplayBody > 0 && req.ContentLength <= c.s.h.cfg.MaxReplayBody {
		body = make([]byte, req.ContentLength)
		if _, err := io.ReadFull(c.rd, body); err != nil {
			d.Done(err, true) // the client broke its request: nothing to answer
			return actClose
		}
		replayable = true
	}
	head := appendForwardHead(getOut(), req, c.peer, d)
	defer func() { putOut(head) }()
	st.onDone = func() { d.Done(nil, true) }
	t := target{addr: forwardAddr(d), backend: d.URL}
	var (
		res action
		err error
	)
	switch {
	case in == nil:
		res, err = st.exchange(t, head, body, replayable)
	case in.be != nil:
		res, err = st.resume(t, in.be, head, body)
	default:
		res, err = actClose, in.err
	}
	if err != nil && st.doneCalled {
		return actClose // the last write failed after the forward was counted
	}
	status, msg := 0, ""
	if err != nil {
		status, msg = d.Done(err, st.started)
	}
	if err == nil {
		if res == actClose || req.Close || c.closing() {
			return actClose
		}
		return actKeep
	}
	if st.started {
		return actClose
	}
	return st.answer(status, msg, !replayable)
}

// appendForwardHead appends the head of a request forwarded as d says, up to the empty line.
func appendForwardHead(dst []byte, req *h1.Request, peer string, d *Diversion) []byte {
	dst = appendRequestHead(dst, req, peer, false, "")
	for i := 0; i+1 < len(d.Fields); i += 2 {
		dst = append(dst, d.Fields[i]...)
		dst = append(dst, ": "...)
		dst = append(dst, d.Fields[i+1]...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// forwardAddr is the host:port a forward as d says goes to.
func forwardAddr(d *Diversion) string {
	if d.URL.Port() == "" {
		return net.JoinHostPort(d.URL.Hostname(), "80")
	}
	return d.URL.Host
}

func methodWantsBody(m []byte) bool {
	s := string(m)
	return s == "POST" || s == "PUT" || s == "PATCH"
}

// fastState is one fast-path request.
type fastState struct {
	c       *fastConn
	id      [16]byte // hex
	start   time.Time
	host    string
	repl    lore.Repl
	vm      string
	started bool   // something of the answer reached the client
	retry   bool   // the failure happened before conman took the request
	forward bool   // a forward to another cluster: its answer passes as it is
	onDone  func() // called when the answer is complete, before its last write
	// observeOK: count the answer as outcome ok instead, when it is complete
	observeOK bool
	// doneCalled: onDone ran, or the answer was counted (a later error is the last write's: the
	// client left)
	doneCalled bool
}

func (st *fastState) idString() string { return string(st.id[:]) }

// exchange sends the request to conman on t and relays the answer. Errors before anything was
// written to the client leave st.started false; st.retry says whether another VM may serve it.
func (st *fastState) exchange(t target, head, body []byte, replayable bool) (action, error) {
	c := st.c
	st.retry = false
	var (
		be  *h1.Backend
		err error
	)
	if replayable {
		be, err = c.s.pool.Get(context.Background(), t.addr)
	} else {
		be, err = c.s.pool.Dial(context.Background(), t.addr) // a streamed body is sent once: no stale connection
	}
	if err != nil {
		st.retry = true // never reached conman
		return actClose, err
	}
	msg := appendMessage(c.out[:0], t, head, body)
	c.out = msg
	return st.roundTrip(t, be, msg, body, replayable, false)
}

// resume goes on with the request an event loop sent on be (head and body as exchange takes
// them; the loop sends only bodies within MaxReplayBody, which the caller has read again).
func (st *fastState) resume(t target, be *h1.Backend, head, body []byte) (action, error) {
	st.retry = false
	msg := appendMessage(st.c.out[:0], t, head, body)
	st.c.out = msg
	return st.roundTrip(t, be, msg, body, true, true)
}

// appendMessage appends what goes to t: head, the credential, the empty line, and body when it
// is small (a larger one is written on its own).
func appendMessage(msg []byte, t target, head, body []byte) []byte {
	msg = append(msg, head...)
	msg = appendCredential(msg, t)
	msg = append(msg, "\r\n"...)
	if len(body) <= 16<<10 {
		msg = append(msg, body...)
	}
	return msg
}

// appendCredential appends t's credential field, if it has one.
func appendCredential(msg []byte, t target) []byte {
	if t.cred != "" {
		msg = append(msg, conman.HeaderCredential...)
		msg = append(msg, ": "...)
		msg = append(msg, t.cred...)
		msg = append(msg, "\r\n"...)
	}
	return msg
}

// roundTrip writes msg (and body) to be, unless sent says it went already, and relays the
// answer; a pooled connection that fails before any answer is tried once more on a new one.
func (st *fastState) roundTrip(t target, be *h1.Backend, msg, body []byte, replayable, sent bool) (action, error) {
	c := st.c
	var err error
	for try := 0; ; try++ {
		if !sent {
			if _, err = be.Conn.Write(msg); err == nil && len(body) > 16<<10 {
				_, err = be.Conn.Write(body)
			}
		}
		sent = false
		var upload chan error
		if err == nil && !replayable {
			upload = make(chan error, 1)
			go func(be *h1.Backend) { upload <- c.uploadBody(be) }(be)
		}
		var hn int
		got := false // any byte of an answer arrived
		if err == nil {
			hn, got, err = st.readResponseHead(be, upload)
		}
		if err == nil {
			return st.relay(be, hn, upload)
		}
		_ = be.Close()
		if upload != nil {
			_ = c.nc.SetReadDeadline(time.Unix(1, 0)) // stop the upload's read of the client
			<-upload
			return actClose, err
		}
		if try > 0 || !be.Reused || got {
			return actClose, err
		}
		// A pooled connection the backend closed while it was idle: once more on a new one.
		if be, err = c.s.pool.Dial(context.Background(), t.addr); err != nil {
			st.retry = true
			return actClose, err
		}
	}
}

// uploadBody streams a request body too large to replay from the client to conman.
func (c *fastConn) uploadBody(be *h1.Backend) error {
	var out []byte
	return h1.CopyLength(be.Conn, &out, c.rd, c.req.ContentLength)
}

// readResponseHead reads conman's answer head into c.resp, passing 1xx answers on to the
// client, and checks for conman's own failures.
func (st *fastState) readResponseHead(be *h1.Backend, upload chan error) (int, bool, error) {
	c := st.c
	got := false
	for {
		n, err := h1.ParseResponse(be.Buffered(), &c.resp)
		if err != nil {
			return 0, true, err
		}
		if n == 0 {
			if err := be.Fill(); err != nil {
				if errors.Is(err, h1.ErrFull) {
					return 0, true, h1.ErrMalformed
				}
				return 0, got, err
			}
			got = true
			continue
		}
		resp := &c.resp
		switch {
		case resp.Status == http.StatusSwitchingProtocols:
			return 0, true, errors.New("backend switched protocols without an Upgrade request")
		case resp.Status < 200:
			// 1xx: pass it on (not the start of the answer), then read the real one.
			out := h1.AppendStatusLine(c.out[:0], resp.Status)
			out = appendFields(out, resp.Fields)
			out = append(out, "\r\n"...)
			c.out = out
			if _, err := c.nc.Write(out); err != nil {
				st.started = true
				return 0, true, errors.Join(h1.ErrClient, err)
			}
			be.Discard(n)
			continue
		}
		if !st.forward && (resp.Status == http.StatusUnauthorized || resp.Status == http.StatusBadGateway || resp.Status == http.StatusServiceUnavailable) {
			if reason := fieldValue(resp.Fields, conman.HeaderError); reason != nil {
				if resp.Status == http.StatusServiceUnavailable && upload == nil {
					st.retry = true // draining: the request never reached the repl
				}
				return 0, true, &errConman{status: resp.Status, reason: string(reason)}
			}
		}
		return n, true, nil
	}
}

// relay writes conman's answer (head of n bytes in be, parsed in c.resp) to the client.
func (st *fastState) relay(be *h1.Backend, n int, upload chan error) (action, error) {
	c := st.c
	resp := &c.resp
	out, bodyAllowed, untilEOF := st.appendAnswerHead(c.out[:0])
	closeAfter := c.req.Close
	be.Discard(n)
	st.started = true

	var err error
	switch {
	case !bodyAllowed:
	case resp.ContentLength >= 0:
		err = h1.CopyLength(c.nc, &out, be.Reader, resp.ContentLength)
	case untilEOF:
		err = h1.CopyUntilEOF(c.nc, &out, be.Reader)
	default:
		keep := func(name []byte) bool { return st.forward || !h1.IsSwitchyard(name) }
		err = h1.CopyChunked(c.nc, &out, be.Reader, keep)
	}
	if err == nil {
		// Counted before the last write, so whoever sees the answer end sees it counted.
		if st.observeOK {
			st.doneCalled = true
			st.c.s.h.observe(outcomeOK, st.start)
		} else if st.onDone != nil {
			st.doneCalled = true
			st.onDone()
		}
		err = h1.WriteOut(c.nc, &out)
	}
	c.out = out[:0]
	if upload != nil {
		// The answer is complete; the upload must be too, or the connections are out of step.
		select {
		case uerr := <-upload:
			if err == nil && uerr != nil {
				err = uerr
			}
		default:
			// Usually the upload is just finishing; an app may also have answered before it
			// read the whole body. Wait a little, then give up on the connections.
			t := time.NewTimer(uploadGrace)
			select {
			case uerr := <-upload:
				t.Stop()
				if err == nil && uerr != nil {
					err = uerr
				}
			case <-t.C:
				_ = be.Close()
				_ = c.nc.SetReadDeadline(time.Unix(1, 0)) // stop the upload's read of the client
				<-upload
				if err == nil {
					return actClose, nil // answered before the upload ended: the client's body is unread
				}
			}
		}
	}
	if err != nil {
		_ = be.Close()
		return actClose, err
	}
	if resp.Close || untilEOF || upload != nil {
		_ = be.Close()
	} else {
		c.s.pool.Put(be)
	}
	if closeAfter {
		return actClose, nil
	}
	return actKeep, nil
}

// appendAnswerHead appends the head of the answer to the client for c.resp, and reports
// whether a body follows and whether it is read until the backend closes (then sent chunked).
func (st *fastState) appendAnswerHead(out []byte) ([]byte, bool, bool) {
	c := st.c
	req, resp := &c.req, &c.resp
	bodyAllowed := h1.BodyAllowed(req.Method, resp.Status)
	out = h1.AppendStatusLine(out, resp.Status)
	if st.forward {
		out = appendFieldsAll(out, resp.Fields)
	} else {
		out = appendFields(out, resp.Fields)
		out = append(out, HeaderRequestID...)
		out = append(out, ": "...)
		out = append(out, st.id[:]...)
		out = append(out, "\r\n"...)
	}
	if fieldValue(resp.Fields, "date") == nil {
		out = append(out, "Date: "...)
		out = append(out, httpDate()...)
		out = append(out, "\r\n"...)
	}
	untilEOF := false
	switch {
	case !bodyAllowed:
		if resp.ContentLength >= 0 && resp.Status != http.StatusNoContent && resp.Status >= 200 {
			out = append(out, "Content-Length: "...)
			out = strconv.AppendInt(out, resp.ContentLength, 10)
			out = append(out, "\r\n"...)
		}
	case resp.ContentLength >= 0:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, resp.ContentLength, 10)
		out = append(out, "\r\n"...)
	default:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
		untilEOF = !resp.Chunked
	}
	if req.Close {
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	return out, bodyAllowed, untilEOF
}

// appendFields appends the fields a client may see: not hop-by-hop, not Switchyard-*.
func appendFields(dst []byte, fields []h1.Field) []byte {
	for _, f := range fields {
		if f.Kind == h1.KindDrop || h1.IsSwitchyard(f.Name) {
			continue
		}
		dst = append(dst, f.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, f.Value...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// uploadGrace is how long a streamed upload may go on after the answer is complete before
// the connections are closed.
const uploadGrace = time.Second

// appendFieldsAll appends every field but the hop-by-hop ones.
func appendFieldsAll(dst []byte, fields []h1.Field) []byte {
	for _, f := range fields {
		if f.Kind == h1.KindDrop {
			continue
		}
		dst = append(dst, f.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, f.Value...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// fieldValue returns the value of the first field named name (any case), or nil.
func fieldValue(fields []h1.Field, name string) []byte {
	lname := strings.ToLower(name)
	for _, f := range fields {
		if h1.EqualFold(f.Name, lname) {
			if f.Value == nil {
				return []byte{}
			}
			return f.Value
		}
	}
	return nil
}

// fail answers the request with an error page (as Proxy.fail does) and records the outcome.
// closeConn also closes the connection (an unread body).
func (st *fastState) fail(outcome string, status int, msg string, cause error, closeConn bool) action {
	h := st.c.s.h
	h.observe(outcome, st.start)
	if cause != nil {
		level := slog.LevelWarn
		if status < 500 {
			level = slog.LevelInfo
		}
		h.log.Log(context.Background(), level, "hosting: request failed", "request_id", st.idString(), "status", status,
			"host", st.host, "repl", st.repl.ID, "vm", st.vm, "outcome", outcome, "err", cause)
	}
	return st.answer(status, msg, closeConn || outcome == outcomeDraining)
}

// answer writes an error page (revproxy.WriteError's) as the answer to the request.
func (st *fastState) answer(status int, msg string, closeConn bool) action {
	c := st.c
	r := &http.Request{Header: http.Header{}}
	if c.req.Accept != nil {
		r.Header.Set("Accept", string(c.req.Accept))
	}
	pw := &pageWriter{h: http.Header{}}
	revproxy.WriteError(pw, r, status, msg, st.idString())
	closeConn = closeConn || c.req.Close || c.closing()
	out := h1.AppendStatusLine(c.out[:0], pw.status)
	for k, vs := range pw.h {
		for _, v := range vs {
			out = append(out, k...)
			out = append(out, ": "...)
			out = append(out, v...)
			out = append(out, "\r\n"...)
		}
	}
	out = append(out, "Date: "...)
	out = append(out, httpDate()...)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(pw.body.Len()), 10)
	if closeConn {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)
	if string(c.req.Method) != "HEAD" {
		out = append(out, pw.body.Bytes()...)
	}
	c.out = out[:0]
	if _, err := c.nc.Write(out); err != nil || closeConn {
		return actClose
	}
	return actKeep
}

// pageWriter collects an error page written by revproxy.WriteError.
type pageWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *pageWriter) Header() http.Header { return w.h }
func (w *pageWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *pageWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(p)
}

// httpDate returns the current time as an HTTP date, formatted at most once a second.
func httpDate() string {
	now := time.Now().Unix()
	dateMu.Lock()
	defer dateMu.Unlock()
	if now != dateSec {
		dateSec = now
		dateStr = time.Unix(now, 0).UTC().Format(http.TimeFormat)
	}
	return dateStr
}

var (
	dateMu  sync.Mutex
	dateSec int64
	dateStr string
)

// outPool recycles the output buffers of requests, so an idle connection holds none.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getOut() []byte { return (*outPool.Get().(*[]byte))[:0] }

func putOut(b []byte) {
	if cap(b) == 0 || cap(b) > 64<<10 {
		return
	}
	outPool.Put(&b)
}

// newRequestIDBytes returns a request id (16 hex digits) as newRequestID does.
func newRequestIDBytes() [16]byte {
	var b [8]byte
	_, _ = rand.Read(b[:])
	var out [16]byte
	hex.Encode(out[:], b[:])
	return out
}
