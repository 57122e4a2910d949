package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
)

var (
	_ conman.Handoffer = (*proc)(nil)
	_ conman.Adopter   = (*Runtime)(nil)
)

// handoffState is a proc's opaque state in a conman.ProcessHandoff. Files are the connection
// to the container's init (the process lives as long as it is open anywhere) and the pty
// master.
type handoffState struct {
	TTY bool `json:"tty"`
}

var errHandedOff = errors.New("process: handed off to another conman process")

// Handoff implements conman.Handoffer for TTY processes.
func (p *proc) Handoff() (conman.ProcessHandoff, error) {
	if !p.tty {
		return conman.ProcessHandoff{}, fmt.Errorf("%w: only TTY processes are handed off", errors.ErrUnsupported)
	}
	select {
	case <-p.done:
		return conman.ProcessHandoff{}, errors.New("process: already exited")
	default:
	}
	// Stop readExit between two messages: an exit message not read yet stays in the socket
	// for the successor; one readExit got first means the process exited, and it stays here.
	p.handoff.Store(true)
	_ = p.conn.SetReadDeadline(time.Now())
	p.wg.Wait()
	<-p.done
	if p.err != errHandedOff {
		return conman.ProcessHandoff{}, errors.New("process: exited during the handoff")
	}
	conn, err := dupFile(p.conn)
	if err != nil {
		return conman.ProcessHandoff{}, err
	}
	// Wake the reader of the pty (conman's pump) without losing a byte.
	_ = p.files[0].SetReadDeadline(time.Now())
	pty, err := dupFile(p.files[0])
	if err != nil {
		conn.Close()
		return conman.ProcessHandoff{}, err
	}
	st, _ := json.Marshal(handoffState{TTY: true})
	return conman.ProcessHandoff{Files: []*os.File{conn, pty}, State: st}, nil
}

// dupFile duplicates the descriptor of c (close-on-exec) without touching its blocking mode.
func dupFile(c syscall.Conn) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("process: dup: %w", derr)
	}
	return os.NewFile(uintptr(nfd), "handoff"), nil
}

// AdoptProcess implements conman.Adopter: it checks that the first file is a connection to the
// init of the running container id (its peer's pid) and the second a pty master, and serves
// them as the Process Exec returned.
func (r *Runtime) AdoptProcess(ctx context.Context, id string, h conman.ProcessHandoff) (conman.Process, error) {
	closeAll := func() {
		for _, f := range h.Files {
			if f != nil {
				f.Close()
			}
		}
	}
	var st handoffState
	if err := json.Unmarshal(h.State, &st); err != nil || !st.TTY || len(h.Files) != 2 || h.Files[0] == nil || h.Files[1] == nil {
		closeAll()
		return nil, fmt.Errorf("%w: process: a handoff needs state {\"tty\":true} and two files", conman.ErrInvalid)
	}
	c, err := r.get(id)
	if err != nil {
		closeAll()
		return nil, err
	}
	c.mu.Lock()
	running, dir := c.st.State == conman.Running, c.dir
	c.mu.Unlock()
	if !running {
		closeAll()
		return nil, fmt.Errorf("%w: %q", conman.ErrNotRunning, id)
	}
	nc, err := net.FileConn(h.Files[0])
	h.Files[0].Close()
	if err != nil {
		h.Files[1].Close()
		return nil, fmt.Errorf("%w: process: handoff connection: %v", conman.ErrInvalid, err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		h.Files[1].Close()
		return nil, fmt.Errorf("%w: process: handoff connection is a %T, not a unix socket", conman.ErrInvalid, nc)
	}
	if err := checkPeer(uc, dir); err != nil {
		uc.Close()
		h.Files[1].Close()
		return nil, err
	}
	pty, err := adoptPTY(h.Files[1])
	h.Files[1].Close()
	if err != nil {
		uc.Close()
		return nil, err
	}
	p := &proc{conn: uc, files: []*os.File{pty}, tty: true, done: make(chan struct{}), code: -1}
	p.wg.Add(1)
	go p.readExit()
	return p, nil
}

// checkPeer verifies that uc is a seqpacket connection to a container's control socket (the
// runtime binds it, so its peer credentials are the runtime's own, not the init's).
func checkPeer(uc *net.UnixConn, dir string) error {
	ra, ok := uc.RemoteAddr().(*net.UnixAddr)
	if !ok || ra.Net != "unixpacket" || filepath.Base(ra.Name) != socketName {
		return fmt.Errorf("%w: process: handoff connection does not lead to a container's init (%v)", conman.ErrInvalid, uc.RemoteAddr())
	}
	if want := filepath.Join(dir, socketName); ra.Name != want && !strings.HasPrefix(ra.Name, "/proc/self/fd/") {
		return fmt.Errorf("%w: process: handoff connection leads to %s, not %s", conman.ErrInvalid, ra.Name, want)
	}
	return nil
}

// adoptPTY returns a pollable duplicate of f after checking that it is a pty master.
func adoptPTY(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		if _, derr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN); derr != nil {
			return
		}
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("%w: process: handoff pty: %v", conman.ErrInvalid, derr)
	}
	_ = syscall.SetNonblock(nfd, true)
	return os.NewFile(uintptr(nfd), "pty"), nil
}
