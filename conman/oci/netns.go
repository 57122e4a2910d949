//go:build linux

package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/netns"
)

// newNetns creates a network namespace with its loopback up and pins it at file (a bind mount,
// as ip-netns does), for runtimes that join a namespace rather than create one (runsc with
// --network=host).
func newNetns(file string) error {
	unmountAll(file)
	if err := os.MkdirAll(filepath.Dir(file), 0o711); err != nil {
		return fmt.Errorf("oci: netns: %w", err)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		return fmt.Errorf("oci: netns: %w", err)
	}
	errc := make(chan error, 1)
	go func() {
		// A thread of its own: if it cannot return to the caller's namespace it stays locked
		// and dies with this goroutine.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", file, "", unix.MS_BIND, "")
		if err == nil {
			err = netns.LoopbackUp()
		}
		if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to own namespace: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		unmountAll(file)
		return fmt.Errorf("oci: netns: %w", err)
	}
	return nil
}

// DialContainer implements conman.Dialer: a TCP connection to port on the container's
// loopback, made inside its network namespace.
func (r *Runtime) DialContainer(ctx context.Context, id string, port int) (net.Conn, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("%w: port %d", conman.ErrInvalid, port)
	}
	c, err := r.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	running, pid := c.p.Status.State == conman.Running, c.p.Status.Pid
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("%w: %s", conman.ErrNotRunning, id)
	}
	var ns *os.File
	if r.gvisor {
		ns, err = os.Open(filepath.Join(r.runDir, id, "netns"))
	} else {
		// The init's pidfd names its namespaces and cannot name a reused pid.
		ns, err = pidfdOpen(pid)
		if err == nil && exitedNow(ns) {
			ns.Close()
			err = fmt.Errorf("%w: %s", conman.ErrNotRunning, id)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("oci: network namespace of %s: %w", id, err)
	}
	defer ns.Close()
	var conn net.Conn
	rc, err := ns.SyscallConn()
	if err != nil {
		return nil, err
	}
	var derr error
	if err := rc.Control(func(fd uintptr) {
		conn, derr = netns.Dial(ctx, int(fd), "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	}); err != nil {
		return nil, err
	}
	return conn, derr
}

// follower reads a container's output file from its start and follows it until the container
// has exited and everything written is read (then io.EOF). A file that shrank (started over at
// MaxOutputBytes) is read again from its start.
type follower struct {
	f    *os.File
	done <-chan struct{}

	once   sync.Once
	closed chan struct{}
}

func newFollower(f *os.File, done <-chan struct{}) *follower {
	return &follower{f: f, done: done, closed: make(chan struct{})}
}

func (fl *follower) Read(p []byte) (int, error) {
	for {
		n, err := fl.f.Read(p)
		if n > 0 {
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, err
		}
		select {
		case <-fl.closed:
			return 0, os.ErrClosed
		case <-fl.done:
			// Exited: whatever is left was written before the exit was recorded.
			if n, err := fl.f.Read(p); n > 0 || err != io.EOF {
				return n, err
			}
			return 0, io.EOF
		case <-time.After(20 * time.Millisecond):
		}
		if off, err := fl.f.Seek(0, io.SeekCurrent); err == nil {
			if fi, err := fl.f.Stat(); err == nil && fi.Size() < off {
				_, _ = fl.f.Seek(0, io.SeekStart)
			}
		}
	}
}

func (fl *follower) Close() error {
	fl.once.Do(func() { close(fl.closed) })
	return fl.f.Close()
}
