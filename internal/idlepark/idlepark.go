// Package idlepark keeps idle keep-alive connections without a goroutine or a read buffer each,
// and, once they have idled a while, without a net.Conn either: a few dozen bytes each.
//
// Park takes a TCP connection (nothing buffered) into an epoll set of the Set's own, which one
// goroutine waits on through the runtime's netpoller. When the client sends again, or closes, the
// Set's wake function gets the connection on a new goroutine, with the value parked beside it.
// Nothing is read while a connection is parked: what the client sent is all there when it wakes.
// A parked connection that stays silent past its timeout is closed.
//
// A parked connection is warm at first: it keeps its net.Conn (about 0.5 KiB of heap, and the
// runtime's poll descriptor, which the runtime keeps for reuse once allocated, never freeing
// it), and waking it costs about 2 µs of CPU more than a goroutine blocked in Read. After the
// Set's coldAfter it goes cold: a duplicate of its descriptor is kept and the net.Conn closed;
// waking it makes a new net.Conn for the socket (net.FileConn), some 16 µs more (measured by
// BenchmarkWake beside BenchmarkWakeNetpoller).
//
// A server parks a connection only after it has been idle for a while (hosting.Server: 50 ms by
// default), so that a busy keep-alive connection never pays for it.
//
// A connection a listener wrapped (connlimit's, which counts connections per client address) is
// parked when the wrapper implements Rewrapper: the wrapper stays parked with the socket, still
// counted, and gets the new net.Conn when a cold connection wakes; closing a parked connection
// closes the wrapper.
//
// The package is Linux-only; elsewhere New returns nil and connections keep their goroutines.
package idlepark

import (
	"errors"
	"net"
)

// Rewrapper is a net.Conn wrapping another (as connlimit's connections do) that lets Park take
// the connection underneath out and put a new one in when it wakes.
type Rewrapper interface {
	net.Conn
	// NetConn returns the connection underneath.
	NetConn() net.Conn
	// SetNetConn replaces it (the old one is closed). Called only while nothing else uses the
	// connection.
	SetNetConn(net.Conn)
}

// ErrClosed is returned by Park after Close or Drain: the caller keeps the connection.
var ErrClosed = errors.New("idlepark: set closed")

// ErrNotParkable is returned by Park for a connection that is not a *net.TCPConn, or a Rewrapper
// of one: the caller keeps it.
var ErrNotParkable = errors.New("idlepark: connection cannot be parked")

// Parkable reports whether Park can take c: a *net.TCPConn, or a Rewrapper around one.
func Parkable(c net.Conn) bool {
	_, _, ok := split(c)
	return ok
}

// split returns the TCP connection of c and the wrapper around it, if any.
func split(c net.Conn) (*net.TCPConn, Rewrapper, bool) {
	if tc, ok := c.(*net.TCPConn); ok {
		return tc, nil, true
	}
	if w, ok := c.(Rewrapper); ok {
		if tc, ok := w.NetConn().(*net.TCPConn); ok {
			return tc, w, true
		}
	}
	return nil, nil, false
}
