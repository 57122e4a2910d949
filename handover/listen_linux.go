package handover

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenReusePort listens like net.ListenConfig.Listen with SO_REUSEPORT (and SO_REUSEADDR)
// set, so a new server process can bind the address an old one still holds: during a deploy the
// new process starts listening first (the kernel queues connections for it from the moment
// ListenReusePort returns, before it calls Accept), then the old one stops with
// Server.Shutdown and drains what it still carries (sessions.Proxy.Shutdown), and no connection attempt
// is refused. network is "tcp", "tcp4" or "tcp6". Every process sharing the address must use
// SO_REUSEPORT, the same user and the same network namespace.
//
// Linux spreads new connections across the listeners by hash. When a listener closes,
// connections it holds that no process has accepted yet — established ones in its accept queue
// and handshakes in progress (SYN received) — are reset, unless net.ipv4.tcp_migrate_req = 1
// (Linux 5.14+, per network namespace), which moves them to another listener of the group that
// is still listening at that moment: queued ones at close, handshakes when their final ACK or a
// SYN+ACK retransmission comes. Set it on hosts that deploy this way (ReusePortMigration reports
// it), and close the old listener only after the new process is listening.
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

// ReusePortMigration reports whether net.ipv4.tcp_migrate_req is 1 in this process's network
// namespace, that is whether closing a ListenReusePort listener hands the connections queued on
// it to the other listeners instead of resetting them. A server that deploys by SO_REUSEPORT
// should warn at start-up when it is false: each deploy may then reset the few connections that
// arrive in the instant the old listener closes.
func ReusePortMigration() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return false, fmt.Errorf("handover: reading net.ipv4.tcp_migrate_req (Linux 5.14+): %w", err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}
