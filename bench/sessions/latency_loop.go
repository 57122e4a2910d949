package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/internal/wsframe"
)

// The latency test's default driver (-latency-driver loop) is one OS thread running an epoll
// loop of its own: it sends each session's 64-byte frames on a precise schedule (a timerfd),
// reads the echoes, and is also the echo backend for every connection opened during the test.
//
// Why not a goroutine per session (-latency-driver goroutines, the driver of the earlier runs):
// Go's netpoller sleeps in whole milliseconds (epoll_wait's timeout), so when the driver is
// idle its timers fire in batches on millisecond edges. 1,000 sessions × 10 msg/s then arrive
// at the proxy as bursts of about ten messages sent within microseconds of each other, every
// millisecond, not as 10,000 independent messages a second; each proxy queues the burst, and
// the added latency it shows grows with the burst size times its cost per message. The loop
// sends each message at its own time (the report shows how late sends were), and its echo
// backend and receive path cost the same few syscalls for every target, so what differs
// between targets is the proxy.

// loopSink, when set, receives the raw echo backend's connections once their handshake is done:
// the loop driver echoes them itself.
var loopSink atomic.Pointer[chan net.Conn]

// loopStats describes how well the driver kept its schedule.
type loopStats struct {
	sendLateP99 time.Duration // how late the 99th-percentile send went out
	skipped     int           // sends skipped because the session's previous echo was not back
	bunched     float64       // the share of sends less than 10 µs after the one before
}

// loopFD takes a connection's socket out of Go's netpoller: it duplicates the descriptor and
// closes the net.Conn, which removes the original from the runtime's epoll set (so no runtime
// thread wakes for its events) and leaves the socket open through the duplicate.
func loopFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = unix.Dup(int(f)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	c.Close()
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// latencyLoop opens the sessions, takes every client and backend socket into one epoll loop,
// calls ready, and runs the timed load: each session sends at its own random phase every
// 1/rate seconds (skipping a send while its previous echo is still out).
func latencyLoop(url string, ready func()) ([]time.Duration, loopStats, error) {
	n := *nSessions
	var st loopStats
	sink := make(chan net.Conn, n+64)
	loopSink.Store(&sink)
	defer loopSink.Store(nil)

	var fds []int // every descriptor the loop owns, closed at the end
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	clients := make([]int, n)
	conns, err := dialAll(url, n)
	for i, c := range conns {
		if c == nil {
			continue
		}
		if c.br.Buffered() > 0 && err == nil {
			err = errors.New("bytes after the 101 response")
		}
		fd, ferr := loopFD(c.conn)
		if ferr != nil && err == nil {
			err = ferr
		}
		if ferr == nil {
			clients[i] = fd
			fds = append(fds, fd)
		}
	}
	if err != nil {
		return nil, st, err
	}
	// Every proxy dials the backend before it answers 101, so n backend connections are in.
	backs := make([]int, 0, n)
	timeout := time.After(10 * time.Second)
	for len(backs) < n {
		select {
		case c := <-sink:
			fd, err := loopFD(c)
			if err != nil {
				return nil, st, err
			}
			backs = append(backs, fd)
			fds = append(fds, fd)
		case <-timeout:
			return nil, st, fmt.Errorf("%d of %d backend connections arrived", len(backs), n)
		}
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)

	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, st, err
	}
	fds = append(fds, ep)
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, st, err
	}
	fds = append(fds, tfd)
	// Event data: 0..n-1 a client, n..2n-1 a backend connection, 2n the timer.
	add := func(fd, id int) error {
		return unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(id)})
	}
	for i, fd := range clients {
		if err := add(fd, i); err != nil {
			return nil, st, err
		}
	}
	for i, fd := range backs {
		if err := add(fd, n+i); err != nil {
			return nil, st, err
		}
	}
	if err := add(tfd, 2*n); err != nil {
		return nil, st, err
	}

	interval := time.Duration(float64(time.Second) / *rate)
	rounds := int(latDur.Seconds() * *rate)
	phase := make([]time.Duration, n)
	for i := range phase {
		phase[i] = time.Duration(rand.Int64N(int64(interval)))
	}
	order := make([]int, n) // sessions in the order they send within a round
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return int(phase[a] - phase[b]) })

	frame := append([]byte{0x82, 0x80 | 64, 1, 2, 3, 4}, make([]byte, 64)...)
	sentAt := make([]time.Time, n)
	outstanding := make([]bool, n)
	got := make([]int, n)
	inbuf := make([][66]byte, n)
	lat := make([]time.Duration, 0, n*rounds)
	late := make([]time.Duration, 0, n*rounds)
	sends := make([]time.Duration, 0, n*rounds)
	backBuf := make([][]byte, n) // per backend connection: bytes of an incomplete frame
	out := make([]byte, 0, 64<<10)
	rbuf := make([]byte, 64<<10)
	events := make([]unix.EpollEvent, 256)

	ready()
	start := time.Now().Add(20 * time.Millisecond)
	k := 0 // the next send: round k/n, session order[k%n]
	total := n * rounds
	due := func(k int) time.Time {
		return start.Add(time.Duration(k/n)*interval + phase[order[k%n]])
	}
	arm := func(at time.Time) error {
		d := max(time.Until(at), time.Microsecond)
		spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
		return unix.TimerfdSettime(tfd, 0, &spec, nil)
	}
	if err := arm(due(0)); err != nil {
		return nil, st, err
	}
	var drainUntil time.Time // set once every send is out: wait this long for the last echoes
	pending := 0
	for {
		if k == total && (pending == 0 || time.Now().After(drainUntil)) {
			break
		}
		wait := -1
		if k == total {
			wait = int(time.Until(drainUntil)/time.Millisecond) + 1
		}
		nev, err := unix.EpollWait(ep, events, wait)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, st, err
		}
		for _, ev := range events[:nev] {
			id := int(ev.Fd)
			now := time.Now()
			switch {
			case id == 2*n: // the timer: send whatever is due
				var b [8]byte
				_, _ = unix.Read(tfd, b[:])
				for k < total && !due(k).After(now) {
					s := order[k%n]
					late = append(late, now.Sub(due(k)))
					k++
					if outstanding[s] {
						st.skipped++
						continue
					}
					sentAt[s] = time.Now()
					sends = append(sends, sentAt[s].Sub(start))
					if _, err := unix.Write(clients[s], frame); err != nil {
						return nil, st, fmt.Errorf("client write: %w", err)
					}
					outstanding[s] = true
					pending++
					now = time.Now()
				}
				if k < total {
					if err := arm(due(k)); err != nil {
						return nil, st, err
					}
				} else {
					drainUntil = time.Now().Add(2 * time.Second)
				}
			case id < n: // an echo comes back
				m, err := unix.Read(clients[id], inbuf[id][got[id]:])
				if err == unix.EAGAIN {
					continue
				}
				if err != nil || m == 0 {
					return nil, st, fmt.Errorf("session %d: read %d bytes: %v (the target closed it)", id, m, err)
				}
				got[id] += m
				if got[id] < len(inbuf[id]) {
					continue
				}
				got[id] = 0
				if inbuf[id][0] != 0x82 || inbuf[id][1] != 64 || !outstanding[id] {
					return nil, st, fmt.Errorf("session %d: unexpected frame %x", id, inbuf[id][:2])
				}
				lat = append(lat, now.Sub(sentAt[id]))
				outstanding[id] = false
				pending--
			default: // the echo backend
				b := id - n
				m, err := unix.Read(backs[b], rbuf)
				if err == unix.EAGAIN {
					continue
				}
				if err != nil || m == 0 {
					return nil, st, fmt.Errorf("backend connection %d: read %d bytes: %v", b, m, err)
				}
				data := append(backBuf[b], rbuf[:m]...)
				out = out[:0]
				for {
					f, rest, ok := echoFrame(out, data)
					if !ok {
						break
					}
					out, data = f, rest
				}
				backBuf[b] = append(backBuf[b][:0], data...)
				if len(out) > 0 {
					if w, err := unix.Write(backs[b], out); err != nil || w != len(out) {
						return nil, st, fmt.Errorf("backend write: %d of %d bytes: %v", w, len(out), err)
					}
				}
			}
		}
	}
	if pending > 0 {
		return nil, st, fmt.Errorf("%d echoes did not come back within 2 s of the last send", pending)
	}
	slices.Sort(late)
	st.sendLateP99 = pct(late, 99)
	st.bunched = bunched(sends)
	return lat, st, nil
}

// echoFrame appends to out the unmasked echo of the first frame in p (a ping comes back as a
// pong) and returns the bytes after it; ok is false while p holds no complete frame.
func echoFrame(out, p []byte) (_, rest []byte, ok bool) {
	hl, length, ok, err := wsframe.Header(p)
	if !ok || err != nil || length > 1<<20 || uint64(len(p)-hl) < length {
		return out, p, false
	}
	b0, b1 := p[0], p[1]
	if b0&0x0f == 9 {
		b0 = b0&0xf0 | 10
	}
	masked := b1&0x80 != 0
	ext := hl - 2
	var key [4]byte
	if masked {
		ext -= 4
		copy(key[:], p[hl-4:hl])
	}
	out = append(out, b0, b1&^0x80)
	out = append(out, p[2:2+ext]...)
	start := len(out)
	out = append(out, p[hl:hl+int(length)]...)
	if masked {
		unmask(out[start:], key, 0)
	}
	return out, p[hl+int(length):], true
}
