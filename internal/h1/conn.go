package h1

import (
	"errors"
	"io"
	"net"
	"sync"
)

// ErrFull: a head did not fit in the reader's largest buffer.
var ErrFull = errors.New("h1: head too large")

// Reader is a growable read buffer over a connection: a head is parsed in place from Buffered,
// and the bytes after it stay for the body or the next request.
type Reader struct {
	Conn net.Conn
	buf  []byte // nil until the first Fill, and after Release
	r, w int
	size int // of the first buffer
	max  int
}

// NewReader returns a Reader over c with an initial buffer of size bytes, growing to max. The
// buffer is taken at the first Fill, from a pool for the sizes the proxies use (2 and 4 KiB).
func NewReader(c net.Conn, size, max int) *Reader {
	return &Reader{Conn: c, size: size, max: max}
}

// bufPools recycle Readers' first buffers, by size: a connection that closes or parks gives its
// buffer to the next.
var bufPools = map[int]*sync.Pool{2048: {}, 4096: {}}

// Release gives the buffer back when nothing is buffered (and reports whether it did): an idle
// connection then holds none. The next Fill takes one again.
func (b *Reader) Release() bool {
	if b.r != b.w {
		return false
	}
	if p := bufPools[len(b.buf)]; p != nil && len(b.buf) == b.size {
		buf := b.buf
		p.Put(&buf)
	}
	b.buf, b.r, b.w = nil, 0, 0
	return true
}

// Buffered returns the bytes read and not yet consumed.
func (b *Reader) Buffered() []byte { return b.buf[b.r:b.w] }

// Discard consumes n buffered bytes.
func (b *Reader) Discard(n int) {
	b.r += n
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
}

// Fill reads once more from the connection, making room first (moving the unread bytes to the
// front, or growing the buffer up to its maximum: ErrFull when it is full at its maximum).
func (b *Reader) Fill() error {
	if b.buf == nil {
		if p := bufPools[b.size]; p != nil {
			if pb, ok := p.Get().(*[]byte); ok {
				b.buf = *pb
			}
		}
		if b.buf == nil {
			b.buf = make([]byte, b.size)
		}
	}
	if b.w == len(b.buf) {
		if b.r > 0 {
			n := copy(b.buf, b.buf[b.r:b.w])
			b.r, b.w = 0, n
		} else {
			if len(b.buf) >= b.max {
				return ErrFull
			}
			nb := make([]byte, min(2*len(b.buf), b.max))
			copy(nb, b.buf[b.r:b.w])
			b.buf = nb
		}
	}
	n, err := b.Conn.Read(b.buf[b.w:])
	b.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Read reads buffered bytes first, then from the connection: the Reader as an io.Reader for a
// body.
func (b *Reader) Read(p []byte) (int, error) {
	if b.r < b.w {
		n := copy(p, b.buf[b.r:b.w])
		b.Discard(n)
		return n, nil
	}
	return b.Conn.Read(p)
}

// Detach returns the connection with the unconsumed buffered bytes in front, for net/http.
func (b *Reader) Detach() net.Conn {
	if b.r == b.w {
		return b.Conn
	}
	return &replayConn{Conn: b.Conn, pending: append([]byte(nil), b.buf[b.r:b.w]...)}
}

// replayConn is a connection whose first reads return bytes already read from it.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection, for upgraded connections net/http's ReverseProxy carries.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Preload puts p (bytes already read from the connection) in front of what Fill reads next.
func (b *Reader) Preload(p []byte) {
	if len(p) == 0 {
		return
	}
	if b.buf == nil && len(p) <= b.size {
		if pool := bufPools[b.size]; pool != nil {
			if pb, ok := pool.Get().(*[]byte); ok {
				b.buf = *pb
			}
		}
	}
	if len(b.buf)-b.w < len(p) {
		nb := make([]byte, max(b.size, b.w-b.r+len(p)))
		b.w = copy(nb, b.buf[b.r:b.w])
		b.r, b.buf = 0, nb
	}
	b.w += copy(b.buf[b.w:], p)
}
