package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
)

// Exec implements conman.Runtime: the container's init starts the process (so it is inside
// every namespace and cgroup of the container) and hands its descriptors back.
func (r *Runtime) Exec(ctx context.Context, id string, opts conman.ExecOptions) (conman.Process, error) {
	if len(opts.Args) == 0 {
		return nil, fmt.Errorf("%w: exec needs Args", conman.ErrInvalid)
	}
	c, err := r.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	running, dir := c.st.State == conman.Running, c.dir
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("%w: %q", conman.ErrNotRunning, id)
	}
	uc, err := dialInit(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", id, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Now()) })
	p, err := r.exec(uc, opts)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		if p != nil {
			p.Close()
		}
		uc.Close()
		return nil, fmt.Errorf("process: exec in %s: %w", id, err)
	}
	_ = uc.SetDeadline(time.Time{})
	p.wg.Add(1)
	go p.readExit()
	return p, nil
}

func (r *Runtime) exec(uc *net.UnixConn, opts conman.ExecOptions) (*proc, error) {
	req, _ := json.Marshal(execRequest{
		Args: opts.Args, Env: opts.Env, Dir: opts.Dir, TTY: opts.TTY, Cols: opts.Size.Cols, Rows: opts.Size.Rows,
	})
	if len(req) > maxPacket {
		return nil, fmt.Errorf("%w: exec request too large", conman.ErrInvalid)
	}
	if _, err := uc.Write(req); err != nil {
		return nil, err
	}
	buf := make([]byte, maxPacket)
	oob := make([]byte, syscall.CmsgSpace(3*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	fds := unixRights(oob[:oobn])
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		syscall.CloseOnExec(fd)
		_ = syscall.SetNonblock(fd, true)
		files[i] = os.NewFile(uintptr(fd), "exec")
	}
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var resp execResponse
	if err := json.Unmarshal(buf[:n], &resp); err != nil {
		closeFiles()
		return nil, fmt.Errorf("bad init response: %w", err)
	}
	if resp.Error != "" {
		closeFiles()
		return nil, errors.New(resp.Error)
	}
	want := 3
	if opts.TTY {
		want = 1
	}
	if len(files) != want {
		closeFiles()
		return nil, fmt.Errorf("init passed %d descriptors, want %d", len(files), want)
	}
	p := &proc{conn: uc, files: files, tty: opts.TTY, done: make(chan struct{}), code: -1}
	return p, nil
}

// proc is a conman.Process started through the init's socket.
type proc struct {
	conn  *net.UnixConn
	files []*os.File // tty: master; else stdin, stdout, stderr
	tty   bool

	done chan struct{}
	code int
	err  error

	closeOnce sync.Once
	wg        sync.WaitGroup
	handoff   atomic.Bool // Handoff stopped readExit
}

func (p *proc) readExit() {
	defer p.wg.Done()
	defer close(p.done)
	b := make([]byte, 512)
	n, err := p.conn.Read(b)
	if err != nil && p.handoff.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
		p.err = errHandedOff
		return
	}
	if err != nil {
		p.err = fmt.Errorf("process: lost the container's init: %w", err)
		return
	}
	var m execMessage
	if json.Unmarshal(b[:n], &m) != nil || m.Exit == nil {
		p.err = errors.New("process: bad exit message")
		return
	}
	p.code = *m.Exit
}

// ptyReader turns the EIO a pty master returns once the terminal is gone into io.EOF.
type ptyReader struct{ f *os.File }

func (r ptyReader) Read(b []byte) (int, error) {
	n, err := r.f.Read(b)
	if err != nil && errors.Is(err, syscall.EIO) {
		err = io.EOF
	}
	return n, err
}

func (p *proc) Stdin() io.WriteCloser { return p.files[0] }
func (p *proc) Stdout() io.Reader {
	if p.tty {
		return ptyReader{p.files[0]}
	}
	return p.files[1]
}
func (p *proc) Stderr() io.Reader {
	if p.tty {
		return nil
	}
	return p.files[2]
}

func (p *proc) Resize(size conman.WindowSize) error {
	if !p.tty {
		return conman.ErrNoTTY
	}
	return conman.ResizePTY(p.files[0], size)
}

func (p *proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return errors.New("process: already exited")
	default:
	}
	b, _ := json.Marshal(execMessage{Signal: int(sig)})
	_, err := p.conn.Write(b)
	return err
}

func (p *proc) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.code, p.err
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

func (p *proc) Close() error {
	p.closeOnce.Do(func() {
		p.conn.Close() // the init kills the process group on hang-up
		p.wg.Wait()
		for _, f := range p.files {
			f.Close()
		}
	})
	return nil
}

// Attach implements conman.Runtime: it follows the main process's output file.
func (r *Runtime) Attach(ctx context.Context, id string) (io.ReadCloser, error) {
	c, err := r.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	done, state, dir := c.done, c.st.State, c.dir
	c.mu.Unlock()
	if state == conman.Created {
		return nil, fmt.Errorf("%w: %q", conman.ErrNotRunning, id)
	}
	f, err := os.Open(filepath.Join(dir, outputName))
	if err != nil {
		return nil, fmt.Errorf("process: attach %s: %w", id, err)
	}
	if state != conman.Running {
		done = nil
	}
	ctx, cancel := context.WithCancel(ctx)
	return &follower{f: f, done: done, ctx: ctx, cancel: cancel}, nil
}

// follower reads a growing file until the container is done (like tail -f).
type follower struct {
	f      *os.File
	done   <-chan struct{} // nil: already exited, read to EOF
	ctx    context.Context
	cancel context.CancelFunc
}

func (fl *follower) Read(b []byte) (int, error) {
	for {
		n, err := fl.f.Read(b)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		if fl.done == nil {
			return 0, io.EOF
		}
		// The output file starts over at its size limit: follow it from the top.
		if off, err := fl.f.Seek(0, io.SeekCurrent); err == nil {
			if fi, err := fl.f.Stat(); err == nil && fi.Size() < off {
				_, _ = fl.f.Seek(0, io.SeekStart)
				continue
			}
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-fl.done:
			fl.done = nil // one more read drains what the exit left
		case <-fl.ctx.Done():
			t.Stop()
			return 0, fl.ctx.Err()
		case <-t.C:
		}
		t.Stop()
	}
}

func (fl *follower) Close() error {
	fl.cancel()
	return fl.f.Close()
}

// dialInit connects to a container's init through its control socket.
func dialInit(ctx context.Context, dir string) (*net.UnixConn, error) {
	path, pin, err := socketPath(dir)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", path)
	if pin != nil {
		pin.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: dial init: %v", conman.ErrNotRunning, err)
	}
	return conn.(*net.UnixConn), nil
}

// unixRights returns the descriptors an SCM_RIGHTS control message carried.
func unixRights(oob []byte) []int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := syscall.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}
