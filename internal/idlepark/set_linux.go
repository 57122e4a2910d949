package idlepark

import (
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Set holds parked connections, each with a value of type T. Its methods are safe for concurrent
// use.
type Set[T any] struct {
	wake      func(net.Conn, T)
	coldAfter time.Duration // <= 0: never
	base      time.Time

	mu      sync.Mutex
	epfd    int // -1 until the first Park
	ep      *os.File
	entries map[int32]*entry[T] // by descriptor
	lists   []*list[T]          // one per timeout: entries in deadline order
	warm    list[T]             // entries still holding their net.Conn, in the order parked
	gen     uint32
	cold    int // entries that are cold
	timer   *time.Timer
	timerAt time.Duration // since base; 0 when not armed
	closed  bool
	wg      sync.WaitGroup // the loop, and wakes restoring their connection
}

// entry is one parked connection. Warm, it holds the net.Conn, whose descriptor is in the epoll
// set; cold, only a duplicate of the descriptor (the net.Conn is closed).
type entry[T any] struct {
	fd         int32
	gen        uint32        // tells a reused descriptor's events from its predecessor's
	deadline   time.Duration // since Set.base
	coldAt     time.Duration
	prev, next *entry[T] // in its timeout's list
	l          *list[T]
	wprev      *entry[T] // in Set.warm, while warm
	wnext      *entry[T]
	c          net.Conn // while warm: the connection as parked (wrapper and all)
	tc         *net.TCPConn
	w          Rewrapper // the wrapper around the socket, if any
	v          T
}

// list holds entries in deadline order (entries of one timeout, or the warm ones).
type list[T any] struct {
	timeout    time.Duration
	head, tail *entry[T]
}

// New returns an empty Set. wake is called, on a goroutine of its own, with each connection that
// wakes (the client sent something, or closed it) and the value it was parked with; wake must
// not assume Drain or Close waits for it.
//
// A connection parked longer than coldAfter goes cold: it gives up its net.Conn as well,
// keeping only a duplicate of its descriptor; waking it then costs a dozen system calls more
// (net.FileConn), some 16 µs of CPU. coldAfter <= 0 keeps them warm.
//
// On other systems than Linux New returns nil, whose methods park nothing.
func New[T any](wake func(c net.Conn, v T), coldAfter time.Duration) *Set[T] {
	return &Set[T]{wake: wake, coldAfter: coldAfter, base: time.Now(), epfd: -1, entries: make(map[int32]*entry[T])}
}

// Park takes c, which must have nothing buffered (what the kernel holds stays there), until the
// client sends or closes, or timeout passes (then c is closed). On an error the caller keeps c as
// it was: ErrNotParkable, ErrClosed, or a system error.
func (s *Set[T]) Park(c net.Conn, timeout time.Duration, v T) error {
	if s == nil {
		return ErrNotParkable
	}
	tc, w, ok := split(c)
	if !ok || timeout <= 0 {
		return ErrNotParkable
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	fd := -1
	if err := rc.Control(func(sfd uintptr) { fd = int(sfd) }); err != nil {
		return err // closed
	}
	// From here the Set owns c: its descriptor stays open until the Set closes c.
	if err := s.start(); err != nil {
		return err
	}
	s.gen++
	e := &entry[T]{fd: int32(fd), gen: s.gen, c: c, tc: tc, w: w, v: v}
	// Level-triggered: bytes that arrived before this call wake the connection at once. A
	// connection parked before keeps its (disabled) registration: re-arm it.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: e.fd, Pad: int32(e.gen)}
	err = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	if err == unix.ENOENT {
		err = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	if err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	now := time.Since(s.base)
	s.entries[e.fd] = e
	l := s.listFor(timeout)
	e.deadline = now + timeout
	l.push(e, false)
	at := e.deadline
	if s.coldAfter > 0 && s.coldAfter < timeout {
		e.coldAt = now + s.coldAfter
		s.warm.push(e, true)
		at = e.coldAt
	}
	s.arm(at)
	return nil
}

// ParkFD parks a socket held as a descriptor (as Detach returns it) inside w (or nil), cold
// from the start: waking it makes a net.Conn for it as for any cold connection. On success the
// Set owns fd and w; on an error (ErrNotParkable, ErrClosed, a system error) the caller keeps
// them.
func (s *Set[T]) ParkFD(fd int, w Rewrapper, timeout time.Duration, v T) error {
	if s == nil || timeout <= 0 || fd < 0 {
		return ErrNotParkable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.start(); err != nil {
		return err
	}
	s.gen++
	e := &entry[T]{fd: int32(fd), gen: s.gen, w: w, v: v}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: e.fd, Pad: int32(e.gen)}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	now := time.Since(s.base)
	s.entries[e.fd] = e
	s.cold++
	e.deadline = now + timeout
	s.listFor(timeout).push(e, false)
	s.arm(e.deadline)
	return nil
}

// Len returns the number of parked connections.
func (s *Set[T]) Len() int {
	warm, cold := s.Stats()
	return warm + cold
}

// Stats returns the number of parked connections that are warm (holding their net.Conn) and cold.
func (s *Set[T]) Stats() (warm, cold int) {
	if s == nil {
		return 0, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries) - s.cold, s.cold
}

// Drain ends the Set as Close does, but gives every parked connection back, a net.Conn again,
// to f (called synchronously, in no particular order) instead of closing it. Wakes already under
// way finish.
func (s *Set[T]) Drain(f func(c net.Conn, v T)) {
	for _, e := range s.end() {
		if c, err := s.restore(e); err == nil {
			f(c, e.v)
		}
	}
	s.wait()
}

// Close closes every parked connection and stops the Set: Park returns ErrClosed from now on.
// Wakes already under way finish.
func (s *Set[T]) Close() error {
	for _, e := range s.end() {
		e.close()
	}
	s.wait()
	return nil
}

// end marks the Set closed and takes its entries out.
func (s *Set[T]) end() []*entry[T] {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	all := make([]*entry[T], 0, len(s.entries))
	for _, e := range s.entries {
		all = append(all, e)
	}
	clear(s.entries)
	s.lists, s.warm, s.cold = nil, list[T]{}, 0
	if s.timer != nil {
		s.timer.Stop()
	}
	ep := s.ep
	s.ep = nil
	s.mu.Unlock()
	if ep != nil {
		// Ends the loop (not under s.mu: Close waits for the loop's read, which may be waiting
		// for s.mu); closing the epoll set forgets its registrations.
		_ = ep.Close()
	}
	return all
}

func (s *Set[T]) wait() {
	if s != nil {
		s.wg.Wait()
	}
}

// start creates the epoll set and its loop. Called with s.mu held.
func (s *Set[T]) start() error {
	if s.epfd >= 0 {
		return nil
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		return os.NewSyscallError("fcntl", err)
	}
	// A non-blocking epoll descriptor is pollable: os.NewFile puts it in the runtime's netpoller,
	// so the loop waits for it without holding a thread.
	ep := os.NewFile(uintptr(epfd), "idlepark")
	rc, err := ep.SyscallConn()
	if err != nil {
		_ = ep.Close()
		return err
	}
	s.epfd, s.ep = epfd, ep
	s.wg.Add(1)
	go s.loop(rc)
	return nil
}

// loop wakes the connections the epoll set reports until the set is closed.
func (s *Set[T]) loop(rc syscall.RawConn) {
	defer s.wg.Done()
	evs := make([]unix.EpollEvent, 128)
	for {
		// RawConn.Read waits only when f returns false, and resets the readiness it waits for
		// before calling f: f must look for itself (a zero-timeout wait) before it gives up.
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, err := unix.EpollWait(int(fd), evs, 0)
				if err == unix.EINTR {
					continue
				}
				if err != nil || n <= 0 {
					return false
				}
				s.ready(evs[:n])
				if n < len(evs) {
					return false
				}
			}
		})
		if err != nil {
			return // the set was closed
		}
	}
}

// ready takes the entries of evs out and wakes them.
func (s *Set[T]) ready(evs []unix.EpollEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range evs {
		e := s.entries[ev.Fd]
		if e == nil || e.gen != uint32(ev.Pad) {
			continue // expired, gone cold, or the descriptor is another connection's now
		}
		s.remove(e)
		if e.c == nil {
			// A cold descriptor is ours to close; its registration goes first (the duplicate
			// net.FileConn makes keeps the socket open, and the registration with it).
			_ = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, int(e.fd), nil)
		}
		// A warm one keeps its registration, disabled (EPOLLONESHOT): Park re-arms it.
		s.wg.Add(1)
		go s.resume(e)
	}
}

func (s *Set[T]) resume(e *entry[T]) {
	c, err := s.restore(e)
	s.wg.Done()
	if err == nil {
		s.wake(c, e.v)
	}
}

// restore returns e's connection: its net.Conn when warm, a new one for the socket (inside its
// wrapper, if it had one) when cold. On an error the socket is closed.
func (s *Set[T]) restore(e *entry[T]) (net.Conn, error) {
	if e.c != nil {
		return e.c, nil
	}
	f := os.NewFile(uintptr(e.fd), "")
	c, err := net.FileConn(f) // duplicates the descriptor, in the netpoller
	_ = f.Close()
	if err != nil {
		if e.w != nil {
			_ = e.w.Close()
		}
		return nil, err
	}
	if e.w != nil {
		e.w.SetNetConn(c)
		return e.w, nil
	}
	return c, nil
}

// close closes a parked connection that will not wake.
func (e *entry[T]) close() {
	if e.c != nil {
		_ = e.c.Close()
		return
	}
	_ = unix.Close(int(e.fd))
	if e.w != nil {
		_ = e.w.Close() // releases what the wrapper holds (its socket is closed already)
	}
}

// maxChill bounds the entries expire makes cold in one round, chillRetry is when it goes on.
const (
	maxChill   = 256
	chillRetry = time.Millisecond
)

// chill makes a warm entry cold: a duplicate descriptor in the epoll set, the net.Conn closed.
// Called with s.mu held; false (and e unchanged, still warm) when out of descriptors.
func (s *Set[T]) chill(e *entry[T]) bool {
	nfd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return false
	}
	s.gen++
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(nfd), Pad: int32(s.gen)}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, nfd, &ev); err != nil {
		_ = unix.Close(nfd)
		return false
	}
	_ = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, int(e.fd), nil)
	delete(s.entries, e.fd)
	_ = e.tc.Close() // the runtime's descriptor; the socket stays open through nfd
	e.fd, e.gen, e.c, e.tc = int32(nfd), s.gen, nil, nil
	s.entries[e.fd] = e
	s.cold++
	return true
}

// listFor returns the list of entries parked with timeout. Called with s.mu held.
func (s *Set[T]) listFor(timeout time.Duration) *list[T] {
	for _, l := range s.lists {
		if l.timeout == timeout {
			return l
		}
	}
	l := &list[T]{timeout: timeout}
	s.lists = append(s.lists, l)
	return l
}

// push appends e to l's timeout links, or to its warm links.
func (l *list[T]) push(e *entry[T], warm bool) {
	if warm {
		e.wprev = l.tail
		if l.tail != nil {
			l.tail.wnext = e
		} else {
			l.head = e
		}
	} else {
		e.l, e.prev = l, l.tail
		if l.tail != nil {
			l.tail.next = e
		} else {
			l.head = e
		}
	}
	l.tail = e
}

// unlinkWarm takes e out of s.warm, if it is there.
func (s *Set[T]) unlinkWarm(e *entry[T]) {
	if e.wprev == nil && s.warm.head != e {
		return
	}
	if e.wprev != nil {
		e.wprev.wnext = e.wnext
	} else {
		s.warm.head = e.wnext
	}
	if e.wnext != nil {
		e.wnext.wprev = e.wprev
	} else {
		s.warm.tail = e.wprev
	}
	e.wprev, e.wnext = nil, nil
}

// remove unlinks e. Called with s.mu held.
func (s *Set[T]) remove(e *entry[T]) {
	l := e.l
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next, e.l = nil, nil, nil
	s.unlinkWarm(e)
	delete(s.entries, e.fd)
	if e.c == nil {
		s.cold--
	}
}

// arm makes the timer fire by at. Called with s.mu held.
func (s *Set[T]) arm(at time.Duration) {
	if s.timerAt != 0 && s.timerAt <= at {
		return
	}
	s.timerAt = at
	d := at - time.Since(s.base)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.expire)
		return
	}
	s.timer.Reset(d)
}

// expire closes the connections past their deadline, makes those parked past coldAfter cold,
// and sets the timer for the next.
func (s *Set[T]) expire() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	now := time.Since(s.base)
	var dead []*entry[T]
	var next time.Duration
	for _, l := range s.lists {
		for l.head != nil && l.head.deadline <= now {
			e := l.head
			s.remove(e)
			dead = append(dead, e)
		}
		if l.head != nil && (next == 0 || l.head.deadline < next) {
			next = l.head.deadline
		}
	}
	chilled := 0
	for e := s.warm.head; e != nil && e.coldAt <= now; e = s.warm.head {
		if chilled == maxChill || !s.chill(e) {
			// Enough system calls under s.mu for one round, or out of descriptors (the rest
			// stay warm): again a little later.
			e.coldAt = now + chillRetry
			if chilled < maxChill {
				e.coldAt = now + time.Second
			}
			break
		}
		s.unlinkWarm(e)
		chilled++
	}
	if e := s.warm.head; e != nil && (next == 0 || e.coldAt < next) {
		next = e.coldAt
	}
	s.timerAt = 0
	if next != 0 {
		s.arm(next)
	}
	s.mu.Unlock()
	for _, e := range dead {
		e.close()
	}
}
