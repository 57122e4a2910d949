package idlepark

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Detach takes c's socket out of the Go runtime: it returns a duplicate of its descriptor
// (close-on-exec, in c's blocking mode: non-blocking) and closes the *net.TCPConn, keeping the
// wrapper around it, if any (as cold parked connections are kept). The caller owns the
// descriptor; Attach makes a net.Conn of it again. ErrNotParkable when c is neither a
// *net.TCPConn nor a Rewrapper around one.
func Detach(c net.Conn) (int, Rewrapper, error) {
	tc, w, ok := split(c)
	if !ok {
		return -1, nil, ErrNotParkable
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, nil, err
	}
	if derr != nil {
		return -1, nil, os.NewSyscallError("fcntl", derr)
	}
	_ = tc.Close() // the runtime's descriptor; the socket stays open through fd
	return fd, w, nil
}

// Attach returns a net.Conn for the socket fd (a descriptor Detach returned), inside w when w is
// not nil. It takes fd: on success and on error alike it is closed (the net.Conn has a
// duplicate); on error w is closed too.
func Attach(fd int, w Rewrapper) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f) // duplicates the descriptor, in the netpoller
	_ = f.Close()
	if err != nil {
		if w != nil {
			_ = w.Close()
		}
		return nil, err
	}
	if w != nil {
		w.SetNetConn(c)
		return w, nil
	}
	return c, nil
}
