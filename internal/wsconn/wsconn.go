// Package wsconn is a small server-side RFC 6455 WebSocket connection that can be handed to
// another process between two frames: its read side keeps every byte it read but did not
// consume, and State carries that, the message being assembled, and whether a close was sent.
// conman's attach data path uses it so that an upgrade in place keeps live connections.
//
// It speaks what the attach contract needs and refuses the rest with a close frame: no
// extensions (RSV bits set: 1002), client frames must be masked (1002), control frames at most
// 125 bytes and unfragmented (1002), text must be UTF-8 (1007), a message larger than the
// limit is 1009. Pings are answered with pongs; a close frame is answered and ends Read with a
// *CloseError.
package wsconn

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/switchyard-dev/switchyard/internal/wsframe"
)

// Message types (the RFC 6455 opcodes).
const (
	Text    = 1
	Binary  = 2
	opCont  = 0
	opClose = 8
	opPing  = 9
	opPong  = 10
)

// Close codes used by the codec itself.
const (
	CloseNormal         = 1000
	CloseProtocolError  = 1002
	CloseInvalidPayload = 1007
	CloseTooBig         = 1009
	closeNoStatus       = 1005
)

// CloseError is what Read returns once the peer sent a close frame.
type CloseError struct {
	Code   int // 1005 when the frame carried no code
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("wsconn: peer closed: %d %s", e.Code, e.Reason)
}

// ProtocolError is what Read returns when the peer broke the protocol; the connection has
// been sent a close frame with Code.
type ProtocolError struct {
	Code int
	Msg  string
}

func (e *ProtocolError) Error() string { return "wsconn: " + e.Msg }

// ErrClosed: Write after a close frame was sent.
var ErrClosed = errors.New("wsconn: close sent")

// Conn is one server-side WebSocket connection. Read is for one goroutine; Write, Close and
// Ping may be called from any.
type Conn struct {
	nc     net.Conn
	maxMsg int

	// read side (the reading goroutine)
	buf      []byte // buf[r:w] is read but not consumed
	r, w     int
	msgOp    int    // opcode of the message being assembled (0: none)
	msg      []byte // its payload so far
	gotClose bool

	wsem      chan struct{} // the write lock, taken with a context (lockWrite)
	closeSent bool          // wsem
	detached  bool          // Detach: nothing more is written until Resume (wsem)
}

// lockWrite takes the write lock unless ctx ends first.
func (c *Conn) lockWrite(ctx context.Context) error {
	select {
	case c.wsem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wsconn: a write does not finish: %w", ctx.Err())
	}
}

func (c *Conn) unlockWrite() { <-c.wsem }

// State is what a successor needs to continue a connection: bytes read but not consumed, the
// message being assembled, and whether a close frame was sent.
type State struct {
	Pending   []byte `json:"pending,omitempty"`
	MsgOp     int    `json:"msg_op,omitempty"`
	Msg       []byte `json:"msg,omitempty"`
	CloseSent bool   `json:"close_sent,omitempty"`
}

// Upgrade answers a WebSocket handshake with 101 (plus the headers in h) and returns the
// connection; maxMsg caps a message (and a frame). On a bad handshake it answers 400 or 426
// itself and returns an error.
func Upgrade(w http.ResponseWriter, r *http.Request, h http.Header, maxMsg int) (*Conn, error) {
	key := r.Header.Get("Sec-WebSocket-Key")
	switch {
	case r.Method != http.MethodGet:
		http.Error(w, "a WebSocket handshake is a GET", http.StatusMethodNotAllowed)
		return nil, errors.New("wsconn: not GET")
	case !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "websocket"):
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "WebSocket upgrade required", http.StatusUpgradeRequired)
		return nil, errors.New("wsconn: not an upgrade")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "unsupported WebSocket version", http.StatusBadRequest)
		return nil, errors.New("wsconn: bad version")
	}
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		http.Error(w, "bad Sec-WebSocket-Key", http.StatusBadRequest)
		return nil, errors.New("wsconn: bad key")
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be upgraded", http.StatusHTTPVersionNotSupported)
		return nil, errors.New("wsconn: not a Hijacker")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, fmt.Errorf("wsconn: hijack: %w", err)
	}
	var pending []byte
	if n := brw.Reader.Buffered(); n > 0 {
		pending, _ = brw.Reader.Peek(n)
		pending = append([]byte(nil), pending...)
	}
	var sb strings.Builder
	sb.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
	sb.WriteString(acceptKey(key))
	sb.WriteString("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			sb.WriteString(k + ": " + v + "\r\n")
		}
	}
	sb.WriteString("\r\n")
	_ = nc.SetDeadline(time.Time{})
	_ = nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write([]byte(sb.String())); err != nil {
		nc.Close()
		return nil, fmt.Errorf("wsconn: write handshake: %w", err)
	}
	_ = nc.SetWriteDeadline(time.Time{})
	return Adopt(nc, State{Pending: pending}, maxMsg), nil
}

// Adopt continues a connection that another Conn (maybe in another process) detached.
func Adopt(nc net.Conn, st State, maxMsg int) *Conn {
	c := &Conn{nc: nc, maxMsg: maxMsg, msgOp: st.MsgOp, msg: st.Msg, closeSent: st.CloseSent, wsem: make(chan struct{}, 1)}
	c.buf = make([]byte, max(4096, len(st.Pending)))
	c.w = copy(c.buf, st.Pending)
	return c
}

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Read returns the next data message (Text or Binary). Pings are answered on the way. A close
// frame from the peer is answered and returned as *CloseError; a protocol violation is closed
// with its code and returned as *ProtocolError; anything else is the connection's error (a
// read deadline leaves the connection intact: call Read again, or Detach).
func (c *Conn) Read() (int, []byte, error) {
	for {
		if c.gotClose {
			return 0, nil, &CloseError{Code: closeNoStatus}
		}
		fin, op, payload, n, err := c.parse()
		if err != nil {
			return 0, nil, c.fail(err)
		}
		if n == 0 {
			if err := c.fill(); err != nil {
				return 0, nil, err
			}
			continue
		}
		c.r += n
		switch op {
		case opPing:
			// Bounded: a peer that pings and does not read cannot hold the reader (or a Close
			// waiting behind the write) for ever.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := c.write(ctx, opPong, payload)
			cancel()
			if err != nil && !errors.Is(err, ErrClosed) {
				return 0, nil, err
			}
			continue
		case opPong:
			continue
		case opClose:
			c.gotClose = true
			ce := &CloseError{Code: closeNoStatus}
			if len(payload) == 1 {
				return 0, nil, c.fail(&ProtocolError{CloseProtocolError, "close frame of one byte"})
			}
			if len(payload) >= 2 {
				ce.Code = int(binary.BigEndian.Uint16(payload))
				ce.Reason = string(payload[2:])
				if !validCloseCode(ce.Code) || !utf8.ValidString(ce.Reason) {
					return 0, nil, c.fail(&ProtocolError{CloseProtocolError, "invalid close code or reason"})
				}
			}
			reply := ce.Code
			if reply == closeNoStatus {
				reply = CloseNormal
			}
			_ = c.Close(reply, "")
			return 0, nil, ce
		case opCont:
			if c.msgOp == 0 {
				return 0, nil, c.fail(&ProtocolError{CloseProtocolError, "continuation without a message"})
			}
		default:
			if c.msgOp != 0 {
				return 0, nil, c.fail(&ProtocolError{CloseProtocolError, "new message inside a fragmented one"})
			}
			c.msgOp = op
		}
		if len(c.msg)+len(payload) > c.maxMsg {
			return 0, nil, c.fail(&ProtocolError{CloseTooBig, "message too big"})
		}
		if !fin {
			c.msg = append(c.msg, payload...)
			continue
		}
		data := payload
		if len(c.msg) > 0 {
			data = append(c.msg, payload...)
		} else {
			data = append([]byte(nil), payload...)
		}
		typ := c.msgOp
		c.msgOp, c.msg = 0, nil
		if typ == Text && !utf8.Valid(data) {
			return 0, nil, c.fail(&ProtocolError{CloseInvalidPayload, "text message is not UTF-8"})
		}
		return typ, data, nil
	}
}

// parse decodes the frame at c.buf[c.r:c.w], unmasking it in place; n is 0 when the frame is
// not complete yet.
func (c *Conn) parse() (fin bool, op int, payload []byte, n int, err error) {
	b := c.buf[c.r:c.w]
	if len(b) < 2 {
		return false, 0, nil, 0, nil
	}
	fin, op = b[0]&0x80 != 0, int(b[0]&0x0f)
	if b[0]&0x70 != 0 {
		return false, 0, nil, 0, &ProtocolError{CloseProtocolError, "reserved bits set"}
	}
	switch op {
	case opCont, Text, Binary:
	case opClose, opPing, opPong:
		if !fin {
			return false, 0, nil, 0, &ProtocolError{CloseProtocolError, "fragmented control frame"}
		}
	default:
		return false, 0, nil, 0, &ProtocolError{CloseProtocolError, fmt.Sprintf("unknown opcode %d", op)}
	}
	if b[1]&0x80 == 0 {
		return false, 0, nil, 0, &ProtocolError{CloseProtocolError, "client frame not masked"}
	}
	hl, length, ok, err := wsframe.Header(b) // hl includes the masking key
	if err != nil {
		return false, 0, nil, 0, &ProtocolError{CloseTooBig, "frame too big"}
	}
	if !ok {
		return false, 0, nil, 0, nil
	}
	if op >= opClose && length > 125 {
		return false, 0, nil, 0, &ProtocolError{CloseProtocolError, "control frame over 125 bytes"}
	}
	if length > uint64(c.maxMsg) {
		return false, 0, nil, 0, &ProtocolError{CloseTooBig, "frame too big"}
	}
	total := hl + int(length)
	if len(b) < total {
		if total > len(c.buf) {
			// Make room for the whole frame (bounded by maxMsg).
			nb := make([]byte, total)
			copy(nb, b)
			c.buf, c.r, c.w = nb, 0, len(b)
		}
		return false, 0, nil, 0, nil
	}
	key := b[hl-4 : hl]
	payload = b[hl:total]
	for i := range payload {
		payload[i] ^= key[i&3]
	}
	// Unmasked in place: the caller consumes the frame (c.r moves past it), so a handoff never
	// carries these bytes.
	return fin, op, payload, total, nil
}

// fill reads more bytes from the connection, compacting the buffer first.
func (c *Conn) fill() error {
	if c.r > 0 {
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
	if c.w == len(c.buf) {
		nb := make([]byte, 2*len(c.buf))
		copy(nb, c.buf[:c.w])
		c.buf = nb
	}
	n, err := c.nc.Read(c.buf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	return err
}

func (c *Conn) fail(err error) error {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		_ = c.Close(pe.Code, pe.Msg)
	}
	return err
}

func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// Write sends one message of type typ (Text or Binary). ctx bounds it: when ctx ends the
// write fails and the connection must be dropped (a frame may be half written).
func (c *Conn) Write(ctx context.Context, typ int, p []byte) error {
	return c.write(ctx, typ, p)
}

func (c *Conn) write(ctx context.Context, op int, p []byte) error {
	var hdr [10]byte
	hdr[0] = 0x80 | byte(op)
	hl := 2
	switch {
	case len(p) < 126:
		hdr[1] = byte(len(p))
	case len(p) <= 0xffff:
		hdr[1] = 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(len(p)))
		hl = 4
	default:
		hdr[1] = 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(len(p)))
		hl = 10
	}
	if err := c.lockWrite(ctx); err != nil {
		return err
	}
	defer c.unlockWrite()
	if c.closeSent || c.detached {
		return ErrClosed
	}
	if op == opClose {
		c.closeSent = true
	}
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetWriteDeadline(time.Unix(1, 0)) })
	bufs := net.Buffers{hdr[:hl], p}
	_, err := bufs.WriteTo(c.nc)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	return err
}

// Close sends a close frame with code and reason (once) and gives the peer two seconds to
// answer: the reading goroutine then sees its close, or a timeout. It does not close the
// connection: CloseNow does.
func (c *Conn) Close(code int, reason string) error {
	if len(reason) > 123 {
		reason = reason[:123]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	p := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	copy(p[2:], reason)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.write(ctx, opClose, p)
	_ = c.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	return err
}

// CloseNow closes the connection without a close frame.
func (c *Conn) CloseNow() error { return c.nc.Close() }

// SetReadDeadline sets the read deadline of the underlying connection (Read returns a timeout
// error past it, and can be called again).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// state is what Detach hands over (the caller holds the write lock and the reading goroutine
// stopped).
func (c *Conn) state() State {
	return State{Pending: append([]byte(nil), c.buf[c.r:c.w]...), MsgOp: c.msgOp,
		Msg: append([]byte(nil), c.msg...), CloseSent: c.closeSent}
}

// Resume undoes Detach when the successor did not take the connection: writes work again
// (e.g. a close frame).
func (c *Conn) Resume() {
	c.wsem <- struct{}{}
	c.detached = false
	c.unlockWrite()
}

// Detach stops the connection between two frames and returns its state and a duplicate of its
// descriptor (unwrapping NetConn() wrappers), for Adopt in another process. The reading goroutine must have stopped (e.g. by a
// read deadline); a write in progress is waited for until ctx ends (then Detach fails: the
// frame stream is not at a boundary). After Detach nothing more is written (until Resume);
// close the Conn with CloseNow once the descriptor has been passed on.
func (c *Conn) Detach(ctx context.Context) (State, *os.File, error) {
	if err := c.lockWrite(ctx); err != nil {
		return State{}, nil, err
	}
	st := c.state()
	c.detached = true // nothing more from this side
	c.unlockWrite()
	nc := c.nc
	for {
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = u.NetConn()
	}
	fc, ok := nc.(interface{ File() (*os.File, error) })
	if !ok {
		return State{}, nil, fmt.Errorf("wsconn: %T has no descriptor", c.nc)
	}
	f, err := fc.File()
	if err != nil {
		return State{}, nil, fmt.Errorf("wsconn: %w", err)
	}
	return st, f, nil
}
