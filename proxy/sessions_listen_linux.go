package proxy

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenReusePort listens like net.ListenConfig.Listen with SO_REUSEPORT (and SO_REUSEADDR)
// set, so a new proxy process can bind the address an old one still holds: during a deploy the
// new process starts accepting first, then the old one closes its listener and drains its
// sessions with Sessions.Shutdown, and no connection attempt is refused. network is "tcp",
// "tcp4" or "tcp6". Every process sharing the address must use SO_REUSEPORT and the same user.
//
// Linux spreads new connections across the listeners by hash; connections still queued on a
// listener when it closes are reset unless net.ipv4.tcp_migrate_req = 1 (Linux 5.14+), which
// moves them to a surviving listener — set it on hosts that deploy this way.
func ListenReusePort(ctx context.Context, network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(ctx, network, addr)
}

// sessionsFileLimit returns the soft RLIMIT_NOFILE.
func sessionsFileLimit() (uint64, bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return rl.Cur, true
}
