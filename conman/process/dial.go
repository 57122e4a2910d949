package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/netns"
)

var _ conman.Dialer = (*Runtime)(nil)

// DialContainer implements conman.Dialer: it connects to port on the sandboxed container's own
// loopback. A root runtime creates the socket inside the container's network namespace (entered
// through the init's pidfd, so a reused pid cannot redirect it); an unprivileged one asks the
// container's init for the connection. A container of Isolation None shares the VM's network:
// errors.ErrUnsupported, and the caller dials the VM's address.
func (r *Runtime) DialContainer(ctx context.Context, id string, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("%w: port %d", conman.ErrInvalid, port)
	}
	c, err := r.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.st.State != conman.Running || c.pidfd == nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", conman.ErrNotRunning, id)
	}
	if !c.st.Isolated {
		c.mu.Unlock()
		return nil, errors.ErrUnsupported
	}
	dir := c.dir
	nsfd := -1
	if r.root {
		if rc, err := c.pidfd.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { nsfd, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
		}
	}
	c.mu.Unlock()
	if nsfd >= 0 {
		conn, err := netns.Dial(ctx, nsfd, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		unix.Close(nsfd)
		if err == nil || !errors.Is(err, syscall.EPERM) {
			return conn, err
		}
	}
	return r.dialViaInit(ctx, dir, port)
}

// dialViaInit asks the container's init, over its control socket, for a connection it made.
func (r *Runtime) dialViaInit(ctx context.Context, dir string, port int) (net.Conn, error) {
	uc, err := dialInit(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer uc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	} else {
		_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Now()) })
	defer stop()
	req, _ := json.Marshal(execRequest{DialPort: port})
	if _, err := uc.Write(req); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("dial through init: %w", err)
	}
	fds := unixRights(oob[:oobn])
	var resp execResponse
	if err := json.Unmarshal(buf[:n], &resp); err != nil || resp.Error != "" || len(fds) != 1 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		switch {
		case err != nil:
			return nil, fmt.Errorf("dial through init: bad response: %w", err)
		case resp.Errno != 0:
			return nil, fmt.Errorf("dial through init: %s: %w", resp.Error, syscall.Errno(resp.Errno))
		case resp.Error != "":
			return nil, fmt.Errorf("dial through init: %s", resp.Error)
		}
		return nil, fmt.Errorf("dial through init: %d descriptors, want 1", len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "repl-conn")
	defer f.Close()
	return net.FileConn(f)
}
