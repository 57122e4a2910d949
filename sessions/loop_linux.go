package sessions

import (
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/internal/eventloop"

	"github.com/switchyard-dev/switchyard/internal/wsframe"
)

// The event loops (Config.EventLoops) relay established splice-mode sessions while their
// traffic is small messages, the shape of a terminal session; see internal/eventloop. A loop
// handles only the steady state. Anything else hands the session back, for good, to the
// goroutine relay (spliceRelay.run) in a state it resumes from exactly: bytes the loop read
// but did not write travel with the session: clientPending (client → conman), clientOwed
// (whole frames → client) and backPending (the start of an incomplete frame from conman).

// spliceLoops is the set of event loops of one Proxy.
type spliceLoops struct {
	g *eventloop.Group
}

// newSpliceLoops returns n loops drawing on budget, or nil when n < 1 or GOMAXPROCS leaves no P
// for the rest of the program once n of them are held.
func newSpliceLoops(n int, budget *LoopBudget, m *proxyMetrics) *spliceLoops {
	if n < 1 {
		return nil
	}
	g := eventloop.New(eventloop.Config{Loops: n, Budget: &budget.b, Frames: loopFrames,
		InLoop: m.inLoop, HandBacks: m.handbacks})
	if g == nil {
		return nil
	}
	return &spliceLoops{g: g}
}

// wait returns once every loop goroutine has returned (they return when their last session
// is handed back).
func (p *spliceLoops) wait() {
	if p != nil {
		p.g.Wait()
	}
}

// relay runs sp in a loop until the loop hands it back, then installs the state it was handed
// back in, so sp.run resumes where the loop stopped. It returns at once, leaving sp as it was,
// when the session cannot go into a loop (sockets that are not plain TCP, GOMAXPROCS too low,
// descriptors exhausted).
func (p *spliceLoops) relay(sp *spliceRelay) {
	if p == nil || !p.g.Usable() {
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
	ls := p.g.Session(cfd, bfd, sp.clientPending, sp.backPending, &sp.c2b, &sp.b2c)
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
	sp.inLoop = ls.HandBack
	sp.mu.Unlock()
	sp.resume(ls.Run())
}

// resume installs a handed-back session's sockets and bytes.
func (sp *spliceRelay) resume(hb eventloop.Handback) {
	client, cerr := loopConn(hb.Client)
	back, berr := loopConn(hb.Backend)
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
	sp.clientPending = hb.ClientPending
	sp.clientOwed = hb.ClientOwed
	sp.backPending = hb.BackPending
	sp.clientErr, sp.backErr = hb.ClientErr, hb.BackErr
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

// loopFrames returns the end of the whole frames at the start of p that the loop relays, and
// whether the frame after them needs the goroutine relay: a close frame, a control frame too
// big to be one, a frame too big for the loop, or a malformed header.
func loopFrames(p []byte) (end int, stop bool) {
	for {
		hl, length, ok, err := wsframe.Header(p[end:])
		if err != nil {
			return end, true
		}
		if !ok {
			return end, false
		}
		opcode := p[end] & 0x0f
		total := uint64(hl) + length
		if opcode == 8 || (opcode >= 8 && length > 125) || total > eventloop.MaxFrame {
			return end, true
		}
		if uint64(len(p)-end) < total {
			return end, false
		}
		end += int(total)
	}
}
