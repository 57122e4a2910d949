//go:build linux

// Package netns dials TCP connections from inside another network namespace: the way conman
// reaches a sandboxed repl's web port on the repl's own loopback without exposing it on the
// VM's network. LoopbackUp readies a new namespace's loopback.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dial connects to address (host:port) from inside the network namespace that nsfd names: a
// descriptor of /proc/<pid>/ns/net, or a pidfd (Linux 5.8+), which also rules out a reused pid.
// It needs CAP_SYS_ADMIN over that namespace and in the caller's own (root on the VM).
//
// The socket is created on an OS thread that joins the namespace for the call and returns to the
// caller's namespace before it runs anything else; the connection then behaves like any other.
func Dial(ctx context.Context, nsfd int, network, address string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// A fresh goroutine locked to its thread: if the thread cannot return to its own
		// namespace it is never unlocked, and the runtime ends it with the goroutine.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("netns: own namespace: %w", err)}
			return
		}
		defer self.Close()
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("netns: enter: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
			if c != nil {
				c.Close()
			}
			ch <- result{err: fmt.Errorf("netns: return to own namespace: %w", rerr)}
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// LoopbackUp sets lo up in the calling thread's network namespace (a new namespace has it down).
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
