package sessions

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard-dev/switchyard/internal/wsframe"
)

// smallFrame is the largest frame payload the splice relay reads into a pooled buffer
// and writes with its header in one write; larger payloads move with splice(2).
const smallFrame = 16 << 10

var framePool = sync.Pool{New: func() any {
	b := make([]byte, smallFrame+14)
	return &b
}}

// goAwayWait bounds how long a session closed by Shutdown waits for the client's close
// reply before its connection is cut.
const goAwayWait = time.Second

// serveSplice upgrades the client by hand and relays raw bytes between the two TCP connections.
// It reports whether the session was established (and its relay started).
func (s *Proxy) serveSplice(ctx context.Context, w http.ResponseWriter, r *http.Request, a *setupAttempt, leg backendLeg) bool {
	back := leg.(*rawBackend)
	hj, ok := w.(http.Hijacker)
	if !ok {
		back.closeNow()
		s.fail(w, a, StageClient, http.StatusHTTPVersionNotSupported, "connection cannot be upgraded",
			errors.New("ResponseWriter is not an http.Hijacker (HTTP/2?)"))
		return false
	}
	client, brw, err := hj.Hijack()
	if err != nil {
		back.closeNow()
		s.fail(w, a, StageClient, 0, "", fmt.Errorf("hijack: %w", err))
		return false
	}
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		acceptKey(r.Header.Get("Sec-WebSocket-Key")) + "\r\n"
	if p := selectSubprotocol(r); p != "" {
		resp += "Sec-WebSocket-Protocol: " + p + "\r\n"
	}
	resp += "\r\n"
	if dl, ok := ctx.Deadline(); ok {
		_ = client.SetWriteDeadline(dl)
	}
	var clientPending []byte
	if n := brw.Reader.Buffered(); n > 0 {
		p, _ := brw.Reader.Peek(n)
		clientPending = append([]byte(nil), p...)
	}
	if _, err := io.WriteString(client, resp); err != nil {
		_ = client.Close()
		back.closeNow()
		s.fail(nil, a, StageClient, 0, "", fmt.Errorf("writing 101 to client: %w", err))
		return false
	}
	_ = client.SetWriteDeadline(time.Time{})
	established := time.Now()
	s.metrics.setup.Observe(established.Sub(a.start).Seconds())

	sp := &spliceRelay{
		client:        client,
		clientPending: clientPending,
		back:          back.conn,
		backPending:   back.pending,
		linger:        s.cfg.LingerTimeout,
	}
	s.log.Debug("session established", a.attrs(StageOK)...)
	s.relay(a, sp.goAway, func() {
		s.loops.relay(sp)
		stage, reason := sp.run()
		s.end(a, stage, established, reason, sp.c2b.Load(), sp.b2c.Load())
	})
	return true
}

// spliceRelay relays one spliced session. The client→backend direction reads small writes
// through a stack buffer and splices bulk data (see copyClient). The backend→client direction
// reads each frame header so the relay always knows where frames end: payloads up to
// smallFrame are copied with their header in one write, larger ones are spliced with
// io.CopyN.
type spliceRelay struct {
	client, back  net.Conn
	clientPending []byte
	backPending   []byte
	linger        time.Duration

	c2b, b2c atomic.Int64

	mu        sync.Mutex // guards deadlines set from the two directions, goAway, client, back
	goingAway bool
	awayFlag  atomic.Bool // goingAway, for the relay's check at every frame boundary
	clientEOF bool        // the client finished first (FIN or error)
	inLoop    func()      // while an event loop relays the session: asks it to hand it back

	// Left by an event loop that handed the session back (see sessions_loop_linux.go).
	clientOwed []byte // whole frames from conman the client has yet to get
	clientErr  error  // a read error the loop saw on the client's socket
	backErr    error  // a read error the loop saw on conman's socket
	resumeErr  error  // the sockets could not be taken back: the session is over
}

// goAway asks the session to end with a 1001 close frame at the next frame boundary.
func (sp *spliceRelay) goAway() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.goingAway {
		return
	}
	sp.goingAway = true
	sp.awayFlag.Store(true)
	if sp.inLoop != nil {
		sp.inLoop() // the loop hands the session back; resume applies the deadlines
		return
	}
	sp.applyGoAwayDeadlines()
}

// applyGoAwayDeadlines bounds a session that is going away; sp.mu is held. A busy relay stops
// at its next frame boundary; an idle one wakes when its read times out; a frame that does not
// complete in time, or a client that stopped reading, is cut.
func (sp *spliceRelay) applyGoAwayDeadlines() {
	wait := time.Now().Add(goAwayWait)
	_ = sp.back.SetReadDeadline(wait)
	_ = sp.client.SetWriteDeadline(wait)
	_ = sp.client.SetReadDeadline(wait)
}

func (sp *spliceRelay) isGoingAway() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.goingAway
}

// run relays until both directions are done and returns the outcome stage and a reason.
func (sp *spliceRelay) run() (stage, reason string) {
	if sp.resumeErr != nil {
		return StageBackend, "proxy could not take the session back from its event loop: " + sp.resumeErr.Error()
	}
	done := make(chan error, 1)
	go func() { done <- sp.clientToBackend() }()

	res := sp.backendToClient()
	clientFirst := sp.clientFinished() // before the endings below make the client finish too
	var clientErr error
	switch {
	case res.goAway:
		_ = sp.client.SetWriteDeadline(time.Now().Add(goAwayWait))
		_, _ = sp.client.Write(closeFrame(1001, "proxy shutting down"))
		closeWrite(sp.client)
		_ = sp.back.Close()
		_ = sp.client.SetReadDeadline(time.Now().Add(goAwayWait))
		<-done // the client's close reply, or the wait ran out
		_ = sp.client.Close()
		return StageOK, "drain: closed with 1001"
	case res.err == nil && res.atBoundary:
		// conman finished cleanly at a frame boundary (EOF).
		if !res.sawClose && !clientFirst {
			_, _ = sp.client.Write(closeFrame(1014, "backend went away"))
		}
		closeWrite(sp.client)
		sp.setDeadline(sp.client.SetReadDeadline)
		clientErr = <-done
	default:
		// Abnormal: a broken backend connection, a protocol error, or the client is gone.
		_ = sp.client.Close()
		_ = sp.back.Close()
		clientErr = <-done
	}
	_ = sp.client.Close()
	_ = sp.back.Close()

	switch {
	case res.clientWriteErr:
		return StageOK, "client went away"
	case res.sawClose && !normalClose(res.closeCode):
		return StageBackend, fmt.Sprintf("conman closed with %d", res.closeCode)
	case res.sawClose:
		return StageOK, fmt.Sprintf("conman closed with %d", res.closeCode)
	case clientFirst:
		if clientErr != nil {
			return StageOK, "client went away"
		}
		return StageOK, "client closed"
	case res.err != nil:
		return StageBackend, "conman connection broke: " + res.err.Error()
	default:
		return StageBackend, "conman closed without a close frame"
	}
}

func normalClose(code int) bool {
	return code == 0 || code == 1000 || code == 1001
}

func (sp *spliceRelay) clientFinished() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.clientEOF
}

// setDeadline starts the linger period on one direction unless goAway already cut it.
func (sp *spliceRelay) setDeadline(set func(time.Time) error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.goingAway {
		_ = set(time.Now().Add(sp.linger))
	}
}

func (sp *spliceRelay) clientToBackend() error {
	var err error
	if len(sp.clientPending) > 0 {
		var n int
		n, err = sp.back.Write(sp.clientPending)
		sp.c2b.Add(int64(n))
		sp.clientPending = nil
	}
	if err == nil {
		err = sp.copyClient()
	}
	sp.mu.Lock()
	sp.clientEOF = true
	sp.mu.Unlock()
	if err != nil {
		// The client broke off (or the linger ended): nothing more goes either way.
		_ = sp.back.Close()
		return err
	}
	closeWrite(sp.back)
	sp.setDeadline(sp.back.SetReadDeadline)
	return nil
}

// spliceRun is how many bytes the client→conman relay splices once a read filled its
// buffer, before it goes back to reading.
const spliceRun = 1 << 20

// copyClient relays the client's bytes to conman until EOF (nil) or an error. Small writes,
// a terminal's keystrokes, move with one read and one write through a stack buffer: for them
// splice(2) costs more syscall work than it saves copying. A read that fills the buffer means
// bulk data: the next spliceRun bytes are spliced (io.CopyN on two *net.TCPConn), which
// moves them as they arrive, never holding any back. An idle session holds no pipe.
func (sp *spliceRelay) copyClient() error {
	if err := sp.clientErr; err != nil {
		sp.clientErr = nil
		return err
	}
	var buf [headBuf]byte
	for {
		n, err := sp.client.Read(buf[:])
		if n > 0 {
			m, werr := sp.back.Write(buf[:n])
			sp.c2b.Add(int64(m))
			if werr != nil {
				return werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if n == len(buf) {
			m, err := spliceN(sp.back, sp.client, spliceRun)
			sp.c2b.Add(m)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
}

// spliceStep is how much one splice(2) round moves: Go's splice drains up to 1 MiB from the
// source into its pipe, then pumps all of it out before reading again, so a fast sender's data
// left in bursts of hundreds of KiB with the pipeline stalled between them. In 64 KiB steps
// the stream stays steady, as HAProxy's 16 KiB buffers keep it, for no more CPU: one session's
// 1 MiB echo went from 0.86–0.98× HAProxy to 1.01–1.08× at the same 0.37–0.45 ms of proxy CPU
// per MiB (docs/benchmarks/sessions.md). 128 KiB and 32 KiB steps did worse.
const spliceStep = 64 << 10

// spliceN moves n bytes from src to dst like io.CopyN (splice(2) between two *net.TCPConn on
// Linux), in steps of spliceStep.
func spliceN(dst io.Writer, src io.Reader, n int64) (int64, error) {
	var done int64
	for done < n {
		m, err := io.CopyN(dst, src, min(spliceStep, n-done))
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

type pumpResult struct {
	err            error
	atBoundary     bool // the read ended between frames
	goAway         bool // stopped by goAway at a frame boundary
	clientWriteErr bool
	sawClose       bool
	closeCode      int
}

// headBuf is the splice relay's read buffer for conman's side: big enough for the
// header and payload of a typical terminal frame, so those move with one read and one write.
const headBuf = 512

// backendToClient forwards conman's frames to the client until EOF or an error. Each read takes
// what is available into a small buffer; complete frames in it are written to the client at
// once; a frame up to smallFrame is completed in a pooled buffer; the payload of a
// bigger one is spliced.
func (sp *spliceRelay) backendToClient() pumpResult {
	var res pumpResult
	var buf [headBuf]byte
	have := 0 // bytes of buf holding the start of the next frame(s)
	if len(sp.clientOwed) > 0 {
		err := sp.writeClient(sp.clientOwed, &res)
		sp.clientOwed = nil
		if err != nil {
			return res
		}
	}
	for {
		if have == 0 && sp.awayFlag.Load() {
			res.atBoundary, res.goAway = true, true
			return res
		}
		// Parse the next frame header, reading until it is complete.
		var hl int
		var length uint64
		for {
			var ok bool
			var err error
			hl, length, ok, err = wsframe.Header(buf[:have])
			if err != nil {
				res.err = err
				return res
			}
			if ok {
				break
			}
			n, err := sp.readSome(buf[have:])
			have += n
			if err != nil && n == 0 {
				res.atBoundary = have == 0
				if res.atBoundary && sp.isGoingAway() {
					res.goAway = true
					return res
				}
				if have == 0 && errors.Is(err, io.EOF) {
					return res
				}
				res.err = err
				return res
			}
		}
		opcode := buf[0] & 0x0f
		masked := buf[1]&0x80 != 0
		total := uint64(hl) + length
		if opcode >= 8 && length > 125 {
			res.err = fmt.Errorf("conman sent a control frame of %d bytes", length)
			return res
		}
		if opcode == 8 {
			// Control frames fit in buf: complete it to read the status code.
			for uint64(have) < total {
				n, err := sp.readSome(buf[have:total])
				have += n
				if err != nil {
					res.err = err
					return res
				}
			}
			res.sawClose = true
			var key []byte
			if masked {
				key = buf[hl-4 : hl]
			}
			res.closeCode = closeCodeOf(key, buf[hl:total])
		}
		switch {
		case total <= uint64(have):
			// Complete in buf; write it along with any other complete frames behind it.
			end := int(total)
			for {
				h2, l2, ok, err := wsframe.Header(buf[end:have])
				if err != nil || !ok || uint64(end)+uint64(h2)+l2 > uint64(have) || buf[end]&0x0f == 8 {
					break
				}
				end += h2 + int(l2)
			}
			if err := sp.writeClient(buf[:end], &res); err != nil {
				return res
			}
			have = copy(buf[:], buf[end:have])
		case total <= smallFrame+14:
			bp := framePool.Get().(*[]byte)
			fb := (*bp)[:total]
			copy(fb, buf[:have])
			if _, err := sp.readFull(fb[have:]); err != nil {
				framePool.Put(bp)
				res.err = err
				return res
			}
			err := sp.writeClient(fb, &res)
			framePool.Put(bp)
			if err != nil {
				return res
			}
			have = 0
		default:
			if err := sp.writeClient(buf[:have], &res); err != nil {
				return res
			}
			remaining := int64(total) - int64(have)
			have = 0
			if len(sp.backPending) > 0 {
				k := min(int64(len(sp.backPending)), remaining)
				if err := sp.writeClient(sp.backPending[:k], &res); err != nil {
					return res
				}
				sp.backPending = sp.backPending[k:]
				remaining -= k
			}
			n64, err := spliceN(sp.client, sp.back, remaining)
			sp.b2c.Add(n64)
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				res.err = err
				return res
			}
		}
	}
}

func (sp *spliceRelay) writeClient(p []byte, res *pumpResult) error {
	n, err := sp.client.Write(p)
	sp.b2c.Add(int64(n))
	if err != nil {
		res.err, res.clientWriteErr = err, true
	}
	return err
}

// closeCodeOf extracts the status code of a close frame's payload, unmasking it with
// key when conman (wrongly) masked it.
func closeCodeOf(key, payload []byte) int {
	if len(payload) < 2 {
		return 0
	}
	b0, b1 := payload[0], payload[1]
	if key != nil {
		b0 ^= key[0]
		b1 ^= key[1]
	}
	return int(b0)<<8 | int(b1)
}

// readSome reads at least one byte into p: first the bytes left over from the handshake, then
// from conman's connection.
func (sp *spliceRelay) readSome(p []byte) (int, error) {
	if len(sp.backPending) > 0 {
		n := copy(p, sp.backPending)
		sp.backPending = sp.backPending[n:]
		return n, nil
	}
	if err := sp.backErr; err != nil {
		sp.backErr = nil
		return 0, err
	}
	return sp.back.Read(p)
}

// readFull fills p like io.ReadFull, through readSome.
func (sp *spliceRelay) readFull(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := sp.readSome(p[n:])
		n += m
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	return n, nil
}

// closeFrame is an unmasked (server-to-client) close frame.
func closeFrame(code int, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	b := make([]byte, 0, 4+len(reason))
	b = append(b, 0x88, byte(2+len(reason)), byte(code>>8), byte(code))
	return append(b, reason...)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
