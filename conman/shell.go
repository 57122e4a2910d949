package conman

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/internal/wsconn"
)

// outputChunk is the most a shell reads from its pty, or sends in one message, at once.
const outputChunk = 32 << 10

// shell is one shell on a pty: it outlives the attach connections that show it (a broken
// connection detaches it for Config.ResumeWindow; a resume attaches it again). Its output goes
// through a ring buffer, so a resume replays what the last connection missed.
type shell struct {
	id    string
	repl  *repl
	proc  Process
	keep  int64 // output a resume can replay: Config.OutputBuffer
	chunk int   // read size: the ring holds keep+chunk bytes

	mu       sync.Mutex
	out      *ring
	changed  chan struct{} // closed and replaced on every change of out, att or ended
	att      *attachment   // nil while detached
	detached bool
	gen      int         // detach generation: a stale expiry timer does nothing
	seq      uint64      // detach order among the server's shells (the cap kills the lowest)
	timer    *time.Timer // expiry while detached
	deadline time.Time   // when a detached shell expires
	ended    bool        // the shell is gone; code and reason say why
	code     int
	reason   string
	handoff  bool // handed over to another conman: the pump stops without ending the shell

	killOnce   sync.Once
	kill       chan struct{}
	killCode   int
	killReason string
	done       chan struct{} // closed when run returns
}

// newSessionID returns 128 random bits, URL-safe.
func newSessionID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// validSessionID reports whether id has the form newSessionID returns.
func validSessionID(id string) bool {
	if len(id) != 22 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(id)
	return err == nil
}

// newShell registers a shell over proc for rp, attached to att from offset 0, and starts it.
func (s *Server) newShell(rp *repl, proc Process, att *attachment) *shell {
	sh := s.makeShell(newSessionID(), rp, proc, newRing(s.cfg.OutputBuffer+min(outputChunk, s.cfg.OutputBuffer)))
	sh.att = att
	s.startShell(sh)
	return sh
}

func (s *Server) makeShell(id string, rp *repl, proc Process, out *ring) *shell {
	return &shell{
		id: id, repl: rp, proc: proc, out: out,
		keep: int64(s.cfg.OutputBuffer), chunk: min(outputChunk, s.cfg.OutputBuffer),
		changed: make(chan struct{}), kill: make(chan struct{}), done: make(chan struct{}),
	}
}

// startShell registers sh and starts its goroutines (the caller holds no lock).
func (s *Server) startShell(sh *shell) {
	s.mu.Lock()
	s.shells[sh.id] = sh
	s.wg.Add(1)
	s.mu.Unlock()
	go sh.run(s)
}

// broadcast wakes everything waiting on sh.changed. sh.mu must be held.
func (sh *shell) broadcast() {
	close(sh.changed)
	sh.changed = make(chan struct{})
}

// stop kills the shell; code and reason are what its attach connection is closed with (the first
// caller wins).
func (sh *shell) stop(code int, reason string) {
	sh.killOnce.Do(func() {
		sh.killCode, sh.killReason = code, reason
		close(sh.kill)
	})
}

// killed reports whether stop was called.
func (sh *shell) killed() bool {
	select {
	case <-sh.kill:
		return true
	default:
		return false
	}
}

type pumpResult struct {
	code    int
	reason  string
	handoff bool // the pump stopped for a handoff: the shell lives on elsewhere
}

// run owns the shell: it pumps the pty's output into the ring until the shell exits or is
// killed, then closes the process and unregisters the shell.
func (sh *shell) run(s *Server) {
	defer s.wg.Done()
	defer close(sh.done)
	pumped := make(chan pumpResult, 1)
	go func() { pumped <- sh.pump(s) }()
	var res pumpResult
	var pumpDone bool
	select {
	case res = <-pumped:
		pumpDone = true
	case <-sh.kill:
		res = pumpResult{code: sh.killCode, reason: sh.killReason}
	case <-sh.repl.exited:
		res = pumpResult{code: CloseShellExited, reason: "repl container exited"}
		s.mu.Lock()
		if sh.repl.stopping {
			// conman stopped it (it moved, or a proxy fenced it): not the shell's own end, and
			// the client should reconnect. The pump says the same when it sees the end first.
			res = pumpResult{code: CloseDraining, reason: "the repl was stopped on this VM: reconnect"}
		}
		s.mu.Unlock()
	}
	if res.handoff {
		// The process now belongs to the conman it was handed to; Handoff closes our copy.
		s.unregisterShell(sh, pumpResult{code: CloseResumeHere, reason: "conman upgrade: resume on the same VM"})
		return
	}
	sh.proc.Close()
	if !pumpDone {
		<-pumped
	}
	s.unregisterShell(sh, res)
}

// unregisterShell marks sh ended with res and forgets it.
func (s *Server) unregisterShell(sh *shell, res pumpResult) {
	sh.mu.Lock()
	sh.ended, sh.code, sh.reason = true, res.code, res.reason
	if sh.timer != nil {
		sh.timer.Stop()
	}
	wasDetached := sh.detached
	sh.detached = false
	sh.broadcast()
	sh.mu.Unlock()
	if wasDetached {
		s.m.detachedNow.Dec()
	}
	s.mu.Lock()
	if s.shells[sh.id] == sh {
		delete(s.shells, sh.id)
	}
	s.mu.Unlock()
}

// pump copies the pty's output into the ring. While a connection is attached it reads only
// when that connection is at most keep bytes behind, so live output is never overwritten
// before it was sent (backpressure to the shell, as a direct pipe would give); detached, it
// reads on and the ring keeps the newest bytes.
func (sh *shell) pump(s *Server) pumpResult {
	buf := make([]byte, sh.chunk)
	out := sh.proc.Stdout()
	for {
		sh.mu.Lock()
		for sh.att != nil && sh.out.produced-sh.att.pos > sh.keep && !sh.handoff {
			ch := sh.changed
			sh.mu.Unlock()
			select {
			case <-ch:
			case <-sh.kill:
				return pumpResult{}
			}
			sh.mu.Lock()
		}
		handoff := sh.handoff
		sh.mu.Unlock()
		if handoff {
			return pumpResult{handoff: true}
		}
		n, err := out.Read(buf)
		if n > 0 {
			sh.mu.Lock()
			sh.out.write(buf[:n])
			sh.broadcast()
			sh.mu.Unlock()
		}
		if err == nil {
			continue
		}
		sh.mu.Lock()
		handoff = sh.handoff
		sh.mu.Unlock()
		if handoff && errors.Is(err, os.ErrDeadlineExceeded) {
			return pumpResult{handoff: true}
		}
		select {
		case <-sh.kill:
			return pumpResult{}
		default:
		}
		wctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
		code, werr := sh.proc.Wait(wctx)
		cancel()
		s.mu.Lock()
		stopped := sh.repl.stopping
		s.mu.Unlock()
		switch {
		case stopped:
			// conman stopped the repl here (it moved, or a proxy fenced it): not the shell's
			// own end. 1012 tells the client to reconnect.
			return pumpResult{code: CloseDraining, reason: "the repl was stopped on this VM: reconnect"}
		case werr != nil:
			return pumpResult{code: CloseShellExited, reason: "shell ended (container exited)"}
		default:
			return pumpResult{code: CloseShellExited, reason: fmt.Sprintf("shell exited with code %d", code)}
		}
	}
}

// How an attach connection ended.
type endKind int

const (
	endShell     endKind = iota // the shell ended (or is handed over): close with its code
	endClean                    // the peer sent a close frame: the shell is killed
	endBroken                   // the connection broke without a close frame: the shell detaches
	endTakenOver                // a resume took the shell to another connection
	endProtocol                 // the peer broke the protocol: close with code, kill the shell
	endHandoff                  // handed to another conman: let go of it without a word
)

// attachment is one attach connection showing a shell.
type attachment struct {
	conn   *wsconn.Conn
	pos    int64 // output offset of the next byte to send (sh.mu)
	frozen bool  // a handoff stops its loops where they are (sh.mu)
	// handedOff: a handoff took the shell while this connection was in its handshake (sh.mu).
	handedOff bool
	loops     sync.WaitGroup

	once   sync.Once
	kind   endKind
	code   int
	reason string
	done   chan struct{}
}

func newAttachment() *attachment { return &attachment{done: make(chan struct{})} }

func (a *attachment) end(kind endKind, code int, reason string) {
	a.once.Do(func() {
		a.kind, a.code, a.reason = kind, code, reason
		close(a.done)
	})
}

// brokenConn reports whether err means the connection broke (no close frame: EOF, reset,
// timeout) rather than a protocol error or our own closing.
func brokenConn(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout())
}

// attach runs one attach connection of sh until it ends, then decides the shell's fate: a
// broken connection detaches it, a clean close or a protocol error kills it.
func (s *Server) attach(sh *shell, att *attachment) {
	s.m.sessions.Inc()
	defer s.m.sessions.Dec()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	conn := att.conn
	// att.loops was counted when att.conn was set (connect, inherit), so a handoff that sees the
	// connection waits for these loops.
	go func() { // ring → client
		defer att.loops.Done()
		sh.send(ctx, att)
	}()
	go func() { // client → pty
		defer att.loops.Done()
		sh.receive(att)
	}()
	<-att.done
	if att.kind == endHandoff {
		// Our copy: the successor holds the connection (or, if it could not be detached, the
		// peer resumes the session there). A write still stuck ends with it.
		cancel()
		_ = conn.CloseNow()
		att.loops.Wait()
		return
	}
	if att.code >= 0 {
		// The reader sees the peer's answer, or times out in two seconds. A write stuck on a
		// peer that does not read holds the close frame back for at most five.
		_ = conn.Close(att.code, att.reason)
	} else {
		_ = conn.CloseNow()
	}
	cancel()
	att.loops.Wait()
	_ = conn.CloseNow()
	switch att.kind {
	case endBroken:
		s.detach(sh, att)
	case endClean, endProtocol:
		sh.stop(CloseShellExited, "the client closed the session")
	}
}

// receive copies the client's messages to the pty (binary) or applies them (text: control).
func (sh *shell) receive(att *attachment) {
	in := sh.proc.Stdin()
	inputGone := false
	for {
		typ, data, err := att.conn.Read()
		if err != nil {
			var ce *wsconn.CloseError
			var pe *wsconn.ProtocolError
			sh.mu.Lock()
			frozen := att.frozen
			sh.mu.Unlock()
			switch {
			case frozen && errors.Is(err, os.ErrDeadlineExceeded):
				// A handoff stopped us between two frames.
			case errors.As(err, &ce):
				att.end(endClean, -1, "")
			case errors.As(err, &pe):
				att.end(endProtocol, -1, "") // the codec closed with pe.Code
			case brokenConn(err):
				att.end(endBroken, -1, "")
			default:
				att.end(endProtocol, -1, "")
			}
			return
		}
		if typ == wsconn.Binary {
			if inputGone {
				continue
			}
			if _, err := in.Write(data); err != nil {
				// The pty's other side is gone: the shell is ending. How the session ends is the
				// output side's decision (pump: 1012 when conman stopped the repl, 1000 when the
				// shell exited on its own); deciding here raced it and told a client whose repl
				// conman stopped that its shell had exited. Keep reading, so close frames and
				// pings are still answered, and drop the input.
				inputGone = true
			}
			continue
		}
		size, ok, err := ParseControl(data)
		if err != nil {
			att.end(endProtocol, wsconn.CloseInvalidPayload, err.Error())
			return
		}
		if ok {
			_ = sh.proc.Resize(size)
		}
	}
}

// send writes the shell's output from att.pos to the connection until the shell ends (then
// it closes with the shell's code), another connection takes the shell, or a handoff freezes
// the attachment.
func (sh *shell) send(ctx context.Context, att *attachment) {
	buf := make([]byte, sh.chunk)
	for {
		sh.mu.Lock()
		for sh.att == att && !att.frozen && att.pos >= sh.out.produced && !sh.ended {
			ch := sh.changed
			sh.mu.Unlock()
			select {
			case <-ch:
			case <-att.done:
				return
			}
			sh.mu.Lock()
		}
		if sh.att != att || att.frozen {
			sh.mu.Unlock()
			return
		}
		if att.pos < sh.out.produced {
			att.pos = max(att.pos, sh.out.oldest()) // kept by the pump's backpressure; defensive
			n := sh.out.read(att.pos, buf)
			sh.mu.Unlock()
			if err := att.conn.Write(ctx, wsconn.Binary, buf[:n]); err != nil {
				if ctx.Err() == nil {
					att.end(endBroken, -1, "")
				}
				return
			}
			sh.mu.Lock()
			att.pos += int64(n)
			sh.broadcast()
			sh.mu.Unlock()
			continue
		}
		code, reason := sh.code, sh.reason
		sh.mu.Unlock()
		att.end(endShell, code, reason)
		return
	}
}

// detach keeps sh, whose connection att broke, for Config.ResumeWindow; past
// Config.MaxDetachedPerRepl detached shells of its repl, the oldest is killed.
func (s *Server) detach(sh *shell, att *attachment) {
	if s.cfg.ResumeWindow < 0 {
		sh.stop(CloseShellExited, "the connection broke")
		return
	}
	sh.mu.Lock()
	if sh.att != att || sh.ended {
		sh.mu.Unlock()
		return
	}
	sh.att = nil
	sh.detached = true
	sh.gen++
	gen := sh.gen
	sh.deadline = time.Now().Add(s.cfg.ResumeWindow)
	sh.timer = time.AfterFunc(s.cfg.ResumeWindow, func() { s.expire(sh, gen) })
	sh.broadcast()
	sh.mu.Unlock()
	s.m.detached.Inc()
	s.m.detachedNow.Inc()
	s.log.Debug("conman: attach connection broke; shell detached", "repl", sh.repl.id)

	// The cap: detached shells of this repl, oldest (lowest detach order) first.
	s.mu.Lock()
	s.detachSeq++
	sh.detachOrder(s.detachSeq)
	var mine []*shell
	for _, x := range s.shells {
		if x.repl.id == sh.repl.id && x.isDetached() {
			mine = append(mine, x)
		}
	}
	s.mu.Unlock()
	for len(mine) > s.cfg.MaxDetachedPerRepl {
		oldest := 0
		for i, x := range mine {
			if x.order() < mine[oldest].order() {
				oldest = i
			}
		}
		mine[oldest].stop(CloseShellExited, "too many detached shells")
		s.m.expired.Inc()
		mine = append(mine[:oldest], mine[oldest+1:]...)
	}
}

// expire kills sh if it is still detached in generation gen.
func (s *Server) expire(sh *shell, gen int) {
	sh.mu.Lock()
	still := sh.detached && sh.gen == gen && !sh.ended
	sh.mu.Unlock()
	if still {
		s.m.expired.Inc()
		sh.stop(CloseShellExited, "resume window expired")
	}
}

func (sh *shell) isDetached() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.detached && !sh.ended
}

// detachOrder records the order in which sh detached (s.mu held).
func (sh *shell) detachOrder(n uint64) {
	sh.mu.Lock()
	sh.seq = n
	sh.mu.Unlock()
}

func (sh *shell) order() uint64 {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.seq
}

// errSessionGone and errOffset are the two ways a resume is refused.
var (
	errSessionGone = errors.New("no such session: it ended, expired or never existed")
	errOffset      = errors.New("offset is past the output the session produced")
)

// resume attaches att to the shell id of repl from output offset off, taking the shell from
// any connection that holds it. It returns the shell and the bytes lost (off older than the
// ring holds).
func (s *Server) resume(repl, id string, off int64, att *attachment) (*shell, int64, error) {
	s.mu.Lock()
	sh := s.shells[id]
	s.mu.Unlock()
	if sh == nil || sh.repl.id != repl {
		return nil, 0, errSessionGone
	}
	sh.mu.Lock()
	if sh.ended || sh.handoff || sh.killed() {
		sh.mu.Unlock()
		return nil, 0, errSessionGone
	}
	if off > sh.out.produced {
		sh.mu.Unlock()
		return nil, 0, errOffset
	}
	start := max(off, sh.out.produced-sh.keep, 0)
	att.pos = start
	old := sh.att
	sh.att = att
	wasDetached := sh.detached
	sh.detached = false
	if sh.timer != nil {
		sh.timer.Stop()
	}
	sh.broadcast()
	sh.mu.Unlock()
	if old != nil {
		old.end(endTakenOver, CloseTakenOver, "the session was resumed on another connection")
	}
	if wasDetached {
		s.m.detachedNow.Dec()
	}
	s.m.resumed.Inc()
	return sh, start - off, nil
}
