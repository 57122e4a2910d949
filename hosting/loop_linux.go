package hosting

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/h1"
	"github.com/switchyard-dev/switchyard/internal/idlepark"
	"github.com/switchyard-dev/switchyard/internal/rawio"
	"github.com/switchyard-dev/switchyard/internal/revproxy"
)

// The event loops serve a fast-path connection between its requests, and its common requests,
// without a goroutine: nginx's way, for the same reason. Go's netpoller forgets a socket's
// readiness at every Read, so a goroutine must try each read before it may wait, and on a
// keep-alive connection most of those tries fail (EAGAIN: the next request, or conman's answer,
// is not there yet): 1.9 failing reads a request, a third of its system calls. A loop owns the
// sockets (duplicated descriptors, out of the netpoller) in an epoll set of its own, reads a
// socket only when the set says it has something, and takes a read shorter than its buffer to
// mean the socket is empty, as nginx does.
//
// A loop is one goroutine that waits for its set through the runtime's netpoller (a
// non-blocking epoll descriptor is pollable), so it holds no thread or P while it waits, and is
// woken once for everything that became ready meanwhile. It serves a request itself when it is
// the common case: no body (or one of at most 16 KiB that came with the head), a Host whose
// route is cached (the loop never waits for the directory or placement), conman (or, for a
// forward, another cluster) at an IP address, and an answer of at most loopMaxBody bytes with a
// Content-Length, or chunked and whole when it arrives. Anything else it hands back to a
// goroutine, at the point it reached:
//   - fresh: nothing was sent yet; the goroutine serves the request from its start (with the
//     Diversion the loop was given, so Divert is asked once);
//   - inflight: the request went to conman (or its connection failed); the goroutine reads and
//     relays the answer, or retries, fences and answers errors, as for its own requests.
//
// Timeouts hold in the loop as on the goroutine path: IdleTimeout between requests,
// ReadHeaderTimeout for a head that has begun, 30 s to connect to conman.

const loopsSupported = true

const (
	loopBuf            = 4096     // a loop's read buffers
	loopMaxBody        = 64 << 10 // larger answers are relayed by a goroutine
	loopMaxRespHead    = 64 << 10 // larger answer heads too
	loopMaxRequestBody = 16 << 10 // larger request bodies are sent by a goroutine
	loopConnectTimeout = 30 * time.Second
	loopBackendIdle    = 90 * time.Second // as h1.Pool's
	loopMaxIdle        = 256              // idle conman connections kept per address
)

// Client connection states in a loop.
const (
	lsIdle    = iota // waiting for a request
	lsHead           // part of a head has come
	lsBackend        // the request is going to conman, or its answer's head is awaited
	lsRelay          // the answer is being written to the client
)

// loopState is what a loop keeps of a client connection (fastConn.ls).
type loopState struct {
	fd        int
	w         idlepark.Rewrapper // the wrapper the connection came in, or nil
	slot, gen int32
	state     int
	buf       []byte // client bytes; nil when idle and empty
	r, wr     int
	rdReady   bool // the socket may have bytes (its last read filled the buffer, or an edge came)
	eof       bool // the client's end was reported (EPOLLRDHUP): a short read does not mean empty
	headLen   int  // the head being served is buf[r:r+headLen]
	be        *loopBackend
	msg       []byte // the request head for the backend; msg[off:] is unwritten
	out       []byte // the answer; out[off:] is unwritten
	off       int
	remain    int64 // answer body bytes still to read from the backend
	redialed  bool  // a pooled connection failed; this one is new
	active    bool  // a request is in flight (begun, not finished or handed back)
	entered   bool  // drain.Enter was called for it (not for a forward)
	counted   bool  // the answer was counted (or the forward reported done)
	st        fastState
	rt        *route
	div       *Diversion // the request is forwarded as it says
	divAsked  Diversion  // Divert's answer (div points here for a forward)
	asked     bool       // divAsked holds it, for a hand-back
	tl        *timerList
	tnext     *fastConn
	tprev     *fastConn
	tat       time.Duration // deadline, since the loop's epoch
	idleSince time.Duration // since the loop's epoch, while idle
}

// eofEvents report the peer's end: after them a read shorter than its buffer does not mean
// the socket is empty (the end is still to be read), as nginx's pending_eof.
const eofEvents = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR

// loopBackend is a connection to conman (or another cluster) a loop owns.
type loopBackend struct {
	fd         int
	addr       string
	slot, gen  int32
	buf        []byte
	r, w       int
	owner      *fastConn // nil when idle in the loop's pool
	connecting bool
	reused     bool
	rdReady    bool
	eof        bool // the peer's end was reported (EPOLLRDHUP): a short read does not mean empty
	idleAt     time.Duration
}

// timerList holds connections by deadline; all have the same timeout, so the list is in
// deadline order.
type timerList struct {
	head, tail *fastConn
	d          time.Duration
}

// loops is a Server's set of event loops.
type loops struct {
	s    *Server
	l    []*evloop
	next atomic.Uint32
}

func newLoops(s *Server, n int) *loops {
	ls := &loops{s: s, l: make([]*evloop, n)}
	for i := range ls.l {
		ls.l[i] = &evloop{s: s, epfd: -1, evfd: -1}
	}
	return ls
}

// adopt gives c, between requests with nothing buffered, to a loop. It reports false when no
// loop takes it (the Server is closing, or out of descriptors): c stays with its goroutine.
func (ls *loops) adopt(c *fastConn) bool {
	if ls == nil {
		return false
	}
	l := ls.l[int(ls.next.Add(1))%len(ls.l)]
	return l.adopt(c)
}

// count returns the connections the loops hold.
func (ls *loops) count() int {
	if ls == nil {
		return 0
	}
	n := 0
	for _, l := range ls.l {
		n += int(l.n.Load())
	}
	return n
}

// shutdown makes the loops close their idle connections, and the others once they are
// answered; close closes them all now.
func (ls *loops) shutdown() { ls.stop(loopDraining) }
func (ls *loops) close()    { ls.stop(loopClosed) }

func (ls *loops) stop(state int) {
	if ls == nil {
		return
	}
	for _, l := range ls.l {
		l.stop(state)
	}
}

const (
	loopRunning = iota
	loopDraining
	loopClosed
)

// evloop is one event loop.
type evloop struct {
	s    *Server
	epfd int
	ep   *os.File
	evfd int // an eventfd that wakes the loop for adds and stops

	mu      sync.Mutex
	started bool
	state   int
	adds    []*fastConn
	n       atomic.Int32 // client connections held

	// The loop goroutine's own.
	cs      []*fastConn // by slot
	cfree   []int32
	bs      []*loopBackend // by slot
	bfree   []int32
	gen     int32
	pool    map[string][]*loopBackend
	idle    timerList
	head    timerList
	connect timerList
	epoch   time.Time
	armed   bool
	tickAt  time.Time // when the armed deadline fires
	tick    time.Duration
	events  []unix.EpollEvent
	spare   []*fastConn
	closing int      // the state the loop last saw
	bufs    [][]byte // spare read buffers
	outs    [][]byte // spare output buffers
}

func (l *evloop) adopt(c *fastConn) bool {
	l.mu.Lock()
	if l.state != loopRunning {
		l.mu.Unlock()
		return false
	}
	if !l.started {
		if err := l.start(); err != nil {
			l.mu.Unlock()
			l.s.h.log.Warn("hosting: cannot start an event loop; connections keep their goroutines", "err", err)
			return false
		}
	}
	l.mu.Unlock()
	fd, w, err := idlepark.Detach(c.nc)
	if err != nil {
		return false
	}
	c.mu.Lock()
	c.inLoop = true
	c.mu.Unlock()
	c.ls = loopState{fd: fd, w: w, slot: -1}
	c.rd = nil
	l.mu.Lock()
	if l.state != loopRunning {
		l.mu.Unlock()
		l.s.resumeFromLoop(c, nil, nil)
		return true
	}
	l.adds = append(l.adds, c)
	if len(l.adds) == 1 {
		l.wake()
	}
	l.mu.Unlock()
	return true
}

// wake makes the loop look at its adds and state. Called with l.mu held: the loop closes the
// eventfd (and forgets it) under l.mu, so a stale descriptor is never written.
func (l *evloop) wake() {
	if l.evfd >= 0 {
		one := uint64(1)
		_, _ = unix.Write(l.evfd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
}

func (l *evloop) stop(state int) {
	l.mu.Lock()
	if state > l.state {
		l.state = state
	}
	l.wake()
	l.mu.Unlock()
}

// start creates the epoll set and the loop goroutine. Called with l.mu held.
func (l *evloop) start() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: -1}); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return os.NewSyscallError("fcntl", err)
	}
	// A non-blocking epoll descriptor is pollable: os.NewFile puts it in the runtime's
	// netpoller, so the loop waits for it without holding a thread.
	ep := os.NewFile(uintptr(epfd), "hosting-loop")
	rc, err := ep.SyscallConn()
	if err != nil {
		_ = ep.Close()
		_ = unix.Close(evfd)
		return err
	}
	l.epfd, l.ep, l.evfd, l.started = epfd, ep, evfd, true
	l.pool = make(map[string][]*loopBackend)
	l.epoch = time.Now()
	cfg := &l.s.cfg
	// An idle connection stays in the loop for ParkColdAfter (when the Server parks), then goes
	// to the park set, where it costs a descriptor and a few words.
	l.idle.d = cfg.IdleTimeout
	if l.s.park != nil && cfg.ParkColdAfter > 0 {
		l.idle.d = min(cfg.IdleTimeout, cfg.ParkColdAfter)
	}
	l.head.d, l.connect.d = cfg.ReadHeaderTimeout, loopConnectTimeout
	l.tick = min(max(min(l.idle.d, cfg.ReadHeaderTimeout)/8, time.Millisecond), 250*time.Millisecond)
	l.events = make([]unix.EpollEvent, 128)
	l.s.wg.Add(1)
	go l.run(rc)
	return nil
}

// run is the loop goroutine: it returns once the loop is closed, or drained and empty.
func (l *evloop) run(rc syscall.RawConn) {
	defer l.s.wg.Done()
	done := false
	for !done {
		// RawConn.Read resets the readiness it waits for before it calls f, so f looks first
		// (a zero-timeout epoll_wait); it waits only when f returns false, and every event after
		// that first look wakes it.
		err := rc.Read(func(uintptr) bool {
			for full := 1; ; full++ {
				n, errno := rawio.EpollWait(l.epfd, l.events, 0)
				if errno == unix.EINTR {
					continue
				}
				if errno != 0 || n <= 0 {
					return false
				}
				for i := range l.events[:n] {
					l.dispatch(&l.events[i])
				}
				if l.finished() {
					done = true
					return true
				}
				if n < len(l.events) {
					return false
				}
				// More events wait (the set stays readable without a new edge, so the loop
				// cannot wait for one): every few full batches let the rest of the program run,
				// and keep the deadlines, however busy the loop is.
				if full%8 == 0 {
					runtime.Gosched()
					if l.armed && time.Now().After(l.tickAt) {
						l.expire()
					}
				}
			}
		})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			l.expire()
			if l.finished() {
				done = true
			}
			continue
		}
		if err != nil {
			done = true // cannot happen: only run closes the set
		}
	}
	l.closeAll()
}

// finished reports whether the loop should end: closed, or draining with nothing left.
func (l *evloop) finished() bool {
	return l.closing == loopClosed || l.closing == loopDraining && l.n.Load() == 0
}

// closeAll closes every connection of the loop and the loop's set.
func (l *evloop) closeAll() {
	l.mu.Lock()
	l.state = loopClosed
	adds := l.adds
	l.adds = nil
	l.mu.Unlock()
	for _, c := range adds {
		l.n.Add(1)
		l.closeConn(c)
	}
	for _, c := range l.cs {
		if c != nil {
			l.closeConn(c)
		}
	}
	for _, bs := range l.pool {
		for _, b := range bs {
			l.closeBackend(b)
		}
	}
	l.mu.Lock()
	_ = unix.Close(l.evfd)
	l.evfd = -1
	l.mu.Unlock()
	_ = l.ep.Close()
}

func (l *evloop) dispatch(ev *unix.EpollEvent) {
	if ev.Fd < 0 {
		var b [8]byte
		_, _ = rawio.Read(l.evfd, b[:])
		l.intake()
		return
	}
	gen := ev.Pad >> 1
	if ev.Pad&1 == 0 {
		if c := l.cs[ev.Fd]; c != nil && c.ls.gen == gen {
			l.onClient(c, ev.Events)
		}
		return
	}
	if b := l.bs[ev.Fd]; b != nil && b.gen == gen {
		l.onBackend(b, ev.Events)
	}
}

// intake takes in the connections adopt queued, and acts on a stop.
func (l *evloop) intake() {
	l.mu.Lock()
	adds := l.adds
	l.adds = l.spare[:0]
	state := l.state
	l.mu.Unlock()
	for _, c := range adds {
		l.n.Add(1)
		if state != loopRunning {
			l.closeConn(c)
			continue
		}
		l.gen = (l.gen + 1) & 0x3fffffff
		c.ls.gen = l.gen
		c.ls.slot = l.slotFor(c)
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: c.ls.slot, Pad: c.ls.gen << 1}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.ls.fd, &ev); err != nil {
			l.handBack(c) // its goroutine serves it
			continue
		}
		l.goIdle(c)
	}
	clear(adds)
	l.spare = adds[:0]
	if state != l.closing {
		l.closing = state
		if state == loopDraining {
			// Idle connections close now; the others when they are answered.
			for _, tl := range []*timerList{&l.idle, &l.head} {
				for tl.head != nil {
					l.closeConn(tl.head)
				}
			}
		}
	}
}

func (l *evloop) slotFor(c *fastConn) int32 {
	if k := len(l.cfree); k > 0 {
		s := l.cfree[k-1]
		l.cfree = l.cfree[:k-1]
		l.cs[s] = c
		return s
	}
	l.cs = append(l.cs, c)
	return int32(len(l.cs) - 1)
}

// release takes c out of the loop: its slot, timer and buffers (not its descriptor).
func (l *evloop) release(c *fastConn) {
	l.stopTimer(c)
	if c.ls.slot >= 0 {
		l.cs[c.ls.slot] = nil
		l.cfree = append(l.cfree, c.ls.slot)
		c.ls.slot = -1
	}
	l.putBuf(c.ls.buf)
	c.ls.buf = nil
	if c.ls.out != nil {
		l.putOut(c.ls.out)
		c.ls.out = nil
	}
	if c.ls.msg != nil {
		l.putOut(c.ls.msg)
		c.ls.msg = nil
	}
	l.n.Add(-1)
}

// closeConn closes a client connection of the loop, and its exchange if one is under way.
func (l *evloop) closeConn(c *fastConn) {
	if b := c.ls.be; b != nil {
		c.ls.be = nil
		l.closeBackend(b)
	}
	if c.ls.active {
		c.ls.active = false
		if !c.ls.counted {
			l.endRequest(c, outcomeClient)
		}
	}
	if c.ls.entered {
		c.ls.entered = false
		l.s.h.drain.Exit()
	}
	l.release(c)
	_ = unix.Close(c.ls.fd) // also leaves the epoll set
	if c.ls.w != nil {
		_ = c.ls.w.Close() // releases what the wrapper holds (its socket is closed already)
	}
	l.s.forget(c)
}

// endRequest records the end of the request in flight that did not complete.
func (l *evloop) endRequest(c *fastConn, outcome string) {
	c.ls.counted = true
	if c.ls.div != nil {
		c.ls.div.Done(h1.ErrClient, c.ls.st.started)
		return
	}
	l.s.h.observe(outcome, c.ls.st.start)
}

// handBack gives c, whose request (if any) was not sent anywhere, back to a goroutine.
func (l *evloop) handBack(c *fastConn) {
	var pending []byte
	if c.ls.r < c.ls.wr {
		pending = append([]byte(nil), c.ls.buf[c.ls.r:c.ls.wr]...)
	}
	if c.ls.entered {
		c.ls.entered = false
		l.s.h.drain.Exit()
	}
	if c.ls.asked {
		d := c.ls.divAsked
		c.div = &d
	}
	c.missedLoop()
	c.ls.divAsked, c.ls.asked = Diversion{}, false
	if c.ls.slot >= 0 {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.ls.fd, nil)
	}
	l.release(c)
	l.s.wg.Add(1)
	go func() {
		defer l.s.wg.Done()
		l.s.resumeFromLoop(c, pending, nil)
	}()
}

// handBackInflight gives c back to a goroutine with its request sent to c.ls.be (or failed
// with err before anything was sent): the goroutine reads the answer, or retries.
func (l *evloop) handBackInflight(c *fastConn, err error, retry bool) {
	pending := append([]byte(nil), c.ls.buf[c.ls.r:c.ls.wr]...) // the head, and what followed it
	in := &inflight{st: c.ls.st, rt: c.ls.rt, err: err, retry: retry}
	if c.ls.div != nil {
		d := *c.ls.div
		in.div = &d
	}
	if in.st.host == "" {
		in.st.host = string(c.req.Host) // the head is still in c's buffer
	}
	var (
		bfd      = -1
		baddr    string
		breused  bool
		bpending []byte
	)
	if b := c.ls.be; b != nil {
		c.ls.be = nil
		if err == nil {
			bfd, baddr, breused = b.fd, b.addr, b.reused
			bpending = append([]byte(nil), b.buf[b.r:b.w]...)
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, b.fd, nil)
			b.fd = -1
		}
		l.closeBackend(b)
	}
	c.ls.active, c.ls.entered = false, false // the goroutine finishes the request and exits the tracker
	c.ls.div, c.ls.divAsked, c.ls.asked = nil, Diversion{}, false
	c.missedLoop()
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.ls.fd, nil)
	l.release(c)
	l.s.wg.Add(1)
	go func() {
		defer l.s.wg.Done()
		if bfd >= 0 {
			nc, err := idlepark.Attach(bfd, nil)
			if err != nil {
				in.err = err
			} else {
				in.be = l.s.pool.NewBackend(nc, baddr, bpending, breused)
			}
		}
		l.s.resumeFromLoop(c, pending, in)
	}()
}

func (l *evloop) onClient(c *fastConn, events uint32) {
	if events&eofEvents != 0 {
		c.ls.eof = true
	}
	switch c.ls.state {
	case lsIdle, lsHead:
		l.readClient(c)
	case lsRelay:
		if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.ls.rdReady = true
		}
		if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.pump(c)
		}
	default:
		// Read after the answer (a pipelined request, or the client's close).
		if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.ls.rdReady = true
		}
	}
}

// readClient reads what the client sent, and serves it.
func (l *evloop) readClient(c *fastConn) {
	for {
		if c.ls.buf == nil {
			c.ls.buf = l.getBuf()
		}
		if c.ls.wr == len(c.ls.buf) {
			if c.ls.r > 0 {
				c.ls.wr = copy(c.ls.buf, c.ls.buf[c.ls.r:c.ls.wr])
				c.ls.r = 0
			} else if max := c.maxHead(); len(c.ls.buf) < max {
				nb := make([]byte, min(2*len(c.ls.buf), max))
				copy(nb, c.ls.buf[:c.ls.wr])
				l.putBuf(c.ls.buf)
				c.ls.buf = nb
			} else {
				l.handBack(c) // the head is too large: net/http answers 431
				return
			}
		}
		space := len(c.ls.buf) - c.ls.wr
		n, errno := rawio.Read(c.ls.fd, c.ls.buf[c.ls.wr:])
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			c.ls.rdReady = false
			if c.ls.r == c.ls.wr {
				c.ls.r, c.ls.wr = 0, 0
				l.putBuf(c.ls.buf) // an idle connection holds no buffer
				c.ls.buf = nil
			}
			return
		case errno != 0 || n <= 0:
			l.closeConn(c) // the client closed (a partial head with it), or broke
			return
		}
		c.ls.wr += n
		c.ls.rdReady = n == space || c.ls.eof
		if !l.serve(c) || !c.ls.rdReady {
			return
		}
	}
}

// serve serves the request at the start of c's buffer if its head is complete. It reports
// whether c still waits for (more of) a request.
func (l *evloop) serve(c *fastConn) bool {
	n, v := h1.ParseRequest(c.ls.buf[c.ls.r:c.ls.wr], &c.req)
	switch v {
	case h1.NeedMore:
		if c.ls.state == lsIdle {
			c.ls.state = lsHead
			l.setTimer(c, &l.head)
		}
		return true
	case h1.Handoff:
		l.handBack(c)
		return false
	}
	l.begin(c, n)
	return false
}

// begin serves the request whose head is the n bytes at the start of c's buffer, or hands it
// back.
func (l *evloop) begin(c *fastConn, n int) {
	s, h, req := l.s, l.s.h, &c.req
	var body []byte
	if req.ContentLength > 0 {
		// A small body that came with its head is sent with it (and may be sent again: it is
		// within MaxReplayBody); any other goes to a goroutine, which streams it.
		if req.ContentLength > loopMaxRequestBody || req.ContentLength > h.cfg.MaxReplayBody ||
			int64(c.ls.wr-c.ls.r-n) < req.ContentLength {
			l.handBack(c)
			return
		}
		body = c.ls.buf[c.ls.r+n : c.ls.r+n+int(req.ContentLength)]
	}
	c.ls.headLen = n + len(body) // the request: head and body
	if l.closing != loopRunning {
		l.handBack(c) // draining: the goroutine answers 503
		return
	}
	var (
		d    *Diversion
		host string // only when needed: the common request allocates nothing
	)
	if s.cfg.Divert != nil {
		host = string(req.Host)
		if !s.cfg.DivertInLoop {
			l.handBack(c) // Divert may wait: not on the loop
			return
		}
		c.ls.divAsked, c.ls.asked = s.cfg.Divert(c.peerA, host, string(req.Method), string(req.Target)), true
		dv := &c.ls.divAsked
		switch {
		case dv.Handoff:
			l.handBack(c)
			return
		case dv.URL != nil:
			if req.Forwarding || dv.URL.Scheme != "http" {
				l.handBack(c)
				return
			}
			d = dv
		}
	}
	now := time.Now()
	var (
		rt      *route
		trusted bool
		addr    string
	)
	if d == nil {
		if req.Forwarding {
			if h.trustCustom {
				l.handBack(c)
				return
			}
			trusted = revproxy.AddrIn(c.peerA, h.cfg.TrustedProxies)
		}
		if rt = h.cachedRouteBytes(req.Host, now); rt == nil || rt.target.backend.Scheme != "http" {
			l.handBack(c) // the goroutine asks the directory and placement
			return
		}
		addr = rt.target.addr
	} else {
		addr = forwardAddr(d)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		l.handBack(c) // a name: the goroutine's dialer resolves it
		return
	}
	if d == nil && !h.drain.Enter() {
		l.handBack(c) // the goroutine answers 503
		return
	}
	l.stopTimer(c)
	c.ls.state = lsBackend
	c.ls.active, c.ls.entered, c.ls.counted, c.ls.redialed = true, d == nil, false, false
	c.ls.rt, c.ls.div = rt, d
	c.ls.st = fastState{c: c, id: newRequestIDBytes(), start: now, host: host, forward: d != nil, observeOK: d == nil}
	msg := l.getOut()
	if d == nil {
		c.ls.st.repl, c.ls.st.vm = rt.repl, rt.target.vm
		msg = appendRequestHead(msg, req, c.peer, trusted, rt.repl.ID)
		msg = appendCredential(msg, rt.target)
	} else {
		msg = appendForwardHead(msg, req, c.peer, d)
	}
	msg = append(msg, "\r\n"...)
	c.ls.msg = append(msg, body...)
	c.ls.off = 0
	l.connectAndSend(c, ap, addr)
}

// connectAndSend takes a pooled connection to addr, or dials one, and sends c's request on it.
func (l *evloop) connectAndSend(c *fastConn, ap netip.AddrPort, addr string) {
	now := time.Since(l.epoch)
	if !c.ls.redialed {
		for bs := l.pool[addr]; len(bs) > 0; bs = l.pool[addr] {
			b := bs[len(bs)-1]
			bs[len(bs)-1] = nil
			l.pool[addr] = bs[:len(bs)-1]
			if now-b.idleAt >= loopBackendIdle {
				l.closeBackend(b)
				continue
			}
			b.owner, b.reused, b.rdReady = c, true, false
			c.ls.be = b
			l.send(c)
			return
		}
	}
	b, err := l.dial(ap, addr)
	if err != nil {
		l.handBackInflight(c, err, true) // never reached conman: the goroutine retries or answers
		return
	}
	b.owner = c
	c.ls.be = b
	if b.connecting {
		l.setTimer(c, &l.connect)
		return
	}
	l.send(c)
}

// dial starts a non-blocking connection to ap.
func (l *evloop) dial(ap netip.AddrPort, addr string) (*loopBackend, error) {
	var (
		sa     unix.Sockaddr
		domain int
	)
	if a := ap.Addr().Unmap(); a.Is4() {
		domain, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		domain, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	// As Go's dialer does (h1.Pool's): no Nagle, keep-alive probes after 30 s idle.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 30)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 30)
	connecting := false
	if err := unix.Connect(fd, sa); err == unix.EINPROGRESS {
		connecting = true
	} else if err != nil {
		_ = unix.Close(fd)
		return nil, &os.SyscallError{Syscall: "connect", Err: fmt.Errorf("%s: %w", addr, err)}
	}
	b := &loopBackend{fd: fd, addr: addr, connecting: connecting, slot: -1}
	l.gen = (l.gen + 1) & 0x3fffffff
	b.gen = l.gen
	if k := len(l.bfree); k > 0 {
		b.slot = l.bfree[k-1]
		l.bfree = l.bfree[:k-1]
		l.bs[b.slot] = b
	} else {
		l.bs = append(l.bs, b)
		b.slot = int32(len(l.bs) - 1)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: b.slot, Pad: b.gen<<1 | 1}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.closeBackend(b)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	return b, nil
}

// closeBackend closes a loop's backend connection.
func (l *evloop) closeBackend(b *loopBackend) {
	if b.slot >= 0 {
		l.bs[b.slot] = nil
		l.bfree = append(l.bfree, b.slot)
		b.slot = -1
	}
	if b.fd >= 0 {
		_ = unix.Close(b.fd)
		b.fd = -1
	}
	l.putBuf(b.buf)
	b.buf, b.owner = nil, nil
}

func (l *evloop) onBackend(b *loopBackend, events uint32) {
	c := b.owner
	if c == nil {
		// Idle in the pool: the backend closed it, or sent what it must not.
		if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.unpool(b)
			l.closeBackend(b)
		}
		return
	}
	if events&eofEvents != 0 {
		b.eof = true
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		b.rdReady = true
	}
	switch {
	case b.connecting:
		if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
			return
		}
		b.connecting = false
		l.stopTimer(c)
		if errno, err := unix.GetsockoptInt(b.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
			if err == nil {
				err = syscall.Errno(errno)
			}
			l.handBackInflight(c, &os.SyscallError{Syscall: "connect", Err: fmt.Errorf("%s: %w", b.addr, err)}, true)
			return
		}
		l.send(c)
	case c.ls.state == lsBackend && c.ls.msg != nil:
		if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.send(c)
		}
	case c.ls.state == lsBackend:
		if b.rdReady {
			l.readAnswerHead(c)
		}
	case c.ls.state == lsRelay:
		if b.rdReady {
			l.pump(c)
		}
	}
}

// unpool takes an idle connection out of the pool.
func (l *evloop) unpool(b *loopBackend) {
	bs := l.pool[b.addr]
	for i, x := range bs {
		if x == b {
			copy(bs[i:], bs[i+1:])
			bs[len(bs)-1] = nil
			l.pool[b.addr] = bs[:len(bs)-1]
			return
		}
	}
}

// send writes c's request to its backend connection.
func (l *evloop) send(c *fastConn) {
	b := c.ls.be
	for c.ls.off < len(c.ls.msg) {
		n, errno := rawio.Write(b.fd, c.ls.msg[c.ls.off:])
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			return // the rest when the socket has room
		case errno != 0:
			if b.reused && !c.ls.redialed && c.ls.off == 0 {
				// A pooled connection the backend closed while it was idle: once more on a
				// new one.
				c.ls.be = nil
				l.closeBackend(b)
				c.ls.redialed = true
				ap, _ := netip.ParseAddrPort(b.addr)
				l.connectAndSend(c, ap, b.addr)
				return
			}
			l.handBackInflight(c, os.NewSyscallError("write", errno), false)
			return
		}
		c.ls.off += n
	}
	l.putOut(c.ls.msg)
	c.ls.msg = nil
	c.ls.off = 0
	if b.rdReady {
		l.readAnswerHead(c) // it answered while the request was still going out
	}
}

// readAnswerHead reads the answer's head and starts relaying it, or hands the exchange back
// when it is not one the loop relays.
func (l *evloop) readAnswerHead(c *fastConn) {
	b := c.ls.be
	for {
		if b.buf == nil {
			b.buf = l.getBuf()
		}
		if b.w == len(b.buf) {
			if b.r > 0 {
				b.w = copy(b.buf, b.buf[b.r:b.w])
				b.r = 0
			} else if len(b.buf) < loopMaxRespHead {
				nb := make([]byte, 2*len(b.buf))
				copy(nb, b.buf[:b.w])
				l.putBuf(b.buf)
				b.buf = nb
			} else {
				l.handBackInflight(c, nil, false)
				return
			}
		}
		space := len(b.buf) - b.w
		n, errno := rawio.Read(b.fd, b.buf[b.w:])
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			b.rdReady = false
			return
		case errno != 0 || n <= 0:
			// The goroutine reads the same end (a pooled connection that was closed is
			// retried on a new one there).
			l.handBackInflight(c, nil, false)
			return
		}
		b.w += n
		hn, err := h1.ParseResponse(b.buf[b.r:b.w], &c.resp)
		if err != nil {
			l.handBackInflight(c, nil, false)
			return
		}
		if hn == 0 {
			if n < space && !b.eof {
				b.rdReady = false
				return
			}
			continue
		}
		b.rdReady = n == space || b.eof
		resp := &c.resp
		bodyAllowed := h1.BodyAllowed(c.req.Method, resp.Status)
		switch {
		case resp.Status < 200, // 1xx first, or a switch without an Upgrade
			c.ls.div == nil && (resp.Status == http.StatusUnauthorized || resp.Status == http.StatusBadGateway ||
				resp.Status == http.StatusServiceUnavailable) && fieldValue(resp.Fields, conman.HeaderError) != nil:
			l.handBackInflight(c, nil, false)
		case bodyAllowed && resp.Chunked:
			l.relayChunked(c, hn)
		case bodyAllowed && (resp.ContentLength < 0 || resp.ContentLength > loopMaxBody):
			l.handBackInflight(c, nil, false)
		default:
			l.startRelay(c, hn, bodyAllowed)
		}
		return
	}
}

// relayChunked writes a chunked answer, whose head is the first hn bytes of the backend's
// buffer, when its whole body is there or comes without waiting (at most loopMaxBody bytes):
// re-framed as h1.CopyChunked does on the goroutine path (Switchyard-* trailers dropped). A body
// still to come goes, with everything read of it, to a goroutine, which streams it: the loop
// never holds back part of a stream.
func (l *evloop) relayChunked(c *fastConn, hn int) {
	b := c.ls.be
	for {
		body := b.buf[b.r+hn : b.w]
		src := h1.NewReader(eofConn{}, loopBuf, len(body)+1)
		src.Preload(body)
		dst := &bufConn{b: l.getOut()}
		out := l.getOut()
		st := &c.ls.st
		err := h1.CopyChunked(dst, &out, src, func(name []byte) bool { return st.forward || !h1.IsSwitchyard(name) })
		if err == nil {
			used := len(body) - len(src.Buffered())
			head, _, _ := st.appendAnswerHead(l.getOut())
			head = append(head, dst.b...)
			head = append(head, out...)
			l.putOut(dst.b)
			l.putOut(out)
			b.r += hn + used
			l.relay(c, head, 0)
			return
		}
		l.putOut(dst.b)
		l.putOut(out)
		// Not all there (or not well formed: the goroutine finds out as it would). Read on
		// only while the socket has more at once.
		if !b.rdReady || b.w-b.r >= hn+loopMaxBody {
			l.handBackInflight(c, nil, false)
			return
		}
		if b.w == len(b.buf) {
			nb := make([]byte, min(2*len(b.buf), b.r+hn+loopMaxBody+loopBuf))
			b.w = copy(nb, b.buf[b.r:b.w])
			b.r = 0
			l.putBuf(b.buf)
			b.buf = nb
			if n, err := h1.ParseResponse(b.buf[:b.w], &c.resp); err != nil || n != hn {
				l.handBackInflight(c, nil, false) // cannot happen: the same head
				return
			}
		}
		space := len(b.buf) - b.w
		n, errno := rawio.Read(b.fd, b.buf[b.w:])
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			b.rdReady = false
			l.handBackInflight(c, nil, false)
			return
		case errno != 0 || n <= 0:
			l.handBackInflight(c, nil, false) // the goroutine reads the same end
			return
		}
		b.w += n
		b.rdReady = n == space || b.eof
	}
}

// relay starts writing out (an answer's head and what is there of its body, remain bytes to
// come from the backend) to the client.
func (l *evloop) relay(c *fastConn, out []byte, remain int64) {
	c.ls.remain = remain
	c.ls.out, c.ls.off = out, 0
	c.ls.r += c.ls.headLen // the request is the loop's to finish now
	c.ls.headLen = 0
	c.ls.state = lsRelay
	c.ls.st.started = true
	l.pump(c)
}

// bufConn is a net.Conn whose writes are kept (relayChunked's output); eofConn one whose reads
// end at once. Only Write and Read are called on them.
type bufConn struct {
	net.Conn
	b []byte
}

func (c *bufConn) Write(p []byte) (int, error) { c.b = append(c.b, p...); return len(p), nil }

type eofConn struct{ net.Conn }

func (eofConn) Read([]byte) (int, error) { return 0, io.EOF }

// startRelay writes the answer, whose head is the first hn bytes of the backend's buffer.
func (l *evloop) startRelay(c *fastConn, hn int, bodyAllowed bool) {
	b := c.ls.be
	st := &c.ls.st
	out, _, _ := st.appendAnswerHead(l.getOut())
	b.r += hn
	remain := int64(0)
	if bodyAllowed {
		remain = c.resp.ContentLength
	}
	take := min(remain, int64(b.w-b.r))
	out = append(out, b.buf[b.r:b.r+int(take)]...)
	b.r += int(take)
	l.relay(c, out, remain-take)
}

// pump moves the answer's body from the backend to the client until it is complete or a
// socket would block.
func (l *evloop) pump(c *fastConn) {
	b := c.ls.be
	for {
		if c.ls.remain > 0 && b.rdReady {
			out := c.ls.out
			if int64(cap(out)-len(out)) < c.ls.remain {
				nb := make([]byte, len(out), len(out)+int(c.ls.remain))
				copy(nb, out)
				l.putOut(out)
				out = nb
			}
			want := out[len(out) : len(out)+int(c.ls.remain)]
			n, errno := rawio.Read(b.fd, want)
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				b.rdReady = false
			case errno != 0 || n <= 0:
				err := errors.New("the backend closed before the end of the answer")
				if errno != 0 {
					err = os.NewSyscallError("read", errno)
				}
				l.interrupted(c, err)
				return
			default:
				c.ls.out = out[:len(out)+n]
				c.ls.remain -= int64(n)
				b.rdReady = n == len(want) || b.eof
			}
		}
		if c.ls.remain == 0 && !c.ls.counted {
			// Counted before the last write, so whoever sees the answer end sees it counted.
			c.ls.counted = true
			if c.ls.div != nil {
				c.ls.div.Done(nil, true)
			} else {
				l.s.h.observe(outcomeOK, c.ls.st.start)
			}
		}
		for c.ls.off < len(c.ls.out) {
			n, errno := rawio.Write(c.ls.fd, c.ls.out[c.ls.off:])
			switch {
			case errno == unix.EINTR:
				continue
			case errno == unix.EAGAIN:
				return // the rest when the client's socket has room
			case errno != 0:
				l.clientLeft(c)
				return
			}
			c.ls.off += n
		}
		c.ls.out, c.ls.off = c.ls.out[:0], 0
		if c.ls.remain == 0 {
			l.finish(c)
			return
		}
		if !b.rdReady {
			return // the rest of the body when the backend sends it
		}
	}
}

// interrupted ends an answer the backend broke off after it began.
func (l *evloop) interrupted(c *fastConn, err error) {
	st := &c.ls.st
	host := st.host
	if host == "" {
		host = string(c.req.Host) // still in c's buffer (nothing was read after it)
	}
	l.s.h.log.Warn("hosting: response interrupted", "request_id", st.idString(), "host", host, "repl", st.repl.ID, "vm", st.vm, "err", err)
	if c.ls.div != nil {
		c.ls.counted = true
		c.ls.div.Done(err, true)
	}
	l.closeConn(c)
}

// clientLeft ends an answer the client stopped taking.
func (l *evloop) clientLeft(c *fastConn) {
	l.closeConn(c) // counted as a client outcome unless the answer was complete
}

// finish completes c's exchange and waits for its next request.
func (l *evloop) finish(c *fastConn) {
	b := c.ls.be
	c.ls.be = nil
	if c.resp.Close || b.r != b.w || b.eof {
		l.closeBackend(b)
	} else {
		l.poolPut(b)
	}
	c.ls.active = false
	c.loopMisses = 0
	if c.ls.entered {
		c.ls.entered = false
		l.s.h.drain.Exit()
	}
	l.putOut(c.ls.out)
	c.ls.out = nil
	c.ls.div, c.ls.divAsked, c.ls.asked, c.ls.rt = nil, Diversion{}, false, nil
	if c.req.Close || l.closing != loopRunning || l.s.closingFlag.Load() {
		l.closeConn(c)
		return
	}
	l.goIdle(c)
	if c.ls.r < c.ls.wr {
		if !l.serve(c) || !c.ls.rdReady {
			return
		}
	} else {
		c.ls.r, c.ls.wr = 0, 0
		if !c.ls.rdReady {
			l.putBuf(c.ls.buf)
			c.ls.buf = nil
			return
		}
	}
	l.readClient(c)
}

// poolPut keeps an idle backend connection for the next request to its address.
func (l *evloop) poolPut(b *loopBackend) {
	b.owner, b.r, b.w = nil, 0, 0
	l.putBuf(b.buf)
	b.buf = nil
	bs := l.pool[b.addr]
	if len(bs) >= loopMaxIdle || l.closing != loopRunning {
		l.closeBackend(b)
		return
	}
	b.idleAt = time.Since(l.epoch)
	l.pool[b.addr] = append(bs, b)
}

// goIdle makes c wait for its next request.
func (l *evloop) goIdle(c *fastConn) {
	c.ls.state = lsIdle
	c.ls.idleSince = time.Since(l.epoch)
	l.setTimer(c, &l.idle)
}

// park gives c, idle in the loop for a while, to the Server's park set for at most rest more:
// it wakes on a goroutine, which gives it back to a loop.
func (l *evloop) park(c *fastConn, rest time.Duration) {
	l.stopTimer(c)
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.ls.fd, nil)
	if err := l.s.park.ParkFD(c.ls.fd, c.ls.w, rest, false); err != nil {
		l.closeConn(c) // the park set is closed: the Server is closing
		return
	}
	c.ls.fd, c.ls.w = -1, nil
	l.release(c)
	c.mu.Lock()
	c.inLoop = false
	c.mu.Unlock()
	l.s.forget(c)
}

// Timers.

func (l *evloop) setTimer(c *fastConn, tl *timerList) {
	l.stopTimer(c)
	c.ls.tl = tl
	c.ls.tat = time.Since(l.epoch) + tl.d
	c.ls.tprev = tl.tail
	if tl.tail != nil {
		tl.tail.ls.tnext = c
	} else {
		tl.head = c
	}
	tl.tail = c
	if !l.armed {
		l.armed = true
		l.tickAt = time.Now().Add(l.tick)
		_ = l.ep.SetReadDeadline(l.tickAt)
	}
}

func (l *evloop) stopTimer(c *fastConn) {
	tl := c.ls.tl
	if tl == nil {
		return
	}
	if c.ls.tprev != nil {
		c.ls.tprev.ls.tnext = c.ls.tnext
	} else {
		tl.head = c.ls.tnext
	}
	if c.ls.tnext != nil {
		c.ls.tnext.ls.tprev = c.ls.tprev
	} else {
		tl.tail = c.ls.tprev
	}
	c.ls.tl, c.ls.tnext, c.ls.tprev = nil, nil, nil
}

// expire acts on the deadlines that passed, and re-arms the tick while any is set.
func (l *evloop) expire() {
	l.armed = false
	_ = l.ep.SetReadDeadline(time.Time{})
	now := time.Since(l.epoch)
	for l.idle.head != nil && l.idle.head.ls.tat <= now {
		c := l.idle.head
		if rest := l.s.cfg.IdleTimeout - (now - c.ls.idleSince); rest > 0 && l.closing == loopRunning {
			l.park(c, rest)
		} else {
			l.closeConn(c)
		}
	}
	for l.head.head != nil && l.head.head.ls.tat <= now {
		l.closeConn(l.head.head) // as net/http: a head that is not complete in time is not answered
	}
	for l.connect.head != nil && l.connect.head.ls.tat <= now {
		c := l.connect.head
		l.stopTimer(c)
		l.handBackInflight(c, &os.SyscallError{Syscall: "connect", Err: fmt.Errorf("%s: %w", c.ls.be.addr, os.ErrDeadlineExceeded)}, true)
	}
	if l.idle.head != nil || l.head.head != nil || l.connect.head != nil {
		l.armed = true
		l.tickAt = time.Now().Add(l.tick)
		_ = l.ep.SetReadDeadline(l.tickAt)
	}
}

// Buffers: each loop keeps its own (it is one goroutine), so taking and giving one back
// costs no allocation.

// maxSpare bounds the buffers of each kind a loop keeps for later.
const maxSpare = 64

// getBuf returns a read buffer of loopBuf bytes.
func (l *evloop) getBuf() []byte {
	if k := len(l.bufs); k > 0 {
		b := l.bufs[k-1]
		l.bufs = l.bufs[:k-1]
		return b
	}
	return make([]byte, loopBuf)
}

// putBuf keeps b (a read buffer, or nil) for later.
func (l *evloop) putBuf(b []byte) {
	if len(b) == loopBuf && len(l.bufs) < maxSpare {
		l.bufs = append(l.bufs, b)
	}
}

// getOut returns an empty output buffer.
func (l *evloop) getOut() []byte {
	if k := len(l.outs); k > 0 {
		b := l.outs[k-1]
		l.outs = l.outs[:k-1]
		return b
	}
	return make([]byte, 0, 4096)
}

// putOut keeps b (an output buffer, or nil) for later.
func (l *evloop) putOut(b []byte) {
	if cap(b) >= 4096 && cap(b) <= 64<<10 && len(l.outs) < maxSpare {
		l.outs = append(l.outs, b[:0])
	}
}
