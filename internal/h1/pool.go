package h1

import (
	"context"
	"net"
	"sync"
	"time"
)

// Backend is a connection to a backend with its read buffer.
type Backend struct {
	*Reader
	addr   string
	idleAt time.Time
	// Reused: the connection served an earlier request, so a failure before any answer may
	// just mean the backend closed it while it was idle.
	Reused bool
}

// Close closes the connection.
func (b *Backend) Close() error { return b.Conn.Close() }

// Pool keeps idle keep-alive connections to backends, by address. The zero value is not
// usable; use NewPool.
type Pool struct {
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration
	maxHead     int

	mu     sync.Mutex
	idle   map[string][]*Backend
	closed bool
}

// NewPool returns a Pool keeping at most maxIdle idle connections per address, each for at most
// idleTimeout. A backend's response head may take up to maxHead bytes.
func NewPool(maxIdle int, idleTimeout time.Duration, maxHead int) *Pool {
	return &Pool{
		dialer:      net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     maxIdle,
		idleTimeout: idleTimeout,
		maxHead:     maxHead,
		idle:        make(map[string][]*Backend),
	}
}

// Get returns an idle connection to addr (host:port), or dials one.
func (p *Pool) Get(ctx context.Context, addr string) (*Backend, error) {
	now := time.Now()
	p.mu.Lock()
	for {
		l := p.idle[addr]
		if len(l) == 0 {
			break
		}
		b := l[len(l)-1]
		l[len(l)-1] = nil
		p.idle[addr] = l[:len(l)-1]
		if now.Sub(b.idleAt) < p.idleTimeout {
			p.mu.Unlock()
			b.Reused = true
			return b, nil
		}
		p.mu.Unlock()
		_ = b.Close()
		p.mu.Lock()
	}
	p.mu.Unlock()
	return p.Dial(ctx, addr)
}

// Dial dials a new connection to addr.
func (p *Pool) Dial(ctx context.Context, addr string) (*Backend, error) {
	c, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Backend{Reader: NewReader(c, 4096, p.maxHead), addr: addr}, nil
}

// Put returns b to the pool (or closes it when the pool is full or closed). b must have no
// unread bytes.
func (p *Pool) Put(b *Backend) {
	if len(b.Buffered()) > 0 {
		_ = b.Close()
		return
	}
	b.idleAt = time.Now()
	p.mu.Lock()
	l := p.idle[b.addr]
	if p.closed || len(l) >= p.maxIdle {
		p.mu.Unlock()
		_ = b.Close()
		return
	}
	var stale *Backend
	if len(l) > 0 && b.idleAt.Sub(l[0].idleAt) >= p.idleTimeout {
		// The bottom of the stack waited longest: let it go, one per Put.
		stale = l[0]
		l = append(l[:0], l[1:]...)
	}
	p.idle[b.addr] = append(l, b)
	p.mu.Unlock()
	if stale != nil {
		_ = stale.Close()
	}
}

// Close closes every idle connection; later Puts close theirs.
func (p *Pool) Close() {
	p.mu.Lock()
	idle := p.idle
	p.idle = make(map[string][]*Backend)
	p.closed = true
	p.mu.Unlock()
	for _, l := range idle {
		for _, b := range l {
			_ = b.Close()
		}
	}
}

// NewBackend returns a Backend for c, a connection to addr that Pool.Put may keep, with
// buffered (bytes already read from it) in front.
func (p *Pool) NewBackend(c net.Conn, addr string, buffered []byte, reused bool) *Backend {
	b := &Backend{Reader: NewReader(c, 4096, p.maxHead), addr: addr, Reused: reused}
	b.Preload(buffered)
	return b
}
