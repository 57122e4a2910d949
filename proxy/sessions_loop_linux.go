package proxy

import (
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loops (SessionsConfig.EventLoops) relay established splice-mode sessions while
// their traffic is small messages, the shape of a terminal session. Each loop is one goroutine
// with an epoll set of its own that it waits on, and reads and writes the sockets in, with raw
// system calls (no entersyscall): a message costs one read and one write, and nothing in the Go
// runtime wakes for it — no netpoller, no scheduler hand-off, no sysmon wake-up, which on an
// idle-then-busy proxy cost as much CPU as the relaying itself (measured in
// docs/benchmarks/sessions.md). The price is that a loop keeps its P while it blocks in
// epoll_wait, so a loop starts only while it leaves at least one P to the rest of the program,
// counting the loops of every Sessions in the process (loopsHeld); a session that finds no
// loop it may start stays on its goroutines (hand-back reason "refused").
//
// The loop handles only the steady state. Anything else hands the session back, for good, to
// the goroutine relay (sessionsSplice.run) in a state it resumes from exactly: a client write
// that fills the read buffer (bulk data: the goroutines splice it), a frame from conman larger
// than loopMaxFrame or a close frame, EOF or an error on either side, a write that would
// block, and drain (goAway). Bytes the loop read but did not write travel with the session:
// clientPending (client → conman), clientOwed (whole frames → client) and backPending (the
// start of an incomplete frame from conman).

// loopsHeld counts the running event loops of every Sessions in the process: each holds a P, and
// a loop starts only while at least one P would be left for the rest of the program.
var loopsHeld atomic.Int32

func loopTakeP() bool {
	for {
		n := loopsHeld.Load()
		if int(n)+1 >= runtime.GOMAXPROCS(0) {
			return false
		}
		if loopsHeld.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// spliceLoops is the set of event loops of one Sessions proxy.
type spliceLoops struct {
	loops   []*spliceLoop
	metrics *sessionsMetrics
	wg      sync.WaitGroup // running loop goroutines

	mu   sync.Mutex
	next int
}

// spliceLoop is one event loop. It runs only while it has sessions: the first session added
// starts it and it returns when its last one is handed back.
type spliceLoop struct {
	pool *spliceLoops

	mu      sync.Mutex
	running bool
	ep, ev  int         // the epoll set and the eventfd that wakes it (valid while running)
	adds    []*loopSess // sessions to take in
	aways   []*loopSess // sessions to hand back (goAway)
	spare   []*loopSess // the intake's swap buffers
	spare2  []*loopSess //
	sess    []*loopSess // by slot; loop goroutine only
	free    []int32     // free slots; loop goroutine only
	count   int         // sessions in the loop; loop goroutine only
	gen     int32       // generation of the last session taken in; loop goroutine only
	scratch [loopMaxFrame + loopClientRead]byte
}

// loopSess is a session while it is in (or on its way into) a loop.
type loopSess struct {
	sp       *sessionsSplice
	cfd, bfd int // the duplicated sockets the loop owns
	slot     int32
	gen      int32
	in       bool   // in the epoll set; loop goroutine only
	wantBack bool   // goAway asked for it; guarded by the loop's mu
	partial  []byte // the start of an incomplete frame from conman
	done     chan loopHandback

	// Bytes the handshakes read ahead (sp.clientPending, sp.backPending), relayed at intake.
	firstClient, firstBack []byte
}

// loopHandback is the state a session leaves the loop in.
type loopHandback struct {
	cfd, bfd      int
	clientPending []byte // read from the client, not yet written to conman
	clientOwed    []byte // whole frames from conman, not yet written to the client
	backPending   []byte // the start of the next frame from conman
	clientErr     error  // a read error on the client's socket
	backErr       error  // a read error on conman's socket
}

// loopClientRead is how much one read of the client takes; a read that fills it is bulk
// data, which the goroutine relay splices.
const loopClientRead = 64 << 10

// loopMaxFrame is the largest frame from conman, header included, the loop relays (conman
// writes a pty read of up to 32 KiB as one frame); a larger one goes to the goroutines, which
// splice its payload.
const loopMaxFrame = 64 << 10

// newSpliceLoops returns n loops, or nil when n < 1 or GOMAXPROCS leaves no P for the rest of
// the program once n of them are held.
func newSpliceLoops(n int, m *sessionsMetrics) *spliceLoops {
	if n < 1 || runtime.GOMAXPROCS(0) <= n {
		return nil
	}
	p := &spliceLoops{loops: make([]*spliceLoop, n), metrics: m}
	for i := range p.loops {
		p.loops[i] = &spliceLoop{pool: p}
	}
	return p
}

// wait returns once every loop goroutine has returned (they return when their last session
// is handed back).
func (p *spliceLoops) wait() {
	if p != nil {
		p.wg.Wait()
	}
}

// relay runs sp in a loop until the loop hands it back, then installs the state it was handed
// back in, so sp.run resumes where the loop stopped. It returns at once, leaving sp as it was,
// when the session cannot go into a loop (sockets that are not plain TCP, GOMAXPROCS too low,
// descriptors exhausted).
func (p *spliceLoops) relay(sp *sessionsSplice) {
	if p == nil || runtime.GOMAXPROCS(0) <= len(p.loops) {
		return
	}
	c, ok1 := sp.client.(*net.TCPConn)
	b, ok2 := sp.back.(*net.TCPConn)
	if !ok1 || !ok2 {
		return
	}
	cfd, err := loopDup(c)
	if err != nil {
		return
	}
	bfd, err := loopDup(b)
	if err != nil {
		unix.Close(cfd)
		return
	}
	ls := &loopSess{sp: sp, cfd: cfd, bfd: bfd, done: make(chan loopHandback, 1),
		firstClient: sp.clientPending, firstBack: sp.backPending}
	p.mu.Lock()
	l := p.loops[p.next%len(p.loops)]
	p.next++
	p.mu.Unlock()
	sp.mu.Lock()
	if sp.goingAway {
		sp.mu.Unlock()
		unix.Close(cfd)
		unix.Close(bfd)
		return
	}
	// Closing the net.Conns takes the sockets out of the runtime's netpoller (which would
	// otherwise wake for every message too); the duplicates keep them open.
	_ = c.Close()
	_ = b.Close()
	sp.clientPending, sp.backPending = nil, nil
	sp.inLoop = func() { l.handBack(ls) }
	sp.mu.Unlock()
	if !l.add(ls) {
		p.metrics.handbacks.WithLabelValues("refused").Inc()
		ls.done <- loopHandback{cfd: cfd, bfd: bfd, clientPending: ls.firstClient, backPending: ls.firstBack}
	}
	hb := <-ls.done
	sp.resume(hb)
}

// resume installs a handed-back session's sockets and bytes.
func (sp *sessionsSplice) resume(hb loopHandback) {
	client, cerr := loopConn(hb.cfd)
	back, berr := loopConn(hb.bfd)
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.inLoop = nil
	if cerr != nil || berr != nil {
		// Out of descriptors: the session cannot go on. The closed conns end it.
		if client != nil {
			_ = client.Close()
		}
		if back != nil {
			_ = back.Close()
		}
		sp.resumeErr = cerr
		if cerr == nil {
			sp.resumeErr = berr
		}
		return
	}
	sp.client, sp.back = client, back
	sp.clientPending = hb.clientPending
	sp.clientOwed = hb.clientOwed
	sp.backPending = hb.backPending
	sp.clientErr, sp.backErr = hb.clientErr, hb.backErr
	if sp.goingAway {
		sp.applyGoAwayDeadlines()
	}
}

// loopDup duplicates a TCP connection's socket (close-on-exec, non-blocking like the original).
func loopDup(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// loopConn makes a net.Conn of a socket the loop owned (net.FileConn duplicates it into the
// runtime's netpoller) and closes the loop's descriptor.
func loopConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "session")
	c, err := net.FileConn(f)
	_ = f.Close()
	return c, err
}

// add queues ls for the loop, starting it if it is not running. It reports false when the
// loop could not be started.
func (l *spliceLoop) add(ls *loopSess) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running {
		if !loopTakeP() {
			return false // every P but one is held by loops (of this or other proxies)
		}
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			loopsHeld.Add(-1)
			return false
		}
		ev, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			unix.Close(ep)
			loopsHeld.Add(-1)
			return false
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
			unix.Close(ep)
			unix.Close(ev)
			loopsHeld.Add(-1)
			return false
		}
		l.ep, l.ev, l.running = ep, ev, true
		l.adds = append(l.adds, ls)
		l.pool.wg.Add(1)
		go l.run(ep, ev)
		return true
	}
	l.adds = append(l.adds, ls)
	l.wake()
	return true
}

// handBack asks the loop to hand ls back (goAway). It is a no-op once ls has left the loop.
func (l *spliceLoop) handBack(ls *loopSess) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls.wantBack = true // in case ls is still on its way in
	if l.running {
		l.aways = append(l.aways, ls)
		l.wake()
	}
}

// wake makes the loop's epoll_wait return; l.mu is held.
func (l *spliceLoop) wake() {
	one := uint64(1)
	_, _ = unix.Write(l.ev, (*[8]byte)(unsafe.Pointer(&one))[:])
}

// run is the loop goroutine.
func (l *spliceLoop) run(ep, ev int) {
	defer l.pool.wg.Done()
	events := make([]unix.EpollEvent, 128)
	l.intake(ep)
	for {
		n, errno := loopEpollWait(ep, events)
		switch {
		case errno == unix.EINTR:
			// A signal: the runtime's preemption (every 10 ms or so, and at every
			// stop-the-world, GOMAXPROCS changes included). If GOMAXPROCS no longer leaves a
			// P besides the loops, this one gives its sessions back and stops.
			n = 0
			if runtime.GOMAXPROCS(0) <= int(loopsHeld.Load()) {
				l.giveBackAll("gomaxprocs")
			}
		case errno != 0:
			// Cannot happen with a valid epoll set.
			n = 0
			l.giveBackAll("error")
		}
		for _, e := range events[:n] {
			if e.Fd < 0 {
				var b [8]byte
				_, _ = loopRead(ev, b[:])
				l.intake(ep)
				continue
			}
			ls := l.sess[e.Fd]
			if ls == nil || ls.gen != e.Pad>>1 {
				continue // handed back earlier in this batch
			}
			if e.Pad&1 == 0 {
				l.fromClient(ls)
			} else {
				l.fromBackend(ls)
			}
		}
		if l.count == 0 {
			l.mu.Lock()
			if len(l.adds) == 0 && len(l.aways) == 0 {
				l.running = false
				l.mu.Unlock()
				unix.Close(ep)
				unix.Close(ev)
				loopsHeld.Add(-1)
				return
			}
			l.mu.Unlock()
		}
	}
}

// intake takes queued sessions in and hands back those asked for.
func (l *spliceLoop) intake(ep int) {
	l.mu.Lock()
	adds, aways := l.adds, l.aways
	l.adds, l.aways = l.spare[:0], l.spare2[:0]
	for _, ls := range adds {
		if ls.wantBack {
			aways = append(aways, ls)
		}
	}
	l.mu.Unlock()
	for _, ls := range adds {
		slot := int32(len(l.sess))
		if k := len(l.free); k > 0 {
			slot = l.free[k-1]
			l.free = l.free[:k-1]
		} else {
			l.sess = append(l.sess, nil)
		}
		l.gen = (l.gen + 1) & 0x3fffffff
		ls.slot, ls.gen, ls.in = slot, l.gen, true
		l.sess[slot] = ls
		l.count++
		l.pool.metrics.inLoop.Inc()
		err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ls.cfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: slot, Pad: ls.gen << 1})
		if err == nil {
			err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ls.bfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: slot, Pad: ls.gen<<1 | 1})
		}
		if err != nil {
			l.giveBack(ls, loopHandback{clientPending: ls.firstClient, backPending: ls.firstBack}, "refused")
			continue
		}
		if p := ls.firstClient; len(p) > 0 {
			ls.firstClient = nil
			w := loopWriteAll(ls.bfd, p)
			ls.sp.c2b.Add(int64(w))
			if w < len(p) {
				l.giveBack(ls, loopHandback{clientPending: p[w:], backPending: ls.firstBack}, "blocked")
				continue
			}
		}
		if p := ls.firstBack; len(p) > 0 {
			ls.firstBack = nil
			l.relayBack(ls, copy(l.scratch[:], p))
		}
	}
	for _, ls := range aways {
		if ls.in {
			l.giveBack(ls, loopHandback{backPending: ls.partial}, "drain")
		}
	}
	clear(adds)
	clear(aways)
	l.spare, l.spare2 = adds[:0], aways[:0]
}

// giveBackAll hands every session in the loop back.
func (l *spliceLoop) giveBackAll(reason string) {
	for _, ls := range l.sess {
		if ls != nil {
			l.giveBack(ls, loopHandback{backPending: ls.partial}, reason)
		}
	}
}

// giveBack takes ls out of the loop and hands it to its goroutine with hb, counting why.
func (l *spliceLoop) giveBack(ls *loopSess, hb loopHandback, reason string) {
	if !ls.in {
		return
	}
	ls.in = false
	l.pool.metrics.inLoop.Dec()
	l.pool.metrics.handbacks.WithLabelValues(reason).Inc()
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, ls.cfd, nil)
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, ls.bfd, nil)
	l.sess[ls.slot] = nil
	l.free = append(l.free, ls.slot)
	l.count--
	hb.cfd, hb.bfd = ls.cfd, ls.bfd
	ls.done <- hb
}

// fromClient relays what the client sent.
func (l *spliceLoop) fromClient(ls *loopSess) {
	buf := l.scratch[:loopClientRead]
	n, errno := loopRead(ls.cfd, buf)
	switch {
	case errno == unix.EAGAIN:
		return
	case errno != 0:
		l.giveBack(ls, loopHandback{backPending: ls.partial, clientErr: os.NewSyscallError("read", errno)}, "error")
		return
	case n == 0: // EOF: the goroutines half-close and linger
		l.giveBack(ls, loopHandback{backPending: ls.partial}, "eof")
		return
	}
	w := loopWriteAll(ls.bfd, buf[:n])
	ls.sp.c2b.Add(int64(w))
	if w < n || n == len(buf) {
		// conman is not keeping up (the goroutines wait for it), or bulk data (they splice it).
		reason := "bulk"
		if w < n {
			reason = "blocked"
		}
		l.giveBack(ls, loopHandback{clientPending: append([]byte(nil), buf[w:n]...), backPending: ls.partial}, reason)
	}
}

// fromBackend reads what conman sent.
func (l *spliceLoop) fromBackend(ls *loopSess) {
	have := copy(l.scratch[:], ls.partial)
	n, errno := loopRead(ls.bfd, l.scratch[have:])
	switch {
	case errno == unix.EAGAIN:
		return
	case errno != 0:
		l.giveBack(ls, loopHandback{backPending: ls.partial, backErr: os.NewSyscallError("read", errno)}, "error")
		return
	case n == 0:
		l.giveBack(ls, loopHandback{backPending: ls.partial}, "eof")
		return
	}
	l.relayBack(ls, have+n)
}

// relayBack writes the whole frames among the first have bytes of the scratch buffer (the
// session's partial frame, then what was read) to the client and keeps the start of an
// incomplete one.
func (l *spliceLoop) relayBack(ls *loopSess, have int) {
	data := l.scratch[:have]
	end, stop := loopFrames(data)
	w := loopWriteAll(ls.cfd, data[:end])
	ls.sp.b2c.Add(int64(w))
	if w < end || stop {
		reason := "frame"
		if w < end {
			reason = "blocked"
		}
		l.giveBack(ls, loopHandback{
			clientOwed:  append([]byte(nil), data[w:end]...),
			backPending: append([]byte(nil), data[end:]...),
		}, reason)
		return
	}
	ls.partial = append(ls.partial[:0], data[end:]...)
}

// loopFrames returns the end of the whole frames at the start of p that the loop relays, and
// whether the frame after them needs the goroutine relay: a close frame, a control frame too
// big to be one, a frame too big for the loop, or a malformed header.
func loopFrames(p []byte) (end int, stop bool) {
	for {
		hl, length, ok, err := sessionsParseHeader(p[end:])
		if err != nil {
			return end, true
		}
		if !ok {
			return end, false
		}
		opcode := p[end] & 0x0f
		total := uint64(hl) + length
		if opcode == 8 || (opcode >= 8 && length > 125) || total > loopMaxFrame {
			return end, true
		}
		if uint64(len(p)-end) < total {
			return end, false
		}
		end += int(total)
	}
}

// loopWriteAll writes p to a non-blocking socket until it is written or the socket is full
// or broken, and returns how much was written. The goroutine relay finds out why by writing
// the rest.
func loopWriteAll(fd int, p []byte) int {
	w := 0
	for w < len(p) {
		n, errno := loopWrite(fd, p[w:])
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

// The raw system calls. None blocks except epoll_wait, whose P the loop keeps on purpose.

func loopRead(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

func loopWrite(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

func loopEpollWait(ep int, events []unix.EpollEvent) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), ^uintptr(0), 0, 0)
	return int(r), e
}
