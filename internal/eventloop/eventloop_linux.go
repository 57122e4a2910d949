package eventloop

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/internal/rawio"
)

// Config configures a Group.
type Config struct {
	// Loops is the number of event loops. Required (at least 1).
	Loops int
	// Budget is shared by every Group of the process. Required.
	Budget *Budget
	// Frames returns the end of the whole frames at the start of p the loop may relay to the
	// client, and whether the frame after them must go to the caller (a close frame, a frame
	// over MaxFrame, a malformed header). Required.
	Frames func(p []byte) (end int, stop bool)
	// Wait bounds one epoll wait, and so how long a stop-the-world can wait for a loop. Zero
	// means DefaultWait.
	Wait time.Duration
	// InLoop counts the sessions in a loop; HandBacks counts hand-backs by reason (Reasons).
	// Both required.
	InLoop    prometheus.Gauge
	HandBacks *prometheus.CounterVec
}

// A Group is a set of event loops.
type Group struct {
	cfg   Config
	wait  int // epoll timeout, ms
	loops []*loop
	wg    sync.WaitGroup // running loop goroutines

	mu   sync.Mutex
	next int
}

// New returns a Group of cfg.Loops loops, or nil when GOMAXPROCS leaves no P for the rest of the
// program once that many are held. It panics on a Config without its required fields.
func New(cfg Config) *Group {
	if cfg.Loops < 1 || cfg.Budget == nil || cfg.Frames == nil || cfg.InLoop == nil || cfg.HandBacks == nil {
		panic("eventloop: incomplete Config")
	}
	if runtime.GOMAXPROCS(0) <= cfg.Loops {
		return nil
	}
	if cfg.Wait <= 0 {
		cfg.Wait = DefaultWait
	}
	g := &Group{cfg: cfg, wait: max(1, int(cfg.Wait/time.Millisecond)), loops: make([]*loop, cfg.Loops)}
	for i := range g.loops {
		g.loops[i] = &loop{g: g}
	}
	return g
}

// Usable reports whether GOMAXPROCS still leaves a P besides the Group's loops.
func (g *Group) Usable() bool { return g != nil && runtime.GOMAXPROCS(0) > len(g.loops) }

// Wait returns once every loop goroutine has returned (they return when their last session is
// handed back).
func (g *Group) Wait() {
	if g != nil {
		g.wg.Wait()
	}
}

// A Session is one client-backend socket pair on its way into a loop. Make it with
// Group.Session, then call Run.
type Session struct {
	l           *loop
	cfd, bfd    int // the sockets the loop owns
	c2b, b2c    *atomic.Int64
	slot        int32
	gen         int32
	in          bool   // in the epoll set; loop goroutine only
	wantBack    bool   // HandBack asked for it; guarded by the loop's mu
	partial     []byte // the start of an incomplete frame from the backend
	done        chan Handback
	firstClient []byte // bytes read ahead from the client, relayed at intake
	firstBack   []byte // bytes read ahead from the backend, relayed at intake
}

// Handback is the state a session leaves its loop in. The caller owns the two descriptors.
type Handback struct {
	Client, Backend int
	ClientPending   []byte // read from the client, not yet written to the backend
	ClientOwed      []byte // whole frames from the backend, not yet written to the client
	BackPending     []byte // the start of the next frame from the backend
	ClientErr       error  // a read error on the client's socket
	BackErr         error  // a read error on the backend's socket
}

// Session prepares the sockets client and backend (non-blocking descriptors the loop takes
// over) for a loop. clientPending and backPending are bytes already read from each; c2b and b2c
// count the bytes the loop relays in each direction.
func (g *Group) Session(client, backend int, clientPending, backPending []byte, c2b, b2c *atomic.Int64) *Session {
	g.mu.Lock()
	l := g.loops[g.next%len(g.loops)]
	g.next++
	g.mu.Unlock()
	return &Session{l: l, cfd: client, bfd: backend, c2b: c2b, b2c: b2c, done: make(chan Handback, 1),
		firstClient: clientPending, firstBack: backPending}
}

// Run relays s in its loop until the loop hands it back, and returns the state it was handed
// back in. When the loop cannot take it (no P in the budget, no descriptors for an epoll set)
// Run returns at once with the bytes s started with, counted as "refused".
func (s *Session) Run() Handback {
	if !s.l.add(s) {
		s.l.g.cfg.HandBacks.WithLabelValues("refused").Inc()
		return Handback{Client: s.cfd, Backend: s.bfd, ClientPending: s.firstClient, BackPending: s.firstBack}
	}
	return <-s.done
}

// HandBack asks the loop to hand s back ("drain"). It is a no-op once s has left the loop, and
// safe to call before Run.
func (s *Session) HandBack() { s.l.handBack(s) }

// loop is one event loop. It runs only while it has sessions: the first session added starts
// it and it returns when its last one is handed back.
type loop struct {
	g *Group

	mu      sync.Mutex
	running bool
	ep, ev  int        // the epoll set and the eventfd that wakes it (valid while running)
	adds    []*Session // sessions to take in
	aways   []*Session // sessions to hand back (HandBack)
	spare   []*Session // the intake's swap buffers
	spare2  []*Session //
	sess    []*Session // by slot; loop goroutine only
	free    []int32    // free slots; loop goroutine only
	count   int        // sessions in the loop; loop goroutine only
	gen     int32      // generation of the last session taken in; loop goroutine only
	scratch [MaxFrame + clientRead]byte
}

// add queues s for the loop, starting it if it is not running. It reports false when the loop
// could not be started.
func (l *loop) add(s *Session) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running {
		budget := l.g.cfg.Budget
		if !budget.take() {
			return false // every P but one is held by loops
		}
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			budget.release()
			return false
		}
		ev, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			unix.Close(ep)
			budget.release()
			return false
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
			unix.Close(ep)
			unix.Close(ev)
			budget.release()
			return false
		}
		l.ep, l.ev, l.running = ep, ev, true
		l.adds = append(l.adds, s)
		l.g.wg.Add(1)
		go l.run(ep, ev)
		return true
	}
	l.adds = append(l.adds, s)
	l.wake()
	return true
}

// handBack asks the loop to hand s back. It is a no-op once s has left the loop.
func (l *loop) handBack(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.wantBack = true // in case s is still on its way in
	if l.running {
		l.aways = append(l.aways, s)
		l.wake()
	}
}

// wake makes the loop's epoll wait return; l.mu is held.
func (l *loop) wake() {
	one := uint64(1)
	_, _ = unix.Write(l.ev, (*[8]byte)(unsafe.Pointer(&one))[:])
}

// run is the loop goroutine.
func (l *loop) run(ep, ev int) {
	defer l.g.wg.Done()
	budget := l.g.cfg.Budget
	events := make([]unix.EpollEvent, 128)
	l.intake(ep)
	yielded := time.Now()
	for {
		n, errno := rawio.EpollWait(ep, events, l.g.wait)
		if n <= 0 || errno != 0 {
			// A timeout, or a signal (the runtime's preemption, every stop-the-world). If
			// GOMAXPROCS no longer leaves a P besides the loops, give the sessions back and stop.
			if errno != 0 && errno != unix.EINTR {
				l.giveBackAll("error") // cannot happen with a valid epoll set
			} else if budget.exhausted() {
				l.giveBackAll("gomaxprocs")
			}
			n = 0
		}
		for _, e := range events[:n] {
			if e.Fd < 0 {
				var b [8]byte
				_, _ = rawio.Read(ev, b[:])
				l.intake(ep)
				continue
			}
			s := l.sess[e.Fd]
			if s == nil || s.gen != e.Pad>>1 {
				continue // handed back earlier in this batch
			}
			if e.Pad&1 == 0 {
				l.fromClient(s)
			} else {
				l.fromBackend(s)
			}
		}
		if l.count == 0 {
			l.mu.Lock()
			if len(l.adds) == 0 && len(l.aways) == 0 {
				l.running = false
				l.mu.Unlock()
				unix.Close(ep)
				unix.Close(ev)
				budget.release()
				return
			}
			l.mu.Unlock()
		}
		// Let a pending stop-the-world (or anything else waiting for this P) in at least once
		// per wait bound, whether or not the runtime can preempt us asynchronously.
		if now := time.Now(); now.Sub(yielded) >= l.g.cfg.Wait {
			runtime.Gosched()
			yielded = now
		}
	}
}

// intake takes queued sessions in and hands back those asked for.
func (l *loop) intake(ep int) {
	l.mu.Lock()
	adds, aways := l.adds, l.aways
	l.adds, l.aways = l.spare[:0], l.spare2[:0]
	for _, s := range adds {
		if s.wantBack {
			aways = append(aways, s)
		}
	}
	l.mu.Unlock()
	for _, s := range adds {
		slot := int32(len(l.sess))
		if k := len(l.free); k > 0 {
			slot = l.free[k-1]
			l.free = l.free[:k-1]
		} else {
			l.sess = append(l.sess, nil)
		}
		l.gen = (l.gen + 1) & 0x3fffffff
		s.slot, s.gen, s.in = slot, l.gen, true
		l.sess[slot] = s
		l.count++
		l.g.cfg.InLoop.Inc()
		err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.cfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: slot, Pad: s.gen << 1})
		if err == nil {
			err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.bfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: slot, Pad: s.gen<<1 | 1})
		}
		if err != nil {
			l.giveBack(s, Handback{ClientPending: s.firstClient, BackPending: s.firstBack}, "refused")
			continue
		}
		if p := s.firstClient; len(p) > 0 {
			s.firstClient = nil
			w := writeAll(s.bfd, p)
			s.c2b.Add(int64(w))
			if w < len(p) {
				l.giveBack(s, Handback{ClientPending: p[w:], BackPending: s.firstBack}, "blocked")
				continue
			}
		}
		if p := s.firstBack; len(p) > 0 {
			s.firstBack = nil
			l.relayBack(s, copy(l.scratch[:], p))
		}
	}
	for _, s := range aways {
		if s.in {
			l.giveBack(s, Handback{BackPending: s.partial}, "drain")
		}
	}
	clear(adds)
	clear(aways)
	l.spare, l.spare2 = adds[:0], aways[:0]
}

// giveBackAll hands every session in the loop back.
func (l *loop) giveBackAll(reason string) {
	for _, s := range l.sess {
		if s != nil {
			l.giveBack(s, Handback{BackPending: s.partial}, reason)
		}
	}
}

// giveBack takes s out of the loop and hands it to its caller with hb, counting why.
func (l *loop) giveBack(s *Session, hb Handback, reason string) {
	if !s.in {
		return
	}
	s.in = false
	l.g.cfg.InLoop.Dec()
	l.g.cfg.HandBacks.WithLabelValues(reason).Inc()
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, s.cfd, nil)
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, s.bfd, nil)
	l.sess[s.slot] = nil
	l.free = append(l.free, s.slot)
	l.count--
	hb.Client, hb.Backend = s.cfd, s.bfd
	s.done <- hb
}

// fromClient relays what the client sent.
func (l *loop) fromClient(s *Session) {
	buf := l.scratch[:clientRead]
	n, errno := rawio.Read(s.cfd, buf)
	switch {
	case errno == unix.EAGAIN:
		return
	case errno != 0:
		l.giveBack(s, Handback{BackPending: s.partial, ClientErr: os.NewSyscallError("read", errno)}, "error")
		return
	case n == 0: // EOF: the caller half-closes and lingers
		l.giveBack(s, Handback{BackPending: s.partial}, "eof")
		return
	}
	w := writeAll(s.bfd, buf[:n])
	s.c2b.Add(int64(w))
	if w < n || n == len(buf) {
		// The backend is not keeping up (the caller waits for it), or bulk data (it splices it).
		reason := "bulk"
		if w < n {
			reason = "blocked"
		}
		l.giveBack(s, Handback{ClientPending: append([]byte(nil), buf[w:n]...), BackPending: s.partial}, reason)
	}
}

// fromBackend reads what the backend sent.
func (l *loop) fromBackend(s *Session) {
	have := copy(l.scratch[:], s.partial)
	n, errno := rawio.Read(s.bfd, l.scratch[have:])
	switch {
	case errno == unix.EAGAIN:
		return
	case errno != 0:
		l.giveBack(s, Handback{BackPending: s.partial, BackErr: os.NewSyscallError("read", errno)}, "error")
		return
	case n == 0:
		l.giveBack(s, Handback{BackPending: s.partial}, "eof")
		return
	}
	l.relayBack(s, have+n)
}

// relayBack writes the whole frames among the first have bytes of the scratch buffer (the
// session's partial frame, then what was read) to the client and keeps the start of an
// incomplete one.
func (l *loop) relayBack(s *Session, have int) {
	data := l.scratch[:have]
	end, stop := l.g.cfg.Frames(data)
	w := writeAll(s.cfd, data[:end])
	s.b2c.Add(int64(w))
	if w < end || stop {
		reason := "frame"
		if w < end {
			reason = "blocked"
		}
		l.giveBack(s, Handback{
			ClientOwed:  append([]byte(nil), data[w:end]...),
			BackPending: append([]byte(nil), data[end:]...),
		}, reason)
		return
	}
	s.partial = append(s.partial[:0], data[end:]...)
}

// writeAll writes p to a non-blocking socket until it is written or the socket is full or
// broken, and returns how much was written. The caller finds out why by writing the rest.
func writeAll(fd int, p []byte) int {
	w := 0
	for w < len(p) {
		n, errno := rawio.Write(fd, p[w:])
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || n <= 0 {
			break
		}
		w += n
	}
	return w
}
